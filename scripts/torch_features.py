"""Which torch.cuda memory features timeshare answers, on each route, probed live.

    python scripts/torch_features.py            # print the table
    python scripts/torch_features.py --write    # and rewrite it in docs/usage.md

Each probe runs in a fresh process of a CUDA build of torch (.venv-cuda, or
TIMESHARE_CUDA_TORCH_PYTHON) with timeshare enabled on the sim backend (no GPU needed), once on
the native route and once on the pluggable one, and reaches the allocator through torch's own
bindings. A cell is "works" when the probe's checks pass, else the first line of the error torch
raised. PyTorch's own allocator column is not probed (it needs a GPU here): it is the reference
every row is about. Features that need a GPU to run at all (graph capture itself, cuDNN) are
checked by scripts/gpu_check.sh.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "usage.md"
BEGIN, END = "<!-- features:begin -->", "<!-- features:end -->"

SETUP = """
import ctypes, torch, timeshare
from timeshare import _native
MiB = 1 << 20
timeshare.enable(backend="sim", route=ROUTE, sim_capacity="1GiB")
torch.cuda._initialized = True  # no GPU: torch's lazy CUDA init cannot run
if timeshare.route() == "native":
    alloc = lambda n: torch._C._cuda_cudaCachingAllocator_raw_alloc(n, 0)
    free = torch._C._cuda_cudaCachingAllocator_raw_delete
else:
    lib = ctypes.CDLL(timeshare.library_path())
    lib.timeshare_malloc.restype = ctypes.c_void_p
    lib.timeshare_malloc.argtypes = [ctypes.c_size_t, ctypes.c_int, ctypes.c_void_p]
    lib.timeshare_free.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int,
                                   ctypes.c_void_p]
    alloc = lambda n: lib.timeshare_malloc(n, 0, None)
    free = lambda p: lib.timeshare_free(p, 0, 0, None)
p = alloc(3 * MiB)
"""

# (feature as a user meets it, probe: raises or asserts when the feature does not work)
PROBES = [
    ("`torch.cuda.memory_stats()`, `memory_allocated()`, `memory_summary()` (torch's binding)",
     "assert torch._C._cuda_memoryStats(0)['allocated_bytes']['all']['current'] == 3 * MiB"),
    ("`torch.cuda.reset_peak_memory_stats()`", "torch._C._cuda_resetPeakMemoryStats(0)"),
    ("`torch.cuda.reset_accumulated_memory_stats()`",
     "torch._C._cuda_resetAccumulatedMemoryStats(0)"),
    ("`torch.cuda.get_per_process_memory_fraction()`",
     "torch.cuda.set_per_process_memory_fraction(0.5, 0)\n"
     "assert torch._C._cuda_getMemoryFraction(0) == 0.5"),
    ("`torch.cuda.memory._snapshot()`, memory_viz `segment_plot`",
     "from torch.cuda import _memory_viz\n"
     "s = torch._C._cuda_memorySnapshot(None)\n"
     "assert s['segments'] and _memory_viz.segment_plot(s)"),
    ("memory history (`_record_memory_history`, `trace_plot`, `timeshare replay` of the dump)",
     "_native.record_history(True, 100)\nfree(alloc(MiB))\n"
     "from torch.cuda import _memory_viz\n"
     "s = torch.cuda.memory._snapshot()\n"
     "assert s['device_traces'][0] and _memory_viz.trace_plot(s)"),
    ("private pools (`MemPool`, CUDA graph capture): `beginAllocateToPool` isolates",
     "torch._C._cuda_beginAllocateCurrentThreadToPool(0, (0, 5))\nq = alloc(4 * MiB)\n"
     "torch._C._cuda_endAllocateToPool(0, (0, 5))\nfree(q)\n"
     "assert alloc(4 * MiB) != q\ntorch._C._cuda_releasePool(0, (0, 5))"),
    ("`checkPoolLiveAllocations` (`torch.compile(mode='reduce-overhead')`)",
     "torch._C._cuda_beginAllocateCurrentThreadToPool(0, (0, 6))\nq = alloc(4 * MiB)\n"
     "torch._C._cuda_endAllocateToPool(0, (0, 6))\n"
     "assert torch._C._cuda_checkPoolLiveAllocations(0, (0, 6), {q})"),
    ("`cacheInfo` (`torch.backends.cudnn.benchmark = True`)", "_native.cache_info(0)"),
    ("out of memory raises `torch.OutOfMemoryError` (binding `raw_alloc`)",
     "try:\n    torch._C._cuda_cudaCachingAllocator_raw_alloc(1 << 40, 0)\n"
     "except torch.OutOfMemoryError:\n    pass"),
    ("`torch.cuda.empty_cache()`", "free(p)\ntorch._C._cuda_emptyCache()"),
    ("CUDA graph trees' pool checkpoint (`getCheckpointState`)",
     "torch._C._cuda_getCheckpointState(0, (0, 9))"),
]


def cuda_python() -> str | None:
    candidates = (os.environ.get("TIMESHARE_CUDA_TORCH_PYTHON", ""),
                  str(ROOT / ".venv-cuda/bin/python"))
    for c in candidates:
        if c and Path(c).exists():
            return c
    return None


def package_path() -> str:
    """A directory holding only the installed timeshare package (the CUDA venv's own torch)."""
    import timeshare

    d = Path(tempfile.mkdtemp(prefix="ts_features_"))
    (d / "timeshare").symlink_to(Path(timeshare.__file__).resolve().parent)
    return str(d)


def probe(py: str, path: str, route: str, code: str) -> str:
    src = SETUP.replace("ROUTE", repr(route)) + code + "\nprint('PROBE-OK')\n"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIMESHARE")}
    env["PYTHONPATH"] = path
    r = subprocess.run([py, "-c", src], env=env, capture_output=True, text=True, timeout=300)
    if "PROBE-OK" in r.stdout:
        return "works"
    lines = [ln.strip() for ln in r.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if re.match(r"^[\w.]+(Error|Exception): ", ln)]
    last = errors[-1] if errors else (lines[-1] if lines else "?")
    msg = last.split(": ", 1)[-1]
    return "error: " + (msg[:110] + "…" if len(msg) > 110 else msg)


def table(py: str) -> str:
    path = package_path()
    rows = ["| feature | PyTorch's allocator | timeshare, native route "
            "| timeshare, pluggable route |", "| --- | --- | --- | --- |"]
    for feature, code in PROBES:
        cells = [probe(py, path, route, code) for route in ("native", "pluggable")]
        rows.append(f"| {feature} | works | {cells[0]} | {cells[1]} |")
    return "\n".join(rows)


def main() -> int:
    py = cuda_python()
    if py is None:
        print("no CUDA build of torch (run scripts/setup.sh): nothing to probe")
        return 1
    text = table(py)
    print(text)
    if "--write" in sys.argv:
        doc = DOC.read_text()
        head, _, rest = doc.partition(BEGIN)
        _, _, tail = rest.partition(END)
        DOC.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["PROBES", "table"]
