"""``timeshare.enable()``: the one-line swap of PyTorch's CUDA allocator.

Everything that can fail is checked before anything changes, so enable() either installs
timeshare completely or raises one clear error and leaves PyTorch as it was.
"""

from __future__ import annotations

import ctypes
import logging
import os
import warnings
from typing import Any

from timeshare import _C
from timeshare._config import build_conf
from timeshare._state import STATE as _state
from timeshare._state import route

__all__ = ["TimeshareError", "enable", "is_enabled", "library_path", "route"]

log = logging.getLogger("timeshare")


# Hook setter on torch's pluggable allocator -> our C symbol. Feature-detected by name: the
# set of hooks changed between torch releases.
_HOOKS = {
    "set_init_fn": "timeshare_init",
    "set_reset_fn": "timeshare_empty_cache",
    "set_memory_fraction_fn": "timeshare_memory_fraction",
    "set_record_stream_fn": "timeshare_record_stream",
    # Private pools for CUDA graphs and MemPool (without them torch would let graph capture
    # allocate from the shared pool).
    "set_begin_allocate_to_pool": "timeshare_begin_allocate_to_pool",
    "set_end_allocate_to_pool_fn": "timeshare_end_allocate_to_pool",
    "set_release_pool": "timeshare_release_pool",
    "set_base_alloc_fn": "timeshare_base_alloc",
}


class TimeshareError(RuntimeError):
    """timeshare could not be enabled; the message says why and what to do."""


class TimeshareWarning(UserWarning):
    """A PyTorch feature that does not work under a pluggable allocator is in use."""


def library_path() -> str:
    """Path of ``libtimeshare.so``, the allocator library PyTorch loads."""
    return _C.library_path()


def is_enabled() -> bool:
    """Whether timeshare serves PyTorch's CUDA allocations in this process."""
    return bool(_state["enabled"])


def _check_torch_ready(torch: Any, require_device: bool) -> None:
    if not hasattr(torch.cuda.memory, "CUDAPluggableAllocator") or not hasattr(
        torch._C, "_cuda_customAllocator"
    ):
        raise TimeshareError(
            f"timeshare.enable(): this torch ({torch.__version__}) was built without CUDA, so its "
            "CUDA allocator cannot be replaced; install a CUDA build of torch"
        )
    if require_device and not torch.cuda.is_available():
        ok, why = _C.cuda_driver_status()
        raise TimeshareError(
            "timeshare.enable(): CUDA is not available here (torch.cuda.is_available() is False"
            + ("" if ok else f"; {why}")
            + "); nothing was changed"
        )
    if torch.cuda.is_initialized():
        raise TimeshareError(
            "timeshare.enable() was called after CUDA was initialised (a CUDA tensor or call "
            "already happened), and PyTorch cannot swap its allocator then. Call it first thing "
            "in your script, or run with TIMESHARE=1 to enable it at start-up."
        )


_CUDNN_BENCHMARK_MSG = (
    "timeshare: torch.backends.cudnn.benchmark=True is not possible under a pluggable allocator "
    "(cuDNN's autotuner asks the allocator for cacheInfo, which PyTorch's pluggable interface "
    "does not support, and the first convolution would fail); it stays False. See "
    "docs/usage.md#known-gaps."
)


def _guard_cudnn_benchmark(torch: Any) -> None:
    """Turn cudnn.benchmark=True, which would fail deep inside the first convolution, into one
    warning at the moment it is set (and keep it off)."""
    cls = type(torch.backends.cudnn)
    prop = cls.__dict__.get("benchmark")
    if prop is None or not hasattr(prop, "getter") or not hasattr(prop, "setter"):
        return
    setter = prop.setter

    def guarded(value: bool) -> None:
        if value:
            warnings.warn(_CUDNN_BENCHMARK_MSG, TimeshareWarning, stacklevel=3)
        setter(False)

    if prop.getter():
        warnings.warn(_CUDNN_BENCHMARK_MSG, TimeshareWarning, stacklevel=4)
        setter(False)
    cls.benchmark = type(prop)(prop.getter, guarded)


def _gap_warnings(torch: Any) -> None:
    """PyTorch features that a pluggable allocator cannot serve: guard what can be guarded."""
    _guard_cudnn_benchmark(torch)
    log.info("timeshare: CUDA graphs (torch.compile mode='reduce-overhead'), CUDA IPC and "
             "torch.cuda.memory._record_memory_history are unavailable under a pluggable "
             "allocator; see docs/usage.md#known-gaps")


