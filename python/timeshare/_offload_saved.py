"""What the offload hooks hold for a saved tensor between pack and unpack: the unit that moves
(one storage), the view of it each saved tensor is, the tensors kept where they are, and the
version check autograd skips when saved-tensor hooks are set. Used by ``timeshare._offload``."""

from __future__ import annotations

import re
import threading
import weakref
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from timeshare._offload import offload

__all__: list[str] = []  # internal


class _Packed:
    """The unit that moves: one storage (as a flat uint8 tensor) behind one or more saved
    tensors. Spilling whole storages is what frees memory when autograd saves several views of
    one buffer (q, k, v of a fused projection; the halves of a chunk), and what deduplicates a
    tensor saved twice; restoring the storage gives every view back with its own strides."""

    __slots__ = ("tensor", "handle", "pos", "nbytes", "device", "version", "origin", "restored",
                 "prefetch_dst", "prefetch_stream", "stream", "owner", "spilling", "alloc_on",
                 "ready_on", "__weakref__")

    def __init__(self, flat: Any, pos: int, owner: offload, origin: Any, stream: int) -> None:
        self.tensor = flat
        self.handle = 0
        self.pos = pos
        self.nbytes = flat.numel()
        self.device = flat.device
        self.version = origin._version
        # The first tensor saved from this storage, weakly: while it lives, so does the storage,
        # so the storage's key still names it even after the unit dropped its device copy.
        self.origin = weakref.ref(origin)
        self.restored: Any = None
        self.prefetch_dst: Any = None
        self.prefetch_stream = 0
        # The stream current at pack: the producer's, on which a spill's copy fences.
        self.stream = stream
        self.owner = owner
        self.spilling = False
        # Streams of a restore's destination (torch stream objects, None while the storage
        # is the original one): the one it was allocated on, and one ordered after its copy.
        self.alloc_on: Any = None
        self.ready_on: Any = None

    def restored_here(self) -> Any:
        """The restored storage, safe on the current stream: a stream other than the one
        ordered after its copy waits for that one, and one other than its allocation stream is
        recorded on it (``record_stream``), so that the memory cannot go back to that stream's
        pool while this one still reads it."""
        if self.alloc_on is not None:
            here = _current_stream(self.device)
            if self.ready_on is None:
                self.ready_on = here  # the first unpack's finish_restore waited for the copy
            elif here != self.ready_on:
                here.wait_stream(self.ready_on)
            if here != self.alloc_on:
                self.restored.record_stream(here)
        return self.restored

    def __del__(self) -> None:
        if self.handle and self.owner is not None:
            engine = self.owner._engine
            if engine is not None:
                if self.prefetch_dst is not None:
                    # Never unpacked with its restore in flight: the destination stays alive until
                    # the copy into it is ordered before its reuse (the stream it was allocated on
                    # waits on the copy's event; on the host, the copy completes).
                    engine.finish_restore(self.handle, self.prefetch_stream,
                                          host_wait=self.device.type != "cuda")
                    self.owner._counters["prefetches_unused"] += 1
                if self.tensor is not None and not engine.spill_complete(self.handle):
                    # Dropped with its spill copy in flight: that copy still reads the device
                    # memory this unit is about to free.
                    engine.wait_spill(self.handle)
                engine.release(self.handle)
            self.handle = 0
        self.prefetch_dst = None


def _current_stream(device: Any) -> Any:
    """torch's current stream on the device (torch.cpu's one stream on the CPU)."""
    import torch

    return torch.get_device_module(device.type).current_stream(device)


class _OwnedLock:
    """A lock that knows which thread holds it (the allocator's conflict callback must not wait
    on a lock its own thread holds)."""

    __slots__ = ("_lock", "_owner")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owner = 0

    def acquire(self, timeout: float = -1) -> bool:
        if not self._lock.acquire(timeout=timeout):
            return False
        self._owner = threading.get_ident()
        return True

    def release(self) -> None:
        self._owner = 0
        self._lock.release()

    def owned(self) -> bool:
        return self._owner == threading.get_ident()

    def __enter__(self) -> _OwnedLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


_BACKWARD_SUFFIX = re.compile(r"Backward\d*$")


