"""The hot path through the native route against the pluggable route, on the sim backend.

    python scripts/bench_native.py [--pairs 200000] [--rounds 5]

Compiles scripts/bench_native.cpp against the installed timeshare package (its libtimeshare.so
and libtimeshare_native-<torch>.so) and a CUDA build of torch (.venv-cuda, or
TIMESHARE_CUDA_TORCH_PYTHON), then times malloc+free pairs in one process: c10's raw_alloc /
raw_delete on timeshare's CUDAAllocator (native) against torch's CUDAPluggableAllocator wrapper
over timeshare's C entry points (pluggable), alternating, in rounds. Prints each round and the
median ratio native / pluggable (below 1: the native route is faster). Both run the same core on
the same sim device: the ratio is the cost of the route, not of a GPU.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cuda_python() -> str:
    for c in (os.environ.get("TIMESHARE_CUDA_TORCH_PYTHON", ""),
              str(ROOT / ".venv-cuda/bin/python")):
        if c and Path(c).exists():
            return c
    sys.exit("bench_native: no CUDA build of torch (run scripts/setup.sh)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()

    import timeshare

    pkg = Path(timeshare.__file__).resolve().parent
    py = cuda_python()
    torch_dir, version = subprocess.run(
        [py, "-I", "-c", "import os,torch;print(os.path.dirname(torch.__file__));"
                         "print(torch.__version__)"],
        capture_output=True, text=True, check=True).stdout.split()
    native = pkg / f"libtimeshare_native-{version}.so"
    if not native.exists():
        sys.exit(f"bench_native: the installed package has no {native.name}")
    cuda_inc = next((d for d in ("/usr/local/cuda/include", "/usr/include")
                     if Path(d, "cuda_runtime_api.h").exists()), "/usr/local/cuda/include")
    exe = Path(tempfile.mkdtemp(prefix="bench_native_")) / "bench_native"
    lib = f"{torch_dir}/lib"
    cmd = ["g++", "-O2", "-std=c++20", str(ROOT / "scripts" / "bench_native.cpp"), "-o", str(exe),
           "-isystem", f"{torch_dir}/include", "-isystem", cuda_inc,
           str(pkg / "libtimeshare.so"), str(native),
           f"{lib}/libc10.so", f"{lib}/libc10_cuda.so", f"{lib}/libtorch_cuda.so",
           f"{lib}/libtorch_cpu.so", f"-Wl,-rpath,{pkg}:{lib}"]
    print("[bench_native] compiling against", torch_dir, flush=True)
    subprocess.run(cmd, check=True)
    env = dict(os.environ, TIMESHARE_LOG="error")
    out = subprocess.run([str(exe), str(args.pairs), str(args.rounds)], capture_output=True,
                         text=True, check=True, env=env).stdout
    print(out.strip())
    rows = [line.split(",") for line in out.strip().splitlines()[1:]]
    native_ns = statistics.median(float(r[1]) for r in rows)
    plug_ns = statistics.median(float(r[2]) for r in rows)
    ratio = statistics.median(float(r[3]) for r in rows)
    print(f"median: native {native_ns:.0f} ns/pair, pluggable {plug_ns:.0f} ns/pair, "
          f"ratio native/pluggable {ratio:.3f} (torch {version}, sim backend, {args.pairs} pairs "
          f"x {args.rounds} rounds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