def _check_one_core(path: str) -> None:
    """The options, statistics and make_room callbacks of this module must be those of the
    library PyTorch is about to load (one core per process, docs/design.md)."""
    try:
        core = _C.core_library_path()
    except RuntimeError as e:
        raise TimeshareError(f"timeshare.enable(): broken installation: {e}") from None
    if os.path.realpath(core) != os.path.realpath(path):
        raise TimeshareError(
            f"timeshare.enable(): broken installation: timeshare._C uses the allocator core in "
            f"{core}, not {path}, the library PyTorch would load; reinstall timeshare"
        )


_TOO_LATE = ("Call enable() before any CUDA work, or run with TIMESHARE=1.")


def _install_native(torch: Any, wanted: str) -> bool:
    """Installs the native CUDAAllocator when `wanted` (the `route` option) allows it and it is
    available; False means "use the pluggable route" (logged, with why)."""
    from timeshare import _native

    if wanted == "pluggable":
        log.info("timeshare: route:pluggable chosen; PyTorch reaches timeshare through "
                 "CUDAPluggableAllocator")
        return False
    ok, why = _native.try_install(torch)
    if ok:
        return True
    if "already initialized" in why:
        raise TimeshareError(f"timeshare.enable(): PyTorch refused the allocator swap ({why}). "
                             + _TOO_LATE)
    if wanted == "native":
        raise TimeshareError(f"timeshare.enable(): route:native was asked for, but {why}; use "
                             "route:auto (falls back to the pluggable route) or route:pluggable")
    log.warning("timeshare: native route unavailable (%s); using the pluggable route "
                "(docs/usage.md#known-gaps lists what it cannot do)", why)
    return False


def _install_pluggable(torch: Any, path: str) -> tuple[Any, Any]:
    lib = ctypes.CDLL(path)
    alloc = torch.cuda.memory.CUDAPluggableAllocator(path, "timeshare_malloc", "timeshare_free")
    raw = alloc._allocator
    for setter, symbol in _HOOKS.items():
        if hasattr(raw, setter):
            getattr(raw, setter)(ctypes.cast(getattr(lib, symbol), ctypes.c_void_p).value)
        else:
            log.info("timeshare: this torch has no %s hook; %s is not forwarded", setter, symbol)
    try:
        torch.cuda.memory.change_current_allocator(alloc)
    except RuntimeError as e:  # e.g. "Can't swap an already initialized allocator"
        raise TimeshareError(
            f"timeshare.enable(): PyTorch refused the allocator swap ({e}). " + _TOO_LATE
        ) from None
    from timeshare import stats

    stats.patch_torch(torch)
    _gap_warnings(torch)
    return lib, alloc


def _install(conf: str, require_device: bool = True) -> None:
    """Registers timeshare with PyTorch, on the native route where it can (see _native.py),
    else on the pluggable one. `require_device=False` lets tests exercise every step that needs
    no GPU against a CUDA build of torch on a machine without one."""
    import torch

    _check_torch_ready(torch, require_device)
    path = library_path()
    _check_one_core(path)
    _C.configure(conf)
    opts = _C.parse_conf(conf)
    lib = alloc = None
    if _install_native(torch, opts["route"]):
        chosen = "native"
    else:
        lib, alloc = _install_pluggable(torch, path)
        chosen = "pluggable"
    _state.update(enabled=True, conf=conf, allocator=alloc, lib=lib, route=chosen)
    if opts["budget"] > 0 and opts["spill"] != "none":
        from timeshare._offload import install_global

        install_global(conf)  # saved-tensor hooks that spill above the budget


def enable(conf: str | None = None, **options: Any) -> None:
    """Replace PyTorch's CUDA caching allocator with timeshare's, for this process.

    Call before the first CUDA tensor. Options come from ``TIMESHARE_CONF``, then ``conf``
    (same ``key:value,...`` form), then keyword arguments, e.g.
    ``enable(budget="20GiB", spill="host")``; ``timeshare.options_table()`` lists them all.

    Raises ValueError for a bad option and TimeshareError when the swap is impossible (no CUDA,
    CUDA already initialised, a CPU-only torch); in both cases nothing was changed. Calling it
    again with the same options does nothing; with other options it raises.
    """
    merged = build_conf(conf, **options)
    if _state["enabled"]:
        if merged != _state["conf"]:
            raise TimeshareError(
                "timeshare is already enabled with other options; options cannot change once "
                f"PyTorch uses the allocator (enabled with '{_state['conf']}')"
            )
        return
    # The sim backend (no GPU: tests, demos) needs no device; every other backend does.
    _install(merged, require_device=_C.parse_conf(merged)["backend"] != "sim")
