"""Imported at interpreter start-up by ``timeshare-autoload.pth`` when ``TIMESHARE=1``.

Enables timeshare before user code can touch CUDA. A failure never stops the user's program:
it prints one line to stderr and PyTorch keeps its own allocator.
"""

from __future__ import annotations

import sys


def _autoload() -> None:
    try:
        from timeshare import enable

        enable()
    except Exception as e:  # noqa: BLE001 - start-up must never crash the user's program
        print(f"[timeshare] TIMESHARE=1 but timeshare is not enabled: {e}", file=sys.stderr)


_autoload()
