"""The model zoo's shared recipe: what the training scripts behind every recorded trace share.

Two sets of scripts train models on random data under ``python -m timeshare capture``:
``scripts/trace_models/*.py``, one script per shipped trace (``scripts/make_traces.sh``), and
``scripts/corpus/train.py``, one row of the corpus table ``scripts/corpus/models.py`` each
(``scripts/corpus/capture.sh``). Their command line, their image-classification loop and their
random detection targets are here, once. A trace is the sequence of tensor allocations and
frees a script makes, so a change here changes the traces recorded from then on: keep the order
of every tensor operation, and which frame holds each tensor (a helper that returns a tensor
its caller keeps moves that tensor's free).

A script in a folder below scripts/ starts with

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/: zoo
    import zoo
"""

from __future__ import annotations

import argparse
from typing import Callable

import torch

__all__ = ["options", "random_targets", "train_classifier"]


def options(doc: str | None, **defaults: int) -> argparse.Namespace:
    """The script's command line: ``--steps`` (default 12), then its own integer options
    (``batch=8`` is ``--batch``, default 8), parsed; then torch is seeded with 0."""
    p = argparse.ArgumentParser(description=doc)
    p.add_argument("--steps", type=int, default=12)
    for name, default in defaults.items():
        p.add_argument(f"--{name}", type=int, default=default)
    a = p.parse_args()
    torch.manual_seed(0)
    return a


def train_classifier(a: argparse.Namespace, build: Callable[[], torch.nn.Module],
                     optimizer: Callable[[torch.nn.Module], torch.optim.Optimizer],
                     num_classes: int, loss_fn: Callable[..., torch.Tensor],
                     clip_norm: float = 0.0) -> None:
    """Builds the model (train mode) and its optimizer, then trains ``a.steps`` steps on random
    images (``a.batch`` x 3 x ``a.image``²) and labels: forward, loss, backward, gradient
    clipping (when ``clip_norm``), optimizer step. The model and the optimizer are this
    function's own locals, so that every tensor is freed in the order of the scripts that wrote
    this loop out (a trace records the frees at the end too)."""
    model = build()
    model.train()
    opt = optimizer(model)
    for step in range(a.steps):
        images = torch.randn(a.batch, 3, a.image, a.image)
        labels = torch.randint(0, num_classes, (a.batch,))
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(images), labels)
        loss.backward()
        if clip_norm:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
        opt.step()
        print(f"step {step} loss {loss.item():.4f}")


def random_targets(n: int, size: int, gen: torch.Generator,
                   num_labels: int) -> list[dict[str, torch.Tensor]]:
    """Detection targets for ``n`` images of ``size`` pixels: 1..6 random boxes each, with
    labels in 1 .. ``num_labels`` - 1."""
    targets = []
    for _ in range(n):
        k = int(torch.randint(1, 7, (1,), generator=gen))
        xy = torch.rand(k, 2, generator=gen) * (size * 0.7)
        wh = torch.rand(k, 2, generator=gen) * (size * 0.25) + 8
        boxes = torch.cat([xy, (xy + wh).clamp(max=size - 1)], dim=1)
        labels = torch.randint(1, num_labels, (k,), generator=gen)
        targets.append({"boxes": boxes, "labels": labels})
    return targets
