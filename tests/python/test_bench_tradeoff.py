"""scripts/bench_tradeoff.py: the cells of the trade-off curve from replay records (what each
column counts), and one point replayed end to end on one shipped trace through the public API.
No timing is checked (the ns column is a ratio of the replay's own clocks)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "bench_tradeoff.py"
MiB = 1 << 20


def _module():
    spec = importlib.util.spec_from_file_location("bench_tradeoff", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _policy(peak_mib: int, calls: int, by_iteration: list[int], ns: float, frag: float) -> dict:
    return {"peak_reserved_bytes": peak_mib * MiB, "device_calls": calls,
            "device_calls_by_iteration": by_iteration, "ns_per_event": ns,
            "fragmentation": frag, "device_faults": 0}


def _trace(name: str, ts: dict, exp: dict, torch_ns: float = 100.0) -> dict:
    return {"name": name, "policies": {
        "timeshare": ts, "torch-expandable": exp,
        "torch": _policy(999, 1, [], torch_ns, 1.5)}}


def test_cells_count_what_the_columns_say() -> None:
    mod = _module()
    traces = [
        # Above expandable's peak, within 1.5x its calls; 2 calls in each of 2 steady iterations.
        _trace("a", _policy(110, 30, [20, 4, 2, 2, 2], 120.0, 1.10),
               _policy(100, 25, [25, 0, 0, 0, 0], 90.0, 1.05)),
        # Below its peak, 2x its calls; no iteration marks (a GPU snapshot).
        _trace("b", _policy(90, 40, [], 300.0, 1.02),
               _policy(95, 20, [], 90.0, 1.08)),
        # Below, fewer calls, 1 steady iteration with 5 calls.
        _trace("c", _policy(50, 10, [6, 1, 1, 5], 80.0, 1.30),
               _policy(60, 12, [12, 0, 0, 0], 90.0, 1.40)),
    ]
    c = mod.summarize(traces)
    assert c["above"] == ["a"]
    assert c["over"] == ["b"]
    assert (c["calls"], c["calls_exp"]) == (80, 57)
    assert c["steady"] == pytest.approx(2.0 + 5.0)  # per iteration after the second, summed
    assert c["frag_median"] == pytest.approx(1.10) and c["frag_worst"] == pytest.approx(1.30)
    assert c["ns_median"] == pytest.approx(1.2) and c["ns_worst"] == pytest.approx(3.0)
    lines = mod.render("Set", 3, [("default", c)])
    assert "| `default` | 1.100 · 1.300 | 1 | 80 (57, 1.40x) | 1 | 7.0 | 1.20 · 3.00 | 0 |" in lines


def test_one_point_replays_through_the_public_api() -> None:
    from timeshare.replay import replay_paths

    mod = _module()
    path = ROOT / "python" / "timeshare" / "traces" / "resnet18.pkl.gz"
    options = {"timeline_points": 2, "conf": "cache_slack:0.02"}
    doc = replay_paths([str(path)], mod.POLICIES, options)
    c = mod.summarize(doc["traces"])
    assert c["faults"] == 0
    assert c["calls"] > 0 and c["calls_exp"] > 0
    assert 1.0 <= c["frag_median"] < 1.5
