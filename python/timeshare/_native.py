"""The native route: timeshare as PyTorch's own ``CUDAAllocator`` (csrc/timeshare/torch/).

``pip install .`` builds ``libtimeshare_native-<torch version>.so`` against each CUDA build of
torch it is given (the target interpreter's, and those of ``TIMESHARE_NATIVE_FOR``): a subclass
of ``c10::cuda::CUDACachingAllocator::CUDAAllocator`` over the same core as the pluggable route
(``libtimeshare.so``). Installed with torch's ``changeCurrentAllocator``, it answers every
``torch.cuda`` memory entry point (stats, snapshots and memory history, private pools for CUDA
graphs and ``MemPool``, ``cacheInfo``, OOM observers). Its ABI is that torch release's, so the
library is loaded only when its version is the running torch's; otherwise, or when it fails to
load, timeshare falls back to the pluggable route and says why in one log line.
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

__all__ = ["cache_info", "is_current", "library_for", "record_history", "try_install",
           "unavailable_reason"]

_ERROR_BYTES = 1024


def library_for(torch_version: str) -> Path:
    """Where the native layer built for ``torch_version`` lies (it may not exist)."""
    return Path(__file__).resolve().parent / f"libtimeshare_native-{torch_version}.so"


def unavailable_reason(torch: Any) -> str | None:
    """Why the native route cannot be used with this torch, or None when it can be tried."""
    if not getattr(torch.version, "cuda", None):
        return f"torch {torch.__version__} is not a CUDA build"
    path = library_for(torch.__version__)
    if not path.exists():
        built = sorted(p.name for p in path.parent.glob("libtimeshare_native-*.so"))
        return (f"no native layer was built for torch {torch.__version__} "
                f"({', '.join(built) if built else 'none built'}; reinstall timeshare with this "
                "torch present)")
    return None


def try_install(torch: Any) -> tuple[bool, str]:
    """Makes the native layer PyTorch's current CUDA allocator: (True, "") or (False, why)."""
    why = unavailable_reason(torch)
    if why is not None:
        return False, why
    path = library_for(torch.__version__)
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as e:
        return False, f"the native layer {path.name} did not load ({e})"
    _declare(lib)
    built_for = lib.timeshare_native_torch_version().decode()
    if built_for != torch.__version__:
        return False, f"{path.name} was built for torch {built_for}, not {torch.__version__}"
    err = ctypes.create_string_buffer(_ERROR_BYTES)
    if lib.timeshare_native_install(err, ctypes.c_size_t(_ERROR_BYTES)) != 0:
        return False, err.value.decode(errors="replace").strip()
    _LOADED.append(lib)  # keep it loaded for the life of the process
    return True, ""


_LOADED: list[ctypes.CDLL] = []


def _declare(lib: ctypes.CDLL) -> None:
    lib.timeshare_native_torch_version.restype = ctypes.c_char_p
    lib.timeshare_native_install.restype = ctypes.c_int
    lib.timeshare_native_install.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
    lib.timeshare_native_is_current.restype = ctypes.c_int


def record_history(enabled: bool = True, max_entries: int = 100_000) -> None:
    """Starts or stops the memory history through c10's ``recordHistory`` (no stacks).

    ``torch.cuda.memory._record_memory_history()`` is the way on a GPU; it initialises CUDA
    first, so on a machine without one (the sim backend) this reaches the same C++ entry point.
    """
    err = ctypes.create_string_buffer(_ERROR_BYTES)
    # c10's entry point reaches whichever allocator is current (the pluggable one refuses).
    lib = _LOADED[0] if _LOADED else ctypes.CDLL(str(library_for(_torch_version())))
    lib.timeshare_native_record_history.restype = ctypes.c_int
    lib.timeshare_native_record_history.argtypes = [ctypes.c_int, ctypes.c_size_t,
                                                    ctypes.c_char_p, ctypes.c_size_t]
    if lib.timeshare_native_record_history(int(enabled), max_entries, err, _ERROR_BYTES) != 0:
        raise RuntimeError(err.value.decode(errors="replace"))


def cache_info(device: int = 0) -> int:
    """``c10::cuda::CUDACachingAllocator::cacheInfo`` of PyTorch's current allocator (what
    cuDNN's autotuner asks): the largest block it could hand out without a new device call.
    Raises RuntimeError with the allocator's own message where it refuses (the pluggable
    route)."""
    lib = _LOADED[0] if _LOADED else ctypes.CDLL(str(library_for(_torch_version())))
    fn = lib.timeshare_native_cache_info
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_size_t), ctypes.c_char_p,
                   ctypes.c_size_t]
    largest = ctypes.c_size_t(0)
    err = ctypes.create_string_buffer(_ERROR_BYTES)
    if fn(device, ctypes.byref(largest), err, _ERROR_BYTES) != 0:
        raise RuntimeError(err.value.decode(errors="replace"))
    return int(largest.value)


def _torch_version() -> str:
    import torch

    return str(torch.__version__)


def is_current() -> bool:
    """Whether timeshare's native allocator is PyTorch's current CUDA allocator."""
    return bool(_LOADED) and bool(_LOADED[0].timeshare_native_is_current())
