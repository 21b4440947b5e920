"""Inputs the snapshot fuzzer (scripts/fuzz_snapshot.py) found, kept as regression tests.

The contract: ``load_snapshot`` / ``loads_snapshot`` / ``load_trace`` raise only
:class:`timeshare.snapshot.SnapshotError` on a bad file. The findings below (S1-S3
in docs/reliability.md) were fixed in python/timeshare/snapshot.py; each test must hold.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path
from typing import Any

import pytest

from timeshare import snapshot


def event(**fields: Any) -> dict[str, Any]:
    """An ``alloc`` event with the given fields replaced."""
    e = {"action": "alloc", "addr": 0x1000, "size": 512, "stream": 0, "time_us": 1, "frames": []}
    e.update(fields)
    return e


def load_everywhere(blob: bytes, tmp_path: Path) -> None:
    """Load ``blob`` as bytes and as a file, plain and gzip; SnapshotError is the only failure."""
    for data, name in ((blob, "x.pkl"), (gzip.compress(blob, mtime=0), "x.pkl.gz")):
        try:
            snapshot.loads_snapshot(data)
        except snapshot.SnapshotError:
            pass
        path = tmp_path / name
        path.write_bytes(data)
        try:
            snapshot.load_trace(path)
        except snapshot.SnapshotError:
            pass


def snap_bytes(events: list[Any]) -> bytes:
    """A snapshot with one device holding ``events``, pickled."""
    return pickle.dumps({"device_traces": [events]}, protocol=4)


def test_unhashable_action_is_a_snapshot_error(tmp_path: Path) -> None:
    load_everywhere(snap_bytes([event(action={"a": 1})]), tmp_path)


def test_huge_time_is_a_snapshot_error_or_clamped(tmp_path: Path) -> None:
    load_everywhere(snap_bytes([event(time_us=2**70)]), tmp_path)


def test_huge_pickle_frame_is_a_snapshot_error(tmp_path: Path) -> None:
    load_everywhere(b"\x80\x04\x95" + struct.pack("<Q", 2**63) + b"}.", tmp_path)


# Neighbours of the findings that already hold, so a fix cannot regress them.
@pytest.mark.parametrize(
    "events",
    [
        [event(size=2**64)],
        [event(size=-1)],
        [event(time_us=float("nan"))],
        [event(stream=2**40)],
        [event(addr=[1])],
        [event(action=None)],
        ["not a dict", 3, None],
        [event(), event(action="free_completed", addr={"x": 1})],
    ],
)
def test_malformed_events_never_raise_anything_else(events: list[Any], tmp_path: Path) -> None:
    load_everywhere(snap_bytes(events), tmp_path)


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        b"\x1f\x8b",
        b"\x80\x04\x95" + struct.pack("<Q", 2**62) + b"}.",
        b"\x80\x04K\x01.",
        b"cos\nsystem\n(S'true'\ntR.",
        pickle.dumps([1, 2, 3]),
        pickle.dumps({"device_traces": "no"}),
    ],
)
def test_bad_files_are_snapshot_errors(blob: bytes, tmp_path: Path) -> None:
    load_everywhere(blob, tmp_path)
