"""Misuse from Python: every mistake gives one clear error or is a documented no-op.

The table these tests pin down is in docs/reliability.md ("Misuse"). ``enable()`` cannot succeed
on a machine without CUDA, so its twice-called logic is tested through ``timeshare._enable``'s
state in-process, and end to end against the CUDA build of torch (.venv-cuda) in a subprocess,
as tests/python/test_registration.py does.
"""

from __future__ import annotations

import subprocess
import textwrap
from typing import Any

import pytest
from conftest import cuda_torch_python

import timeshare
from timeshare import _C, _enable
from timeshare._config import build_conf

MiB = 1 << 20
SIM = "sim_capacity:256MiB,backend:sim,log:error"


@pytest.fixture(params=["policy:torch", "policy:timeshare",
                        "policy:torch,expandable_segments:true"])
def alloc(request: pytest.FixtureRequest) -> Any:
    """A standalone allocator on a backed sim device, one per policy."""
    return _C.SimAllocator(f"{request.param},{SIM}")


# ---- enable() -------------------------------------------------------------------------------


@pytest.fixture
def enabled_state(monkeypatch: pytest.MonkeyPatch) -> str:
    """Pretend enable() already succeeded with the default options; installing again fails."""
    conf = build_conf()
    monkeypatch.setitem(_enable._state, "enabled", True)
    monkeypatch.setitem(_enable._state, "conf", conf)

    def no_second_install(*args: object, **kwargs: object) -> None:
        raise AssertionError("enable() tried to install the allocator a second time")

    monkeypatch.setattr(_enable, "_install", no_second_install)
    return conf


def test_enable_twice_same_options_is_a_no_op(enabled_state: str) -> None:
    assert timeshare.enable() is None
    assert timeshare.enable(enabled_state) is None  # the same options spelled out
    assert _enable._state["conf"] == enabled_state


def test_enable_twice_other_options_is_one_clear_error(enabled_state: str) -> None:
    with pytest.raises(_enable.TimeshareError, match="already enabled with other options") as e:
        timeshare.enable(budget="1GiB", spill="host")
    assert "\n" not in str(e.value)
    assert _enable._state["conf"] == enabled_state  # unchanged


def test_enable_bad_option_after_enable_changes_nothing(enabled_state: str) -> None:
    with pytest.raises(ValueError, match="unknown key 'bogus'"):
        timeshare.enable(bogus=1)
    assert _enable._state["conf"] == enabled_state


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"bogus": 1}, "unknown key 'bogus'"),
        ({"budget": "lots"}, "budget:lots is invalid: expected a size"),
        ({"policy": "fastest"}, "expected one of timeshare, torch"),
        ({"hidden": "-3"}, "hidden"),
        ({"drift_threshold": "nan"}, "drift_threshold"),
    ],
)
def test_enable_bad_options_raise_value_error_before_anything(
    kwargs: dict[str, Any], pattern: str
) -> None:
    assert not timeshare.is_enabled()
    with pytest.raises(ValueError, match=pattern) as e:
        timeshare.enable(**kwargs)
    assert "\n" not in str(e.value)
    assert not timeshare.is_enabled()


def test_enable_without_cuda_is_one_clear_error() -> None:
    with pytest.raises(_enable.TimeshareError) as e:
        timeshare.enable()
    assert "\n" not in str(e.value)
    assert not timeshare.is_enabled()


PY = cuda_torch_python()


