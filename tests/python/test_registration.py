"""The registration path against PyTorch's CUDA build, on a machine without a GPU.

PyTorch's CPU wheel has no pluggable-allocator support, so these tests run a CUDA build of torch
(torch 2.14.1+cu130, which lies on disk here) in its own virtualenv (.venv-cuda, made by
scripts/setup.sh, or TIMESHARE_CUDA_TORCH_PYTHON). Each case runs in a subprocess because an
allocator swap is irreversible for the process.
"""

from __future__ import annotations

import subprocess
import textwrap

import pytest
from conftest import cuda_torch_python

PY = cuda_torch_python()
pytestmark = pytest.mark.skipif(PY is None, reason="no CUDA build of torch (run scripts/setup.sh)")


def run(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    assert PY is not None
    return subprocess.run([PY, "-c", textwrap.dedent(code)], env=env, capture_output=True,
                          text=True, timeout=300)


def test_library_loads_and_hooks_are_set(python_env: dict[str, str]) -> None:
    r = run(
        """
        import ctypes, torch, timeshare
        from timeshare import _enable
        assert not torch.cuda.is_available()
        lib = ctypes.CDLL(timeshare.library_path())
        for sym in ("timeshare_malloc", "timeshare_free", "timeshare_init",
                    "timeshare_empty_cache", "timeshare_memory_fraction",
                    "timeshare_record_stream"):
            assert getattr(lib, sym)
        _enable._install(timeshare._config.build_conf(route="pluggable"), require_device=False)
        assert timeshare.route() == "pluggable"
        raw = _enable._state["allocator"]._allocator
        print("hooks", sorted(h for h in _enable._HOOKS if hasattr(raw, h)))
        # torch's stats functions now answer from timeshare instead of raising
        assert torch.cuda.memory_stats is timeshare.memory_stats
        assert torch.cuda.memory.memory_allocated is timeshare.memory_allocated
        print("allocated", torch.cuda.memory_allocated(0), torch.cuda.max_memory_reserved(0))
        print(torch.cuda.memory_summary(0).splitlines()[0])
        torch.cuda.reset_peak_memory_stats(0)
        print("ok")
        """,
        python_env,
    )
    assert r.returncode == 0, r.stderr
    hooks = ("['set_base_alloc_fn', 'set_begin_allocate_to_pool', 'set_end_allocate_to_pool_fn', "
             "'set_init_fn', 'set_memory_fraction_fn', 'set_record_stream_fn', 'set_release_pool', "
             "'set_reset_fn']")
    assert f"hooks {hooks}" in r.stdout
    assert "allocated 0 0" in r.stdout
    assert r.stdout.strip().endswith("ok")


def test_enable_without_gpu_is_clear_and_leaves_torch_alone(python_env: dict[str, str]) -> None:
    r = run(
        """
        import torch, timeshare
        before = torch.cuda.memory_stats
        try:
            timeshare.enable()
        except timeshare.TimeshareError as e:
            print("error:", e)
        assert not timeshare.is_enabled()
        assert torch.cuda.memory_stats is before
        """,
        python_env,
    )
    assert r.returncode == 0, r.stderr
    assert "error: timeshare.enable(): CUDA is not available here" in r.stdout


def test_second_swap_is_a_clear_error(python_env: dict[str, str]) -> None:
    r = run(
        """
        import torch, timeshare
        from timeshare import _enable
        _enable._install(timeshare._config.build_conf(), require_device=False)
        a = torch.cuda.memory.CUDAPluggableAllocator(timeshare.library_path(),
                                                     "timeshare_malloc", "timeshare_free")
        try:
            torch.cuda.memory.change_current_allocator(a)
            print("swapped twice")
        except RuntimeError as e:
            print("refused:", str(e).splitlines()[0])
        """,
        python_env,
    )
    assert r.returncode == 0, r.stderr
    assert "refused:" in r.stdout or "swapped twice" in r.stdout
    print(r.stdout)


def test_oom_shim_throws_c10_out_of_memory(python_env: dict[str, str]) -> None:
    r = run(
        """
        import os, torch, timeshare
        from timeshare import _C
        shim = os.path.join(os.path.dirname(timeshare.library_path()), "libtimeshare_torch_oom.so")
        if not os.path.exists(shim):
            print("no shim"); raise SystemExit(0)
        kind, what = _C._throw_oom_through(shim, "CUDA out of memory (timeshare). test")
        print(kind)
        print(what.splitlines()[0])
        """,
        python_env,
    )
    assert r.returncode == 0, r.stderr
    if "no shim" not in r.stdout:
        assert "c10::OutOfMemoryError" in r.stdout
        assert "CUDA out of memory (timeshare). test" in r.stdout


def test_cudnn_benchmark_is_guarded_with_one_warning_on_the_pluggable_route(
    python_env: dict[str, str],
) -> None:
    r = run(
        """
        import warnings, torch, timeshare
        from timeshare import _enable
        torch.backends.cudnn.benchmark = True
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            _enable._install(timeshare._config.build_conf(route="pluggable"),
                             require_device=False)
            print("after enable:", torch.backends.cudnn.benchmark, len(w))
            torch.backends.cudnn.benchmark = True
            print("after set:", torch.backends.cudnn.benchmark, len(w))
            torch.backends.cudnn.benchmark = False
            print("after unset:", torch.backends.cudnn.benchmark, len(w))
        print(str(w[0].message).split(" is not")[0])
        """,
        python_env,
    )
    assert r.returncode == 0, r.stderr
    assert "after enable: False 1" in r.stdout
    assert "after set: False 2" in r.stdout
    assert "after unset: False 2" in r.stdout
    assert "torch.backends.cudnn.benchmark=True" in r.stdout


def test_install_with_a_budget_and_spill_installs_the_global_hooks(
    python_env: dict[str, str],
) -> None:
    """enable(budget=..., spill=...) installs offload's process-wide saved-tensor hooks."""
    r = run(
        """
        import timeshare
        from timeshare import _enable, _offload
        conf = timeshare._config.build_conf(None, backend="sim", budget="1GiB", spill="host")
        _enable._install(conf, require_device=False)
        assert _offload._GLOBAL["offload"] is not None
        print("ok")
        """,
        python_env,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("ok")
