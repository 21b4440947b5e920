"""What the offload hooks hold for a saved tensor between pack and unpack: the unit that moves
(one storage), the view of it each saved tensor is, the tensors kept where they are (and which
those are), and the version check autograd skips when saved-tensor hooks are set. Used by
``timeshare._offload``."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Any

__all__: list[str] = []  # internal


class _Packed:
    """The unit that moves: one storage (as a flat uint8 tensor) behind one or more saved
    tensors. Spilling whole storages is what frees memory when autograd saves several views of
    one buffer (q, k, v of a fused projection; the halves of a chunk), and what deduplicates a
    tensor saved twice; restoring the storage gives every view back with its own strides.

    ``release`` is called when the unit is dropped still holding a spill (``handle``; its graph
    freed before backward reached it): whoever made the spill lets it go."""

    __slots__ = ("tensor", "handle", "pos", "nbytes", "device", "version", "origin", "restored",
                 "prefetch_dst", "prefetch_stream", "stream", "release", "spilling", "views",
                 "alloc_on", "ready_on", "__weakref__")

    def __init__(self, flat: Any, pos: int, origin: Any, stream: int,
                 release: Callable[[_Packed], None]) -> None:
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
        self.release = release
        self.spilling = False
        # The views that hold their saved tensor while this unit holds its storage (weakly).
        self.views: list[weakref.ref[_SavedView]] = []
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

    def drop_device_copy(self) -> None:
        """The spill copy has completed: let the device memory go. Views that held their saved
        tensor (to name it as autograd does) let it go too, remembering its grad_fn."""
        self.tensor = None
        for ref in self.views:
            view = ref()
            if view is not None:
                view.release_source()
        self.views.clear()

    def __del__(self) -> None:
        if self.handle:
            self.release(self)
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


_LEGACY_TYPES = frozenset(("Byte", "Char", "Double", "Float", "Int", "Long", "Short", "Half"))
_DISPATCH = {"cpu": "CPU", "cuda": "CUDA", "meta": "Meta", "mps": "MPS", "xpu": "XPU",
             "hpu": "HPU", "xla": "XLA", "lazy": "Lazy", "mtia": "MTIA", "ipu": "IPU"}


def _op_name(node_name: str) -> str:
    """``Node::forward_op_name``: the node's name less "Backward<N>", N kept unless 0."""
    pos = node_name.rfind("Backward")
    suffix = node_name[pos + 8:]
    if pos < 0 or (suffix and not suffix.isdigit()):
        return node_name
    return node_name[:pos] + ("" if suffix in ("", "0") else suffix)


def _type_text(dtype: Any, device: Any, layout: Any) -> str:
    """``Tensor::toString()`` as autograd's message reaches Python: "CPUBFloat16Type", with the
    legacy CPU and CUDA types translated ("torch.FloatTensor", by processErrorMsg)."""
    import warnings

    import torch

    with warnings.catch_warnings():  # ComplexHalf warns that it is experimental
        warnings.simplefilter("ignore")
        legacy = torch.empty(0, dtype=dtype, device="meta").type()  # torch.meta.FloatTensor
    scalar = legacy.rsplit(".", 1)[-1][:-len("Tensor")]
    sparse = layout == torch.sparse_coo
    if device.type in ("cpu", "cuda") and scalar in _LEGACY_TYPES:
        return "torch." + ("cuda." if device.type == "cuda" else "") + (
            "sparse." if sparse else "") + f"{scalar}Tensor"
    key = _DISPATCH.get(device.type, device.type)
    return f"{'Sparse' if sparse else ''}{key}{scalar}Type"


def _shape_text(t: Any) -> str:
    """``sizes()`` as autograd prints it; for a nested tensor, its sizes tensor as at::print
    writes it."""
    if not t.is_nested:
        return str(list(t.shape))
    rows = t._nested_tensor_size().tolist()
    width = max((len(str(v)) for row in rows for v in row), default=0) + 1
    body = "".join(" ".join(f"{v:>{width}}" for v in row) + "\n" for row in rows)
    dims = ",".join(str(n) for n in (len(rows), len(rows[0]) if rows else 0))
    return f"{body}[ torch.LongTensor{{{dims}}} ]"


def _sequence_peek() -> int:
    import torch

    get = getattr(torch._C._autograd, "_get_sequence_nr", None)
    return int(get()) if get is not None else -1


class _Identity:
    """How autograd's in-place error names a saved tensor, as ``SavedVariable::unpack`` does
    without hooks. An output of the node being built (its grad_fn is the newest node) is named
    after that node with its output number at pack; it is held detached, as autograd holds it
    (holding it itself would be a reference cycle through C++ that Python's collector cannot
    free). Any other tensor (an input, a leaf) is named after its grad_fn at unpack, output 0:
    read from the tensor while the hooks hold it, else the last grad_fn they saw. (The output
    of an in-place op on a view is named after the view's grad_fn at pack: autograd does so
    while that node lives, else it names the in-place op's node, which hooks cannot see.)"""

    __slots__ = ("output", "nr", "op", "leaf")

    def __init__(self, t: Any) -> None:
        fn = t.grad_fn
        self.leaf = t.is_leaf
        self.op = None if fn is None else _op_name(fn.name())
        self.output = fn is not None and fn._sequence_nr() == _sequence_peek() - 1
        self.nr = t.output_nr if self.output else 0

    def remember(self, t: Any) -> None:
        if not self.output:
            fn = t.grad_fn
            self.op = None if fn is None else _op_name(fn.name())

    def named(self, t: Any) -> str:
        """", which is output N of Op," or "" (a leaf), t: the tensor when still held."""
        import torch

        if t is not None:
            self.remember(t)
        op = self.op
        if op is None and not self.leaf:  # detached in place: the node unpacking it
            cur = torch._C._current_autograd_node()
            op = None if cur is None else _op_name(cur.name())
        return "" if op is None else f", which is output {self.nr} of {op},"


