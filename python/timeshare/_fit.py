"""Fit a model under a memory budget: keep, spill or recompute each saved activation.

``model = timeshare.fit(model, budget="20GiB")`` finds the model's repeated blocks by structure
(children of one module sharing a class: transformer layers, residual stages), and from then on
every forward of ``model`` runs under ``timeshare.offload`` with the same budget, and each block
either runs as written (its saved tensors kept or spilled by the offload hooks) or under
non-reentrant ``torch.utils.checkpoint`` with a selective policy
(``create_selective_checkpoint_contexts``) that recomputes its pointwise ops, everything but its
matmuls / convolutions / attention, or everything. Recomputation is PyTorch's: checkpoint
restores the RNG state, so dropout draws the same masks again; every random op of a
checkpointed block is recomputed (none is replayed from a cache, which would shift the RNG
stream of the ones after it); outputs written in place later in the block are recomputed too;
and the block's buffers (batch-norm running statistics, ``num_batches_tracked``) are put back
after its recomputation, so they are updated once per step, as without it. A backward that
keeps the graph recomputes blocks whole (a second backward then finds the selective cache
intact; see ``_Recompute``), and blocks that write their own input in place are never
checkpointed (``_fit_profile``).

Plan: a step (an iteration) begins at the first forward of ``model`` after a backward, so the
forwards of micro-batches run before one backward are one step. The first step runs every
block as written (offload reactive, as today) while a
profiler records each forward op (block, kind, time, bytes), each saved tensor (bytes, pack
and unpack time, producing op) and the rest of the step's memory: the forward's temporaries,
each block's own peak, and through hooks on the backward's nodes the gradients alive and when
each node ends (a saved tensor lives until the node that unpacked it has run). The planner
(``timeshare._step_plan.choose``, the same code the benchmark runs) then picks per block the
level with the shortest modelled step whose whole-step peak (restores and recomputations in
flight, gradients, temporaries) holds the budget, given the link bandwidth and the copies the
offload hooks will plan. Where none does, it warns and runs the plan with the lowest peak
(``timeshare.recompute.budget_held`` 0). When the measured step drifts from the modelled one
by more than ``drift`` for two iterations in a row, the next iteration is profiled again and
the plan remade.

The budget is the whole step's: on CUDA device memory (``torch.cuda.memory_allocated``, as for
offload: parameters, gradients and optimizer state included); on CPU tensors the bytes of the
storages the step's own ops make. The offload hooks measure, on CPU tensors, what they hold
plus what the checkpointed blocks hold (policy caches, what a recomputation rebuilds, saved
tensors backward has unpacked).
"""

from __future__ import annotations

import functools
import logging
import time
import types
import weakref
from collections import Counter
from typing import Any

from timeshare import _step_plan
from timeshare._fit_profile import (
    Recorder,
    _classify,
    _tensors,
    _wall_clock,
    find_blocks,
    profile_step,
)
from timeshare._offload import OffloadError, _bytes, offload
from timeshare._offload_saved import _SavedView

__all__ = ["Fit", "find_blocks", "fit", "profile_step", "recompute_stats"]

DEFAULT_LINK_BPS = 25e9  # PCIe 4 x16 as reached by pinned copies
DRIFT = 0.25
# Iterations between two profiles made because the step drifted (noise must not re-plan often).
MIN_ITERATIONS_BETWEEN_PROFILES = 8


