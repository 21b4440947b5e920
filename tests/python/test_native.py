"""The native route: timeshare as PyTorch's own CUDAAllocator, reached through torch's bindings.

A CUDA build of torch (.venv-cuda, torch 2.14.1) on a machine without a GPU, with timeshare on
the sim backend (``backend:sim``). Each case runs in a subprocess (an allocator swap is
irreversible) and reaches the allocator the way PyTorch does: torch._C's own bindings
(``_cuda_memoryStats``, ``_cuda_cudaCachingAllocator_raw_alloc``, ``_cuda_memorySnapshot``,
``_cuda_beginAllocateCurrentThreadToPool``, ...) and torch.cuda's Python functions, which call
the current CUDAAllocator. Where a case also runs on the pluggable route, it shows what that
route cannot do (the gap the native route closes).

Without a GPU, torch's Python functions that start with ``if not is_initialized(): return {}``
(``torch.cuda.memory_stats`` and its family) need ``torch.cuda._initialized = True``: torch's
lazy CUDA initialisation cannot run here, and the cases set that flag instead of running it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import cuda_torch_python

PY = cuda_torch_python()
pytestmark = pytest.mark.skipif(PY is None, reason="no CUDA build of torch (run scripts/setup.sh)")
MiB = 1 << 20

PRELUDE = """
import ctypes, torch, timeshare
from timeshare import _native
MiB = 1 << 20
alloc = free = None
def enable(**kw):
    global alloc, free
    timeshare.enable(backend="sim", **kw)
    torch.cuda._initialized = True  # no GPU: torch's lazy CUDA init cannot run (docstring)
    if timeshare.route() == "native":  # torch's own raw_alloc binding
        alloc = lambda n, s=0: torch._C._cuda_cudaCachingAllocator_raw_alloc(n, s)
        free = torch._C._cuda_cudaCachingAllocator_raw_delete
    else:  # torch's pluggable wrapper calls cudaGetDevice first: its C entry points instead
        lib = ctypes.CDLL(timeshare.library_path())
        lib.timeshare_malloc.restype = ctypes.c_void_p
        lib.timeshare_malloc.argtypes = [ctypes.c_size_t, ctypes.c_int, ctypes.c_void_p]
        lib.timeshare_free.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int,
                                       ctypes.c_void_p]
        alloc = lambda n, s=0: lib.timeshare_malloc(n, 0, None)
        free = lambda p: lib.timeshare_free(p, 0, 0, None)
def stats():
    return torch.cuda.memory_stats(0)
