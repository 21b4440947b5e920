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
                 "prefetch_dst", "prefetch_stream", "stream", "owner", "spilling", "__weakref__")

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
                engine.release(self.handle)
            self.handle = 0
        self.prefetch_dst = None


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


class _Version:
    """A saved tensor's version at pack and how autograd names it, to redo at unpack the check
    autograd skips when hooks are set. ``counter`` shares the tensor's version counter but not
    its storage (a detached alias moved to an empty storage), so it keeps no device memory."""

    __slots__ = ("counter", "version", "dtype", "device", "shape", "producer", "tensor")

    def __init__(self, t: Any, keep: bool) -> None:
        import torch

        self.version = t._version
        if keep:
            self.counter = t
        else:
            alias = t.detach()
            with torch.autograd._unsafe_preserve_version_counter(alias):
                alias.set_(_empty_storage(t.device))
            self.counter = alias
        self.tensor = weakref.ref(t)
        self.dtype = t.dtype
        self.device = t.device
        self.shape = list(t.shape)
        fn = t.grad_fn
        self.producer = _node_of(t, fn) if fn is not None else None

    def _named(self) -> str:
        """Autograd's ", which is output N of X,": X is the node being run when the tensor is
        that node's own output, else the tensor's grad_fn now (an in-place op moved it)."""
        import torch

        if self.producer is None:
            return ""
        cur = torch._C._current_autograd_node()
        if cur is not None and (cur.name(), cur._sequence_nr()) == self.producer[2:]:
            return f", which is output {self.producer[0]} of {self.producer[1]},"
        t = self.tensor()
        if t is not None and t.grad_fn is not None:
            nr, name, _, _ = _node_of(t, t.grad_fn)
            return f", which is output {nr} of {name},"
        return f", which is output {self.producer[0]} of {self.producer[1]},"

    def check(self) -> None:
        """Raise autograd's error when the tensor was modified in place since its pack."""
        now = self.counter._version
        if now == self.version:
            return
        import torch

        hint = ("Hint: the backtrace further above shows the operation that failed to compute "
                "its gradient. The variable in question was changed in there or anywhere later. "
                "Good luck!") if torch.is_anomaly_enabled() else (
                "Hint: enable anomaly detection to find the operation that failed to compute its "
                "gradient, with torch.autograd.set_detect_anomaly(True, check_nan=False).")
        kind = torch.empty(0, dtype=self.dtype, device=self.device).type()
        raise RuntimeError(
            "one of the variables needed for gradient computation has been modified by an "
            f"inplace operation: [{kind} {self.shape}]{self._named()} is at version {now}; "
            f"expected version {self.version} instead. {hint}")


_EMPTY: dict[Any, Any] = {}


def _empty_storage(device: Any) -> Any:
    """One empty storage per device, what version-counter aliases point at."""
    storage = _EMPTY.get(device)
    if storage is None:
        import torch

        storage = torch.empty(0, dtype=torch.uint8, device=device).untyped_storage()
        _EMPTY[device] = storage
    return storage


def _node_of(t: Any, fn: Any) -> tuple[int, str, str, int]:
    """(output_nr, name as autograd prints it, name, sequence number) of t's grad_fn."""
    return (t.output_nr, _BACKWARD_SUFFIX.sub("", fn.name()), fn.name(), fn._sequence_nr())


class _Kept:
    """A saved tensor the hooks keep where it is (parameters, small, other layouts): itself,
    with its version at pack."""

    __slots__ = ("tensor", "version")

    def __init__(self, t: Any) -> None:
        self.tensor = t
        self.version = _Version(t, keep=True)


class _SavedView:
    """What autograd holds for one saved tensor between pack and unpack: its unit and where in
    the unit's storage it lives."""

    __slots__ = ("unit", "shape", "stride", "offset", "dtype", "version")

    def __init__(self, unit: _Packed, t: Any) -> None:
        self.unit = unit
        self.version = _Version(t, keep=False)
        self.shape = tuple(t.shape)
        self.stride = tuple(t.stride())
        self.offset = t.storage_offset()
        self.dtype = t.dtype

    def rebuild(self, flat: Any) -> Any:
        """This view of ``flat`` (the unit's storage, resident or restored): same dtype, shape,
        strides and storage offset as the saved tensor."""
        import torch

        return torch.empty(0, dtype=self.dtype, device=flat.device).set_(
            flat.untyped_storage(), self.offset, self.shape, self.stride)
