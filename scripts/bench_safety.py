#!/usr/bin/env python3
"""The temporal pool with and without its safety (quarantine, fences, aliases), side by side.

usage: python scripts/bench_safety.py [--build-dir build-temporal] [--iterations 30]

Builds csrc/tools/temporal_eval (CMake, no Python module), writes the shipped traces as .tsev
(``python -m timeshare.snapshot --tsev``) and the synthetic ones, replays them with the default
pool and with ``--unsafe-unmap`` (the behaviour before the fix, a test of the sim's fault
detector), and prints the markdown table of docs/temporal_pool.md, "Nothing unmapped under
running kernels": fragmentation, device calls (map + unmap), waits and the faults the unsafe
policy makes. Needs the installed package (``bash scripts/setup.sh``) for the trace reader.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/: benchlib, also under runpy
import benchlib  # noqa: E402

ROOT = benchlib.ROOT
SYNTHETIC = ("synth-cnn", "synth-dynamic", "synth-transformer", "synth-small-mlp")


def run(cmd: list[str]) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def rows(text: str) -> dict[tuple[str, str], list[str]]:
    """temporal_eval's table: (trace, predictor) -> columns."""
    out = {}
    for line in text.splitlines():
        cols = line.split()
        if len(cols) >= 13 and cols[0] != "trace" and cols[1] in ("oracle", "lastsize"):
            out[(cols[0], cols[1])] = cols
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--build-dir", default=str(ROOT / "build-temporal"))
    p.add_argument("--iterations", type=int, default=30, help="synthetic trace iterations")
    args = p.parse_args(argv)
    build = Path(args.build_dir)
    subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
                    "-DTIMESHARE_BUILD_PYTHON=OFF"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["cmake", "--build", str(build), "-j2", "--target", "temporal_eval"],
                   check=True, stdout=subprocess.DEVNULL)
    tool = str(build / "temporal_eval")
    with tempfile.TemporaryDirectory() as tmp:
        real, synth = Path(tmp, "real"), Path(tmp, "synth")
        run([sys.executable, "-m", "timeshare.snapshot", "--tsev", str(real),
             str(ROOT / "python" / "timeshare" / "traces")])
        run([tool, "--write-synthetic", str(synth), "--iterations", str(args.iterations)])
        traces = sorted(str(f) for f in real.glob("*.tsev")) + [
            str(synth / f"{n}.tsev") for n in SYNTHETIC]
        preds = ["--predictors", "oracle,lastsize"]
        safe = rows(run([tool, "--repeat", "1", *preds, *traces]))
        unsafe = rows(run([tool, "--repeat", "1", "--unsafe-unmap", *preds, *traces]))
    print("| trace | predictor | frag (safe) | frag, unsafe | calls (safe) | calls, unsafe "
          "| waits (safe) | faults, unsafe |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for key in sorted(safe, key=lambda k: (k[0].startswith("synth"), k[0], k[1] != "oracle")):
        if key[0].startswith("synth") and key[1] != "oracle":
            continue
        a, b = safe[key], unsafe[key]
        print(f"| {key[0]} | {key[1]} | {a[5]} | {b[5]} | {int(a[6]) + int(a[7])} "
              f"| {int(b[6]) + int(b[7])} | {a[11]} | {b[12]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
