#!/usr/bin/env python3
"""Synthetic traces of one block size, for the hot path's cost per block size.

usage: python scripts/synthetic_blocks.py OUTDIR [--iterations N] [--sizes 2MiB,2GiB]

Writes OUTDIR/synthetic_<size>.tsev per size: a training-like step in which every block has the
same size: 4 long-lived blocks (weights), then per iteration 16 activations allocated one after
another, each with a temporary freed at once, and the activations freed in reverse (backward).
The event sequence is the same for every size, so the ns per malloc + free pair of two sizes
differ only by what a block's size costs a policy: with 2 GiB blocks every block spans 1024
granules of 2 MiB, and a pool that walks granules one by one pays for each
(``python scripts/bench_hotpath.py OUTDIR/*.tsev``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/: benchlib, also under runpy
import benchlib  # noqa: E402

benchlib.use_checkout_package()
from timeshare.snapshot import EVENT_DTYPE, OP_ALLOC, OP_FREE, write_tsev  # noqa: E402

WEIGHTS = 4
LAYERS = 16

__all__ = ["events", "main", "parse_size"]


def parse_size(text: str) -> int:
    """'2MiB' / '2GiB' / '4096' -> bytes."""
    units = {"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
    for suffix, scale in units.items():
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * scale)
    return int(text)


def events(block_bytes: int, iterations: int) -> np.ndarray:
    """The trace's events (EVENT_DTYPE), one microsecond apart."""
    rows: list[tuple[int, int, int, int, int]] = []
    next_id = 0

    def alloc() -> int:
        nonlocal next_id
        rows.append((OP_ALLOC, 0, next_id, block_bytes, len(rows)))
        next_id += 1
        return next_id - 1

    def free(i: int) -> None:
        rows.append((OP_FREE, 0, i, block_bytes, len(rows)))

    weights = [alloc() for _ in range(WEIGHTS)]
    for _ in range(iterations):
        saved = []
        for _ in range(LAYERS):
            saved.append(alloc())
            free(alloc())  # the layer's temporary
        for i in reversed(saved):
            free(i)
    for i in weights:
        free(i)
    out = np.zeros(len(rows), dtype=EVENT_DTYPE)
    for k, name in enumerate(("op", "stream", "id", "bytes", "time_us")):
        out[name] = [r[k] for r in rows]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="synthetic_blocks.py", description=__doc__.split("\n")[0])
    p.add_argument("outdir")
    p.add_argument("--iterations", type=int, default=200)
    p.add_argument("--sizes", default="2MiB,2GiB")
    a = p.parse_args(argv)
    out = Path(a.outdir)
    out.mkdir(parents=True, exist_ok=True)
    for size in (s.strip() for s in a.sizes.split(",") if s.strip()):
        path = out / f"synthetic_{size.lower()}.tsev"
        write_tsev(events(parse_size(size), a.iterations), path)
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