class _Meter:
    """Bytes of storages the checkpointed blocks hold (policy caches, what their recomputation
    rebuilds) and of the saved tensors backward has unpacked and still holds, by weak reference
    to each storage: what the offload hooks cannot see on CPU tensors (their inputs the
    checkpoint saves through the hooks, which count them)."""

    def __init__(self) -> None:
        self._refs: dict[int, tuple[Any, int]] = {}

    def add(self, t: Any) -> None:
        from torch.multiprocessing.reductions import StorageWeakRef

        s = t.untyped_storage()
        k = int(s._cdata)
        if k not in self._refs and s.nbytes():
            self._refs[k] = (StorageWeakRef(s), s.nbytes())

    def add_new(self, out: Any, args: Any) -> None:
        """The storages an op made (not those of its arguments: views, in-place results)."""
        old = {int(t.untyped_storage()._cdata) for t in _tensors(args)}
        for t in _tensors(out):
            if int(t.untyped_storage()._cdata) not in old:
                self.add(t)

    def mode(self) -> Any:
        """A dispatch mode that adds every storage an op makes (a recomputation's)."""
        from torch.utils._python_dispatch import TorchDispatchMode

        meter = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func: Any, types: Any, args: Any = (),
                                   kwargs: Any = None) -> Any:
                out = func(*args, **(kwargs or {}))
                meter.add_new(out, (args, kwargs))
                return out

        return _Mode()

    def live(self, besides: Any = ()) -> int:
        """Bytes alive, but for the storages in ``besides`` (counted elsewhere)."""
        dead = [k for k, (r, _n) in self._refs.items() if r.expired()]
        for k in dead:
            del self._refs[k]
        return sum(n for k, (_r, n) in self._refs.items() if k not in besides)


class _Recompute:
    """The recomputation context of a checkpointed block: the policy's cached-ops mode, the
    block's buffers put back afterwards (updated once per step), and its time measured.

    A backward that keeps its graph (``retain_graph=True``, ``create_graph=True``: a second
    backward may come through the block again) recomputes the whole block, as full
    checkpointing does, and leaves the cache alone: selective checkpointing hands each cached
    output out once ("Trying to backward an extra time"), and hands it out detached, which
    would cut the graph a ``create_graph`` backward builds through it. The backward that frees
    the graph takes the cache as usual."""

    def __init__(self, owner: Fit, block: Any, inner: Any) -> None:
        self.owner, self.block, self.inner = owner, block, inner
        self.cached = False

    def __enter__(self) -> _Recompute:
        self.t0 = time.perf_counter_ns()
        self.saved = [(b, b.detach().clone()) for b in self.block.buffers()]
        self.cached = not _keeps_graph()
        self.metering = self.owner._meter.mode()
        self.metering.__enter__()
        if self.cached:
            self.inner.__enter__()
        else:
            self.owner._counters["recomputations_whole"] += 1
        return self

    def __exit__(self, *exc: Any) -> None:
        import torch

        if self.cached:
            self.inner.__exit__(*exc)
        self.metering.__exit__(*exc)
        with torch.no_grad():
            for b, v in self.saved:
                with torch.autograd._unsafe_preserve_version_counter(b):
                    b.copy_(v)
        self.saved = []
        self.owner._counters["recompute_ns"] += time.perf_counter_ns() - self.t0
        self.owner._counters["recomputations"] += 1


def _keeps_graph() -> bool:
    """Whether the backward running keeps its graph (another may come through it); assumed
    where torch cannot tell."""
    import torch

    get = getattr(torch._C._autograd, "_get_current_graph_task_keep_graph", None)
    try:
        return True if get is None else bool(get())
    except RuntimeError:  # no backward running (an unpack outside any)
        return True