"""


def run(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    assert PY is not None
    return subprocess.run([PY, "-c", PRELUDE + textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=300)


def ok(code: str, env: dict[str, str]) -> str:
    r = run(code, env)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def test_enable_takes_the_native_route(python_env: dict[str, str]) -> None:
    out = ok("""
        before = torch.cuda.memory_stats
        enable()
        print("route", timeshare.route(), _native.is_current())
        # torch's own functions answer: nothing is patched on this route
        print("unpatched", torch.cuda.memory_stats is before)
        print(timeshare.memory_summary(0).splitlines()[0])
        torch.backends.cudnn.benchmark = True  # cacheInfo is served: no guard
        print("cudnn.benchmark", torch.backends.cudnn.benchmark)
        """, python_env)
    assert "route native True" in out
    assert "unpatched True" in out
    assert "cudnn.benchmark True" in out


def test_default_backend_still_needs_a_gpu(python_env: dict[str, str]) -> None:
    out = ok("""
        try:
            timeshare.enable()
        except timeshare.TimeshareError as e:
            print("error:", e)
        print("enabled", timeshare.is_enabled())
        """, python_env)
    assert "error: timeshare.enable(): CUDA is not available here" in out
    assert "enabled False" in out


@pytest.mark.parametrize("route", ["native", "pluggable"])
def test_stats_through_torch(python_env: dict[str, str], route: str) -> None:
    """allocated = the live blocks, reserved >= allocated, peaks reset, and torch's figures equal
    timeshare's own. The pluggable route refuses torch's stats binding."""
    r = run(f"""
        enable(route="{route}")
        ptrs = [alloc(n * MiB, 0) for n in (3, 5, 7)]
        free(ptrs[1])
        try:
            nested = torch._C._cuda_memoryStats(0)
            print("binding", nested["allocated_bytes"]["all"]["current"])
        except RuntimeError as e:
            print("binding refused:", str(e).splitlines()[0])
        s = stats()
        ts = timeshare.memory_stats(0)
        print("allocated", s["allocated_bytes.all.current"], torch.cuda.memory_allocated(0))
        print("peak", torch.cuda.max_memory_allocated(0))
        allocated = s["allocated_bytes.all.current"]
        print("reserved>=allocated", torch.cuda.memory_reserved(0) >= allocated)
        same = all(ts[k] == v for k, v in s.items() if k in ts and not k.startswith("timeshare."))
        print("same as timeshare", same, len(s) > 20)
        torch.cuda.reset_peak_memory_stats(0)
        print("peak after reset", torch.cuda.max_memory_allocated(0))
        torch.cuda.reset_accumulated_memory_stats(0)
        print("freed after reset", stats()["allocated_bytes.all.freed"])
        """, python_env)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert f"allocated {10 * MiB} {10 * MiB}" in out
    assert f"peak {15 * MiB}" in out
    assert "reserved>=allocated True" in out
    assert "same as timeshare True True" in out
    assert f"peak after reset {10 * MiB}" in out
    assert "freed after reset 0" in out
    if route == "native":
        assert f"binding {10 * MiB}" in out
    else:
        assert "binding refused: CUDAPluggableAllocator does not yet support getDeviceStats" in out


@pytest.mark.parametrize("route", ["native", "pluggable"])
def test_memory_fraction(python_env: dict[str, str], route: str) -> None:
    r = run(f"""
        enable(route="{route}", sim_capacity="1GiB")
        torch.cuda.set_per_process_memory_fraction(0.25, 0)
        try:
            print("fraction", torch.cuda.get_per_process_memory_fraction(0))
        except RuntimeError as e:
            print("fraction refused:", str(e).splitlines()[0])
        p = alloc(100 * MiB, 0)
        if timeshare.route() == "native":  # a C++ exception cannot cross ctypes: native only
            try:
                alloc(300 * MiB, 0)
                print("over the fraction: served")
            except torch.OutOfMemoryError as e:
                print("over the fraction:", str(e).splitlines()[0][:22])
        """, python_env)
    assert r.returncode == 0, r.stdout + r.stderr
    if route == "native":
        assert "over the fraction: CUDA out of memory" in r.stdout
        assert "fraction 0.25" in r.stdout
    else:
        assert "fraction refused: CUDAPluggableAllocator does not yet support getMemoryFraction" \
            in r.stdout


def test_oom_raises_torch_out_of_memory_error(python_env: dict[str, str]) -> None:
    """(The OOM observer is tested in C++, tests/native/: torch's Python binding to attach one
    initialises CUDA first.)"""
    out = ok("""
        enable(sim_capacity="256MiB")
        _native.record_history(True, 100)
        p = alloc(64 * MiB, 0)
        try:
            alloc(1 << 30, 0)
        except torch.OutOfMemoryError as e:
            print("OutOfMemoryError:", str(e).splitlines()[0][:60])
        print("num_ooms", stats()["num_ooms"])
        trace = torch.cuda.memory._snapshot()["device_traces"][0]
        print("oom traced", [e["action"] for e in trace].count("oom"))
        """, python_env)
    assert "OutOfMemoryError: CUDA out of memory (timeshare). Tried to allocate" in out
    assert "num_ooms 1" in out
    assert "oom traced 1" in out


def test_snapshot_renders_in_memory_viz_and_replays(python_env: dict[str, str],
                                                     tmp_path: Path) -> None:
    """A live run's memory history: torch's _snapshot() and _dump_snapshot(), memory_viz's
    segment and trace plots, and `timeshare replay` of the dumped snapshot."""
    dump = tmp_path / "native.pickle"
    out = ok(f"""
        enable()
        _native.record_history(True, 10_000)  # torch's Python call needs a GPU (docstring)
        print("history", torch._C._cuda_isHistoryEnabled())
        ptrs = []
        for step in range(3):
            ptrs = [alloc(n * MiB, 0) for n in (4, 9, 1, 30)]
            for p in reversed(ptrs):
                free(p)
        keep = alloc(6 * MiB, 0)
        snap = torch.cuda.memory._snapshot()
        actions = [e["action"] for e in snap["device_traces"][0]]
        print("actions", sorted(set(actions)))
        print("allocs", actions.count("alloc"), "frees", actions.count("free_completed"))
        seg = snap["segments"]
        live = [b for s in seg for b in s["blocks"] if b["state"] == "active_allocated"]
        print("live blocks", len(live), live[0]["requested_size"])
        print("segment sizes add up", all(sum(b["size"] for b in s["blocks"]) == s["total_size"]
                                          for s in seg))
        from torch.cuda import _memory_viz
        print("plots", len(_memory_viz.segment_plot(snap)) > 1000,
              len(_memory_viz.trace_plot(snap)) > 1000)
        torch.cuda.memory._dump_snapshot({str(dump)!r})
        """, python_env)
    assert "history True" in out
    assert "'alloc'" in out and "'free_completed'" in out and "'segment_map'" in out
    assert "allocs 13 frees 12" in out
    assert f"live blocks 1 {6 * MiB}" in out
    assert "segment sizes add up True" in out
    assert "plots True True" in out
    js = tmp_path / "replay.json"
    r = subprocess.run([sys.executable, "-m", "timeshare", "replay", str(dump), "--json", str(js)],
                       env=python_env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = json.loads(js.read_text())
    text = json.dumps(rows)
    assert "timeshare" in text and "torch-expandable" in text


@pytest.mark.parametrize("route", ["native", "pluggable"])
def test_private_pool_is_isolated_until_released(python_env: dict[str, str], route: str) -> None:
    """A block freed inside pool P is never returned outside P before releasePool; releasePool
    gives P's memory back (what CUDA graphs and MemPool rely on)."""
    out = ok(f"""
        enable(route="{route}")
        pid = (0, 7)
        outside = alloc(2 * MiB, 0)
        torch._C._cuda_beginAllocateCurrentThreadToPool(0, pid)
        inside = [alloc(8 * MiB, 0) for _ in range(3)]
        torch._C._cuda_endAllocateToPool(0, pid)
        print("live check", torch._C._cuda_checkPoolLiveAllocations(0, pid, set(inside))
              if "{route}" == "native" else True)
        for p in inside:
            free(p)
        after = [alloc(8 * MiB, 0) for _ in range(6)]
        print("reused outside", sorted(set(after) & set(inside)))
        reserved = torch.cuda.memory_reserved(0) if "{route}" == "native" else \
            timeshare.memory_reserved(0)
        torch._C._cuda_releasePool(0, pid)
        released = torch.cuda.memory_reserved(0) if "{route}" == "native" else \
            timeshare.memory_reserved(0)
        print("released", released < reserved)
        if "{route}" == "native":
            ids = {{s["segment_pool_id"] for s in torch._C._cuda_memorySnapshot(None)["segments"]}}
            print("pools left", sorted(ids))
        """, python_env)
    assert "live check True" in out
    assert "reused outside []" in out
    assert "released True" in out
    if route == "native":
        assert "pools left [(0, 0)]" in out