@pytest.mark.skipif(PY is None, reason="no CUDA build of torch (run scripts/setup.sh)")
def test_enable_twice_against_cuda_torch(python_env: dict[str, str]) -> None:
    code = """
        import torch, timeshare
        from timeshare import _enable
        from timeshare._config import build_conf
        _enable._install(build_conf(), require_device=False)
        assert timeshare.is_enabled()
        timeshare.enable()                      # same options: nothing happens
        try:
            timeshare.enable(budget="1GiB")
        except _enable.TimeshareError as e:
            print("other:", e)
        try:
            timeshare.enable(bogus=1)
        except ValueError as e:
            print("bad:", str(e)[:40])
        assert _enable._state["conf"] == build_conf()
        print("ok")
    """
    assert PY is not None
    r = subprocess.run([PY, "-c", textwrap.dedent(code)], env=python_env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "other: timeshare is already enabled with other options" in r.stdout
    assert "bad: TIMESHARE_CONF has unknown key 'bogus'" in r.stdout
    assert r.stdout.strip().endswith("ok")


# ---- the allocator ------------------------------------------------------------------------------


@pytest.mark.parametrize("conf", ["bogus:1", "budget:abc", "policy:xx", "sim_capacity:-1",
                                  "policy", ",,,:"])
def test_bad_conf_for_an_allocator_is_value_error(conf: str) -> None:
    with pytest.raises(ValueError, match="TIMESHARE_CONF") as e:
        _C.SimAllocator(conf)
    assert "\n" not in str(e.value)


def test_free_of_unknown_pointer_is_refused(alloc: Any) -> None:
    p = alloc.malloc(4096)
    before = alloc.stats()
    assert alloc.free(0xDEAD0000) is False
    assert alloc.free(p + 1) is False  # inside a live block, but not a block
    assert alloc.stats()["allocated_bytes.all.current"] == before["allocated_bytes.all.current"]
    assert alloc.free(p) is True


def test_free_of_null_is_a_no_op(alloc: Any) -> None:
    assert alloc.free(0) is True  # like free(NULL)
    assert alloc.malloc(0) == 0    # a zero-byte request gives the null pointer, nothing reserved
    assert alloc.stats()["allocation.all.current"] == 0


def test_double_free_is_refused_and_harmless(alloc: Any) -> None:
    p = alloc.malloc(1 * MiB)
    q = alloc.malloc(1 * MiB)
    alloc.write(q, b"keep me")
    assert alloc.free(p) is True
    assert alloc.free(p) is False
    assert alloc.read(q, 7) == b"keep me"
    assert alloc.stats()["allocation.all.current"] == 1
    r = alloc.malloc(1 * MiB)  # may reuse p's block: must not be q
    assert r != q
    assert alloc.free(q) and alloc.free(r)


def test_use_after_empty_cache(alloc: Any) -> None:
    live = alloc.malloc(3 * MiB)
    alloc.write(live, b"x" * 1000)
    dead = alloc.malloc(5 * MiB)
    assert alloc.free(dead)
    alloc.empty_cache()
    # a live block is untouched by empty_cache
    assert alloc.read(live, 1000) == b"x" * 1000
    # the freed block is gone: freeing or recording it again is refused, not a crash
    assert alloc.free(dead) is False
    assert alloc.record_stream(dead, 3) is False
    alloc.empty_cache()  # twice in a row: a no-op
    again = alloc.malloc(5 * MiB)
    alloc.write(again, b"y" * 10)
    assert alloc.read(again, 10) == b"y" * 10
    assert alloc.free(again) and alloc.free(live)
    alloc.empty_cache()
    assert alloc.stats()["reserved_bytes.all.current"] == 0


def test_record_stream_of_unknown_pointer_is_refused(alloc: Any) -> None:
    assert alloc.record_stream(0x1234, 1) is False
    p = alloc.malloc(512)
    assert alloc.record_stream(p, 1) is True
    assert alloc.free(p)
    assert alloc.record_stream(p, 1) is False


@pytest.mark.parametrize("fraction", [0.0, -0.5, 1.5, float("nan"), float("inf")])
def test_bad_memory_fraction_is_ignored(alloc: Any, fraction: float) -> None:
    alloc.set_memory_fraction(fraction)  # logged and ignored, as documented in allocator.h
    p = alloc.malloc(64 * MiB)
    assert alloc.free(p)


def test_bad_argument_types_are_type_errors(alloc: Any) -> None:
    with pytest.raises(TypeError):
        alloc.malloc(-1)
    with pytest.raises(TypeError):
        alloc.malloc("1MiB")
    with pytest.raises(TypeError):
        alloc.free(None)


def test_out_of_memory_is_one_runtime_error_and_recoverable(alloc: Any) -> None:
    with pytest.raises(RuntimeError, match="out of memory") as e:
        alloc.malloc(1 << 40)
    assert "Tried to allocate" in str(e.value)
    p = alloc.malloc(MiB)  # still serves memory
    assert alloc.free(p)
