"""timeshare driven the way PyTorch drives it: through libtimeshare.so's C entry points.

PyTorch's CUDAPluggableAllocator dlopens ``libtimeshare.so`` and calls ``timeshare_malloc``,
``timeshare_free`` and the optional hooks (init, empty_cache, memory_fraction, record_stream)
from its own threads. These tests do the same with ctypes (the library loaded by the path
``timeshare.library_path()`` gives, configured the way ``timeshare.enable()`` configures it) and
read the results only through the public Python API: ``timeshare.memory_stats()``,
``timeshare.memory_summary()``, ``timeshare.offload`` and, under a CUDA build of torch, the
patched ``torch.cuda.memory_*`` functions. They prove principle 2b (one allocator per process).

Each scenario runs in its own interpreter: the allocators are process-wide and their options are
fixed at the first allocation. A C++ exception thrown through a ctypes call cannot be caught (no
C++ frame to catch it: the process terminates), which is exactly how a refused
``timeshare_malloc`` must behave outside PyTorch (PyTorch catches it and raises
torch.OutOfMemoryError); refusal cases therefore assert the subprocess terminates with the
allocator's message, after the statistics it printed first.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest
from conftest import cuda_torch_python

MiB = 1 << 20

# What every scenario starts with: the library PyTorch would load, with the C signatures of
# torch/csrc/cuda/CUDAPluggableAllocator.h, and helpers that call it from several threads.
PRELUDE = """
import ctypes, sys, threading
import timeshare
from timeshare import _C
from timeshare._config import build_conf

MiB = 1 << 20
lib = ctypes.CDLL(timeshare.library_path())
lib.timeshare_malloc.restype = ctypes.c_void_p
lib.timeshare_malloc.argtypes = [ctypes.c_size_t, ctypes.c_int, ctypes.c_void_p]
lib.timeshare_free.restype = None
lib.timeshare_free.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_void_p]
lib.timeshare_record_stream.restype = None
lib.timeshare_record_stream.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
lib.timeshare_init.restype = None
lib.timeshare_init.argtypes = [ctypes.c_int]
lib.timeshare_empty_cache.restype = None
lib.timeshare_empty_cache.argtypes = []
lib.timeshare_memory_fraction.restype = None
lib.timeshare_memory_fraction.argtypes = [ctypes.c_double, ctypes.c_int]
lib.timeshare_configure.restype = ctypes.c_int
lib.timeshare_configure.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t]


def configure_like_enable(**options):
    # timeshare.enable() -> _enable._install(): _C.configure(build_conf(...)), then PyTorch
    # loads the library by path.
    _C.configure(build_conf(**options))


def configure_through_c(conf):
    err = ctypes.create_string_buffer(512)
    rc = lib.timeshare_configure(conf.encode(), err, len(err))
    assert rc == 0, err.value


