"""enable() on this machine (CPU build of torch, or no GPU): one clear error, nothing changed."""

from __future__ import annotations

import subprocess
import sys

import pytest

import timeshare

torch = pytest.importorskip("torch")


def test_enable_without_cuda_raises_clear_error_and_changes_nothing() -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: see scripts/gpu_check.sh")
    before = torch.cuda.memory_stats
    with pytest.raises(timeshare.TimeshareError) as e:
        timeshare.enable()
    msg = str(e.value)
    assert "\n" not in msg
    assert "CUDA" in msg
    assert not timeshare.is_enabled()
    assert torch.cuda.memory_stats is before


def test_enable_with_bad_option_is_value_error() -> None:
    with pytest.raises(ValueError, match="unknown key 'bugdet'"):
        timeshare.enable(bugdet="1GiB")
    assert not timeshare.is_enabled()


def test_env_activation_never_crashes_the_program(python_env: dict[str, str]) -> None:
    env = dict(python_env, TIMESHARE="1")
    r = subprocess.run([sys.executable, "-c", "print('user code ran')"], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0
    assert "user code ran" in r.stdout


def test_bad_conf_in_env_is_one_line_at_startup(python_env: dict[str, str]) -> None:
    env = dict(python_env, TIMESHARE="1", TIMESHARE_CONF="budget:lots")
    r = subprocess.run([sys.executable, "-c", "print('ok')"], env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and "ok" in r.stdout
    # With the .pth hook installed (a non-editable install) the reason is printed in one line.
    lines = [ln for ln in r.stderr.splitlines() if "timeshare" in ln]
    assert len(lines) <= 1
    if lines:
        assert "budget:lots is invalid" in lines[0]


def test_stats_before_any_allocation_are_empty() -> None:
    assert timeshare.memory_stats(0) == {}
    assert timeshare.memory_allocated(0) == 0
    assert "no allocation yet" in timeshare.memory_summary(0)
