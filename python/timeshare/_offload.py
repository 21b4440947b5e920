"""Activation offload under a memory budget: asynchronous, selective, prefetching.

``with timeshare.offload(budget="20GiB"):`` installs ``torch.autograd.graph.saved_tensors_hooks``
that decide, at every pack, whether a saved activation stays on the device or is spilled to
pinned host memory (and on to SSD with ``spill="host+ssd"``) by timeshare's spill engine, and
restore it at unpack, ahead of need where the previous iterations predict the order.

The decision at pack uses two things learned per pack position (the n-th saved tensor of an
iteration) from the previous iteration: the time from pack to unpack, and the bytes that will
be packed next. With that history the hooks replay a furthest-need-first plan: the positions
that the previous iteration would have had to evict to stay under the budget are spilled at
their pack, the earliest possible moment, so the copies overlap compute. Without history (the
first iteration, or when the sequence changed) they act reactively: when the projected device
memory (live bytes plus this tensor) would pass the budget, the resident packed tensors needed
furthest in the future are spilled first. Never spilled: parameters (``nn.Parameter``, or leaves
that require grad), views of them, tensors whose storage is smaller than ``min_spill``, small
slices of much larger storages, and layouts that are not plain strided memory (sparse,
quantized, conjugate or negative views). What moves is a whole storage: several saved views of
one buffer (q, k and v of one projection) or one tensor saved twice are one spill and one
restore, and every view comes back with its own shape, strides and offset.

Data moves only through pack and unpack: the hooks own the saved tensor between the two, so
nothing else can read it while it moves. A spilled tensor's device memory is released only
once the engine's copy has completed (its event), and unpack returns a tensor with the same
dtype, shape, strides and device, bit for bit. When the engine cannot take a tensor (pinned
arena full, SSD error, copy failure), the tensor simply stays where it is.

Autograd checks a saved tensor's version counter at unpack only when no saved-tensor hooks are
set; these hooks do the check themselves (for every saved tensor they see: resident, spilled,
deduplicated or kept) and raise autograd's own "modified by an inplace operation" error. A write
after the pack bumps the version, so a spill copy that may have raced such a write is never
returned.

Iterations: the first pack outside any backward (``torch._C._current_graph_task_id() == -1``)
after a backward that unpacked this iteration's tensors without packing any starts the next
iteration. Packs inside a backward (checkpoint recomputation, ``create_graph=True``) and the
forward code between a ``create_graph`` backward and the backward through its result belong to
the current one; several forwards and then their backwards make one iteration.

Lifetime: ``offload(...)`` with the same arguments on the same thread returns the same context,
so a new ``with timeshare.offload(budget=...)`` around each step's forward keeps the engine, the
pinned arena, the SSD files, the learned need order and the plan. ``close()`` ends it (the next
``offload(...)`` starts cold); a thread's contexts go with the thread.

On CPU tensors (no GPU here) the engine runs on its sim backend, whose copies move real bytes
in modelled time; on CUDA tensors it uses the CUDA backend with torch's current streams (a
spill fences on the stream current at its pack, the producer's).
"""

from __future__ import annotations

import time
import weakref
from collections import Counter
from collections.abc import Callable
from typing import Any

from timeshare import _C, _offload_contexts
from timeshare._offload_contexts import _contexts, spill_stats
from timeshare._offload_saved import (
    _current_stream,
    _Kept,
    _OwnedLock,
    _Packed,
    _SavedView,
    kept_because,
)
from timeshare._step_plan import spill_plan

__all__ = ["OffloadError", "install_global", "offload", "spill_stats", "uninstall_global"]

_TIERS = {"host": False, "host+ssd": True}


class OffloadError(ValueError):
    """A bad argument to offload(); the message says which and what was expected."""


