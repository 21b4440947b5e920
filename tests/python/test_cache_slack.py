"""TIMESHARE_CONF ``cache_slack``: the temporal pool's trade of peak reserved for device calls,
set by the user.

By default the pool gives back (unmaps) free granules above the observed peak of demand, so
that its peak stays low; on gpt2_fixed (shipped) that costs 4-20 map/unmap calls in most
iterations, where expandable segments make none once grown. ``cache_slack:F`` keeps free memory
mapped up to F times that peak above it. Through the public replay API on the strict sim:
with 2 % the steady state makes no call and the whole run makes fewer calls than
torch-expandable's, for at most 2 % (and the 20 MiB page that growth maps ahead) more peak
reserved, still below torch-expandable's; no policy faults. Deterministic (no timing).
Before the option existed, ``cache_slack`` was an unknown key and the replay refused it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import timeshare
from timeshare.replay import replay_trace
from timeshare.snapshot import load_trace

SHIPPED = Path(__file__).resolve().parents[2] / "python" / "timeshare" / "traces"
MiB = 1 << 20


@pytest.fixture(scope="module")
def runs() -> dict[str, dict]:
    trace = load_trace(SHIPPED / "gpt2_fixed.pkl.gz")
    out = {}
    for conf in ("", "cache_slack:0.02"):
        options = {"timeline_points": 2, **({"conf": conf} if conf else {})}
        rec = replay_trace(trace, ("torch-expandable", "timeshare"), options)
        out[conf or "default"] = rec["policies"]
    return out


def test_slack_trades_peak_for_calls(runs: dict[str, dict]) -> None:
    base, slack = runs["default"]["timeshare"], runs["cache_slack:0.02"]["timeshare"]
    expandable = runs["default"]["torch-expandable"]
    steady = slack["device_calls_by_iteration"][3:]  # after the second marked iteration
    assert steady and sum(steady) == 0, slack["device_calls_by_iteration"]
    assert sum(base["device_calls_by_iteration"][3:]) > 0  # the default gives memory back
    assert slack["device_calls"] < expandable["device_calls"] < base["device_calls"]
    # The cost: at most 2 % more, plus a 20 MiB page of growth.
    assert slack["peak_reserved_bytes"] <= base["peak_reserved_bytes"] * 1.02 + 20 * MiB
    assert slack["peak_reserved_bytes"] < expandable["peak_reserved_bytes"]
    for pols in runs.values():
        assert all(r["device_faults"] == 0 for r in pols.values())


@pytest.mark.parametrize("bad", ["cache_slack:1.5", "cache_slack:-0.1", "cache_slack:2%"])
def test_bad_slack_is_one_error_line(bad: str) -> None:
    with pytest.raises(ValueError) as e:
        timeshare.parse_conf(bad)
    assert "cache_slack" in str(e.value) and "\n" not in str(e.value)


def test_slack_is_parsed() -> None:
    assert timeshare.parse_conf("cache_slack:0.02")["cache_slack"] == pytest.approx(0.02)
    assert timeshare.parse_conf("")["cache_slack"] == 0.0
