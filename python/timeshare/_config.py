"""Options: ``TIMESHARE_CONF`` and ``enable(**options)`` share one parser (the C++ one)."""

from __future__ import annotations

import os
from typing import Any

from timeshare import _C

__all__ = ["build_conf", "options_table", "parse_conf"]

ENV_CONF = "TIMESHARE_CONF"


def parse_conf(conf: str) -> dict[str, Any]:
    """Parse a ``key:value,key:value`` string into a dict of every option's value.

    Raises ValueError with one line naming the bad key or value (and the valid keys).
    """
    return _C.parse_conf(conf)


def options_table() -> list[tuple[str, str, str, str]]:
    """Every option as (key, type, default, meaning): the table docs/usage.md shows."""
    return [tuple(row) for row in _C.option_table()]


def _value_text(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        text = str(value)
        if "," in text:
            raise ValueError(f"timeshare option {key}={value!r}: values cannot contain ','")
        return text
    raise ValueError(f"timeshare option {key}={value!r}: expected a str, int, float or bool")


def build_conf(conf: str | None = None, **options: Any) -> str:
    """Merge ``TIMESHARE_CONF`` (lowest), ``conf`` and keyword options (highest) into one
    canonical conf string, validated by the parser."""
    parts = [os.environ.get(ENV_CONF, ""), conf or ""]
    parts += [f"{key}:{_value_text(key, v)}" for key, v in options.items() if v is not None]
    merged = ",".join(p for p in parts if p.strip())
    # A budget alone means "keep under it by spilling to host memory" (the documented default);
    # budget with spill:none stays a hard cap.
    keys = {item.split(":", 1)[0].strip().lower() for item in merged.split(",") if ":" in item}
    if "budget" in keys and "spill" not in keys and _C.parse_conf(merged)["budget"] > 0:
        merged += ",spill:host"
    return _C.normalize_conf(merged)
