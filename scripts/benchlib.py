"""What the scripts/bench_*.py share: the repository root, the package they measure, the traces
they replay, the machine line of a generated table, and writing a generated section of a doc.

A bench script starts with

    sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/, also under runpy
    import benchlib

so that it finds this module however it is run (``python scripts/bench_x.py``, ``runpy``).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path
from typing import Any, Callable

__all__ = ["CORPUS", "GPU_TRACES", "ROOT", "SHIPPED_TRACES", "add_held_out_args", "corpus_splits",
           "gpu_snapshots", "held_out_sets", "machine", "traces", "use_checkout_package",
           "write_section"]

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_TRACES = ROOT / "python" / "timeshare" / "traces"
# The real GPU snapshots (held out), in shared/ beside the repository.
GPU_TRACES = ROOT.parent / "shared" / "traces-gpu"
# The trace corpus as scripts/corpus/capture.sh writes it, and its held-out rows that are shipped.
CORPUS = ROOT / "out" / "corpus"
SHIPPED_HELD_OUT = ROOT / "tests" / "data" / "corpus"


def use_checkout_package() -> None:
    """Imports the installed timeshare (or the one on PYTHONPATH); only where there is none,
    the checkout's python/ (with the built .so files) goes on sys.path. A checkout without a
    built _C must not shadow an installed package."""
    try:
        import timeshare  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(ROOT / "python"))


def traces() -> list[Path]:
    """The shipped traces, then the real GPU snapshots (where shared/ has them)."""
    shipped = sorted(SHIPPED_TRACES.glob("*.pkl.gz"))
    gpu_dir = next((p for p in (GPU_TRACES, Path("/work/shared/traces-gpu")) if p.is_dir()), None)
    gpu = sorted(gpu_dir.glob("*.pkl.gz")) if gpu_dir else []
    return shipped + gpu


def corpus_splits(corpus: Path = CORPUS) -> dict[str, list[Path]]:
    """The corpus's traces by split ("tuning", "heldout": scripts/corpus/models.py's split_of),
    the shipped held-out ones added; files that are no corpus row are left out."""
    sys.path.insert(0, str(ROOT / "scripts" / "corpus"))
    import models  # scripts/corpus/: the corpus's rows

    out: dict[str, list[Path]] = {"tuning": [], "heldout": []}
    seen: set[str] = set()
    for d in (corpus, SHIPPED_HELD_OUT):
        for p in sorted(d.glob("*.pkl.gz")) if d.is_dir() else []:
            name = p.name.removesuffix(".pkl.gz")
            try:
                row = models.by_name(name)
            except KeyError:
                continue  # not a corpus row
            if name not in seen:
                seen.add(name)
                out[models.split_of(row)].append(p)
    return out


def gpu_snapshots(gpu_dir: Path | str = GPU_TRACES) -> list[Path]:
    """The real GPU snapshots in `gpu_dir` (held out; none for an empty path)."""
    return sorted(Path(gpu_dir).glob("*.pkl*")) if str(gpu_dir) else []


def add_held_out_args(ap: argparse.ArgumentParser) -> None:
    """--corpus and --gpu-traces: where held_out_sets looks."""
    ap.add_argument("--corpus", default=str(CORPUS),
                    help="captured corpus traces (default: %(default)s)")
    ap.add_argument("--gpu-traces", default=str(GPU_TRACES))


def held_out_sets(args: argparse.Namespace) -> tuple[dict[str, list[Path]], list[Path]]:
    """The corpus's splits and the GPU snapshots where add_held_out_args's options point."""
    return corpus_splits(Path(args.corpus)), gpu_snapshots(args.gpu_traces)


def machine() -> dict[str, Any]:
    """Where a figure was measured: platform, CPUs, load average (1 / 5 / 15 min)."""
    try:
        load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        load = "?"
    return {"platform": platform.platform(), "cpus": os.cpu_count(), "load": load}


def write_section(doc: Path, begin: str, end: str | None, body: str, *,
                  place: Callable[[str, str], str] | None = None) -> None:
    """Replaces the generated section of `doc` that starts at the marker line `begin` with
    `begin`, `body` and `end`, one per line. The section ends at the marker `end`, or, with
    `end` None, at the end of the doc (then a blank line comes before it). Where `doc` has no
    section yet, `place(text, section)` says where it goes (default: right after the text).
    """
    text = doc.read_text() if doc.exists() else ""
    if end is None:
        head = text.split(begin)[0].rstrip()
        doc.write_text(f"{head}\n\n{begin}\n{body}\n")
        return
    section = f"{begin}\n{body}\n{end}"
    at = text.find(begin)
    stop = text.find(end, at) if at >= 0 else -1
    if stop >= 0:
        text = text[:at] + section + text[stop + len(end):]
    else:
        text = place(text, section) if place else text + section
    doc.write_text(text)