def test_cache_info_is_the_largest_free_mapped_run(python_env: dict[str, str]) -> None:
    out = ok("""
        enable()
        print("empty", _native.cache_info(0))
        p = alloc(5 * MiB, 0)
        free_blocks = [b["size"] for s in torch._C._cuda_memorySnapshot(None)["segments"]
                       for b in s["blocks"] if b["state"] == "inactive"]
        print("cacheInfo matches the snapshot", _native.cache_info(0) == max(free_blocks),
              _native.cache_info(0) > 0)
        free(p)
        torch.cuda.empty_cache()
        print("after empty_cache", _native.cache_info(0))
        """, python_env)
    assert "empty 0" in out
    assert "cacheInfo matches the snapshot True True" in out
    assert "after empty_cache 0" in out


def test_unsupported_features_raise_one_clear_error(python_env: dict[str, str]) -> None:
    out = ok("""
        enable()
        try:
            torch._C._cuda_getCheckpointState(0, (0, 9))
        except RuntimeError as e:
            print("checkpoint:", str(e).splitlines()[0][:60])
        """, python_env)
    assert "checkpoint: timeshare does not support checkpointing a CUDA graph" in out


def test_falls_back_to_pluggable_with_one_line_when_native_is_missing(
    python_env: dict[str, str], tmp_path: Path
) -> None:
    """A package without the native layer for the running torch: the pluggable route, and one
    log line that says why; route:native then is a clear error."""
    import shutil

    import timeshare

    pkg = tmp_path / "pkg" / "timeshare"
    shutil.copytree(Path(timeshare.__file__).resolve().parent, pkg,
                    ignore=shutil.ignore_patterns("libtimeshare_native-*.so", "__pycache__"))
    env = dict(python_env, PYTHONPATH=str(pkg.parent))
    r = run("""
        enable()
        print("route", timeshare.route())
        """, env)
    assert r.returncode == 0, r.stderr
    assert "route pluggable" in r.stdout
    lines = [ln for ln in r.stderr.splitlines() if "native route unavailable" in ln]
    assert len(lines) == 1, r.stderr
    assert "no native layer was built for torch" in lines[0]
    r = run("""
        try:
            enable(route="native")
        except timeshare.TimeshareError as e:
            print("error:", e)
        """, env)
    assert "error: timeshare.enable(): route:native was asked for, but no native layer" in r.stdout


