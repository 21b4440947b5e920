"""timeshare: a drop-in replacement for PyTorch's CUDA caching allocator that shares GPU memory
across time.

    import timeshare
    timeshare.enable()                 # before the first CUDA tensor
    ...train as usual...
    print(timeshare.memory_summary())

Or with no code change: ``TIMESHARE=1 python train.py`` (options in ``TIMESHARE_CONF``).
"""

from __future__ import annotations

from timeshare._config import options_table, parse_conf
from timeshare._enable import TimeshareError, enable, is_enabled, library_path, route
from timeshare._fit import fit, recompute_stats
from timeshare._offload import (
    OffloadError,
    install_global,
    offload,
    spill_stats,
    uninstall_global,
)
from timeshare.stats import (
    empty_cache,
    max_memory_allocated,
    max_memory_reserved,
    memory_allocated,
    memory_reserved,
    memory_stats,
    memory_summary,
    reset_accumulated_memory_stats,
    reset_peak_memory_stats,
)

__version__ = "0.1.0"

__all__ = [
    "OffloadError",
    "TimeshareError",
    "__version__",
    "empty_cache",
    "enable",
    "fit",
    "install_global",
    "is_enabled",
    "library_path",
    "max_memory_allocated",
    "max_memory_reserved",
    "memory_allocated",
    "memory_reserved",
    "memory_stats",
    "memory_summary",
    "offload",
    "options_table",
    "parse_conf",
    "recompute_stats",
    "reset_accumulated_memory_stats",
    "reset_peak_memory_stats",
    "route",
    "spill_stats",
    "uninstall_global",
]
