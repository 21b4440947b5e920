"""Offload composed with the rest of PyTorch: checkpointing (both kinds, either side of the
context), torch.compile, autocast, gradient accumulation, partial and double backward, a
backward that raises, and one context per thread. Each run is bit-identical (losses and
gradients) to the same program without offload, and spills."""

from __future__ import annotations

import contextlib
import gc
import importlib
import threading
from typing import Any

import pytest

torch = pytest.importorskip("torch")
from timeshare import _C  # noqa: E402

ofl = importlib.import_module("timeshare._offload")

if not hasattr(_C, "SpillEngine"):
    pytest.skip("this build of timeshare._C has no spill engine", allow_module_level=True)

PINNED = 64 << 20
BUDGET = 40 * 1024
MIN_SPILL = 16 * 1024
STEPS = 3


@pytest.fixture(autouse=True)
def _fresh_contexts() -> Any:
    yield
    for ctx in list(ofl._contexts().values()):
        ctx.close()


def _model(seed: int = 0) -> Any:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(32, 128), torch.nn.GELU(), torch.nn.Linear(128, 128),
                               torch.nn.GELU(), torch.nn.Linear(128, 128), torch.nn.GELU(),
                               torch.nn.Linear(128, 8))


def _data(seed: int = 1, n: int = STEPS) -> list[Any]:
    torch.manual_seed(seed)
    return [torch.randn(64, 32) for _ in range(n)]


def _ctx() -> Any:
    return ofl.offload(budget=BUDGET, min_spill=MIN_SPILL, pinned=PINNED)


Result = tuple[list[Any], list[list[Any]]]


def _same(a: Result, b: Result) -> bool:
    return len(a[0]) == len(b[0]) and all(torch.equal(x, y) for x, y in zip(a[0], b[0])) and all(
        torch.equal(x, y) for sa, sb in zip(a[1], b[1]) for x, y in zip(sa, sb))


def _loop(step: Any, ctx: Any, model: Any | None = None, data: list[Any] | None = None) -> Result:
    """STEPS optimizer steps of ``step(model, x) -> loss`` (which runs backward) under ctx."""
    model = _model() if model is None else model
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    losses: list[Any] = []
    grads: list[list[Any]] = []
    with ctx:
        for x in data if data is not None else _data():
            opt.zero_grad()
            loss = step(model, x)
            losses.append(loss.detach().clone())
            grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
            opt.step()
    return losses, grads


def _check(step: Any, spills: bool = True, iterations: int = STEPS - 1) -> dict[str, int]:
    ref = _loop(step, contextlib.nullcontext())
    ctx = _ctx()
    got = _loop(step, ctx)
    stats = ctx.stats()
    assert _same(got, ref)
    if spills:
        assert stats["timeshare.spill.spills"] > 0
    assert stats["timeshare.spill.hooks.iterations"] == iterations
    ctx.close()
    return stats


@pytest.mark.parametrize("reentrant", [False, True])
def test_checkpoint_inside_offload(reentrant: bool) -> None:
    from torch.utils.checkpoint import checkpoint

    def step(model: Any, x: Any) -> Any:
        h = model[1](model[0](x))
        h = checkpoint(model[2:4], h, use_reentrant=reentrant)
        loss = model[4:](h).square().mean()
        loss.backward()
        return loss

    _check(step)


@pytest.mark.parametrize("reentrant", [False, True])
def test_offload_inside_a_checkpointed_region(reentrant: bool) -> None:
    from torch.utils.checkpoint import checkpoint

    def make(use: bool) -> Any:
        def step(model: Any, x: Any) -> Any:
            def region(h: Any) -> Any:
                with _ctx() if use else contextlib.nullcontext():
                    return model[2:6](h)

            h = checkpoint(region, model[1](model[0](x)), use_reentrant=reentrant)
            loss = model[6:](h).square().mean()
            loss.backward()
            return loss

        return step

    ref = _loop(make(False), contextlib.nullcontext())
    got = _loop(make(True), contextlib.nullcontext())
    stats = _ctx().stats()
    assert _same(got, ref)
    assert stats["timeshare.spill.hooks.packed"] > 0 and stats["timeshare.spill.spills"] > 0


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.compile's own imports
def test_torch_compile_under_offload() -> None:
    def step(model: Any, x: Any) -> Any:
        loss = model(x).square().mean()
        loss.backward()
        return loss

    torch._dynamo.reset()
    model = _model()
    compiled = torch.compile(model)
    ref = _loop(lambda m, x: step(compiled, x), contextlib.nullcontext(), model=model)
    torch._dynamo.reset()
    model = _model()
    compiled = torch.compile(model)
    ctx = _ctx()
    got = _loop(lambda m, x: step(compiled, x), ctx, model=model)
    stats = ctx.stats()
    ctx.close()
    assert _same(got, ref)
    assert stats["timeshare.spill.spills"] > 0


