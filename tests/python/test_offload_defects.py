"""Offload defects 5-8 of issue 25, each reached through the public API: a restore used on
another stream than the one it was allocated on is recorded there; nested tensors go through
the hooks; the in-place error is autograd's word for word (every dtype, views, intermediates
whose Python object is gone); a graph dropped without a backward is freed at once."""

from __future__ import annotations

import contextlib
import importlib
import time
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


# ---- defect 5: a prefetched restore used on another stream ----------------------------------
class _Stream:
    """A stand-in for a device stream: torch.cpu has one stream, so two are faked through
    torch's own ``current_stream`` and ``record_stream``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.waited: list[str] = []

    def wait_stream(self, other: _Stream) -> None:
        self.waited.append(other.name)

    def __repr__(self) -> str:
        return self.name


def test_prefetched_restore_used_on_another_stream_is_recorded_there(monkeypatch: Any) -> None:
    """Backward unpacks the last saved tensor on stream s1, which prefetches the others into
    memory allocated on s1; a hook then moves the rest of the backward to s2. Each prefetched
    restore read on s2 must be ``record_stream``-ed on s2, or its memory goes back to s1's pool
    while s2 still reads it."""
    s1, s2 = _Stream("s1"), _Stream("s2")
    current = [s1]
    recorded: list[tuple[int, str]] = []
    monkeypatch.setattr(torch.cpu, "current_stream", lambda device=None: current[0])
    monkeypatch.setattr(torch.Tensor, "record_stream",
                        lambda self, stream: recorded.append((self.numel(), stream.name)))

    def run(ctx: Any) -> Any:
        current[0] = s1
        torch.manual_seed(0)
        x = torch.randn(128, 128, requires_grad=True)
        with ctx:
            h = [x * 1]
            for _ in range(4):
                h.append(h[-1].sin())  # saves its input: 64 KiB each
                time.sleep(0.05)  # the spill copies complete, and the next pack drops them
            h[-1].register_hook(lambda g: current.__setitem__(0, s2))
            h.append(h[-1].sin())
        h[-1].sum().backward()
        return x.grad

    want = run(contextlib.nullcontext())
    ctx = timeshare.offload(budget=1, min_spill=1024, pinned=PINNED, prefetch=1 << 30)
    got = run(ctx)
    stats = ctx.stats()
    assert torch.equal(got, want)
    assert stats["timeshare.spill.hooks.prefetches"] >= 2
    # every prefetched restore was read on s2, not s1 where it was allocated
    assert len(recorded) == stats["timeshare.spill.hooks.prefetches"]
    assert all(r == (128 * 128 * 4, "s2") for r in recorded), recorded
    assert s1.waited == []


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
