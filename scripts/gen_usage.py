"""Regenerates the options table in docs/usage.md from the parser's own table.

    python scripts/gen_usage.py          # rewrite docs/usage.md in place
    python scripts/gen_usage.py --check  # exit 1 if docs/usage.md is out of date (tests use it)
"""

from __future__ import annotations

import sys
from pathlib import Path

import timeshare

DOC = Path(__file__).resolve().parents[1] / "docs" / "usage.md"
BEGIN, END = "<!-- options:begin -->", "<!-- options:end -->"


def table() -> str:
    rows = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    rows += [f"| `{k}` | {t} | `{d}` | {m} |" for k, t, d, m in timeshare.options_table()]
    return "\n".join(rows)


def render(text: str) -> str:
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    return f"{head}{BEGIN}\n{table()}\n{END}{tail}"


def main() -> int:
    text = DOC.read_text()
    new = render(text)
    if "--check" in sys.argv:
        if new != text:
            print("docs/usage.md options table is out of date: run python scripts/gen_usage.py")
            return 1
        return 0
    DOC.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
