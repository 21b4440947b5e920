"""Offload hooks: real torch.nn models trained with offload on give bit-identical losses and
gradients to offload off, at several budgets, on both tiers, and under injected faults."""

from __future__ import annotations

import contextlib
import copy
import importlib
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
from timeshare import _C  # noqa: E402

# The module (timeshare.offload is the class; the module's public names are re-exported by
# timeshare/__init__.py).
offload = importlib.import_module("timeshare._offload")

if not hasattr(_C, "SpillEngine"):
    pytest.skip("this build of timeshare._C has no spill engine", allow_module_level=True)

STEPS = 3
MIN_SPILL = 16 * 1024
PINNED = 64 << 20


@pytest.fixture(autouse=True)
def _fresh_contexts() -> Any:
    """offload(...) returns this thread's context with the same arguments: end them after each
    test, so that no test inherits another's engine, history or injected faults."""
    yield
    for ctx in list(offload._contexts().values()):
        ctx.close()


class SmallCNN(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
            torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.BatchNorm2d(32), torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(32, 32, 3, padding=1), torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(), torch.nn.Linear(32 * 16, 10))

    def forward(self, x: Any) -> Any:
        return self.body(x)


class SmallTransformer(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(100, 64)
        layer = torch.nn.TransformerEncoderLayer(64, 4, dim_feedforward=256, dropout=0.0,
                                                 batch_first=True)
        self.encoder = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = torch.nn.Linear(64, 100)

    def forward(self, x: Any) -> Any:
        return self.head(self.encoder(self.embed(x)))


def _model_and_data(name: str) -> tuple[Any, list[tuple[Any, Any]]]:
    torch.manual_seed(0)
    if name == "cnn":
        model = SmallCNN()
        data = [(torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))) for _ in range(STEPS)]
    else:
        model = SmallTransformer()
        data = [(torch.randint(0, 100, (8, 32)), torch.randint(0, 100, (8 * 32,)))
                for _ in range(STEPS)]
    return model, data


def _train(model: Any, data: list[tuple[Any, Any]], ctx: Any) -> tuple[list[Any], list[list[Any]]]:
    """STEPS optimizer steps; returns the losses and every step's gradients."""
    model = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses: list[Any] = []
    grads: list[list[Any]] = []
    with ctx:
        for x, y in data:
            opt.zero_grad()
            out = model(x)
            loss = torch.nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), y)
            loss.backward()
            losses.append(loss.detach().clone())
            grads.append([p.grad.detach().clone() for p in model.parameters()])
            opt.step()
    return losses, grads


def _same(a: tuple[list[Any], list[list[Any]]], b: tuple[list[Any], list[list[Any]]]) -> bool:
    la, ga = a
    lb, gb = b
    return all(torch.equal(x, y) for x, y in zip(la, lb)) and all(
        torch.equal(x, y) for sa, sb in zip(ga, gb) for x, y in zip(sa, sb))


_PEAKS: dict[str, int] = {}
_LARGEST: dict[str, int] = {}
_REFS: dict[str, Any] = {}


def _reference(name: str) -> tuple[Any, Any, Any, int]:
    """Offload off (the reference result) and the peak of saved bytes the hooks would hold."""
    model, data = _model_and_data(name)
    if name not in _REFS:
        _REFS[name] = _train(model, data, contextlib.nullcontext())
        probe = offload.offload(budget=1 << 50, min_spill=MIN_SPILL, pinned=PINNED)
        assert _same(_train(model, data, probe), _REFS[name])
        _PEAKS[name] = probe.stats()["timeshare.spill.hooks.peak_resident_bytes"]
        sizes: list[int] = []

        def record(t: Any) -> Any:
            sizes.append(t.numel() * t.element_size())
            return t

        with torch.autograd.graph.saved_tensors_hooks(record, lambda t: t):
            _train(model, data[:1], contextlib.nullcontext())
        _LARGEST[name] = max(sizes)
        probe.close()
        assert _PEAKS[name] > 0
    return model, data, _REFS[name], _PEAKS[name]


