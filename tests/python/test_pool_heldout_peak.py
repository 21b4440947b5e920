"""Issue 28: the temporal pool at or below expandable segments on a held-out trace.

``tests/data/corpus/llama_adamw.pkl.gz`` is a trace of a held-out family of the corpus
(scripts/corpus/models.py): no choice of the pool was made on it. Replayed on the strict sim
(work in flight modelled), ``timeshare`` must reserve at most what ``torch-expandable`` reserves
at its peak, and no policy may fault.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from timeshare.replay import replay_trace
from timeshare.snapshot import load_trace

ROOT = Path(__file__).resolve().parents[2]
HELD_OUT = ROOT / "tests" / "data" / "corpus" / "llama_adamw.pkl.gz"
POLICIES = ("torch", "torch-expandable", "timeshare")


@pytest.fixture(scope="module")
def record() -> dict:
    return replay_trace(load_trace(HELD_OUT), POLICIES)


def test_peak_at_or_below_expandable_segments(record: dict) -> None:
    pols = record["policies"]
    ts = pols["timeshare"]["peak_reserved_bytes"]
    exp = pols["torch-expandable"]["peak_reserved_bytes"]
    assert ts <= exp, f"timeshare reserved {ts} bytes at its peak, torch-expandable {exp}"


def test_no_device_faults(record: dict) -> None:
    for name, rec in record["policies"].items():
        assert rec["device_faults"] == 0, name