class Fit:
    """What ``timeshare.fit`` installs on a model: see the module's docstring."""

    def __init__(self, model: Any, budget: int | str, spill: str = "host",
                 link: float | str | None = None, pinned: int | str | None = None,
                 prefetch: int | str | None = None, min_spill: int | str | None = None,
                 spill_dir: str | None = None, drift: float = DRIFT,
                 recompute: str = "auto") -> None:
        self.budget = _bytes("budget", budget, 0)
        if self.budget <= 0:
            raise OffloadError("timeshare.fit: budget must be a positive size (e.g. '20GiB')")
        if recompute != "auto" and recompute not in _step_plan.LEVELS:
            raise OffloadError(f"timeshare.fit: recompute must be 'auto' or one of "
                               f"{', '.join(_step_plan.LEVELS)}, not {recompute!r}")
        self.recompute = recompute
        self.link_bps = _link(link)
        self.drift = float(drift)
        if prefetch is None:  # the look-ahead the planner models: a share of the budget
            prefetch = max(1, int(_step_plan.PREFETCH_SHARE * self.budget))
        self._ctx_args = dict(budget=self.budget, spill=spill, spill_dir=spill_dir,
                              pinned=pinned, prefetch=prefetch, min_spill=min_spill)
        from timeshare import _C

        self._min_spill = _bytes("min_spill", min_spill, int(_C.parse_conf("")["min_spill"]))
        self.blocks = find_blocks(model)
        self.levels = [0] * len(self.blocks)  # the first iteration is profiled as written
        self._meter = _Meter()
        self._ctx: Any = None
        self._recorder: Recorder | None = None
        self._profile_next = True
        self._depth = 0
        self._stack: list[Any] = []
        self._counters: Counter[str] = Counter()
        self._choice: dict[str, Any] | None = None
        self._profile: dict[str, Any] | None = None
        self._base = 0
        self._step_start = 0.0
        self._last_unpack = 0.0
        self._drifted = 0
        self._since_profile = 0
        self.iterations = 0
        for i, (_name, m) in enumerate(self.blocks):
            m.forward = types.MethodType(functools.partial(_block_forward, self, i, m.forward), m)
        self._handles = [model.register_forward_pre_hook(self._pre),
                         model.register_forward_hook(self._post, always_call=True)]
        _FITS.add(self)

    # ---- iterations ---------------------------------------------------------------------------
    def _pre(self, _module: Any, args: Any) -> None:
        import torch

        self._depth += 1
        if self._depth > 1 or not torch.is_grad_enabled():
            return
        dev = next((t.device for t in _tensors(args)), torch.device("cpu"))
        if self._ctx is None:
            self._ctx = self._new_context(dev)
        elif self._backward_seen():  # else several forwards before their backwards: one step
            self._finish_iteration()
            self._start_iteration(dev)
        if self._recorder is None and self._profile_next:
            self._start_iteration(dev)
        stack = [self._ctx]
        if self._recorder is not None:
            hooks = torch.autograd.graph.saved_tensors_hooks(self._recorder.pack,
                                                            self._recorder.unpack)
            stack += [hooks, self._recorder.mode]
        else:
            stack.append(torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack))
        for c in stack:
            c.__enter__()
        self._stack = stack

    def _new_context(self, dev: Any) -> offload:
        """This model's own offload context, on every device type: never one another
        ``offload(...)`` call returns (two fitted models with the same arguments, a GAN's
        generator and discriminator, keep two histories and two budgets)."""
        mem = None if dev.type == "cuda" else self._cpu_bytes
        return offload(memory_fn=mem, shared=False, **self._ctx_args)

    def _backward_seen(self) -> bool:
        """Whether a backward unpacked this step's tensors since the step began."""
        rec = self._recorder
        if rec is not None:
            return rec.last_unpack > rec.start
        return self._last_unpack > self._step_start

    def _start_iteration(self, dev: Any) -> None:
        import torch

        self._step_start = time.perf_counter()
        self._last_unpack = self._step_start
        if self._profile_next:
            self.levels = [0] * len(self.blocks)
            self._base = int(torch.cuda.memory_allocated(dev)) if dev.type == "cuda" else 0
            self._recorder = Recorder(_wall_clock(dev), self._min_spill, self._ctx,
                                      whole_step=True)

    def _post(self, _module: Any, _args: Any, out: Any) -> None:
        self._depth -= 1
        if self._depth > 0 or not self._stack:
            return
        if self._recorder is not None:
            self._recorder.watch(out)
        for c in reversed(self._stack):
            c.__exit__(None, None, None)
        self._stack = []

    def _pack(self, t: Any) -> Any:
        return self._ctx._pack(t)

    def _unpack(self, saved: Any) -> Any:
        self._last_unpack = time.perf_counter()
        out = self._ctx._unpack(saved)
        if isinstance(saved, _SavedView):  # an activation (no parameter, nothing small)
            self._meter.add(out)  # held by backward until its node has run
        return out

    def _finish_iteration(self) -> None:
        """At the next forward: plan from a profile just taken, or check the step for drift."""
        self._meter.live()  # drops the storages gone (on CUDA nothing else reads the meter)
        rec = self._recorder
        if rec is None and self._choice is None:
            return
        self.iterations += 1
        self._since_profile += 1
        if rec is not None:
            self._recorder = None
            self._profile_next = False
            prof = self._profile = rec.profile(len(self.blocks), self._base)
            budget = self.budget
            if self.recompute == "auto":
                self._choice = _step_plan.choose(prof, budget, self.link_bps)
            else:
                fixed = [_step_plan.LEVELS.index(self.recompute)] * len(self.blocks)
                self._choice = _step_plan.evaluate(prof, fixed, self.link_bps, budget, True)
            self.levels = list(self._choice["levels"])
            if not _step_plan._fits(self._choice, budget):
                logging.getLogger("timeshare").warning(
                    "timeshare.fit: no plan holds the budget (%d bytes) over the whole step at "
                    "a %.3g B/s link; running the one with the lowest modelled peak (%d bytes)",
                    budget, self.link_bps, int(self._choice["peak"]))
            # the offload hooks plan their spills against the target the planner found holds
            # the budget (below it where restores in flight or recomputations add to the peak)
            self._ctx.budget = max(1, min(budget, int(self._choice["spill_budget"])))
            # the hooks' history is the profiled step's, as written: the next step starts anew
            self._ctx._cur = {}
            self._counters["plans"] += 1
            self._since_profile = 0
            self._drifted = 0
            return
        measured = self._last_unpack - self._step_start
        predicted = self._choice["time"] if self._choice else 0.0
        if predicted > 0 and abs(measured - predicted) > self.drift * predicted:
            self._drifted += 1
        else:
            self._drifted = 0
        self._counters["last_step_ns"] = int(measured * 1e9)
        if (self.recompute == "auto" and self._drifted >= 2
                and self._since_profile >= MIN_ITERATIONS_BETWEEN_PROFILES):
            self._profile_next = True
            self._counters["replans"] += 1

    def _cpu_bytes(self) -> int:
        """Device bytes for the offload hooks on CPU tensors: theirs plus the blocks'."""
        ctx = self._ctx
        held = {k for k, u in ctx._units.items() if u.tensor is not None}  # the hooks' own
        return ctx._resident_bytes + ctx._pending_bytes + self._meter.live(held)

    # ---- checkpointing -------------------------------------------------------------------------
    def _contexts(self, i: int, level: int) -> tuple[Any, Any]:
        from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

        ops = [op for op in self._profile["ops"] if op["block"] == i] if self._profile else None
        counter = [0]
        meter = self._meter

        def policy(ctx: Any, func: Any, *args: Any, **kwargs: Any) -> Any:
            kind, random, view = _classify(func)
            if view:
                return CheckpointPolicy.PREFER_RECOMPUTE
            n = counter[0]
            counter[0] += 1
            prof = ops[n] if ops is not None and n < len(ops) else None
            if prof is None or prof["name"] != str(func):
                prof = {"kind": kind, "forced": True}  # not the profiled sequence: recompute
            if _step_plan.recomputed({"kind": kind, "forced": prof["forced"] or random}, level):
                return CheckpointPolicy.PREFER_RECOMPUTE
            meter.add_new(ctx.op_output, (args, kwargs))
            return CheckpointPolicy.MUST_SAVE

        fwd, rec = create_selective_checkpoint_contexts(policy)
        return fwd, _Recompute(self, self.blocks[i][1], rec)

    # ---- statistics ----------------------------------------------------------------------------
    def stats(self) -> dict[str, int]:
        """``timeshare.spill.*`` figures of the offload context and ``timeshare.recompute.*``."""
        out: dict[str, int] = dict(self._ctx.stats()) if self._ctx is not None else {}
        out.update(self.recompute_stats())
        return out

    def recompute_stats(self) -> dict[str, int]:
        p = "timeshare.recompute."
        out = {p + "blocks": len(self.blocks), p + "iterations": self.iterations,
               p + "budget_held": int(bool(self._choice and _step_plan._fits(self._choice,
                                                                          self.budget))),
               p + "blocks_checkpointed": sum(1 for lv in self.levels if lv > 0),
               p + "blocks_in_place": len((self._profile or {}).get("in_place", ()))}
        for lvl, name in enumerate(_step_plan.LEVELS[1:], 1):
            out[p + f"blocks_{name}"] = sum(1 for lv in self.levels if lv == lvl)
        c = self._choice or {}
        for k in ("kept", "spilled", "recomputed"):
            out[p + f"bytes_{k}"] = int(c.get(f"{k}_bytes", 0))
        out[p + "predicted_step_ns"] = int(c.get("time", 0.0) * 1e9)
        out[p + "predicted_recompute_ns"] = int(c.get("recompute_s", 0.0) * 1e9)
        out[p + "predicted_peak_bytes"] = int(c.get("peak", 0))
        for k in ("plans", "replans", "recompute_ns", "recomputations", "recomputations_whole",
                  "last_step_ns"):
            out[p + k] = int(self._counters.get(k, 0))
        return out


