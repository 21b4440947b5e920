"""Tests for timeshare.snapshot: safe loading, conversion rules, .tsev files, shipped traces."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from timeshare import snapshot

ROOT = Path(__file__).resolve().parents[2]
TRACES = ROOT / "python" / "timeshare" / "traces"



SnapshotError = snapshot.SnapshotError


def ev(action: str, addr: int, size: int, t: int, stream: int = 0) -> dict[str, Any]:
    """One snapshot trace event."""
    return {
        "action": action,
        "addr": addr,
        "size": size,
        "stream": stream,
        "time_us": t,
        "frames": [],
    }


def snap(*devices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """A minimal snapshot dict with the given per-device traces."""
    d = {
        "segments": [],
        "device_traces": list(devices),
        "allocator_settings": {},
        "external_annotations": [],
    }
    d.update(extra)
    return d


def write(tmp_path: Path, obj: Any, name: str = "t.pkl", gz: bool = False) -> Path:
    """Pickle ``obj`` to ``tmp_path/name`` (gzip when ``gz``)."""
    data = pickle.dumps(obj)
    p = tmp_path / name
    p.write_bytes(gzip.compress(data) if gz else data)
    return p


def rows(events: np.ndarray) -> list[tuple[int, int, int, int]]:
    """(op, stream, id, bytes) per event."""
    return [(int(e["op"]), int(e["stream"]), int(e["id"]), int(e["bytes"])) for e in events]


def test_dtype_matches_cpp_event_layout() -> None:
    dt = snapshot.EVENT_DTYPE
    assert dt.itemsize == 32
    assert [dt.fields[n][1] for n in dt.names] == [0, 4, 8, 16, 24]
    assert dt.names == ("op", "stream", "id", "bytes", "time_us")


def test_alloc_free_pairs(tmp_path: Path) -> None:
    trace = [
        ev("alloc", 100, 10, 1),
        ev("alloc", 200, 20, 2),
        ev("free_requested", 100, 10, 3),
        ev("free_completed", 100, 10, 3),
        ev("alloc", 100, 30, 4),
        ev("free_requested", 200, 20, 5),
        ev("free_completed", 200, 20, 5),
    ]
    tr = snapshot.load_trace(write(tmp_path, snap(trace), "pairs.pkl"))
    assert tr.name == "pairs"
    assert tr.allocs == 3
    assert rows(tr.events) == [
        (0, 0, 0, 10),
        (0, 0, 1, 20),
        (1, 0, 0, 10),
        (0, 0, 2, 30),
        (1, 0, 1, 20),
    ]
    assert tr.events["time_us"].tolist() == [1, 2, 3, 4, 5]
    assert tr.peak_live_bytes == 50
    assert tr.skipped == {}
    assert tr.meta == {}
    assert len(tr.iteration_starts) == 0
    assert snapshot.validate(tr.events) == ""


def test_free_placed_at_free_completed_when_it_follows() -> None:
    trace = [
        ev("alloc", 1, 8, 1),
        ev("alloc", 2, 16, 2),
        ev("free_requested", 1, 8, 3),
        ev("alloc", 3, 32, 4),
        ev("free_completed", 1, 8, 5),
    ]
    events, allocs = snapshot.convert_events(trace)
    assert allocs == 3
    assert rows(events) == [(0, 0, 0, 8), (0, 0, 1, 16), (0, 0, 2, 32), (1, 0, 0, 8)]
    assert events["time_us"][-1] == 5


def test_free_stays_at_free_requested_without_completion() -> None:
    trace = [ev("alloc", 1, 8, 1), ev("free_requested", 1, 8, 2), ev("alloc", 2, 16, 3)]
    skipped: dict[str, int] = {}
    events, _ = snapshot.convert_events(trace, skipped)
    assert rows(events) == [(0, 0, 0, 8), (1, 0, 0, 8), (0, 0, 1, 16)]
    assert skipped == {}


def test_mid_run_frees_are_skipped_and_counted() -> None:
    trace = [
        ev("free_requested", 7, 64, 1),
        ev("free_completed", 7, 64, 1),
        ev("alloc", 1, 8, 2),
        ev("free_requested", 1, 8, 3),
        ev("free_completed", 1, 8, 3),
        ev("free_requested", 1, 8, 4),
    ]
    skipped: dict[str, int] = {}
    events, allocs = snapshot.convert_events(trace, skipped)
    assert allocs == 1 and rows(events) == [(0, 0, 0, 8), (1, 0, 0, 8)]
    assert skipped == {"free_of_unknown_addr": 2, "free_completed_unmatched": 1}


def test_second_alloc_at_live_address_frees_implicitly() -> None:
    trace = [ev("alloc", 1, 8, 1), ev("alloc", 1, 24, 2), ev("free_requested", 1, 24, 3)]
    skipped: dict[str, int] = {}
    events, allocs = snapshot.convert_events(trace, skipped)
    assert allocs == 2
    assert rows(events) == [(0, 0, 0, 8), (1, 0, 0, 8), (0, 0, 1, 24), (1, 0, 1, 24)]
    assert skipped == {"implicit_free": 1}
    assert snapshot.validate(events) == ""


def test_streams_are_dense_and_frees_keep_their_alloc_stream() -> None:
    s1, s2 = 0x7F00DEAD, 0x7F00BEEF
    trace = [
        ev("alloc", 1, 8, 1, stream=s1),
        ev("alloc", 2, 8, 2, stream=s2),
        ev("alloc", 3, 8, 3, stream=s1),
        ev("free_requested", 2, 8, 4, stream=s1),
    ]
    events, _ = snapshot.convert_events(trace)
    assert events["stream"].tolist() == [0, 1, 0, 1]


def test_not_replayed_actions_are_counted() -> None:
    trace = [
        ev("segment_alloc", 0, 2 << 20, 1),
        ev("alloc", 0, 512, 2),
        ev("segment_map", 0, 2 << 20, 3),
        ev("snapshot", 0, 0, 4),
        ev("oom", 0, 1, 5),
        ev("annotate", 0, 0, 6),
        ev("segment_unmap", 0, 0, 7),
        ev("segment_free", 0, 0, 8),
        ev("mystery", 0, 0, 9),
    ]
    skipped: dict[str, int] = {}
    events, allocs = snapshot.convert_events(trace, skipped)
    assert allocs == 1 and len(events) == 1
    assert skipped == {
        "segment_alloc": 1,
        "segment_map": 1,
        "snapshot": 1,
        "oom": 1,
        "annotate": 1,
        "segment_unmap": 1,
        "segment_free": 1,
        "unknown_action:mystery": 1,
    }


def test_weird_events_never_crash() -> None:
    trace: list[Any] = [
        {"action": "alloc", "size": 8},  # no addr
        {"addr": 1, "size": 8},  # no action
        {"action": "alloc", "addr": 2},  # no size
        None,
        "alloc",
        42,
        {"action": "alloc", "addr": 3, "size": "big"},
        {"action": "alloc", "addr": 4, "size": -5},
        {"action": "alloc", "addr": 5, "size": True},
        {"action": "alloc", "addr": [6], "size": 8},  # unhashable address
        {"action": "alloc", "addr": 7, "size": 8, "stream": [1], "time_us": "later"},
        {"action": "alloc", "addr": 8, "size": 8, "time_us": float("nan")},
        {"action": "free_requested", "addr": {"x": 1}, "size": 8},
        {"action": "free_completed", "addr": [1], "size": 8},
        {"action": 3, "addr": 1, "size": 1},
    ]
    skipped: dict[str, int] = {}
    events, allocs = snapshot.convert_events(trace, skipped)
    assert allocs == 2
    assert skipped["missing_field"] == 6
    assert skipped["bad_size"] == 3
    assert skipped["bad_addr"] == 3
    assert snapshot.validate(events) == ""


def test_device_choice(tmp_path: Path) -> None:
    dev0 = [ev("alloc", 1, 8, 1)]
    dev1 = [ev("alloc", 1, 8, 1), ev("alloc", 2, 8, 2), ev("free_requested", 2, 8, 3)]
    p = write(tmp_path, snap(dev0, dev1, []))
    tr = snapshot.load_trace(p)
    assert tr.allocs == 2 and tr.skipped == {"other_devices": 1}
    tr0 = snapshot.load_trace(p, device=0)
    assert tr0.allocs == 1 and tr0.skipped == {"other_devices": 3}
    with pytest.raises(SnapshotError, match="no device 5"):
        snapshot.load_trace(p, device=5)
    empty = snapshot.load_trace(write(tmp_path, snap(), "empty.pkl"))
    assert empty.allocs == 0 and len(empty.events) == 0 and empty.peak_live_bytes == 0


def test_iteration_starts_and_meta(tmp_path: Path) -> None:
    trace = [ev("alloc", i, 8, 10 * i) for i in range(1, 7)]
    meta = {"tool": "timeshare capture", "iteration_marks_us": [25, 45, 1000], "extra": [1]}
    tr = snapshot.load_trace(
        write(tmp_path, snap(trace, trace_source=meta), "m.pickle.gz", gz=True)
    )
    assert tr.name == "m"
    assert tr.iteration_starts.tolist() == [2, 4]  # the mark past the end is dropped
    assert tr.meta == meta


@pytest.mark.parametrize(
    "name,gz", [("plain.pkl.gz", False), ("zipped.pkl", True), ("no_suffix", True)]
)
def test_gzip_detected_by_magic_not_name(tmp_path: Path, name: str, gz: bool) -> None:
    p = write(tmp_path, snap([ev("alloc", 1, 8, 1)]), name, gz=gz)
    assert snapshot.load_trace(p).allocs == 1


class _CallsSystem:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


class _CallsEval:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (eval, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.mark.parametrize("payload", [_CallsSystem, _CallsEval])
@pytest.mark.parametrize("gz", [False, True])
def test_malicious_pickle_is_refused_and_not_run(tmp_path: Path, payload: type, gz: bool) -> None:
    marker = tmp_path / "pwned"
    p = write(tmp_path, snap([ev("alloc", 1, 8, 1)], evil=payload(marker)), gz=gz)
    with pytest.raises(SnapshotError) as info:
        snapshot.load_snapshot(p)
    message = str(info.value)
    assert "refusing to load" in message and "plain data" in message
    assert ("system" in message) or ("eval" in message)
    assert "\n" not in message
    assert not marker.exists()


def test_any_global_is_refused(tmp_path: Path) -> None:
    p = write(tmp_path, {"device_traces": [], "x": Path("a")})
    with pytest.raises(SnapshotError, match="tries to call pathlib.*plain data"):
        snapshot.load_snapshot(p)


def test_truncated_gzip(tmp_path: Path) -> None:
    data = gzip.compress(pickle.dumps(snap([ev("alloc", i, 8, i) for i in range(500)])))
    p = tmp_path / "cut.pkl.gz"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(SnapshotError, match="gzip stream is truncated"):
        snapshot.load_snapshot(p)


def test_truncated_plain_pickle(tmp_path: Path) -> None:
    data = pickle.dumps(snap([ev("alloc", i, 8, i) for i in range(500)]))
    p = tmp_path / "cut.pkl"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(SnapshotError, match="pickle is truncated"):
        snapshot.load_snapshot(p)


@pytest.mark.parametrize(
    "obj,match",
    [
        ([1, 2, 3], "top level is list"),
        ({"segments": []}, "no 'device_traces' list"),
        ({"device_traces": "x"}, "no 'device_traces' list"),
    ],
)
def test_not_a_snapshot(tmp_path: Path, obj: Any, match: str) -> None:
    with pytest.raises(SnapshotError, match=match):
        snapshot.load_snapshot(write(tmp_path, obj))


def test_garbage_and_empty_and_missing_files(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pkl"
    junk.write_bytes(b"this is not a pickle at all")
    with pytest.raises(SnapshotError, match="cannot load"):
        snapshot.load_snapshot(junk)
    empty = tmp_path / "empty.pkl"
    empty.write_bytes(b"")
    with pytest.raises(SnapshotError, match="empty"):
        snapshot.load_snapshot(empty)
    with pytest.raises(SnapshotError, match="cannot read"):
        snapshot.load_snapshot(tmp_path / "absent.pkl")
    assert issubclass(SnapshotError, ValueError)


def test_trace_name() -> None:
    assert snapshot.trace_name("a/b/resnet50.pkl.gz") == "resnet50"
    assert snapshot.trace_name("x.pickle") == "x"
    assert snapshot.trace_name("plain") == "plain"


def test_validate_reports_broken_traces() -> None:
    def arr(rs: list[tuple[int, int, int]]) -> np.ndarray:
        a = np.zeros(len(rs), snapshot.EVENT_DTYPE)
        for i, (op, id_, b) in enumerate(rs):
            a[i] = (op, 0, id_, b, i)
        return a

    assert snapshot.validate(arr([(0, 0, 8), (0, 1, 8), (1, 0, 8)])) == ""
    assert "expected 1" in snapshot.validate(arr([(0, 0, 8), (0, 2, 8)]))
    assert "freed 2 times" in snapshot.validate(arr([(0, 0, 8), (1, 0, 8), (1, 0, 8)]))
    assert "before its allocation" in snapshot.validate(arr([(0, 0, 8), (1, 1, 8), (0, 1, 8)]))
    assert "never allocated" in snapshot.validate(arr([(0, 0, 8), (1, 3, 8)]))
    assert "size other" in snapshot.validate(arr([(0, 0, 8), (1, 0, 9)]))
    assert "op 7" in snapshot.validate(arr([(7, 0, 8)]))


def test_write_tsev_round_trip(tmp_path: Path) -> None:
    trace = [
        ev("alloc", 1, 8, 1),
        ev("alloc", 2, 3 << 40, 2, stream=5),
        ev("free_requested", 1, 8, 3),
    ]
    tr = snapshot.load_trace(write(tmp_path, snap(trace)))
    out = tmp_path / "t.tsev"
    snapshot.write_tsev(tr, out)
    raw = out.read_bytes()
    assert raw[:8] == b"TSEV0001"
    assert struct.unpack_from("<Q", raw, 8)[0] == 3
    assert len(raw) == 16 + 3 * 32
    op, stream, id_, nbytes, t = struct.unpack_from("<B3xIQQQ", raw, 16 + 32)
    assert (op, stream, id_, nbytes, t) == (0, 1, 1, 3 << 40, 2)
    back = snapshot.read_tsev(out)
    assert back.dtype == snapshot.EVENT_DTYPE and (back == tr.events).all()
    out.write_bytes(raw[:-5])
    with pytest.raises(SnapshotError, match="truncated"):
        snapshot.read_tsev(out)


def test_find_traces(tmp_path: Path) -> None:
    for n in ["b.pkl.gz", "a.pkl", "c.pickle", "d.pickle.gz", "e.txt", "f.tsev"]:
        (tmp_path / n).write_bytes(b"")
    found = snapshot.find_traces([tmp_path, tmp_path / "e.txt"])
    assert [p.name for p in found] == ["a.pkl", "b.pkl.gz", "c.pickle", "d.pickle.gz", "e.txt"]
    with pytest.raises(FileNotFoundError):
        snapshot.find_traces([tmp_path / "nope"])


def test_cli_exports_tsev(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "in"
    src.mkdir()
    write(src, snap([ev("alloc", 1, 8, 1)]), "one.pkl.gz", gz=True)
    (src / "bad.pkl").write_bytes(b"nope")
    assert snapshot._main(["--tsev", str(tmp_path / "out"), str(src)]) == 1
    assert snapshot.read_tsev(tmp_path / "out" / "one.tsev")["bytes"].tolist() == [8]
    captured = capsys.readouterr()
    assert "one: 1 events" in captured.out and "error: cannot load" in captured.err


def test_conversion_is_fast() -> None:
    trace = []
    for i in range(100_000):
        trace.append(ev("alloc", i % 977 + 1, 64 + i % 13, i))
        trace.append(ev("free_requested", i % 977 + 1, 64 + i % 13, i))
        trace.append(ev("free_completed", i % 977 + 1, 64 + i % 13, i))
    import time

    t0 = time.perf_counter()
    events, allocs = snapshot.convert_events(trace)
    elapsed = time.perf_counter() - t0
    assert allocs == 100_000 and len(events) == 200_000
    assert elapsed < 3.0  # 0.3 M events; the aim is < 2 s per million on one core


SHIPPED = sorted(TRACES.glob("*.pkl.gz"))


def test_traces_are_shipped() -> None:
    assert len(SHIPPED) >= 8, f"expected 8 shipped traces in {TRACES}"
    assert sum(p.stat().st_size for p in SHIPPED) <= 40 * 2**20


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_trace_loads_and_validates(path: Path) -> None:
    tr = snapshot.load_trace(path)
    assert snapshot.validate(tr.events) == ""
    assert tr.allocs > 1000
    assert tr.meta.get("tool") == "timeshare capture"
    assert tr.meta.get("unaccounted_events") == 0
    assert len(tr.iteration_starts) >= 4
    assert tr.peak_live_bytes > 0
    assert (np.diff(tr.events["time_us"].astype(np.int64)) >= 0).all()
    assert set(tr.skipped) <= {"free_of_unknown_addr", "free_completed_unmatched"}
