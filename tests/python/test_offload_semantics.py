"""Offload keeps autograd's contract: in-place modification of a saved tensor raises as autograd
does, copies never race the tensors they read or write, iterations are found from backward
boundaries, per-step contexts keep what they learned, and every public name resolves."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
import timeshare  # noqa: E402
from timeshare import _C  # noqa: E402

ofl = importlib.import_module("timeshare._offload")
contexts_mod = importlib.import_module("timeshare._offload_contexts")

if not hasattr(_C, "SpillEngine"):
    pytest.skip("this build of timeshare._C has no spill engine", allow_module_level=True)

PINNED = 64 << 20
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _fresh_contexts() -> Any:
    """End this thread's contexts after each test (offload(...) reuses them by arguments)."""
    yield
    for ctx in list(ofl._contexts().values()):
        ctx.close()


def _error_of(fn: Any) -> str:
    with pytest.raises(RuntimeError) as info:
        fn()
    return str(info.value)


def _sigmoid_mul(ctx: Any) -> str:
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 64)
    x = torch.randn(128, 64)
    with ctx:
        z = torch.sigmoid(lin(x))
        z.mul_(2)  # sigmoid saved its output: backward must refuse
    return _error_of(lambda: z.sum().backward())


# ---- defect 1: in-place modification of a saved tensor -------------------------------------
@pytest.mark.parametrize("budget", [1, 1 << 40])  # spilled at once / resident
def test_inplace_on_saved_output_raises_like_autograd(budget: int) -> None:
    import contextlib

    want = _sigmoid_mul(contextlib.nullcontext())
    assert "modified by an inplace operation" in want
    ctx = ofl.offload(budget=budget, min_spill=1024, pinned=PINNED)
    assert _sigmoid_mul(ctx) == want
    ctx.close()


def test_inplace_on_saved_input_deduplicated_small_and_leaf_raise() -> None:
    import contextlib

    def run(ctx: Any, case: str) -> str:
        torch.manual_seed(0)
        a = torch.randn(128, 128, requires_grad=True)
        with ctx:
            if case == "dedup":
                b = a + 1
                c = b * b  # b saved twice: the second pack is a deduplicated view
                b.add_(1)
            elif case == "regraphed":  # an in-place op with grad gives b a new grad_fn
                b = a.exp()
                c = b.sin()
                b.mul_(2)
            elif case == "small":
                b = a[:2, :2] + 1
                c = b.exp() * b
                b.mul_(3)
            else:  # a leaf that requires grad (kept, never spilled)
                c = (a * a).exp()
                with torch.no_grad():
                    a.add_(1)
        return _error_of(lambda: c.sum().backward())

    for case in ("dedup", "regraphed", "small", "leaf"):
        want = run(contextlib.nullcontext(), case)
        for budget in (1, 1 << 40):
            ctx = ofl.offload(budget=budget, min_spill=1024, pinned=PINNED)
            assert run(ctx, case) == want, case
            ctx.close()


def test_inplace_right_after_spill_never_returns_torn_data() -> None:
    """The D2H copy is in flight when the kernel after the pack writes the tensor: the modified
    tensor is caught at unpack (not restored from a copy that raced the write)."""
    ctx = ofl.offload(budget=1, min_spill=1024, pinned=PINNED)
    t = torch.randn(256, 256)
    with ctx:
        packed = ctx._pack(t)
        assert ctx.stats()["timeshare.spill.spills"] == 1
        t.add_(1)
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            ctx._unpack(packed)
    ctx.close()