def _block_forward(owner: Fit, i: int, orig: Any, _self: Any, *args: Any, **kwargs: Any) -> Any:
    import torch

    rec = owner._recorder
    level = owner.levels[i] if owner._stack else 0
    if level == 0 or not torch.is_grad_enabled():
        if rec is None or not owner._stack:
            return orig(*args, **kwargs)
        prev = rec.enter_block(i, (args, kwargs))
        try:
            return orig(*args, **kwargs)
        finally:
            rec.leave_block(i, prev)
    # the checkpoint saves its inputs through the hooks (counted there, as any saved tensor)
    return torch.utils.checkpoint.checkpoint(
        orig, *args, use_reentrant=False,
        context_fn=functools.partial(owner._contexts, i, level), **_legacy_sac_kwargs(),
        **kwargs)


@functools.lru_cache(maxsize=1)
def _legacy_sac_kwargs() -> dict[str, bool]:
    """torch >= 2.14 can route what selective checkpointing caches through the saved-tensor
    hooks around it (``respect_saved_tensors_hooks``; it warns when not told, and the default
    will flip). The planner models the cache as held on the device, not spilled: say so."""
    import inspect

    import torch

    params = inspect.signature(torch.utils.checkpoint.checkpoint).parameters
    return {"respect_saved_tensors_hooks": False} if "respect_saved_tensors_hooks" in params \
        else {}