def _producer(t: Any) -> tuple[int, str, int] | None:
    """(output_nr, grad_fn name, its sequence number) at pack: how autograd will name t."""
    fn = t.grad_fn
    return None if fn is None else (t.output_nr, fn.name(), fn._sequence_nr())


def _version_error(now: int, saved: int, dtype: Any, device: Any, shape: Any,
                   producer: tuple[int, str, int] | None, tensor: Any) -> RuntimeError:
    """Autograd's error for a saved tensor modified in place since its pack. It names the node
    being run when the tensor is that node's own output, else the tensor's grad_fn now (``tensor``
    when the hooks hold it; else its grad_fn at pack)."""
    import torch

    named = ""
    if producer is not None:
        nr, name, seq = producer
        cur = torch._C._current_autograd_node()
        own = cur is not None and (cur.name(), cur._sequence_nr()) == (name, seq)
        if not own and tensor is not None and tensor.grad_fn is not None:
            nr, name = tensor.output_nr, tensor.grad_fn.name()
        named = f", which is output {nr} of {_BACKWARD_SUFFIX.sub('', name)},"
    hint = ("Hint: the backtrace further above shows the operation that failed to compute "
            "its gradient. The variable in question was changed in there or anywhere later. "
            "Good luck!") if torch.is_anomaly_enabled() else (
            "Hint: enable anomaly detection to find the operation that failed to compute its "
            "gradient, with torch.autograd.set_detect_anomaly(True, check_nan=False).")
    kind = torch.empty(0, dtype=dtype, device=device).type()
    return RuntimeError(
        "one of the variables needed for gradient computation has been modified by an "
        f"inplace operation: [{kind} {list(shape)}]{named} is at version {now}; "
        f"expected version {saved} instead. {hint}")


_EMPTY: dict[Any, Any] = {}


def _version_alias(t: Any) -> Any:
    """A tensor sharing t's version counter but not its storage (a detached alias moved to an
    empty storage, its version put back): it keeps no device memory alive."""
    import torch

    storage = _EMPTY.get(t.device)
    if storage is None:
        storage = torch.empty(0, dtype=torch.uint8, device=t.device).untyped_storage()
        _EMPTY[t.device] = storage
    alias = t.detach()
    with torch.autograd._unsafe_preserve_version_counter(alias):
        alias.set_(storage)
    return alias


class _Kept:
    """A saved tensor the hooks keep where it is (parameters, small, other layouts): itself,
    with its version at pack, checked at unpack (autograd skips that check under hooks)."""

    __slots__ = ("tensor", "version", "producer")

    def __init__(self, t: Any) -> None:
        self.tensor = t
        self.version = t._version
        self.producer = _producer(t)

    def check(self) -> None:
        t = self.tensor
        if t._version != self.version:
            raise _version_error(t._version, self.version, t.dtype, t.device, t.shape,
                                 self.producer, t)


class _SavedView:
    """What autograd holds for one saved tensor between pack and unpack: its unit, where in the
    unit's storage it lives, and its version at pack (read at unpack through ``counter``, an
    alias that shares the tensor's version counter and no memory)."""

    __slots__ = ("unit", "shape", "stride", "offset", "dtype", "version", "counter", "producer")

    def __init__(self, unit: _Packed, t: Any) -> None:
        self.unit = unit
        self.shape = tuple(t.shape)
        self.stride = tuple(t.stride())
        self.offset = t.storage_offset()
        self.dtype = t.dtype
        self.version = t._version
        self.counter = _version_alias(t)
        self.producer = _producer(t)

    def check(self) -> None:
        now = self.counter._version
        if now != self.version:
            t = self.unit.origin()  # the unit's first saved tensor, while it lives
            same = t is not None and (tuple(t.shape), t.stride(), t.storage_offset(), t.dtype) == (
                self.shape, self.stride, self.offset, self.dtype)
            raise _version_error(now, self.version, self.dtype, self.unit.device, self.shape,
                                 self.producer, t if same else None)

    def rebuild(self, flat: Any) -> Any:
        """This view of ``flat`` (the unit's storage, resident or restored): same dtype, shape,
        strides and storage offset as the saved tensor."""
        import torch

        return torch.empty(0, dtype=self.dtype, device=flat.device).set_(
            flat.untyped_storage(), self.offset, self.shape, self.stride)
