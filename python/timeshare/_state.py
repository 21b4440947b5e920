"""The process's enable state: set by ``_enable`` (enable(), the TIMESHARE=1 hook), read by
``stats`` (memory_summary's title names the route) and the public ``timeshare.route()``. Its own
module so that neither of those imports the other."""

from __future__ import annotations

from typing import Any

__all__ = ["STATE", "route"]

STATE: dict[str, Any] = {"enabled": False, "conf": None, "allocator": None, "route": None}


def route() -> str | None:
    """How PyTorch reaches timeshare in this process: ``"native"`` (timeshare is PyTorch's own
    ``CUDAAllocator``: every torch.cuda memory feature works), ``"pluggable"`` (the
    ``CUDAPluggableAllocator`` fallback; docs/usage.md lists what it cannot do), or None when
    timeshare is not enabled."""
    return STATE["route"]