def in_threads(fn, args):
    # Runs fn(*a) for every a in args, each on its own thread (ctypes releases the GIL, so the
    # calls really overlap, as PyTorch's do); returns the results in order.
    out = [None] * len(args)
    errors = []
    def body(i, a):
        try:
            out[i] = fn(*a)
        except BaseException as e:
            errors.append(e)
    threads = [threading.Thread(target=body, args=(i, a)) for i, a in enumerate(args)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return out


def malloc(nbytes, device=0, stream=0):
    p = lib.timeshare_malloc(nbytes, device, stream or None)
    assert p, "timeshare_malloc returned null"
    return p


def free(p, nbytes, device=0, stream=0):
    lib.timeshare_free(p, nbytes, device, stream or None)


def stat(key, device=0):
    return timeshare.memory_stats(device).get(key, 0)


def say(*a):
    print(*a, flush=True)
"""


def run(body: str, env: dict[str, str],
        python: str | None = None) -> subprocess.CompletedProcess[str]:
    code = PRELUDE + textwrap.dedent(body)
    return subprocess.run([python or sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=300)


def ok(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 0, f"exit {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    return r.stdout


def terminated(r: subprocess.CompletedProcess[str]) -> None:
    """The process ended on std::terminate (an exception escaped through ctypes)."""
    assert r.returncode == -signal.SIGABRT, (
        f"expected termination by an escaped C++ exception, got exit {r.returncode}\n"
        f"stdout:\n{r.stdout}\nstderr:\n{r.stderr}")


def test_one_core_the_module_uses_the_library_pytorch_loads(python_env: dict[str, str]) -> None:
    out = ok(run("""
        say("core", _C.core_library_path())
        say("lib", timeshare.library_path())
        """, python_env))
    core = out.split("core ", 1)[1].splitlines()[0]
    lib = out.split("lib ", 1)[1].splitlines()[0]
    assert core.endswith("libtimeshare.so")
    assert core == lib


def test_c_abi_configure_and_allocations_show_in_python_stats(python_env: dict[str, str]) -> None:
    out = ok(run("""
        configure_through_c("backend:sim,budget:1GiB")
        ptrs = in_threads(malloc, [(16 * MiB, 0, s) for s in (0, 0, 7)])
        say("allocated", stat("allocated_bytes.all.current"), stat("allocation.all.current"))
        summary = timeshare.memory_summary(0)
        row = next(l for l in summary.splitlines() if l.startswith("Allocated memory"))
        say("summary", row.split("|")[1].strip())
        in_threads(lambda p: lib.timeshare_record_stream(p, 9), [(p,) for p in ptrs])
        say("record_streams", stat("timeshare.record_streams"))
        in_threads(free, [(p, 16 * MiB, 0, s) for p, s in zip(ptrs, (0, 0, 7))])
        in_threads(lib.timeshare_empty_cache, [(), ()])
        say("after", stat("allocated_bytes.all.current"), stat("allocation.all.current"),
            stat("allocated_bytes.all.peak"), stat("timeshare.empty_cache_calls"))
        """, python_env))
    assert f"allocated {48 * MiB} 3" in out
    assert "summary 48.00 MiB" in out
    assert "record_streams 3" in out
    assert f"after 0 0 {48 * MiB} 2" in out


@pytest.mark.parametrize("conf, device_allocs", [("", 1), (",map_ahead:0", 10)])
def test_map_ahead_reaches_the_library_pytorch_loads(python_env: dict[str, str], conf: str,
                                                     device_allocs: int) -> None:
    """Map-ahead, while memory grows past its peak, is sized by the pool: a tenth of the observed
    peak of demand, at most the option map_ahead (18 MiB), up to the next 20 MiB page of the
    mapped total. A live 180 MiB block, then twenty 1 MiB blocks one after another through
    timeshare_malloc: ten more granules. With the default map_ahead the first of them maps its
    granule and the nine after it (a tenth of the peak, the page's end): all twenty blocks in one
    map; with map_ahead:0, one map per granule. Either way 200 MiB are mapped."""
    out = ok(run(f"""
        configure_through_c("backend:sim{conf}")
        big = malloc(180 * MiB)
        before = stat("num_device_alloc")
        ptrs = [malloc(MiB) for _ in range(20)]
        say("device", stat("num_device_alloc") - before, stat("reserved_bytes.all.current"))
        for p in ptrs:
            free(p, MiB)
        free(big, 180 * MiB)
        """, python_env))
    allocs, reserved = (int(v) for v in out.split("device ", 1)[1].split()[:2])
    assert allocs == device_allocs
    assert reserved == 200 * MiB


@pytest.mark.parametrize("conf, board", [("", False), (",free_forecast:128", True)])
def test_predictions_reach_the_pool_of_the_library_pytorch_loads(python_env: dict[str, str],
                                                                  conf: str, board: bool) -> None:
    """A training-like loop through timeshare_malloc: the predictor runs on its own thread, and
    with an option that uses lifespans (free_forecast) the pool gets, at each allocation, the
    answer that thread published for the allocation's context; without one the board is off."""
    out = ok(run(f"""
        import time
        configure_through_c("backend:sim{conf}")
        sizes = [512 * (i + 1) for i in range(8)]
        for it in range(60):
            ptrs = [malloc(n) for n in sizes]
            for p, n in zip(ptrs, sizes):
                free(p, n)
            time.sleep(0.01)  # the predictor's thread polls its inbox every millisecond
        say("board", stat("timeshare.predictor.answered"), stat("timeshare.predictor.unanswered"),
            stat("timeshare.predictor.predictions"))
        """, python_env))
    answered, unanswered, predictions = (int(v) for v in out.split("board ", 1)[1].split()[:3])
    assert predictions == 480
    if board:
        assert answered + unanswered == 480
        assert answered > 0
    else:
        assert answered == unanswered == 0


def test_python_configure_sets_the_budget_the_library_enforces(python_env: dict[str, str]) -> None:
    r = run("""
        configure_like_enable(backend="sim", budget="64MiB", spill="none")
        ptrs = in_threads(malloc, [(16 * MiB,)] * 3)
        say("allocated", stat("allocated_bytes.all.current"))
        malloc(32 * MiB)  # 80 MiB > the 64 MiB budget: refused with an exception
        say("not refused")
        """, python_env)
    assert f"allocated {48 * MiB}" in r.stdout, r.stdout + r.stderr
    assert "not refused" not in r.stdout
    terminated(r)
    assert "CUDA out of memory (timeshare)" in r.stderr
    assert "budget" in r.stderr


def test_make_room_callback_fires_from_the_library_malloc(python_env: dict[str, str]) -> None:
    # Options through the C ABI, so that the only path under test is the callback's.
    out = ok(run("""
        configure_through_c("backend:sim,budget:64MiB,spill:none")
        ptrs = in_threads(malloc, [(16 * MiB,)] * 3)
        calls = []
        def make_room(device, nbytes):
            # what offload does: drop device copies of spilled data, report the bytes freed
            calls.append((device, nbytes))
            for p in ptrs[:2]:
                free(p, 16 * MiB)
            return 32 * MiB
        token = _C.register_make_room(make_room)
        p = malloc(32 * MiB)  # over the budget: the allocator asks make_room, then retries
        _C.unregister_make_room(token)
        say("calls", calls)
        say("allocated", stat("allocated_bytes.all.current"), stat("timeshare.spill_retries"))
        """, python_env))
    assert f"calls [(0, {32 * MiB})]" in out
    assert f"allocated {48 * MiB} 1" in out


def test_offload_reactive_spill_fires_from_the_library_malloc(python_env: dict[str, str]) -> None:
    pytest.importorskip("torch")
    out = ok(run("""
        import torch
        if not hasattr(_C, "SpillEngine"):
            say("no spill engine"); sys.exit(0)
        configure_like_enable(backend="sim", budget="64MiB", spill="none")
        ptrs = in_threads(malloc, [(16 * MiB,)] * 3)
        def frees_without_telling(device, nbytes):
            # memory held elsewhere (registered first): frees it but reports nothing, so the
            # allocator goes on to ask offload
            for p in ptrs[:2]:
                free(p, 16 * MiB)
            return 0
        token = _C.register_make_room(frees_without_telling)
        w = torch.randn(256, 256, requires_grad=True)
        with timeshare.offload(budget=1 << 50, min_spill=1024, pinned=64 * MiB):
            x = torch.randn(64, 256)
            y = torch.tanh(torch.tanh(x @ w))  # saves activations in the hooks, resident
            p = malloc(32 * MiB)  # over the library's budget: make_room asks offload to spill
            s = timeshare.memory_stats(0)
            y.sum().backward()
        _C.unregister_make_room(token)
        say("conflict", s.get("timeshare.spill.hooks.spilled_conflict", 0))
        say("allocated", s.get("allocated_bytes.all.current", 0), s.get("timeshare.spill_retries"))
        """, python_env))
    if "no spill engine" in out:
        pytest.skip("this build of timeshare._C has no spill engine")
    conflict = int(out.split("conflict ", 1)[1].split()[0])
    assert conflict >= 1, out
    assert f"allocated {48 * MiB} 1" in out


def test_init_receives_the_device_count(python_env: dict[str, str]) -> None:
    r = run("""
        configure_through_c("backend:sim")
        in_threads(lib.timeshare_init, [(2,)] * 4)  # torch calls init(device_count)
        say("after init", timeshare.memory_stats(0) == {}, timeshare.memory_stats(1) == {},
            timeshare.memory_stats(2) == {})
        p = malloc(MiB, 1)
        say("device 1", stat("allocated_bytes.all.current", 1))
        free(p, MiB, 1)
        malloc(MiB, 2)  # device 2 of 2: a clear error
        say("device 2 served")
        """, python_env)
    assert "after init True True True" in r.stdout, r.stdout + r.stderr
    assert f"device 1 {MiB}" in r.stdout
    assert "device 2 served" not in r.stdout
    terminated(r)
    before_malloc = r.stderr.split("terminate called", 1)[0]
    assert "error" not in before_malloc.lower(), r.stderr
    assert "timeshare cannot serve device 2" in r.stderr
    assert "2 CUDA devices" in r.stderr


@pytest.mark.parametrize("entry,call", [
    ("free", "free(p, MiB)"),
    ("record_stream", "lib.timeshare_record_stream(p, 3)"),
    ("empty_cache", "lib.timeshare_empty_cache()"),
    ("init", "lib.timeshare_init(1)"),
    ("memory_fraction", "lib.timeshare_memory_fraction(0.5, 0)"),
])
def test_noexcept_entry_points_swallow_failures(python_env: dict[str, str], entry: str,
                                                call: str) -> None:
    # PyTorch calls these from noexcept deleters and hooks: an exception escaping them would
    # terminate the training process. A test-only fault makes the entry's body throw
    # std::bad_alloc (as bookkeeping or logging could).
    r = run(f"""
        configure_through_c("backend:sim")
        p = malloc(MiB)
        lib.timeshare_debug_fail_at.restype = ctypes.c_int
        lib.timeshare_debug_fail_at.argtypes = [ctypes.c_char_p, ctypes.c_ulonglong]
        assert lib.timeshare_debug_fail_at(b"{entry}", 1) == 0
        in_threads(lambda: {call}, [()])
        in_threads(lambda: {call}, [()])  # the fault fired once; the second call works
        in_threads(lambda: lib.timeshare_debug_fail_at(b"{entry}", 1), [()])
        in_threads(lambda: {call}, [()])  # fails again: counted, not logged again
        say("survived", stat("timeshare.c_api_errors"))
        """, python_env)
    assert "survived 2" in ok(r)
    logged = f"timeshare_{entry} failed: std::bad_alloc; ignored"
    assert r.stderr.count(logged) == 1, r.stderr


def test_unknown_pointers_are_ignored_and_logged_once(python_env: dict[str, str]) -> None:
    r = run("""
        configure_through_c("backend:sim")
        p = malloc(MiB)
        bogus = p + 64 * MiB  # never handed out
        in_threads(free, [(bogus, MiB)] * 5)
        in_threads(lambda: lib.timeshare_record_stream(bogus, 3), [()] * 5)
        say("allocated", stat("allocated_bytes.all.current"), stat("timeshare.c_api_errors"))
        """, python_env)
    assert f"allocated {MiB} 0" in ok(r)
    assert r.stderr.count("timeshare_free: pointer") == 1, r.stderr
    assert r.stderr.count("record_stream: pointer") == 1, r.stderr


def test_debug_fault_names_are_checked(python_env: dict[str, str]) -> None:
    out = ok(run("""
        lib.timeshare_debug_fail_at.restype = ctypes.c_int
        lib.timeshare_debug_fail_at.argtypes = [ctypes.c_char_p, ctypes.c_ulonglong]
        say("rc", lib.timeshare_debug_fail_at(b"no_such_entry", 1),
            lib.timeshare_debug_fail_at(b"malloc", 1))
        """, python_env))
    assert "rc -1 -1" in out


CUDA_PY = cuda_torch_python()


@pytest.mark.skipif(CUDA_PY is None, reason="no CUDA build of torch (run scripts/setup.sh)")
def test_patched_torch_cuda_stats_report_the_c_abi(python_env: dict[str, str]) -> None:
    out = ok(run("""
        import torch
        from timeshare import _enable
        assert not torch.cuda.is_available()
        _enable._install(build_conf(backend="sim", route="pluggable"), require_device=False)
        ptrs = in_threads(malloc, [(16 * MiB,)] * 3)
        say("torch", torch.cuda.memory_allocated(), torch.cuda.memory_allocated(0),
            torch.cuda.memory_stats(0)["allocation.all.current"])
        free(ptrs[0], 16 * MiB)
        say("after free", torch.cuda.memory_allocated(0), torch.cuda.max_memory_allocated(0),
            torch.cuda.memory_reserved(0) >= 32 * MiB)
        """, python_env, python=CUDA_PY))
    assert f"torch {48 * MiB} {48 * MiB} 3" in out
    assert f"after free {32 * MiB} {48 * MiB} True" in out


def test_enable_refuses_a_module_whose_core_is_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    from timeshare import _C, _enable

    path = _enable.library_path()
    _enable._check_one_core(path)  # the installed build: one core, in the library itself
    monkeypatch.setattr(_C, "core_library_path", lambda: "/elsewhere/_C.so")
    with pytest.raises(_enable.TimeshareError, match="uses the allocator core in /elsewhere"):
        _enable._check_one_core(path)

    def split() -> str:
        raise RuntimeError("timeshare: two allocator cores in this process: ...")

    monkeypatch.setattr(_C, "core_library_path", split)
    with pytest.raises(_enable.TimeshareError, match="broken installation: timeshare: two"):
        _enable._check_one_core(path)
