"""Transitional: the offload code lives in ``timeshare._offload``; ``timeshare.offload`` is the
context class, and ``timeshare.spill_stats`` / ``install_global`` / ``uninstall_global`` /
``OffloadError`` are re-exported by the package."""

from timeshare._offload import OffloadError, install_global, offload, spill_stats, uninstall_global

__all__ = ["OffloadError", "install_global", "offload", "spill_stats", "uninstall_global"]