# ---- defect 2: a prefetch destination outlives its copy -------------------------------------
_PREFETCH_UNUSED = """
import importlib, time, torch
ofl = importlib.import_module("timeshare._offload")
n = 16 << 20  # large: freed buffers are unmapped, and the next ones mapped at the same place
ctx = ofl.offload(budget=1, min_spill=1024, pinned=128 << 20, prefetch=1 << 30)
with ctx:
    ts = [torch.randn(n // 4) for _ in range(6)]
    packed = [ctx._pack(t) for t in ts]
    del ts
    time.sleep(0.2)  # the spills complete
    with ctx._lock:
        ctx._reap()
    ctx._unpack(packed[-1])  # backward reached the last one: the others are prefetched
    assert all(p.unit.prefetch_dst is not None for p in packed[:-1])
    del packed  # never unpacked (a grad over part of the graph): freed at once
    probes = [torch.zeros(n, dtype=torch.uint8) for _ in range(8)]
    time.sleep(0.2)  # the engine's clock passes the restores' completion
    ctx._engine.spill_complete(0)
    bad = sum(int(not bool((p == 0).all())) for p in probes)
    stats = ctx.stats()
print(bad, stats["timeshare.spill.hooks.prefetches_unused"], stats["timeshare.spill.entries"])
"""


def test_unused_prefetch_destination_is_held_until_its_copy_completes() -> None:
    """Before the fix the restores landed in freed memory: other tensors corrupted, or a
    segfault (in a subprocess here, so that it cannot take the test run down)."""
    out = subprocess.run([sys.executable, "-c", _PREFETCH_UNUSED], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["0", "5", "0"]  # nothing corrupted; 5 unused; all released


# ---- defect 3: conflict spills fence on the producer's stream -------------------------------
class _Recorder:
    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.streams: list[int] = []

    def spill(self, ptr: int, nbytes: int, stream: int, key: int) -> int:
        self.streams.append(stream)
        return int(self.engine.spill(ptr, nbytes, 0, key))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)


def test_conflict_spill_fences_on_the_producer_stream() -> None:
    ctx = ofl.offload(budget=1 << 40, min_spill=1024, pinned=PINNED)
    current = [7]
    ctx._stream = lambda device: current[0]  # the side stream the forward ran on
    ctx._engine_for(torch.device("cpu"))
    rec = _Recorder(ctx._engine)
    ctx._engine = rec
    with ctx:
        packed = [ctx._pack(torch.randn(256, 256)) for _ in range(3)]
        current[0] = 9  # the allocating thread's current stream is another one
        assert _C.make_room(0, 3 * 256 * 256 * 4) >= 3 * 256 * 256 * 4
        assert rec.streams == [7, 7, 7]
        del packed
    ctx._engine = rec.engine
    ctx.close()


# ---- defect 4: iterations from backward boundaries ------------------------------------------
def _mlp() -> Any:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(32, 128), torch.nn.Tanh(), torch.nn.Linear(128, 128),
                               torch.nn.Tanh(), torch.nn.Linear(128, 8))


def _steps(pattern: str, ctx: Any, steps: int = 4) -> tuple[list[Any], list[Any]]:
    from torch.utils.checkpoint import checkpoint

    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    torch.manual_seed(1)
    data = [torch.randn(4, 64, 32) for _ in range(steps)]
    losses: list[Any] = []
    grads: list[Any] = []
    with ctx:
        for x in data:
            opt.zero_grad()
            if pattern.startswith("checkpoint"):
                reentrant = pattern.endswith("reentrant")
                h = checkpoint(model[1:4], model[0](x[0]), use_reentrant=reentrant)
                loss = model[4:](h).square().mean()
                loss.backward()
            elif pattern == "double":
                loss = model(x[0]).square().mean()
                g = torch.autograd.grad(loss, list(model.parameters()), create_graph=True)
                (loss + sum(gi.square().sum() for gi in g)).backward()
            else:  # accumulation: several forwards, then their backwards
                outs = [model(xi).square().mean() for xi in x]
                for lo in outs:
                    lo.backward()
                loss = outs[0]
            losses.append(loss.detach().clone())
            grads.append([p.grad.clone() for p in model.parameters()])
            opt.step()
    return losses, grads


@pytest.mark.parametrize("pattern", ["checkpoint_reentrant", "checkpoint", "double",
                                     "accumulation"])
