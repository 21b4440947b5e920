"""timeshare.fit never breaks a program that runs without it: two fitted models each own their
offload context (a GAN's generator and discriminator), a second backward through a fitted model
(``retain_graph=True`` twice, a gradient penalty with ``create_graph=True``, grad of grad) gives
the gradients it gives without fit at every recompute level, and blocks that modify their own
input in place are never checkpointed as they are. Through the public API, on CPU tensors."""

from __future__ import annotations

import copy
import importlib
from typing import Any

import pytest

torch = pytest.importorskip("torch")
from test_fit import DropoutMLP  # noqa: E402
from test_offload import MIN_SPILL, PINNED, _fresh_contexts  # noqa: E402, F401 (autouse)

import timeshare  # noqa: E402

offload_mod = importlib.import_module("timeshare._offload")

LEVELS = ("none", "pointwise", "cheap", "full")
STEPS = 3


def _fit(model: Any, **kwargs: Any) -> Any:
    kwargs.setdefault("budget", "1GiB")
    return timeshare.fit(copy.deepcopy(model), pinned=PINNED, min_spill=MIN_SPILL, **kwargs)


def _equal(a: list[list[Any]], b: list[list[Any]]) -> None:
    assert len(a) == len(b)
    for sa, sb in zip(a, b):
        assert len(sa) == len(sb) and all(torch.equal(x, y) for x, y in zip(sa, sb))


# ---- item 9: each fit owns its context --------------------------------------------------------

class Generator(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList(
            torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.GELU(),
                                torch.nn.Linear(256, 64)) for _ in range(3))

    def forward(self, x: Any) -> Any:
        for b in self.blocks:
            x = x + b(x)
        return x


def test_each_fit_owns_its_offload_context() -> None:
    """A GAN's two models fitted with the same arguments, trained interleaved: two contexts,
    neither of them one that ``timeshare.offload(...)`` hands out to a later call. The same for
    a CUDA device (there both would count torch.cuda.memory_allocated, so nothing but ownership
    tells them apart; building a context touches no device, so it is checked here too)."""
    torch.manual_seed(0)
    g = _fit(Generator(), budget="64KiB", link=1e5)
    d = _fit(Generator(), budget="64KiB", link=1e5)
    fg, fd = g.timeshare_fit, d.timeshare_fit
    og, od = (torch.optim.SGD(m.parameters(), lr=0.01) for m in (g, d))
    for _ in range(STEPS):
        z = torch.randn(32, 64)
        d(g(z).detach()).pow(2).mean().backward()
        od.step()
        od.zero_grad()
        d(g(z)).mean().backward()
        og.step()
        og.zero_grad()
    assert fg._ctx is not None and fd._ctx is not None and fg._ctx is not fd._ctx
    assert all(c is not fg._ctx and c is not fd._ctx
               for c in offload_mod._contexts().values())
    for dev in (torch.device("cpu"), torch.device("cuda")):
        a, b = fg._new_context(dev), fd._new_context(dev)
        assert a is not b and fg._new_context(dev) is not a
        shared = offload_mod.offload(**fg._ctx_args)
        assert shared is not a and shared is not b


# ---- item 11: a second backward ----------------------------------------------------------------

