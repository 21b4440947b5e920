"""Offload defects 5-8 of issue 25, each reached through the public API: a restore used on
another stream than the one it was allocated on is recorded there; nested tensors go through
the hooks; the in-place error is autograd's word for word (every dtype, views, intermediates
whose Python object is gone); a graph dropped without a backward is freed at once."""

from __future__ import annotations

import contextlib
import importlib
from typing import Any

import pytest

torch = pytest.importorskip("torch")
import timeshare  # noqa: E402
from timeshare import _C  # noqa: E402

ofl = importlib.import_module("timeshare._offload")

if not hasattr(_C, "SpillEngine"):
    pytest.skip("this build of timeshare._C has no spill engine", allow_module_level=True)

PINNED = 64 << 20


@pytest.fixture(autouse=True)
def _fresh_contexts() -> Any:
    """End this thread's contexts after each test (offload(...) reuses them by arguments)."""
    yield
    for ctx in list(ofl._contexts().values()):
        ctx.close()


# ---- defect 6: nested tensors -----------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors is in prototype stage")
@pytest.mark.parametrize("layout", ["strided", "jagged"])
@pytest.mark.parametrize("budget", ["20GiB", 1])
def test_nested_tensors_forward_and_backward(layout: str, budget: Any) -> None:
    def run(ctx: Any) -> tuple[Any, ...]:
        torch.manual_seed(0)
        a = torch.randn(2, 3, requires_grad=True)
        b = torch.randn(4, 3, requires_grad=True)
        with ctx:
            nt = torch.nested.as_nested_tensor([a, b], layout=getattr(torch, layout))
            y = nt.sin()
        out = [t.detach().clone() for t in y.unbind()]
        sum(t.square().sum() for t in y.unbind()).backward()
        return (*out, a.grad, b.grad)

    want = run(contextlib.nullcontext())
    got = run(timeshare.offload(budget=budget, min_spill=16, pinned=PINNED))
    assert all(torch.equal(g, w) for g, w in zip(got, want))