def _ssd_arena(name: str) -> int:
    """A pinned arena small enough that spills must go on to SSD, yet able to hold any one
    saved tensor (a larger one would rightly stay on the device)."""
    return max(_PEAKS[name] // 8, 2 * _LARGEST[name])


@pytest.mark.parametrize("name", ["cnn", "transformer"])
@pytest.mark.parametrize("share", [0.3, 0.5, 0.7])
@pytest.mark.parametrize("tier", ["host", "host+ssd"])
def test_bit_identical_under_budget(name: str, share: float, tier: str, tmp_path: Path) -> None:
    model, data, ref, peak = _reference(name)
    budget = int(peak * share)
    # With the SSD tier, a small arena forces data through the files.
    pinned = _ssd_arena(name) if tier == "host+ssd" else PINNED
    ctx = offload.offload(budget=budget, spill=tier, spill_dir=str(tmp_path / "spill"),
                          pinned=pinned, min_spill=MIN_SPILL)
    got = _train(model, data, ctx)
    stats = ctx.stats()
    ctx.close()
    assert _same(got, ref)
    assert stats["timeshare.spill.spills"] > 0
    assert stats["timeshare.spill.hooks.peak_resident_bytes"] <= budget
    assert stats["timeshare.spill.hooks.parameters"] > 0  # weights were offered and kept
    assert stats["timeshare.spill.entries"] == 0
    assert stats["timeshare.spill.copy_failures"] == 0
    if tier == "host+ssd":
        assert stats["timeshare.spill.spilled_bytes.ssd"] > 0
        assert stats["timeshare.spill.restored_bytes.ssd"] > 0
        assert stats["timeshare.spill.current_bytes.ssd"] == 0
    # Later iterations follow the learned plan and prefetch.
    assert stats["timeshare.spill.hooks.spilled_planned"] > 0
    assert stats["timeshare.spill.hooks.prefetches"] > 0


@pytest.mark.parametrize("name", ["cnn", "transformer"])
@pytest.mark.parametrize("fault,nth,tier", [
    ("pinned", 1, "host"),      # no pinned arena at all: everything stays resident
    ("copy", 2, "host"),        # a device-to-host copy fails: that tensor stays
    ("copy", 9, "host"),        # a later copy (a restore or prefetch) fails: synchronous path
    ("ssd_write", 1, "host+ssd"),
])
def test_bit_identical_with_faults(name: str, fault: str, nth: int, tier: str,
                                   tmp_path: Path) -> None:
    model, data, ref, peak = _reference(name)
    pinned = _ssd_arena(name) if tier == "host+ssd" else PINNED
    ctx = offload.offload(budget=peak // 3, spill=tier, spill_dir=str(tmp_path / "s"),
                          pinned=pinned, min_spill=MIN_SPILL)
    ctx.inject_fault(fault, nth)
    got = _train(model, data, ctx)
    stats = ctx.stats()
    ctx.close()
    assert _same(got, ref)
    if fault == "pinned":
        assert stats["timeshare.spill.spills"] == 0
        assert stats["timeshare.spill.hooks.kept_resident"] > 0
    elif fault == "copy":
        assert stats["timeshare.spill.copy_failures"] == 1
    else:
        assert stats["timeshare.spill.ssd_write_failures"] == 1


def test_unwritable_spill_dir_keeps_data(tmp_path: Path) -> None:
    model, data, ref, peak = _reference("cnn")
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    pinned = _ssd_arena("cnn")
    ctx = offload.offload(budget=peak // 3, spill="host+ssd", spill_dir=str(blocker / "spill"),
                          pinned=pinned, min_spill=MIN_SPILL)
    got = _train(model, data, ctx)
    stats = ctx.stats()
    ctx.close()
    assert _same(got, ref)
    assert stats["timeshare.spill.spilled_bytes.ssd"] == 0
    assert stats["timeshare.spill.hooks.kept_resident"] > 0  # arena full, no SSD: stays


@pytest.mark.parametrize("make", [
    lambda: torch.randn(8, 16, 12, 12).to(memory_format=torch.channels_last),
    lambda: torch.randn(64, 300, dtype=torch.float64),
    lambda: torch.randn(512, 64).to(torch.bfloat16),
    lambda: torch.randint(-5, 5, (4096, 3), dtype=torch.int64),
    lambda: torch.randn(40, 200)[5:],          # storage offset
    lambda: torch.randn(200, 40).t(),          # transposed
    lambda: torch.randn(64, 3, 300).unbind(1)[1],  # strided view with gaps
])
def test_pack_unpack_round_trip_layouts(make: Any) -> None:
    t = make()
    expect, stride = t.clone(), t.stride()
    ctx = offload.offload(budget=1, min_spill=1024, pinned=PINNED)
    with ctx:
        packed = ctx._pack(t)
        del t
        out = ctx._unpack(packed)
    assert out.dtype == expect.dtype and out.shape == expect.shape
    assert out.stride() == stride and out.device == expect.device
    assert torch.equal(out, expect)
    ctx.close()


def test_views_of_one_storage_are_one_unit() -> None:
    """q, k, v of a fused projection: one spill of their storage, three exact views back."""
    qkv = torch.randn(4, 32, 3, 2, 64)
    q, k, v = qkv.unbind(2)
    expect = [(t.clone(), t.stride(), t.storage_offset()) for t in (q, k, v)]
    ctx = offload.offload(budget=1, min_spill=1024, pinned=PINNED)
    with ctx:
        packed = [ctx._pack(t) for t in (q, k, v)]
        del qkv, q, k, v
        stats = ctx.stats()
        assert stats["timeshare.spill.hooks.deduplicated"] == 2
        assert stats["timeshare.spill.spills"] == 1
        assert stats["timeshare.spill.spilled_bytes.pinned"] == 4 * 32 * 3 * 2 * 64 * 4
        outs = [ctx._unpack(p) for p in reversed(packed)][::-1]
    for out, (want, stride, offset) in zip(outs, expect):
        assert out.stride() == stride and out.storage_offset() == offset
        assert torch.equal(out, want)
    stats = ctx.stats()  # one unit brought back once, whether its spill had completed or not
    assert (stats.get("timeshare.spill.hooks.unpacked_resident", 0) +
            stats.get("timeshare.spill.hooks.unpacked_restored", 0)) == 1
    ctx.close()


def test_saved_twice_deduplicated_and_modified_storage_is_not() -> None:
    x = torch.randn(256, 256, requires_grad=True)
    ctx = offload.offload(budget=1, min_spill=1024, pinned=PINNED)
    with ctx:
        y = x.exp()
        (y * y).sum().backward()  # mul saves y twice
    assert ctx.stats()["timeshare.spill.hooks.deduplicated"] >= 1
    assert torch.equal(x.grad, 2 * x.detach().exp() ** 2)
    t = torch.randn(512, 512)
    ctx2 = offload.offload(budget=1 << 40, min_spill=1024, pinned=PINNED)
    with ctx2:
        first = ctx2._pack(t)
        t.add_(1)  # a new version of the storage: packed again, not shared
        second = ctx2._pack(t)
        assert ctx2.stats().get("timeshare.spill.hooks.deduplicated", 0) == 0
        assert torch.equal(ctx2._unpack(second), t)
        with pytest.raises(RuntimeError, match="is at version 1; expected version 0 instead"):
            ctx2._unpack(first)  # saved before the in-place add: autograd's error
    ctx.close()
    ctx2.close()


def test_small_slice_of_large_storage_stays() -> None:
    big = torch.randn(1024, 1024)
    ctx = offload.offload(budget=1, min_spill=1024, pinned=PINNED)
    with ctx:
        assert ctx._pack(big[:16]) is not None
    stats = ctx.stats()
    assert stats["timeshare.spill.hooks.sparse_views"] == 1
    assert stats.get("timeshare.spill.spills", 0) == 0
    ctx.close()


def test_parameters_and_small_tensors_stay() -> None:
    ctx = offload.offload(budget=1, min_spill=1 << 20, pinned=PINNED)
    p = torch.nn.Parameter(torch.randn(1024, 1024))
    leaf = torch.randn(1024, 1024, requires_grad=True)
    small = torch.randn(16)
    with ctx:
        assert ctx._unpack(ctx._pack(p)) is p  # kept as they are (with their version)
        assert ctx._unpack(ctx._pack(leaf)) is leaf
        assert ctx._pack(p.t()) is not None
        assert ctx._unpack(ctx._pack(p[1:])).data_ptr() == p[1:].data_ptr()
        assert ctx._unpack(ctx._pack(small)) is small
    stats = ctx.stats()
    assert stats["timeshare.spill.hooks.parameters"] == 4
    assert stats["timeshare.spill.hooks.small"] == 1
    assert stats.get("timeshare.spill.spills", 0) == 0
    ctx.close()


def test_make_room_spills_packed_activations() -> None:
    ctx = offload.offload(budget=1 << 40, min_spill=1024, pinned=PINNED)
    ts = [torch.randn(256, 256) for _ in range(4)]
    expect = [t.clone() for t in ts]
    with ctx:
        packed = [ctx._pack(t) for t in ts]
        del ts
        assert ctx.stats()["timeshare.spill.hooks.resident_bytes"] == 4 * 256 * 256 * 4
        freed = _C.make_room(0, 2 * 256 * 256 * 4)  # what the allocator calls on a conflict
        assert freed >= 2 * 256 * 256 * 4
        stats = ctx.stats()
        assert stats["timeshare.spill.hooks.spilled_conflict"] >= 2
        outs = [ctx._unpack(p) for p in reversed(packed)]
    assert all(torch.equal(a, b) for a, b in zip(reversed(outs), expect))
    assert _C.make_room(0, 1) == 0  # unregistered on exit
    ctx.close()


def test_make_room_waits_for_another_thread_not_its_own() -> None:
    import threading
    import time

    ctx = offload.offload(budget=1 << 40, min_spill=1024, pinned=PINNED)
    ts = [torch.randn(256, 256) for _ in range(2)]
    with ctx:
        packed = [ctx._pack(t) for t in ts]
        with ctx._lock:  # an allocation inside pack/unpack: the same thread must not wait
            t0 = time.monotonic()
            assert _C.make_room(0, 1) == 0
            assert time.monotonic() - t0 < 0.5
        got: list[int] = []
        with ctx._lock:  # another thread's conflict waits until the hooks let go
            worker = threading.Thread(target=lambda: got.append(_C.make_room(0, 1)))
            worker.start()
            time.sleep(0.2)
            assert not got
        worker.join(10)
        assert got and got[0] >= 256 * 256 * 4
        assert ctx.stats()["timeshare.spill.hooks.make_room_busy"] == 1
        del packed
    ctx.close()


def test_install_global_and_stats() -> None:
    assert offload.install_global("budget:0") is None
    ctx = offload.install_global("budget:1MiB,spill:host,pinned:64MiB,min_spill:16KiB")
    try:
        assert ctx is not None
        model, data, ref, _ = _reference("cnn")
        assert _same(_train(model, data, contextlib.nullcontext()), ref)
        stats = offload.spill_stats()
        assert stats["timeshare.spill.spills"] > 0
        assert all(k.startswith("timeshare.spill.") for k in stats)
    finally:
        offload.uninstall_global()
    assert offload.spill_stats()["timeshare.spill.spills"] > 0  # retired totals remain


@pytest.mark.parametrize("kwargs,match", [
    ({"budget": 0}, "budget must be a positive size"),
    ({"budget": "lots"}, "is not a size"),
    ({"budget": "1GiB", "spill": "disk"}, "spill must be 'host' or 'host\\+ssd'"),
    ({"budget": "1GiB", "pinned": -1}, "pinned must be >= 0"),
])
def test_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(offload.OffloadError, match=match):
        offload.offload(**kwargs)
