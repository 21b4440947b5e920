"""The profile of one step, the planner's input (``timeshare._step_plan``): the repeated blocks
of a model found by structure, and a ``Recorder`` (a dispatch mode for the forward ops and
saved-tensor hooks for the saved storages) that ``timeshare.fit`` runs in its profiled step and
``scripts/bench_spill.py`` runs on a modelled clock (``profile_step``). It also notes the blocks
that write their own input in place (``in_place``): checkpointing one would recompute it from an
input its forward overwrote, so the planner never checkpoints them."""

from __future__ import annotations

import functools
import time
import weakref
from collections import Counter
from typing import Any

from timeshare._offload import offload

__all__ = ["Recorder", "find_blocks", "profile_step"]

_COMPUTE_NAMES = ("attention", "conv", "mm", "linear")


def find_blocks(model: Any) -> list[tuple[str, Any]]:
    """Repeated blocks, outermost first: the children of a module that share their class with
    another child of it and have submodules and parameters of their own. Blocks are not
    searched inside."""
    out: list[tuple[str, Any]] = []

    def walk(m: Any, prefix: str) -> None:
        children = list(m.named_children())
        counts = Counter(type(c) for _n, c in children
                         if next(c.children(), None) is not None
                         and next(c.parameters(), None) is not None)
        for name, c in children:
            if counts.get(type(c), 0) >= 2 and next(c.children(), None) is not None \
                    and next(c.parameters(), None) is not None:
                out.append((prefix + name, c))
            else:
                walk(c, prefix + name + ".")

    walk(model, "")
    return out


@functools.cache
def _classify(func: Any) -> tuple[str, bool, bool]:
    """(kind, random, view) of an aten op."""
    import torch
    from torch.utils.flop_counter import flop_registry

    returns = func._schema.returns
    view = bool(returns) and all(r.alias_info is not None and not r.alias_info.is_write
                                 for r in returns)
    tags = getattr(func, "tags", ())
    random = torch.Tag.nondeterministic_seeded in tags
    name = func._overloadpacket.__name__ if hasattr(func, "_overloadpacket") else str(func)
    if func._overloadpacket in flop_registry or any(k in name for k in _COMPUTE_NAMES):
        kind = "compute"
    elif torch.Tag.pointwise in tags:
        kind = "pointwise"
    else:
        kind = "other"
    return kind, random, view


def _in_backward() -> bool:
    import torch

    get = getattr(torch._C, "_current_graph_task_id", None)
    return get is not None and int(get()) != -1


def profile_step(model: Any, run: Any, clock: Any, min_spill: int, base: int) -> dict[str, Any]:
    """The planner's profile of one step, ``run()`` (a forward and backward of ``model``),
    recorded with ``clock`` (seconds; the benchmark's modelled GPU clock), the saved tensors held
    as they are (no offload): what ``Fit`` records in its first iteration."""
    import torch

    blocks = find_blocks(model)
    rec = Recorder(clock, min_spill)
    handles = []
    for i, (_n, m) in enumerate(blocks):
        prev: list[int] = []
        handles.append(m.register_forward_pre_hook(
            lambda _m, a, i=i, prev=prev: prev.append(rec.enter_block(i, a))))
        handles.append(m.register_forward_hook(
            lambda _m, _a, _o, i=i, prev=prev: rec.leave_block(i, prev.pop()), always_call=True))
    try:
        with rec.mode, torch.autograd.graph.saved_tensors_hooks(rec.pack, rec.unpack):
            run()
    finally:
        for h in handles:
            h.remove()
    prof = rec.profile(len(blocks), base)
    prof["step"] = clock() - rec.start
    prof["names"] = [n for n, _m in blocks]
    return prof


def _storage_key(t: Any) -> int:
    return int(t.untyped_storage()._cdata)


def _tensors(x: Any) -> list[Any]:
    import torch

    return [t for t in torch.utils._pytree.tree_leaves(x) if isinstance(t, torch.Tensor)]


def _written(func: Any, args: Any, kwargs: Any) -> list[Any]:
    """The tensors an aten op writes in place (its arguments marked ``(a!)``)."""
    out = []
    for n, a in enumerate(func._schema.arguments):
        if a.alias_info is not None and a.alias_info.is_write:
            v = args[n] if n < len(args) else kwargs.get(a.name)
            out += _tensors(v)
    return out


class _Rule:
    """offload's eligibility rule without a context (its counters go nowhere)."""

    def __init__(self, min_spill: int) -> None:
        self.min_spill = min_spill
        self._counters: Counter[str] = Counter()

    def eligible(self, t: Any) -> bool:
        return offload._eligible(self, t)  # type: ignore[arg-type]