def _second_backward(model: Any, how: str, steps: int = STEPS) -> list[list[Any]]:
    """``steps`` SGD steps whose backward goes twice through the model's graph; every step's
    gradients."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    torch.manual_seed(5)  # dropout
    data = torch.Generator().manual_seed(6)
    grads = []
    for _ in range(steps):
        x = torch.randn(8, 16, 64, generator=data, requires_grad=how == "grad_of_grad")
        loss = model(x).pow(2).mean()
        if how == "retain_graph":
            loss.backward(retain_graph=True)
            loss.backward()
        elif how == "gradient_penalty":
            gs = torch.autograd.grad(loss, list(model.parameters()), create_graph=True)
            (loss + sum(g.pow(2).sum() for g in gs)).backward()
        else:
            (gx,) = torch.autograd.grad(loss, x, create_graph=True)
            gx.pow(2).sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
        opt.step()
        opt.zero_grad()
    return grads


@pytest.mark.parametrize("how", ["retain_graph", "gradient_penalty", "grad_of_grad"])
@pytest.mark.parametrize("level", LEVELS)
def test_a_second_backward_works_at_every_level(how: str, level: str) -> None:
    """The steps after the first (profiled) one run every block checkpointed at ``level``; a
    backward that goes through the graph a second time gets the gradients it gets without fit,
    bit for bit."""
    torch.manual_seed(0)
    model = DropoutMLP()
    ref = _second_backward(copy.deepcopy(model), how)
    m = _fit(model, recompute=level)
    got = _second_backward(m, how)
    _equal(ref, got)
    n = len(m.timeshare_fit.blocks)
    assert m.timeshare_fit.levels == [LEVELS.index(level)] * n
    # the backward that keeps the graph recomputes each block whole, once per step after the
    # profiled one; the one that frees it takes the cache
    whole = m.timeshare_fit.stats()["timeshare.recompute.recomputations_whole"]
    assert whole == (0 if level == "none" else n * (STEPS - 1))


# ---- item 12: blocks that modify their input in place ----------------------------------------

def _inplace_net(wide: bool) -> Any:
    """Blocks that begin with an in-place ReLU on their own input: the issue's
    ``nn.Sequential(nn.ReLU(inplace=True), nn.Linear(32, 32))``, or a wider one whose
    checkpointing would free memory (so that the planner wants it)."""
    torch.manual_seed(0)
    blocks = [torch.nn.Sequential(torch.nn.ReLU(inplace=True), torch.nn.Linear(32, 256),
                                  torch.nn.GELU(), torch.nn.Linear(256, 32)) if wide else
              torch.nn.Sequential(torch.nn.ReLU(inplace=True), torch.nn.Linear(32, 32))
              for _ in range(4)]
    return torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.Sequential(*blocks),
                               torch.nn.Linear(32, 10))


def _train(model: Any, steps: int = STEPS) -> list[list[Any]]:
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    data = torch.Generator().manual_seed(3)
    grads = []
    for _ in range(steps):
        x = torch.randn(64, 32, generator=data)
        model(x).pow(2).mean().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
        opt.step()
        opt.zero_grad()
    return grads


@pytest.mark.parametrize("wide", [False, True])
@pytest.mark.parametrize("level", ["auto", *LEVELS])
def test_blocks_writing_their_input_in_place_are_not_checkpointed(level: str, wide: bool) -> None:
    """Checkpointing a block that writes its own input in place would recompute it from the
    input its forward overwrote (autograd's in-place error at the second step). fit finds such
    blocks in its profile and runs them as written, whatever the level asked (``"auto"`` under a
    budget and a link that make the planner checkpoint what it can); training is bit-identical
    to training without fit."""
    model = _inplace_net(wide)
    ref = _train(copy.deepcopy(model))
    m = _fit(model, recompute=level, budget="16KiB", link=1e5)
    got = _train(m)
    _equal(ref, got)
    f = m.timeshare_fit
    assert [n for n, _b in f.blocks] == [f"1.{i}" for i in range(4)]
    assert f.levels == [0, 0, 0, 0]
    assert f.stats()["timeshare.recompute.blocks_in_place"] == 4


def test_the_planner_checkpoints_the_same_blocks_without_the_in_place_write() -> None:
    """The control: the wide blocks with ``ReLU(inplace=False)`` are checkpointed by the same
    plan (so the test above is one the planner would otherwise fail)."""
    model = _inplace_net(True)
    for blk in model[1]:
        blk[0].inplace = False
    m = _fit(model, budget="16KiB", link=1e5)
    _train(m)
    assert any(m.timeshare_fit.levels)
    assert m.timeshare_fit.stats()["timeshare.recompute.blocks_in_place"] == 0
