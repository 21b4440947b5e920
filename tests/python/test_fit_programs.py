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
from test_offload import MIN_SPILL, PINNED, _fresh_contexts  # noqa: E402, F401 (autouse)

import timeshare  # noqa: E402

offload_mod = importlib.import_module("timeshare._offload")

STEPS = 3


def _fit(model: Any, **kwargs: Any) -> Any:
    kwargs.setdefault("budget", "1GiB")
    return timeshare.fit(copy.deepcopy(model), pinned=PINNED, min_spill=MIN_SPILL, **kwargs)


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