def _link(link: float | str | None) -> float:
    if link is None:
        return DEFAULT_LINK_BPS
    if isinstance(link, (int, float)) and not isinstance(link, bool) and link > 0:
        return float(link)
    if isinstance(link, str) and link.endswith("/s"):
        return float(_bytes("link", link[:-2], 0)) or _bad_link(link)
    return _bad_link(link)


def _bad_link(link: Any) -> float:
    raise OffloadError(f"timeshare.fit: link={link!r} is not a bandwidth (e.g. 50GB/s or 5e10)")


_FITS: weakref.WeakSet[Fit] = weakref.WeakSet()


def fit(model: Any, budget: int | str | None = None, **kwargs: Any) -> Any:
    """Fit ``model``'s training step under ``budget`` (device bytes; default: TIMESHARE_CONF's
    ``budget``): each saved activation is kept, spilled to host memory (``timeshare.offload``)
    or recomputed (``torch.utils.checkpoint`` with a selective policy on the model's repeated
    blocks), whichever the planner finds cheapest. Returns ``model`` itself (its state dict is
    unchanged); ``model.timeshare_fit`` is the :class:`Fit` (``.stats()``, ``.levels``).

    Keyword arguments: ``spill`` ("host" or "host+ssd"), ``spill_dir``, ``pinned``,
    ``prefetch`` (default: 5% of the budget), ``min_spill`` (as for offload); ``link`` (host
    link bandwidth, bytes/s or "50GB/s"; default 25GB/s); ``drift`` (re-plan when the step
    strays this share from the modelled one; default 0.25); ``recompute`` ("auto": planned;
    "none", "pointwise", "cheap" or "full": that level for every block, no planning)."""
    import os

    if getattr(model, "timeshare_fit", None) is not None:
        raise OffloadError("timeshare.fit: this model is fitted already (model.timeshare_fit)")
    if budget is None:
        from timeshare import _C

        budget = int(_C.parse_conf(os.environ.get("TIMESHARE_CONF", ""))["budget"])
        if budget <= 0:
            raise OffloadError("timeshare.fit: no budget given and none in TIMESHARE_CONF "
                               "(e.g. TIMESHARE_CONF=budget:20GiB)")
    f = Fit(model, budget, **kwargs)
    model.timeshare_fit = f
    return model


def recompute_stats() -> dict[str, int]:
    """``timeshare.recompute.*`` figures summed over every fitted model alive."""
    total: Counter[str] = Counter()
    for f in list(_FITS):
        total.update(f.recompute_stats())
    return dict(sorted(total.items()))