class Recorder:
    """One iteration's profile (the planner's input): a dispatch mode for the forward ops and
    saved-tensor hooks for the saved storages. ``clock()`` gives seconds (wall time, or a
    modelled GPU clock in the benchmark); ``block`` is the index of the block running (set by
    the block wrappers); ``delegate``: the offload context whose hooks hold the tensors (None:
    the tensor itself is held)."""

    def __init__(self, clock: Any, min_spill: int, delegate: Any = None,
                 whole_step: bool = False) -> None:
        from torch.utils._python_dispatch import TorchDispatchMode

        rec = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func: Any, types: Any, args: Any = (),
                                   kwargs: Any = None) -> Any:
                return rec._op(func, args, kwargs or {})

        self.mode = _Mode()
        self.clock = clock
        self.rule = _Rule(min_spill)
        self.delegate = delegate
        self.whole_step = whole_step
        self.block = -1
        self._inputs: set[int] = set()  # storages of the running block's inputs
        self.in_place: set[int] = set()  # blocks that wrote one of their inputs in place
        self._in_hook = False  # ops of the offload hooks themselves are not the model's
        self.spans: dict[int, list[float]] = {}
        self.ops: list[dict[str, Any]] = []
        self.units: list[dict[str, Any]] = []
        self._producer: dict[int, int] = {}  # storage -> index of the op that made it
        self._seen: dict[int, tuple[Any, int, int]] = {}  # storage -> (weakref, version, unit)
        # storages the forward made and that are alive: key -> [weak ref, bytes, op, saved]
        self._alive: dict[int, list[Any]] = {}
        # storages never saved, with their lifetime: (op that made them, bytes, death, -1: alive)
        self._temps: list[tuple[int, int, float]] = []
        self.block_peak: dict[int, int] = {}  # per block: most bytes its own storages held
        # gradients alive in backward, through hooks on the graph's nodes (``watch``)
        self._hooked: set[int] = set()
        self._grad_refs: dict[int, tuple[Any, int]] = {}
        self._grad_curve: list[tuple[float, int]] = []
        self._ends: list[float] = []  # when each node of the backward ended
        self.start = clock()
        self.last_unpack = self.start

    # ---- ops -----------------------------------------------------------------------------
    def _op(self, func: Any, args: Any, kwargs: Any) -> Any:
        kind, random, view = _classify(func)
        if view or self._in_hook or _in_backward():
            return func(*args, **kwargs)
        t0 = self.clock()
        out = func(*args, **kwargs)
        dt = self.clock() - t0
        ins = {_storage_key(t) for t in _tensors((args, kwargs))}
        new: dict[int, int] = {}
        for t in _tensors(out):
            k = _storage_key(t)
            if k not in ins:
                new[k] = t.untyped_storage().nbytes()
        idx = len(self.ops)
        self.ops.append({"block": self.block, "kind": kind, "t": t0 - self.start, "dt": dt,
                         "bytes": sum(new.values()), "forced": random,
                         "name": str(func)})
        if self.whole_step:
            self._track(out, new, idx, t0 - self.start)
        if func._schema.is_mutable:  # a tensor written in place: its producer must rerun
            for t in _written(func, args, kwargs):
                k = _storage_key(t)
                p = self._producer.get(k)
                if p is not None and self.ops[p]["block"] == self.block:
                    self.ops[p]["forced"] = True
                if k in self._inputs:
                    self.in_place.add(self.block)
        for k in new:
            self._producer[k] = idx
        return out

    def _track(self, out: Any, new: dict[int, int], idx: int, now: float) -> None:
        """Lifetimes of the forward's storages: those never saved are the forward's
        temporaries; per block, the most bytes of its own storages alive at once (what its
        recomputation holds at its peak)."""
        from torch.multiprocessing.reductions import StorageWeakRef

        for k in [k for k, e in self._alive.items() if e[0].expired()]:
            _ref, nbytes, op, saved = self._alive.pop(k)
            if not saved:
                self._temps.append((op, nbytes, now))
        for t in _tensors(out):
            k = _storage_key(t)
            if k in new and k not in self._alive:
                self._alive[k] = [StorageWeakRef(t.untyped_storage()), new[k], idx, False]
        b = self.block
        if b >= 0:
            held = sum(e[1] for e in self._alive.values() if self.ops[e[2]]["block"] == b)
            self.block_peak[b] = max(self.block_peak.get(b, 0), held)

    # ---- saved tensors ---------------------------------------------------------------------
    def pack(self, t: Any) -> Any:
        import torch

        self._in_hook = True
        try:
            held = self.delegate._pack(t) if self.delegate is not None else t
        finally:
            self._in_hook = False
        if isinstance(t, torch.nn.Parameter) or isinstance(t._base, torch.nn.Parameter):
            return (-1, held)
        key = _storage_key(t)
        alive = self._alive.get(key)
        if alive is not None:
            alive[3] = True
        prev = self._seen.get(key)
        if prev is not None and prev[0]() is not None and prev[1] == t._version:
            return (prev[2], held)  # another view of a storage already recorded: one unit
        spill = self.rule.eligible(t)
        nbytes = t.untyped_storage().nbytes() if spill else t.numel() * t.element_size()
        self.units.append({"bytes": nbytes, "spill": int(spill), "pack": self.clock() - self.start,
                           "unpack": -1.0, "op": self._producer.get(key, -1),
                           "block": self.block})
        self._seen[key] = (weakref.ref(t), t._version, len(self.units) - 1)
        return (len(self.units) - 1, held)

    def unpack(self, saved: Any) -> Any:
        i, held = saved
        now = self.clock()
        self.last_unpack = max(self.last_unpack, now)
        if i >= 0 and self.units[i]["unpack"] < 0:
            self.units[i]["unpack"] = now - self.start
        if self.whole_step:
            self._grads_now(now - self.start)
        if self.delegate is None:
            return held
        self._in_hook = True
        try:
            return self.delegate._unpack(held)
        finally:
            self._in_hook = False

    def watch(self, outputs: Any) -> None:
        """Hooks on every node of the graph behind ``outputs`` (the model's forward): the
        gradients its backward makes, while they live, are the step's gradient curve."""
        todo = [t.grad_fn for t in _tensors(outputs) if t.grad_fn is not None]
        for fn in todo:
            fn.register_prehook(lambda grads: self._grad_hook(grads, ()))
        while todo:
            fn = todo.pop()
            if fn is None or id(fn) in self._hooked:
                continue
            self._hooked.add(id(fn))
            fn.register_hook(self._grad_hook)
            todo.extend(f for f, _i in fn.next_functions)

    def _grad_hook(self, grad_inputs: Any, _grad_outputs: Any) -> None:
        from torch.multiprocessing.reductions import StorageWeakRef

        for g in _tensors(grad_inputs):
            s = g.untyped_storage()
            if s.nbytes() and int(s._cdata) not in self._grad_refs:
                self._grad_refs[int(s._cdata)] = (StorageWeakRef(s), s.nbytes())
        now = self.clock() - self.start
        self._ends.append(now)
        self._grads_now(now)

    def _grads_now(self, now: float) -> None:
        """The bytes of gradients alive now (at a node's end or an unpack): the step's
        gradient curve, measured."""
        refs = self._grad_refs
        for k in [k for k, (r, _n) in refs.items() if r.expired()]:
            del refs[k]
        self._grad_curve.append((now, sum(n for _r, n in refs.values())))

    def enter_block(self, i: int, inputs: Any = ()) -> tuple[int, set[int]]:
        """Block ``i`` starts, called with ``inputs`` (its arguments); returns what
        ``leave_block`` puts back."""
        prev = (self.block, self._inputs)
        self.block = i
        self._inputs = {_storage_key(t) for t in _tensors(inputs)}
        self.spans.setdefault(i, [self.clock() - self.start, 0.0])
        return prev

    def leave_block(self, i: int, prev: tuple[int, set[int]]) -> None:
        self.spans[i][1] = self.clock() - self.start
        self.block, self._inputs = prev

    def profile(self, nblocks: int, base: int) -> dict[str, Any]:
        spans = [tuple(self.spans.get(b, (0.0, 0.0))) for b in range(nblocks)]
        out = {"ops": self.ops, "units": self.units, "blocks": spans, "base": base,
               "step": max(self.last_unpack - self.start, 1e-9),
               "in_place": sorted(b for b in self.in_place if 0 <= b < nblocks)}
        if self.whole_step:
            temps = self._temps + [(e[2], e[1], -1.0) for e in self._alive.values() if not e[3]]
            curve = self._grad_curve
            out.update(whole_step=True, ends=sorted(self._ends),
                       grads=[{"bytes": n, "from": t0, "to": t1}
                              for (t0, n), (t1, _m) in zip(curve, curve[1:]) if n],
                       temps=[{"op": o, "bytes": n, "free": f} for o, n, f in temps if n],
                       block_peak=[self.block_peak.get(b, 0) for b in range(nblocks)])
        return out


def _wall_clock(dev: Any) -> Any:
    if dev.type == "cuda":
        import torch

        def clock() -> float:
            torch.cuda.synchronize(dev)
            return time.perf_counter()
        return clock
    return time.perf_counter