def test_autocast_bf16_and_gradient_accumulation() -> None:
    def step(model: Any, x: Any) -> Any:
        total = torch.zeros(())
        for micro in x.chunk(4):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = model(micro.repeat(4, 1)).float().square().mean() / 4
            loss.backward()
            total = total + loss.detach()
        return total

    stats = _check(step, iterations=4 * STEPS - 1)  # one per micro-batch forward + backward
    assert stats["timeshare.spill.hooks.spilled_planned"] > 0


def test_grad_of_a_subset_double_backward_and_no_leak() -> None:
    def step(model: Any, x: Any) -> Any:
        loss = model(x).square().mean()
        first = list(model[4:].parameters())
        g = torch.autograd.grad(loss, first, create_graph=True)  # part of the graph, kept
        (loss + sum(gi.square().sum() for gi in g)).backward()
        return loss

    def partial(model: Any, x: Any) -> Any:
        loss = model(x).square().mean()
        g = torch.autograd.grad(loss, list(model[6].parameters()))  # the rest never unpacked
        for p, gi in zip(model[6].parameters(), g):
            p.grad = gi
        return loss

    _check(step)
    stats = _check(partial)
    assert stats["timeshare.spill.entries"] == 0  # the never-unpacked spills were released
    assert stats["timeshare.spill.current_bytes.pinned"] == 0


class _Boom(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Any) -> Any:
        return x.clone()

    @staticmethod
    def backward(ctx: Any, g: Any) -> Any:
        raise RuntimeError("boom in backward")


def test_backward_that_raises_returns_everything() -> None:
    model = _model()
    ctx = ofl.offload(budget=BUDGET, min_spill=MIN_SPILL, pinned=PINNED, prefetch=1 << 30)
    for x in _data():
        with ctx:
            h = model[:3](x)
            h = _Boom.apply(h)
            loss = model[3:](h).square().mean()
        with pytest.raises(RuntimeError, match="boom in backward"):
            loss.backward()
        del h, loss
    gc.collect()
    stats = ctx.stats()
    assert stats["timeshare.spill.spills"] > 0 and stats["timeshare.spill.hooks.prefetches"] > 0
    assert stats["timeshare.spill.entries"] == 0
    assert stats["timeshare.spill.current_bytes.pinned"] == 0
    assert stats["timeshare.spill.hooks.resident_bytes"] == 0
    assert ctx._pending_bytes == 0 and not ctx._pending and not ctx._by_handle
    ctx.close()


def test_threads_each_with_its_own_context() -> None:
    def step(model: Any, x: Any) -> Any:
        loss = model(x).square().mean()
        loss.backward()
        return loss

    import copy

    models = [_model(i) for i in range(3)]  # the RNG is global: seed outside the threads
    data = [_data(10 + i) for i in range(3)]
    refs = [_loop(step, contextlib.nullcontext(), copy.deepcopy(models[i]), data[i])
            for i in range(3)]
    got: dict[int, Result] = {}
    stats: dict[int, dict[str, int]] = {}
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            ctx = _ctx()  # same arguments, another thread: its own context
            got[i] = _loop(step, ctx, models[i], data[i])
            stats[i] = ctx.stats()
            ctx.close()
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    for i in range(3):
        assert _same(got[i], refs[i]), i
        assert stats[i]["timeshare.spill.spills"] > 0
        assert stats[i]["timeshare.spill.hooks.iterations"] == STEPS - 1
