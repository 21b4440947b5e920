"""Memory statistics with ``torch.cuda.memory_stats()``'s key names, plus ``timeshare.*`` keys.

On the native route (timeshare is PyTorch's own CUDAAllocator) ``torch.cuda.memory_stats()``
and its family answer from timeshare by themselves. Under the pluggable fallback PyTorch's own
functions raise "does not yet support"; there, once timeshare is enabled, those functions are
replaced by the ones here, so training frameworks that log memory keep working.
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from typing import Any, Union

from timeshare import _C
from timeshare._state import route

__all__ = [
    "empty_cache",
    "max_memory_allocated",
    "max_memory_reserved",
    "memory_allocated",
    "memory_reserved",
    "memory_stats",
    "memory_summary",
    "patch_torch",
    "reset_accumulated_memory_stats",
    "reset_peak_memory_stats",
]

Device = Union[int, str, Any, None]


def _device_index(device: Device) -> int:
    """Index of `device` (int, "cuda:1", torch.device or None for the current device)."""
    if device is None:
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_initialized():
            return int(torch.cuda.current_device())
        return 0
    if isinstance(device, int):
        return device
    if isinstance(device, str):
        _, _, idx = device.partition(":")
        return int(idx) if idx else _device_index(None)
    idx = getattr(device, "index", None)
    if getattr(device, "type", "cuda") != "cuda":
        raise ValueError(f"timeshare: expected a CUDA device, got {device!r}")
    return _device_index(None) if idx is None else int(idx)


def memory_stats(device: Device = None) -> OrderedDict[str, Any]:
    """Statistics of timeshare's allocator for `device`, in torch.cuda.memory_stats() form.

    Keys are torch's (``allocated_bytes.all.current``, ``reserved_bytes.large_pool.peak``,
    ``num_alloc_retries``, ``num_ooms``, ...) plus ``timeshare.*`` keys for the predictor and
    spill engine. Empty before the device's first allocation, as torch's is.
    """
    stats = _C.device_stats(_device_index(device))
    offload = sys.modules.get("timeshare._offload")
    if offload is not None:  # with or without the allocator enabled
        stats.update(offload.spill_stats())
    fit = sys.modules.get("timeshare._fit")
    if fit is not None:  # models fitted with timeshare.fit
        stats.update(fit.recompute_stats())
    return OrderedDict(sorted(stats.items()))


def _stat(device: Device, key: str) -> int:
    return int(memory_stats(device).get(key, 0))


def memory_allocated(device: Device = None) -> int:
    """Bytes currently held by live blocks (torch.cuda.memory_allocated)."""
    return _stat(device, "allocated_bytes.all.current")


def max_memory_allocated(device: Device = None) -> int:
    """Peak of memory_allocated since start or the last reset_peak_memory_stats."""
    return _stat(device, "allocated_bytes.all.peak")


def memory_reserved(device: Device = None) -> int:
    """Bytes reserved from the device by timeshare (torch.cuda.memory_reserved)."""
    return _stat(device, "reserved_bytes.all.current")


def max_memory_reserved(device: Device = None) -> int:
    """Peak of memory_reserved since start or the last reset_peak_memory_stats."""
    return _stat(device, "reserved_bytes.all.peak")


def reset_peak_memory_stats(device: Device = None) -> None:
    """Reset every ``*.peak`` figure to its current value."""
    _C.reset_peak_stats(_device_index(device))


def reset_accumulated_memory_stats(device: Device = None) -> None:
    """Reset every ``*.allocated`` / ``*.freed`` total and the event counters."""
    _C.reset_accumulated_stats(_device_index(device))


def empty_cache() -> None:
    """Release cached device memory that no live block uses (torch.cuda.empty_cache)."""
    _C.empty_cache()


def _fmt_bytes(n: float) -> str:
    for unit in ("B  ", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:7.0f} {unit}" if unit == "B  " else f"{n:7.2f} {unit}"
        n /= 1024
    return f"{n:.2f}"


def format_summary(stats: dict[str, Any], title: str, abbreviated: bool = False) -> str:
    """Render a stats dict as torch.cuda.memory_summary() does: one row per figure, columns
    current / peak / total allocated / total freed, split by pool unless `abbreviated`."""
    width = 79
    rows = [
        ("Allocated memory", "allocated_bytes", True),
        ("Active memory", "active_bytes", True),
        ("Requested memory", "requested_bytes", True),
        ("Reserved memory", "reserved_bytes", True),
        ("Non-releasable memory", "inactive_split_bytes", True),
        ("Allocations", "allocation", False),
        ("Active allocs", "active", False),
        ("Device reserved segments", "segment", False),
        ("Non-releasable allocs", "inactive_split", False),
    ]
    pools = [("all", "")] if abbreviated else [("all", ""), ("large_pool", "  from large pool"),
                                                ("small_pool", "  from small pool")]
    out = ["=" * width, f" {title}".ljust(width), "-" * width,
           f"{'Metric':<27}| {'Cur Usage':>10} | {'Peak Usage':>10} | {'Tot Alloc':>10} | "
           f"{'Tot Freed':>10}",
           "-" * width]
    for label, key, is_bytes in rows:
        for pool, suffix in pools:
            vals = [stats.get(f"{key}.{pool}.{k}", 0)
                    for k in ("current", "peak", "allocated", "freed")]
            text = [(_fmt_bytes(v) if is_bytes else f"{v:>10d}") for v in vals]
            out.append(f"{(label if not suffix else suffix):<27}| "
                       + " | ".join(f"{t:>10}" for t in text))
        out.append("-" * width)
    out.append(f"{'Device allocs / frees':<27}| {stats.get('num_device_alloc', 0):>10} | "
               f"{stats.get('num_device_free', 0):>10} |")
    out.append(f"{'Alloc retries / OOMs':<27}| {stats.get('num_alloc_retries', 0):>10} | "
               f"{stats.get('num_ooms', 0):>10} |")
    ts = {k: v for k, v in stats.items() if k.startswith("timeshare.")}
    if ts:
        out.append("-" * width)
        out.append(" timeshare".ljust(width))
        for k, v in sorted(ts.items()):
            shown = f"{v:.3f}" if isinstance(v, float) else str(v)
            out.append(f"  {k[len('timeshare.'):]:<45}{shown:>30}")
    out.append("=" * width)
    return "\n".join(out) + "\n"


def memory_summary(device: Device = None, abbreviated: bool = False) -> str:
    """A readable table of memory_stats(device), like torch.cuda.memory_summary()."""
    idx = _device_index(device)
    stats = memory_stats(idx)
    live = route()
    title = (f"timeshare memory summary, device {idx} ({_C.current_conf().split(',')[0]}, "
             f"{live + ' route' if live else 'not enabled'})")
    if not stats:
        return f"{title}: no allocation yet\n"
    return format_summary(stats, title, abbreviated)


_PATCHED = (
    "memory_stats", "memory_allocated", "max_memory_allocated", "memory_reserved",
    "max_memory_reserved", "memory_summary", "reset_peak_memory_stats",
    "reset_accumulated_memory_stats",
)


def patch_torch(torch: Any) -> None:
    """Answer torch.cuda's memory statistics functions from timeshare (they raise under a
    pluggable allocator otherwise)."""
    this = sys.modules[__name__]
    for name in _PATCHED:
        fn = getattr(this, name)
        for mod in (torch.cuda, torch.cuda.memory):
            if hasattr(mod, name):
                setattr(mod, name, fn)
    for legacy, fn in (("memory_cached", memory_reserved),
                       ("max_memory_cached", max_memory_reserved),
                       ("reset_max_memory_allocated", reset_peak_memory_stats),
                       ("reset_max_memory_cached", reset_peak_memory_stats)):
        for mod in (torch.cuda, torch.cuda.memory):
            if hasattr(mod, legacy):
                setattr(mod, legacy, fn)