def test_env_activation_takes_the_native_route(python_env: dict[str, str], tmp_path: Path) -> None:
    """``TIMESHARE=1 python train.py``: the start-up hook that ``pip install`` puts at the
    site-packages root (``timeshare-autoload.pth``, from setup.py) installs the native route
    before user code runs, with options from TIMESHARE_CONF; torch's own stats binding then
    answers. The hook's directory is made a site directory the way the interpreter makes
    site-packages one (``site.addsitedir`` runs its .pth lines): .venv-cuda is not where the
    package was installed."""
    import shutil

    from conftest import ROOT

    site_dir = tmp_path / "site"
    site_dir.mkdir()
    shutil.copy(ROOT / "python" / "timeshare-autoload.pth", site_dir)
    env = dict(python_env, TIMESHARE="1", TIMESHARE_CONF="backend:sim,sim_capacity:1GiB")
    code = textwrap.dedent(f"""
        import site; site.addsitedir({str(site_dir)!r})
        import torch, timeshare
        print("enabled", timeshare.is_enabled(), "route", timeshare.route())
        p = torch._C._cuda_cudaCachingAllocator_raw_alloc(3 << 20, 0)
        print("allocated", torch._C._cuda_memoryStats(0)["allocated_bytes"]["all"]["current"])
        torch._C._cuda_cudaCachingAllocator_raw_delete(p)
        """)
    assert PY is not None
    r = subprocess.run([PY, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "enabled True route native" in r.stdout
    assert f"allocated {3 << 20}" in r.stdout
