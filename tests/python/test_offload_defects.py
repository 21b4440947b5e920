"""Offload defects 5-8 of issue 25, each reached through the public API: a restore used on
another stream than the one it was allocated on is recorded there; nested tensors go through
the hooks; the in-place error is autograd's word for word (every dtype, views, intermediates
whose Python object is gone); a graph dropped without a backward is freed at once."""

from __future__ import annotations

import contextlib
import gc
import importlib
import time
import weakref
from typing import Any

import pytest

torch = pytest.importorskip("torch")
import timeshare  # noqa: E402
from timeshare import _C  # noqa: E402

ofl = importlib.import_module("timeshare._offload")

if not hasattr(_C, "SpillEngine"):
    pytest.skip("this build of timeshare._C has no spill engine", allow_module_level=True)

PINNED = 64 << 20
# The three ways the hooks hold a saved tensor: spilled at once, resident, kept where it is.
MODES = {"spilled": {"budget": 1, "min_spill": 1024}, "resident": {"budget": 1 << 40,
         "min_spill": 1024}, "kept": {"budget": 1 << 40, "min_spill": 1 << 40}}


@pytest.fixture(autouse=True)
def _fresh_contexts() -> Any:
    """End this thread's contexts after each test (offload(...) reuses them by arguments)."""
    yield
    for ctx in list(ofl._contexts().values()):
        ctx.close()


def _ctx(mode: str) -> Any:
    return timeshare.offload(pinned=PINNED, **MODES[mode]) if mode else contextlib.nullcontext()


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


# ---- defect 7: autograd's in-place error, word for word ---------------------------------------
def _error(program: Any, ctx: Any) -> str:
    with pytest.raises(RuntimeError) as info:
        program(ctx)
    return str(info.value)


def _inplace(case: str, dtype: Any, device: str = "cpu") -> Any:
    """A program whose backward meets a saved tensor modified in place."""
    def program(ctx: Any) -> None:
        torch.manual_seed(0)
        grad_dtype = dtype if dtype.is_floating_point or dtype.is_complex else torch.float32
        a = torch.randn(16, 64, device=device).to(grad_dtype).requires_grad_()
        with ctx:
            if case == "input":  # b saved by sin, then given a new grad_fn by add_
                b = a * 2
                y = b.sin()
                b.add_(1)
            elif case == "dropped":  # the same inside a block: b's Python object is gone
                def block(x: Any) -> Any:
                    b = x * 2
                    y = b.sin()
                    b.add_(1)
                    return y
                y = block(a)
            elif case == "pow1":  # a node whose name ends in Backward1
                b = a * 2
                y = b.sin()
                b.pow_(torch.full_like(b, 2).detach())
            elif case == "view":  # a view saved, modified through itself
                v = (a * 2)[2:]
                y = v.sin()
                v.mul_(3)
            elif case == "view_of_base":  # a view saved, modified through its base
                b = a * 2
                y = b[2:].sin()
                b.mul_(3)
            elif case == "dropped_view":
                def block(x: Any) -> Any:
                    v = (x * 2)[2:]
                    y = v.sin()
                    v.mul_(3)
                    return y
                y = block(a)
            elif case == "output":  # sigmoid saves its output
                y = (a * 2).sigmoid()
                y.mul_(2)
            else:  # "other": an operand that needs no grad, of this dtype, dropped
                def block(x: Any) -> Any:
                    o = torch.ones(16, 64, device=device).to(dtype)
                    y = x * o  # saves o
                    with torch.no_grad():
                        o.logical_not_() if dtype == torch.bool else o.add_(1)
                    return y
                y = block(a)
        (y.abs() if y.is_complex() else y).sum().backward()
    return program


GRAD_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.complex64,
               torch.complex128]
OTHER_DTYPES = [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.bool]
CASES = ["input", "dropped", "pow1", "view", "view_of_base", "dropped_view", "output"]


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("dtype", GRAD_DTYPES, ids=str)
def test_inplace_error_is_autograds_for_every_dtype_view_and_intermediate(
        mode: str, dtype: Any) -> None:
    for case in CASES:
        if case == "pow1" and dtype.is_complex:
            continue
        want = _error(_inplace(case, dtype), contextlib.nullcontext())
        assert "modified by an inplace operation" in want
        assert _error(_inplace(case, dtype), _ctx(mode)) == want, case


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("dtype", OTHER_DTYPES, ids=str)
def test_inplace_error_is_autograds_for_saved_operands_of_other_dtypes(
        mode: str, dtype: Any) -> None:
    want = _error(_inplace("other", dtype), contextlib.nullcontext())
    assert _error(_inplace("other", dtype), _ctx(mode)) == want


@pytest.mark.parametrize("mode", ["resident", "kept"])  # meta tensors have no bytes to spill
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_inplace_error_names_types_of_other_devices(mode: str, dtype: Any) -> None:
    """On a device other than CPU and CUDA autograd writes "MetaFloatType"."""
    for case in ("input", "dropped", "view"):
        want = _error(_inplace(case, dtype, "meta"), contextlib.nullcontext())
        assert _error(_inplace(case, dtype, "meta"), _ctx(mode)) == want, case


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors is in prototype stage")
def test_inplace_error_on_a_nested_tensor_is_autograds() -> None:
    def program(ctx: Any) -> None:
        a = torch.randn(2, 3, requires_grad=True)
        b = torch.randn(4, 3, requires_grad=True)
        with ctx:
            z = torch.nested.as_nested_tensor([a, b]) * 2
            s = z.sin()
            z.mul_(2)
        torch.nested.to_padded_tensor(s, 0.0).sum().backward()

    want = _error(program, contextlib.nullcontext())
    for mode in MODES:
        assert _error(program, _ctx(mode)) == want, mode


# ---- defect 8: a graph dropped without a backward ---------------------------------------------
def _forward_refs(ctx: Any) -> list[Any]:
    """Weak references to a forward's activations; the forward's output is dropped."""
    lin = torch.nn.Linear(64, 64)
    x = torch.randn(32, 64)
    with ctx:
        h = lin(x)
        e = h.exp()  # exp saves its output
        y = e.sigmoid()  # so does sigmoid
        z = (y * h).tanh()
    return [weakref.ref(t) for t in (h, e, y, z)]


@pytest.mark.parametrize("mode", list(MODES))
def test_graph_dropped_without_backward_is_freed(mode: str) -> None:
    gc.collect()
    gc.disable()  # freed by reference counting alone: the collector never runs
    try:
        refs = _forward_refs(_ctx(mode))
        assert [r() is None for r in refs] == [True] * len(refs)
    finally:
        gc.enable()


def test_graphs_dropped_under_install_global_are_freed() -> None:
    ctx = ofl.install_global("budget:20GiB,spill:host,pinned:64MiB")  # default min_spill
    gc.collect()
    gc.disable()
    try:
        assert ctx is not None
        alive = sum(r() is not None for _ in range(50)
                    for r in _forward_refs(contextlib.nullcontext()))
        assert alive == 0
    finally:
        gc.enable()
        ofl.uninstall_global()