def _bytes(name: str, value: int | str | None, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise OffloadError(f"timeshare.offload: {name} must be >= 0, got {value}")
        return value
    if isinstance(value, str):
        try:
            return int(_C.parse_conf(f"pinned:{value}")["pinned"])
        except ValueError:
            pass
    raise OffloadError(f"timeshare.offload: {name}={value!r} is not a size (e.g. 512MiB, 20GiB)")


MAKE_ROOM_WAIT_S = 2.0

class offload:  # noqa: N801 - used like torch.autograd.graph.save_on_cpu
    """Context manager: spill saved activations to keep device memory under ``budget``.

    Args:
        budget: device bytes (int or "20GiB") above which activations spill. On CUDA tensors
            the device memory is ``memory_fn()`` (default ``torch.cuda.memory_allocated``); on
            CPU tensors it is the bytes of saved activations held by these hooks.
        spill: "host" (pinned host memory) or "host+ssd" (pinned, then files in spill_dir).
        spill_dir: directory of the SSD tier (default: a temporary directory).
        pinned: size of the pinned host arena, allocated once (default 2GiB).
        prefetch: look-ahead in bytes of restores started before they are needed.
        min_spill: tensors smaller than this stay on the device (default 1MiB).
        memory_fn: a callable returning the current device bytes (overrides the default).
        shared: False makes a context of its own, never returned by another ``offload(...)``
            call (each ``timeshare.fit`` owns one so).

    Contexts outlive their ``with``: ``offload(...)`` with the same arguments on the same thread
    returns the context made before (its engine, pinned arena, SSD files, history and plan), so
    a new ``with timeshare.offload(...)`` per step learns like one kept across steps. ``close()``
    ends it; the thread's end does too.
    """

    def __new__(cls, budget: int | str, spill: str = "host", spill_dir: str | None = None,
                pinned: int | str | None = None, prefetch: int | str | None = None,
                min_spill: int | str | None = None,
                memory_fn: Callable[[], int] | None = None, shared: bool = True) -> offload:
        key = cls._key(budget, spill, spill_dir, pinned, prefetch, min_spill, memory_fn) \
            if shared else None
        contexts = _contexts()
        ctx = contexts.get(key) if key is not None else None
        if ctx is not None:
            contexts.move_to_end(key)
            return ctx
        ctx = super().__new__(cls)
        ctx._key_ = key
        if key is not None:
            _offload_contexts.keep(key, ctx)
        return ctx

    @staticmethod
    def _key(*args: Any) -> tuple[Any, ...] | None:
        try:
            hash(args)
        except TypeError:
            return None
        return args

    def __init__(self, budget: int | str, spill: str = "host", spill_dir: str | None = None,
                 pinned: int | str | None = None, prefetch: int | str | None = None,
                 min_spill: int | str | None = None,
                 memory_fn: Callable[[], int] | None = None, shared: bool = True) -> None:
        if getattr(self, "_ready", False):
            return  # the same context, made by an earlier offload(...) call with these arguments
        try:
            self._setup(budget, spill, spill_dir, pinned, prefetch, min_spill, memory_fn)
        except OffloadError:
            _offload_contexts.forget(self._key_, self)
            raise
        self._ready = True

    def _setup(self, budget: int | str, spill: str, spill_dir: str | None,
               pinned: int | str | None, prefetch: int | str | None,
               min_spill: int | str | None, memory_fn: Callable[[], int] | None) -> None:
        if spill not in _TIERS:
            raise OffloadError(
                f"timeshare.offload: spill must be 'host' or 'host+ssd', not {spill!r}")
        self.budget = _bytes("budget", budget, 0)
        if self.budget <= 0:
            raise OffloadError("timeshare.offload: budget must be a positive size (e.g. '20GiB')")
        defaults = _C.parse_conf("")
        self.ssd = _TIERS[spill]
        self.spill_dir = spill_dir or ""
        self.pinned = _bytes("pinned", pinned, int(defaults["pinned"]))
        self.prefetch = _bytes("prefetch", prefetch, int(defaults["prefetch"]))
        self.min_spill = _bytes("min_spill", min_spill, int(defaults["min_spill"]))
        self.memory_fn = memory_fn
        self._engine: Any = None
        self._engine_device: Any = None
        self._lock = _OwnedLock()
        self._hooks: list[tuple[Any, int]] = []  # one per active ``with`` (hooks, make_room)
        self._counters: Counter[str] = Counter()
        self._retired: dict[str, int] = {}  # what close() already added to the process totals
        self._faults: list[tuple[str, int]] = []
        self._resident: weakref.WeakValueDictionary[int, _Packed] = weakref.WeakValueDictionary()
        self._pending: weakref.WeakValueDictionary[int, _Packed] = weakref.WeakValueDictionary()
        self._by_handle: weakref.WeakValueDictionary[int, _Packed] = weakref.WeakValueDictionary()
        # storage (its StorageImpl address) -> the unit that still holds it on the device
        self._units: weakref.WeakValueDictionary[int, _Packed] = weakref.WeakValueDictionary()
        self._next_id = 0
        self._resident_bytes = 0
        self._peak_resident = 0
        self._pending_bytes = 0
        # per-iteration history: position -> [bytes, pack_ns, unpack_ns]
        self._pos = 0
        # Backwards (graph task ids; -1: an unpack outside any) that unpacked this iteration's
        # tensors, and those that packed (create_graph, checkpoint recomputation): a pack outside
        # any backward after one that only unpacked starts the next iteration.
        self._unpack_tasks: set[int] = set()
        self._packing_tasks: set[int] = set()
        self._t0 = time.perf_counter_ns()
        self._cur: dict[int, list[int]] = {}
        self._prev: dict[int, list[int]] = {}
        self._plan: set[int] = set()
        self.iterations = 0

    # ---- context manager --------------------------------------------------------------------
    def __enter__(self) -> offload:
        import torch

        hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        hooks.__enter__()
        self._hooks.append((hooks, _C.register_make_room(self._make_room)))
        _offload_contexts.enter(self)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._hooks:
            hooks, token = self._hooks.pop()
            _C.unregister_make_room(token)
            hooks.__exit__(*exc)

    def in_with(self) -> bool:
        """Whether a ``with`` of this context is open."""
        return bool(self._hooks)

    def close(self) -> None:
        """End this context: the next ``offload(...)`` with its arguments starts cold. What it
        still holds (saved tensors not yet unpacked) stays valid; its engine goes with them."""
        _offload_contexts.forget(self._key_, self)
        self._retired = _offload_contexts.retire(self, self._retired)

    # ---- fault injection (tests) -------------------------------------------------------------
    def inject_fault(self, kind: str, nth: int = 1) -> None:
        """Arm a fault in the engine: 'copy', 'pinned' (the arena allocation) or 'ssd_write'."""
        if kind not in ("copy", "pinned", "ssd_write"):
            raise OffloadError(
                f"timeshare.offload: unknown fault {kind!r} (expected copy, pinned or ssd_write)")
        if self._engine is None:
            self._faults.append((kind, nth))
        else:
            self._arm(kind, nth)

    def _arm(self, kind: str, nth: int) -> None:
        {"copy": self._engine.fail_copy_at, "pinned": self._engine.fail_pinned_at,
         "ssd_write": self._engine.fail_ssd_write_at}[kind](nth)

    # ---- engine --------------------------------------------------------------------------
    def _engine_for(self, device: Any) -> Any:
        if self._engine is not None:
            return self._engine if device == self._engine_device else None
        cuda = device.type == "cuda"
        self._engine = _C.SpillEngine(
            pinned=self.pinned, ssd=self.ssd, spill_dir=self.spill_dir, prefetch=self.prefetch,
            backend="cuda" if cuda else "sim", device=(device.index or 0) if cuda else 0)
        self._engine_device = device
        late = [f for f in self._faults if f[0] == "ssd_write"]
        for kind, nth in self._faults:
            if kind != "ssd_write":
                self._arm(kind, nth)
        self._engine.init()
        for kind, nth in late:
            if self.ssd:
                self._arm(kind, nth)
        return self._engine

    @staticmethod
    def _stream(device: Any) -> int:
        """The engine's handle of the current stream (0 on the sim backend)."""
        return int(_current_stream(device).cuda_stream) if device.type == "cuda" else 0

    def _device_bytes(self, device: Any) -> int:
        """Device bytes that count against the budget, minus spills about to release theirs."""
        if self.memory_fn is not None:
            return int(self.memory_fn()) - self._pending_bytes
        if device.type == "cuda":
            import torch

            return int(torch.cuda.memory_allocated(device)) - self._pending_bytes
        return self._resident_bytes

    # ---- policy ------------------------------------------------------------------------------
    def _eligible(self, t: Any) -> bool:
        """Whether t may spill; if not, counted under why it stays (``kept_because``)."""
        why = kept_because(t, self.min_spill)
        if why is not None:
            self._counters[why] += 1
        return why is None

    @staticmethod
    def _unit_key(t: Any) -> int:
        return int(t.untyped_storage()._cdata)

    def _need_ns(self, rec: _Packed) -> int:
        """Predicted time of unpack, relative to the iteration (larger = needed later)."""
        hist = self._prev.get(rec.pos)
        if hist is not None and hist[0] == rec.nbytes and hist[2] >= 0:
            return hist[2]
        return -rec.pos  # backward is last-in-first-out: earlier packs are needed later

    def _build_plan(self) -> None:
        """Positions the previous iteration had to evict, furthest need first, to stay under
        the budget; they are spilled at their pack next time."""
        self._plan = spill_plan(self._prev, self.budget)

    def _new_iteration(self) -> None:
        self._prev = self._cur
        self._cur = {}
        self._pos = 0
        self._unpack_tasks.clear()
        self._packing_tasks.clear()
        self._t0 = time.perf_counter_ns()
        self.iterations += 1
        if self._engine is not None:
            self._engine.end_iteration()
        self._build_plan()

    def _reap(self) -> None:
        """Drop the device copy of every spill whose copy has completed."""
        for key, rec in list(self._pending.items()):
            if rec.handle and rec.tensor is not None and self._engine.spill_complete(rec.handle):
                rec.drop_device_copy()
                self._pending_bytes -= rec.nbytes
                self._pending.pop(key, None)

    def _spill_rec(self, rec: _Packed, device: Any, why: str) -> bool:
        engine = self._engine_for(device)
        if engine is None:
            return False
        h = engine.spill(rec.tensor.data_ptr(), rec.nbytes, rec.stream, rec.pos)
        if not h:
            self._counters["kept_resident"] += 1
            return False
        rec.handle = h
        rec.spilling = True
        self._counters[why] += 1
        self._resident.pop(id(rec), None)
        self._resident_bytes -= rec.nbytes
        self._pending[id(rec)] = rec
        self._pending_bytes += rec.nbytes
        self._by_handle[h] = rec
        return True

    def _release_dropped(self, rec: _Packed) -> None:
        """A unit dropped still holding its spill (its graph freed unpacked): let the spill go."""
        engine = self._engine
        if engine is None:
            return
        if rec.prefetch_dst is not None:
            # Never unpacked with its restore in flight: the destination stays alive until the
            # copy into it is ordered before its reuse (the stream it was allocated on waits on
            # the copy's event; on the host, the copy completes).
            engine.finish_restore(rec.handle, rec.prefetch_stream,
                                  host_wait=rec.device.type != "cuda")
            self._counters["prefetches_unused"] += 1
        if rec.tensor is not None and not engine.spill_complete(rec.handle):
            # Dropped with its spill copy in flight: that copy still reads the device memory
            # the unit is about to free.
            engine.wait_spill(rec.handle)
        engine.release(rec.handle)

    # ---- hooks ---------------------------------------------------------------------------------
    def _pack(self, t: Any) -> Any:
        if t.is_inference():
            return t  # no version counter, nothing autograd could check
        with self._lock:
            task = _graph_task_id()
            if task != -1:
                self._packing_tasks.add(task)  # recomputation or double backward: same iteration
            elif self._unpack_tasks - self._packing_tasks:
                self._new_iteration()  # the first pack of a forward after a backward
            pos = self._pos
            self._pos += 1
            nbytes = t.numel() * t.element_size()
            now = time.perf_counter_ns() - self._t0
            self._counters["packed"] += 1
            if not self._eligible(t):
                self._cur[pos] = [nbytes, now, -1, 0, 0]
                return _Kept(t)
            import torch

            key = self._unit_key(t)
            unit = self._units.get(key)
            if (unit is not None and unit.restored is None and unit.version == t._version
                    and unit.device == t.device
                    and (unit.tensor is not None or unit.origin() is not None)):
                # another view of a storage already packed (or the same tensor saved twice)
                self._counters["deduplicated"] += 1
                self._cur[pos] = [0, now, -1, 0, 0]
                return _SavedView(unit, t)
            flat = torch.empty(0, dtype=torch.uint8, device=t.device).set_(t.untyped_storage())
            rec = _Packed(flat, pos, t, self._stream(t.device), self._release_dropped)
            self._units[key] = rec
            nbytes = rec.nbytes
            self._cur[pos] = [nbytes, now, -1, 0, 1]
            if self._engine is not None:
                self._reap()
            device = t.device
            live = self._device_bytes(device)
            self._cur[pos][3] = max(live - self._resident_bytes, 0)
            self._resident[id(rec)] = rec
            self._resident_bytes += nbytes
            hist = self._prev.get(pos)
            planned = hist is not None and hist[0] == nbytes and pos in self._plan
            if planned:
                self._spill_rec(rec, device, "spilled_planned")
            projected = self._device_bytes(device)
            if projected > self.budget:
                self._make_room_locked(projected - self.budget, device, "spilled_reactive")
            self._peak_resident = max(self._peak_resident, self._resident_bytes)
            return _SavedView(rec, t)

    def _make_room_locked(self, need: int, device: Any, why: str) -> int:
        freed = 0
        for rec in sorted(self._resident.values(), key=self._need_ns, reverse=True):
            if freed >= need:
                break
            if rec.device == device and rec.tensor is not None and not rec.spilling:
                if self._spill_rec(rec, device, why):
                    freed += rec.nbytes
        return freed

    def _make_room(self, device_index: int, nbytes: int) -> int:
        """The allocator's conflict callback: spill resident packed activations, wait for their
        copies, drop the device copies. Reached from the thread that holds the hooks' lock (an
        allocation inside pack or unpack), it returns 0 at once; from another thread it waits
        for that lock at most MAKE_ROOM_WAIT_S (the holder never waits on the allocator's lock,
        which the allocator released before calling here), then returns 0."""
        if self._lock.owned() or not self._lock.acquire(timeout=MAKE_ROOM_WAIT_S):
            self._counters["make_room_busy"] += 1
            return 0
        try:
            dev = self._engine_device or next((r.device for r in self._resident.values()), None)
            if dev is None or (dev.type == "cuda" and (dev.index or 0) != device_index):
                return 0
            self._make_room_locked(nbytes, dev, "spilled_conflict")
            freed = 0
            for key, rec in list(self._pending.items()):
                if rec.handle and rec.tensor is not None:
                    self._engine.wait_spill(rec.handle)
                    rec.drop_device_copy()
                    self._pending_bytes -= rec.nbytes
                    self._pending.pop(key, None)
                    freed += rec.nbytes
            return freed
        finally:
            self._lock.release()

    def _unpack(self, saved: Any) -> Any:
        if isinstance(saved, _Kept):
            with self._lock:
                self._unpack_tasks.add(_graph_task_id())
            saved.check()
            return saved.tensor
        if not isinstance(saved, _SavedView):
            return saved
        saved.check()
        out = saved.rebuild(self._unpack_unit(saved.unit))
        self._prefetch_next(saved.unit.device)
        return out

    def _prefetch_next(self, device: Any) -> None:
        """At every unpack (backward has reached this point): start restores of the next
        entries in predicted order, within the look-ahead or, when larger, the room left under
        the budget."""
        if self._engine is None:
            return
        with self._lock:
            window = max(self.prefetch, self.budget - self._device_bytes(device))
            todo = [self._by_handle.get(h) for h in self._engine.prefetch_candidates(window)]
        self._start_prefetches(
            [r for r in todo if r is not None and r.tensor is None and r.restored is None])

    def _unpack_unit(self, rec: _Packed) -> Any:
        """The unit's storage on the device as a flat uint8 tensor: the resident one, or
        restored (waiting on a prefetch already running, or starting the copy now)."""
        import torch

        with self._lock:
            self._unpack_tasks.add(_graph_task_id())
            hist = self._cur.get(rec.pos)
            if hist is not None and hist[2] < 0:
                hist[2] = time.perf_counter_ns() - self._t0
            if rec.restored is not None:
                return rec.restored_here()
            if rec.tensor is not None:  # resident, or its spill copy has not completed yet
                t = rec.tensor
                if rec.handle:
                    self._pending.pop(id(rec), None)
                    self._pending_bytes -= rec.nbytes
                    self._by_handle.pop(rec.handle, None)
                    if not self._engine.spill_complete(rec.handle):
                        # its copy still reads t, which may be freed before the copy would end
                        self._engine.wait_spill(rec.handle)
                    self._engine.release(rec.handle)
                    rec.handle = 0
                else:
                    self._resident.pop(id(rec), None)
                    self._resident_bytes -= rec.nbytes
                rec.restored = t
                rec.tensor = None
                self._counters["unpacked_resident"] += 1
                return t
            engine = self._engine
            dst = rec.prefetch_dst
        if dst is None:
            dst = torch.empty(rec.nbytes, dtype=torch.uint8, device=rec.device)
            rec.alloc_on = _current_stream(rec.device)
            if not engine.start_restore(rec.handle, dst.data_ptr(), self._stream(rec.device)):
                dst = self._fallback_restore(rec, dst)
                return self._finish(rec, dst, engine)
        ok = engine.finish_restore(rec.handle, self._stream(rec.device),
                                   host_wait=rec.device.type != "cuda")
        if not ok:
            dst = self._fallback_restore(rec, dst)
        return self._finish(rec, dst, engine)

    def _fallback_restore(self, rec: _Packed, dst: Any) -> Any:
        """The engine could not copy: read the bytes synchronously and copy them with torch."""
        import torch

        host = torch.empty(rec.nbytes, dtype=torch.uint8)
        if not self._engine.copy_to_host(rec.handle, host.data_ptr()):
            raise RuntimeError(
                f"timeshare.offload: saved tensor {rec.pos} ({rec.nbytes} bytes) could not be "
                "read back from the spill tiers; see the logged warning")
        dst.copy_(host.to(rec.device))
        with self._lock:
            self._counters["fallback_restores"] += 1
        return dst

    def _finish(self, rec: _Packed, dst: Any, engine: Any) -> Any:
        with self._lock:
            engine.release(rec.handle)
            self._by_handle.pop(rec.handle, None)
            rec.handle = 0
            rec.restored = dst
            rec.prefetch_dst = None
            self._counters["unpacked_restored"] += 1
            return rec.restored_here()

    def _start_prefetches(self, recs: list[_Packed]) -> None:
        import torch

        for rec in recs:
            if rec.prefetch_dst is not None or not rec.handle:
                continue
            dst = torch.empty(rec.nbytes, dtype=torch.uint8, device=rec.device)
            stream = self._stream(rec.device)  # the stream dst was allocated on
            on = _current_stream(rec.device)
            with self._lock:
                if rec.prefetch_dst is not None or not rec.handle:
                    continue
                if self._engine.start_restore(rec.handle, dst.data_ptr(), stream, prefetch=True):
                    rec.prefetch_dst, rec.prefetch_stream, rec.alloc_on = dst, stream, on
                    self._counters["prefetches"] += 1

    # ---- statistics ----------------------------------------------------------------------------
    def stats(self) -> dict[str, int]:
        """This context's ``timeshare.spill.*`` figures (engine and hooks)."""
        out: dict[str, int] = dict(self._engine.stats()) if self._engine is not None else {}
        for k, v in self._counters.items():
            out[f"timeshare.spill.hooks.{k}"] = v
        out["timeshare.spill.hooks.iterations"] = self.iterations
        out["timeshare.spill.hooks.resident_bytes"] = self._resident_bytes
        out["timeshare.spill.hooks.peak_resident_bytes"] = self._peak_resident
        return out


_GLOBAL: dict[str, Any] = {"offload": None}


def _graph_task_id() -> int:
    """The id of the backward running on this thread, -1 outside any backward."""
    import torch

    get = getattr(torch._C, "_current_graph_task_id", None)
    return int(get()) if get is not None else -1


def install_global(conf: str | dict[str, Any]) -> offload | None:
    """Install offload hooks for the whole process from timeshare options (what
    ``timeshare.enable(budget=..., spill=...)`` calls). Returns the context, or None when the
    options ask for no spilling (no budget, or spill:none)."""
    opts = _C.parse_conf(conf) if isinstance(conf, str) else dict(conf)
    if int(opts.get("budget", 0)) <= 0 or opts.get("spill", "none") == "none":
        return None
    if _GLOBAL["offload"] is not None:
        return _GLOBAL["offload"]
    ctx = offload(budget=int(opts["budget"]), spill=str(opts["spill"]),
                  spill_dir=opts.get("spill_dir") or None, pinned=opts.get("pinned"),
                  prefetch=opts.get("prefetch"), min_spill=opts.get("min_spill"))
    ctx.__enter__()
    _GLOBAL["offload"] = ctx
    return ctx


def uninstall_global() -> None:
    """Remove the process-wide hooks install_global() put in place."""
    ctx = _GLOBAL["offload"]
    if ctx is not None:
        ctx.__exit__(None, None, None)
        ctx.close()
        _GLOBAL["offload"] = None