def _version_error(now: int, saved: int, kind: str, shape: str, named: str) -> RuntimeError:
    """Autograd's error for a saved tensor modified in place since its pack, word for word."""
    import torch

    hint = ("Hint: the backtrace further above shows the operation that failed to compute "
            "its gradient. The variable in question was changed in there or anywhere later. "
            "Good luck!") if torch.is_anomaly_enabled() else (
            "Hint: enable anomaly detection to find the operation that failed to compute its "
            "gradient, with torch.autograd.set_detect_anomaly(True, check_nan=False).")
    return RuntimeError(
        "one of the variables needed for gradient computation has been modified by an "
        f"inplace operation: [{kind} {shape}]{named} is at version {now}; "
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


# A view is spilled with its whole storage only when the storage is at most this many times
# the view's bytes (q, k and v of one projection: 3x); a small slice of a big buffer stays.
_MAX_SPAN = 4


def kept_because(t: Any, min_spill: int) -> str | None:
    """Why the hooks keep t where it is, as the counter it is counted under ("ineligible":
    not plain strided memory, or a tensor subclass; "parameters": a parameter or a view of one;
    "small": a storage under min_spill; "sparse_views": a small slice of a larger storage), or
    None: it may spill."""
    import torch

    if (t.layout != torch.strided or t.is_nested or t.is_quantized or t.is_conj()
            or t.is_neg()):
        return "ineligible"
    if isinstance(t, torch.nn.Parameter) or (t.is_leaf and t.requires_grad):
        return "parameters"
    if type(t) is not torch.Tensor:  # a subclass (DTensor, wrappers): its own storage rules
        return "ineligible"
    base = t._base
    if base is not None and (isinstance(base, torch.nn.Parameter) or
                             (base.is_leaf and base.requires_grad)):
        return "parameters"
    storage_bytes = t.untyped_storage().nbytes()
    if storage_bytes < max(min_spill, 1):
        return "small"
    if storage_bytes > _MAX_SPAN * max(t.numel() * t.element_size(), 1):
        return "sparse_views"
    return None


class _Kept:
    """A saved tensor the hooks keep where it is (parameters, small, other layouts), held as
    autograd holds it (see ``_Identity``), with its version at pack, checked at unpack
    (autograd skips that check under hooks)."""

    __slots__ = ("tensor", "version", "who")

    def __init__(self, t: Any) -> None:
        self.who = _Identity(t)
        self.tensor = t.detach() if self.who.output else t
        self.version = t._version

    def check(self) -> None:
        t = self.tensor
        if t._version != self.version:
            raise _version_error(t._version, self.version, _type_text(t.dtype, t.device, t.layout),
                                 _shape_text(t), self.who.named(None if self.who.output else t))


class _SavedView:
    """What autograd holds for one saved tensor between pack and unpack: its unit, where in the
    unit's storage it lives, and its version at pack (read at unpack through ``counter``, an
    alias that shares the tensor's version counter and no memory). A saved tensor that is not
    an output of the node being built is held (``source``) while its unit holds the storage on
    the device, as autograd would hold it, to name it by its grad_fn then; weakly after."""

    __slots__ = ("unit", "shape", "stride", "offset", "dtype", "version", "counter", "who",
                 "source", "weak", "__weakref__")

    def __init__(self, unit: _Packed, t: Any) -> None:
        self.unit = unit
        self.shape = tuple(t.shape)
        self.stride = tuple(t.stride())
        self.offset = t.storage_offset()
        self.dtype = t.dtype
        self.version = t._version
        self.counter = _version_alias(t)
        self.who = _Identity(t)
        self.source = self.weak = None
        if not self.who.output:
            self.weak = weakref.ref(t)
            if unit.tensor is not None:
                self.source = t
                unit.views.append(weakref.ref(self))

    def release_source(self) -> None:
        if self.source is not None:
            self.who.remember(self.source)
            self.source = None

    def check(self) -> None:
        now = self.counter._version
        if now != self.version:
            import torch

            t = self.source if self.source is not None else (
                self.weak() if self.weak is not None else None)
            raise _version_error(now, self.version,
                                 _type_text(self.dtype, self.unit.device, torch.strided),
                                 _shape_text(t) if t is not None else str(list(self.shape)),
                                 self.who.named(t))

    def rebuild(self, flat: Any) -> Any:
        """This view of ``flat`` (the unit's storage, resident or restored): same dtype, shape,
        strides and storage offset as the saved tensor."""
        import torch

        return torch.empty(0, dtype=self.dtype, device=flat.device).set_(
            flat.untyped_storage(), self.offset, self.shape, self.stride)
