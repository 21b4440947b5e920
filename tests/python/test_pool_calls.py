"""Issue 28: device calls of the temporal pool against expandable segments, replayed.

``fasterrcnn_mobilenet`` (a shipped trace) needed 1.57x torch-expandable's device calls while
every block that had to map was placed at its best fit's start: a detection model's large
buffers came back each iteration to a hole whose first granules had been unmapped, while the
same hole's other end, or a larger hole, still had its granules mapped. The pool now places such
a block where the fewest granules must be mapped (``TemporalPoolOptions::fewest_to_map``).
Replayed on the strict sim through the public replay API: at most 1.5x expandable's calls, a
peak at or below expandable's, and no fault for any policy. Deterministic (no timing).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from timeshare.replay import replay_trace
from timeshare.snapshot import load_trace

TRACE = Path(__file__).resolve().parents[2] / "python" / "timeshare" / "traces" / \
    "fasterrcnn_mobilenet.pkl.gz"
POLICIES = ("torch-expandable", "timeshare")


@pytest.fixture(scope="module")
def record() -> dict:
    return replay_trace(load_trace(TRACE), POLICIES, {"timeline_points": 2})


def test_calls_within_one_and_a_half_times_expandable_segments(record: dict) -> None:
    pols = record["policies"]
    ts, exp = pols["timeshare"]["device_calls"], pols["torch-expandable"]["device_calls"]
    assert ts <= 1.5 * exp, f"timeshare made {ts} device calls, torch-expandable {exp}"


def test_peak_at_or_below_expandable_segments(record: dict) -> None:
    pols = record["policies"]
    ts = pols["timeshare"]["peak_reserved_bytes"]
    exp = pols["torch-expandable"]["peak_reserved_bytes"]
    assert ts <= exp, f"timeshare reserved {ts} bytes at its peak, torch-expandable {exp}"


def test_no_device_faults(record: dict) -> None:
    for name, rec in record["policies"].items():
        assert rec["device_faults"] == 0, name
