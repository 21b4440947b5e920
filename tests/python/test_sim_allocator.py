"""The _C module drives a sim-backed allocator: data integrity, stats, OOM, faults."""

from __future__ import annotations

import random

import pytest

from timeshare import _C
from timeshare.stats import format_summary

POLICIES = ["policy:torch", "policy:torch,expandable_segments:true", "policy:timeshare"]


@pytest.mark.parametrize("conf", POLICIES)
def test_blocks_are_disjoint_and_keep_their_data(conf: str) -> None:
    a = _C.SimAllocator(conf + ",sim_capacity:1GiB")
    rng = random.Random(7)
    live: dict[int, bytes] = {}
    for step in range(600):
        if live and rng.random() < 0.45:
            ptr = rng.choice(list(live))
            data = live.pop(ptr)
            assert a.read(ptr, len(data)) == data, f"block {ptr:#x} corrupted at step {step}"
            assert a.free(ptr)
        else:
            size = rng.choice([1, 100, 512, 4096, 300_000, 1 << 20, 5 << 20, 13 << 20])
            ptr = a.malloc(size, stream=0)
            assert ptr % 512 == 0
            pattern = bytes([step % 251]) * min(size, 64)
            a.write(ptr, pattern)
            live[ptr] = pattern
        spans = sorted((p, p + n) for p, n in a.live_blocks())
        assert all(e1 <= s2 for (_, e1), (s2, _) in zip(spans, spans[1:])), "overlapping blocks"
    for ptr in list(live):
        a.free(ptr)
    s = a.stats()
    assert s["allocated_bytes.all.current"] == 0
    assert s["allocation.all.current"] == 0


@pytest.mark.parametrize("conf", POLICIES)
def test_stats_have_torch_keys_and_balance(conf: str) -> None:
    a = _C.SimAllocator(conf)
    p = a.malloc(3 << 20)
    q = a.malloc(1000)
    s = a.stats()
    for key in ("allocated_bytes.all.current", "reserved_bytes.all.peak", "num_alloc_retries",
                "num_ooms", "segment.large_pool.current", "requested_bytes.all.current",
                "active_bytes.small_pool.peak", "timeshare.clock_events"):
        assert key in s, key
    assert s["requested_bytes.all.current"] == (3 << 20) + 1000
    assert s["reserved_bytes.all.current"] >= s["allocated_bytes.all.current"] >= (3 << 20) + 1000
    a.free(p)
    a.free(q)
    a.empty_cache()
    s = a.stats()
    assert s["allocated_bytes.all.current"] == 0
    assert s["timeshare.clock_events"] == 4
    assert "Allocated memory" in format_summary(s, "t")


@pytest.mark.parametrize("conf", POLICIES)
def test_oom_is_one_clear_message(conf: str) -> None:
    a = _C.SimAllocator(conf + ",sim_capacity:64MiB")
    keep = a.malloc(40 << 20)
    with pytest.raises(RuntimeError, match="CUDA out of memory.*Tried to allocate 60.00 MiB"):
        a.malloc(60 << 20)
    assert a.stats()["num_ooms"] >= 1
    a.free(keep)
    a.free(a.malloc(60 << 20))  # fits once the first block is gone


@pytest.mark.parametrize("conf", POLICIES)
def test_unknown_free_is_refused_not_fatal(conf: str) -> None:
    a = _C.SimAllocator(conf)
    assert a.free(0xDEAD000) is False
    p = a.malloc(4096)
    assert a.free(p) is True
    assert a.free(p) is False  # double free
    assert a.stats()["timeshare.unknown_frees"] == 2


def test_injected_reserve_failure_is_retried_like_torch() -> None:
    a = _C.SimAllocator("policy:torch,sim_capacity:256MiB")
    a.fail_reserve_at(1)
    p = a.malloc(30 << 20)  # the failed reserve is retried after freeing the cache
    assert a.stats()["num_alloc_retries"] == 1
    a.free(p)


@pytest.mark.parametrize("conf", POLICIES)
def test_repeated_reserve_failures_end_in_one_clear_oom(conf: str) -> None:
    a = _C.SimAllocator(conf + ",sim_capacity:256MiB")
    a.free(a.malloc(1 << 20))
    for _ in range(20):
        a.fail_reserve_at(1)
        try:
            p = a.malloc(30 << 20)
        except RuntimeError as e:
            assert "out of memory" in str(e)
        else:
            a.free(p)
    assert a.stats()["allocated_bytes.all.current"] == 0


def test_budget_caps_reserved() -> None:
    a = _C.SimAllocator("policy:torch,budget:64MiB")
    p = a.malloc(50 << 20)
    with pytest.raises(RuntimeError, match="budget"):
        a.malloc(30 << 20)
    a.free(p)


def test_zero_size_is_null_without_error() -> None:
    a = _C.SimAllocator("")
    assert a.malloc(0) == 0


def test_release_stats_keys_count_fences_and_quarantine() -> None:
    """memory_stats' timeshare.release.* keys: a freed 8 MiB block's granules wait behind a
    fence on their stream (quarantined) until it completes; nothing is waited for."""
    a = _C.SimAllocator("backend:sim,sim_capacity:1GiB")
    for _ in range(10):  # fences are recorded at most once per 16 allocator events
        ptrs = [a.malloc(8 << 20) for _ in range(4)]
        for p in ptrs:
            assert a.free(p)
    s = a.stats()
    for k in ("device_waits", "fences", "aliases", "quarantined_bytes"):
        assert f"timeshare.release.{k}" in s
    assert s["timeshare.release.fences"] >= 1
    assert s["timeshare.release.device_waits"] == 0
    a.empty_cache()
    s = a.stats()
    assert s["timeshare.release.quarantined_bytes"] == 0
    assert s["reserved_bytes.all.current"] == 0