def test_iterations_follow_backward_boundaries(pattern: str) -> None:
    import contextlib

    ref = _steps(pattern, contextlib.nullcontext())
    ctx = ofl.offload(budget=40 * 1024, min_spill=16 * 1024, pinned=PINNED)
    got = _steps(pattern, ctx)
    stats = ctx.stats()
    ctx.close()
    assert all(torch.equal(a, b) for a, b in zip(ref[0], got[0]))
    assert all(torch.equal(a, b) for sa, sb in zip(ref[1], got[1]) for a, b in zip(sa, sb))
    assert stats["timeshare.spill.hooks.iterations"] == 3  # 4 steps: 3 boundaries
    assert stats["timeshare.spill.hooks.spilled_planned"] > 0


# ---- defect 5: per-step contexts share what they learned ------------------------------------
def test_a_new_context_per_step_keeps_history_and_plan() -> None:
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    torch.manual_seed(1)
    planned: list[int] = []
    for _ in range(4):
        x = torch.randn(64, 32)
        opt.zero_grad()
        ctx = ofl.offload(budget=40 * 1024, min_spill=16 * 1024, pinned=PINNED)
        with ctx:  # the README's loop: a new context around each step's forward
            loss = model(x).square().mean()
        loss.backward()
        opt.step()
        planned.append(ctx.stats().get("timeshare.spill.hooks.spilled_planned", 0))
    assert planned[3] > planned[2] > 0
    assert ctx.stats()["timeshare.spill.hooks.iterations"] == 3
    other = ofl.offload(budget=40 * 1024 + 1, min_spill=16 * 1024, pinned=PINNED)
    assert other is not ctx  # another configuration: another engine
    other.close()
    ctx.close()
    assert ofl.offload(budget=40 * 1024, min_spill=16 * 1024, pinned=PINNED) is not ctx


def test_contexts_kept_per_thread_are_bounded() -> None:
    n = 3 * contexts_mod.MAX_CONTEXTS_PER_THREAD
    made = [ofl.offload(budget=1 << 20, memory_fn=lambda: 0) for _ in range(n)]
    assert len({id(c) for c in made}) == len(made)  # a new memory_fn: a new context
    assert len(ofl._contexts()) == contexts_mod.MAX_CONTEXTS_PER_THREAD  # the oldest were closed


# ---- defect 6: public names ------------------------------------------------------------------
def test_public_names_resolve_and_memory_stats_has_spill_keys() -> None:
    for name in ("offload", "spill_stats", "install_global", "uninstall_global",
                 "OffloadError"):
        assert name in timeshare.__all__ and hasattr(timeshare, name), name
    assert isinstance(timeshare.offload, type)
    assert timeshare.spill_stats is ofl.spill_stats
    assert timeshare.install_global is ofl.install_global
    ctx = timeshare.offload(budget=1, min_spill=1024, pinned=PINNED)
    with ctx:
        x = torch.randn(128, 128, requires_grad=True)
        x.exp().sum().backward()
    ctx.close()
    stats = timeshare.memory_stats()  # the allocator is not enabled here
    assert stats["timeshare.spill.spills"] >= 1
    assert stats["timeshare.spill.hooks.packed"] >= 1


# ---- defect 7: scripts use the installed package ----------------------------------------------
def test_bench_spill_uses_the_installed_package(tmp_path: Path) -> None:
    """A checkout's python/ without a built _C must not shadow the installed timeshare."""
    fake = tmp_path / "checkout"
    (fake / "scripts").mkdir(parents=True)
    (fake / "python" / "timeshare").mkdir(parents=True)
    (fake / "python" / "timeshare" / "__init__.py").write_text("from timeshare import _C\n")
    script = fake / "scripts" / "bench_spill.py"
    script.write_text((ROOT / "scripts" / "bench_spill.py").read_text())
    helper = fake / "scripts" / "benchlib.py"  # the benches' shared helper: it picks the package
    helper.write_text((ROOT / "scripts" / "benchlib.py").read_text())
    code = (f"import runpy; m = runpy.run_path({str(script)!r}); "
            "print(m['plan']([{'bytes': 4096, 'pack': 0.0, 'unpack': 1.0, 'spill': 1}], 0, 1))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "{0}"
