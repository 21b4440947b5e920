"""Reader for PyTorch memory snapshots: safe loading and conversion to compact trace events.

A memory snapshot is the pickle written by ``torch.cuda.memory._dump_snapshot()`` (or the dict
returned by ``torch.cuda.memory._snapshot()``) after ``_record_memory_history()``; the CPU
recorder in :mod:`timeshare.capture` writes the same schema. Its ``device_traces`` hold one list
of event dicts per device (``action``, ``addr``, ``size``, ``stream``, ``time_us``, ``frames``).

Real snapshots start mid-run (the history is a ring buffer) and are messy, so conversion is
forgiving: frees of unknown addresses are skipped, an allocation over a still-live address frees
the old block implicitly, events that are not replayed (segments, ooms, annotations) are counted,
and malformed events are skipped and counted. Nothing in a snapshot may run code: the unpickler
refuses every global, so a pickle that tries to call anything is rejected before it can.

The compact form is a NumPy structured array (:data:`EVENT_DTYPE`) laid out exactly like the C++
``timeshare::trace::Event`` (``csrc/timeshare/trace/events.h``), one 32-byte record per
allocation or free; a free names the dense id of the allocation it frees.
"""

from __future__ import annotations

import gzip
import io
import itertools
import pickle
import struct
import sys
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "EVENT_DTYPE",
    "OP_ALLOC",
    "OP_FREE",
    "TSEV_MAGIC",
    "SnapshotError",
    "Trace",
    "convert_events",
    "find_traces",
    "load_snapshot",
    "load_trace",
    "loads_snapshot",
    "read_tsev",
    "snapshot_to_trace",
    "trace_name",
    "validate",
    "write_tsev",
]

#: One compact event; shared zero-copy with C++ ``timeshare::trace::Event`` (32 bytes).
EVENT_DTYPE = np.dtype(
    {
        "names": ["op", "stream", "id", "bytes", "time_us"],
        "formats": ["u1", "<u4", "<u8", "<u8", "<u8"],
        "offsets": [0, 4, 8, 16, 24],
        "itemsize": 32,
    }
)
OP_ALLOC = 0
OP_FREE = 1

#: First bytes of a ``.tsev`` file; a little-endian u64 event count and the records follow.
TSEV_MAGIC = b"TSEV0001"

_GZIP_MAGIC = b"\x1f\x8b"
_TRACE_SUFFIXES = (".pkl", ".pkl.gz", ".pickle", ".pickle.gz")
# Actions that describe the allocator's segments or the history itself, not allocations.
_NOT_REPLAYED = frozenset(
    {"segment_alloc", "segment_free", "segment_map", "segment_unmap", "snapshot", "oom", "annotate"}
)


class SnapshotError(ValueError):
    """A file is not a loadable memory snapshot (unsafe, truncated, or of the wrong shape)."""


class _PlainDataUnpickler(pickle.Unpickler):
    """Unpickler that refuses every global: snapshots hold only dicts, lists and scalars."""

    def __init__(self, file: io.BufferedIOBase, source: str) -> None:
        super().__init__(file)
        self._source = source

    def find_class(self, module: str, name: str) -> Any:  # noqa: D102 - see class docstring
        raise SnapshotError(
            f"refusing to load {self._source}: the pickle tries to call {module}.{name}; "
            "snapshots contain only plain data"
        )

    def persistent_load(self, pid: Any) -> Any:  # noqa: D102 - see class docstring
        raise SnapshotError(
            f"refusing to load {self._source}: the pickle references an external object; "
            "snapshots contain only plain data"
        )


def loads_snapshot(data: bytes, source: str = "<bytes>") -> dict[str, Any]:
    """Safely load a snapshot from bytes (plain or gzip pickle, detected by magic bytes).

    Raises :class:`SnapshotError` with one line when the data is unsafe, truncated, or not a
    snapshot (a dict with a ``device_traces`` list).
    """
    if data[:2] == _GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except EOFError:
            raise SnapshotError(f"cannot load {source}: the gzip stream is truncated") from None
        except (OSError, zlib.error) as exc:
            raise SnapshotError(f"cannot load {source}: corrupt gzip data ({exc})") from None
    if not data:
        raise SnapshotError(f"cannot load {source}: the file is empty")
    try:
        obj = _PlainDataUnpickler(io.BytesIO(data), source).load()
    except SnapshotError:
        raise
    except EOFError:
        raise SnapshotError(f"cannot load {source}: the pickle is truncated") from None
    except (OverflowError, MemoryError, RecursionError) as exc:
        raise SnapshotError(
            f"cannot load {source}: the pickle is corrupt ({type(exc).__name__})") from None
    except pickle.UnpicklingError as exc:
        message = str(exc)
        if "truncated" in message:
            raise SnapshotError(f"cannot load {source}: the pickle is truncated") from None
        raise SnapshotError(f"cannot load {source}: not a pickle ({message})") from None
    except (ValueError, TypeError, IndexError, KeyError, AttributeError) as exc:
        raise SnapshotError(f"cannot load {source}: corrupt pickle ({exc})") from None
    if not isinstance(obj, dict):
        raise SnapshotError(
            f"{source} is not a memory snapshot: top level is {type(obj).__name__}, "
            "expected a dict with 'device_traces'"
        )
    traces = obj.get("device_traces")
    if not isinstance(traces, list):
        raise SnapshotError(
            f"{source} is not a memory snapshot: no 'device_traces' list "
            "(record with torch.cuda.memory._record_memory_history() before _snapshot())"
        )
    return obj


def load_snapshot(path: str | Path) -> dict[str, Any]:
    """Safely load the memory snapshot at ``path`` (plain or gzip pickle).

    Only plain data is accepted: a pickle that tries to import or call anything raises
    :class:`SnapshotError` without running it.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SnapshotError(f"cannot read {path}: {exc.strerror or exc}") from None
    return loads_snapshot(data, str(path))


@dataclass
class Trace:
    """One device's allocation trace in compact form.

    Attributes:
        name: file name without any extension (``resnet50.pkl.gz`` -> ``resnet50``).
        events: allocations and frees, :data:`EVENT_DTYPE`, in trace order.
        allocs: number of allocations (ids are ``0 .. allocs-1``).
        peak_live_bytes: most requested bytes live at once over ``events``.
        iteration_starts: indices into ``events`` where each training iteration starts.
        skipped: counts of events not replayed or skipped, by action or reason.
        meta: the snapshot's ``trace_source`` dict (``{}`` when absent).
    """

    name: str
    events: np.ndarray
    allocs: int
    peak_live_bytes: int
    iteration_starts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    skipped: dict[str, int] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        """Number of compact events."""
        return len(self.events)


def _count(skipped: dict[str, int], key: str, n: int = 1) -> None:
    skipped[key] = skipped.get(key, 0) + n


def convert_events(
    events: Iterable[Any], skipped: dict[str, int] | None = None
) -> tuple[np.ndarray, int]:
    """Convert one device's snapshot events into compact events.

    Returns ``(events, allocs)``; reasons for anything skipped are added to ``skipped``.
    Rules: a free of an address with no live allocation is skipped; a free is placed at its
    ``free_completed`` event when one follows for that block, else at ``free_requested``; an
    allocation over a still-live address frees the old block implicitly (``implicit_free``);
    segment, snapshot, oom and annotate events are counted by action and not replayed.
    """
    if skipped is None:
        skipped = {}
    conv = _Conversion()
    counts = conv.counts
    alloc, free, free_completed = conv.alloc, conv.free, conv.free_completed
    t = 0  # the clock (microseconds): the latest valid time seen
    for ev in events:
        try:
            action = ev["action"]
            addr = ev["addr"]
            size = ev["size"]
        except (KeyError, TypeError, IndexError):
            _count(counts, "missing_field")
            continue
        if action.__class__ is not str or addr.__class__ is not int:
            reason = _unmatchable(action, addr)
            if reason is not None:
                _count(counts, reason)
                continue
        tu = ev.get("time_us", t)
        if tu.__class__ is int:
            if t < tu < 2**63:  # times beyond u64 (corrupt) are ignored: the clock keeps its value
                t = tu
        elif isinstance(tu, (int, float)) and tu == tu and t < tu < 2**63:
            t = int(tu)
        if action == "alloc":
            alloc(addr, size, ev, t)
        elif action == "free_requested" or action == "free":
            free(addr, action == "free_requested", t)
        elif action == "free_completed":
            free_completed(addr, t)
        elif action in _NOT_REPLAYED:
            _count(counts, action)
        else:
            _count(counts, f"unknown_action:{action}" if isinstance(action, str) else "bad_action")
    for key, n in counts.items():
        _count(skipped, key, n)
    return _to_array(conv.rows()), conv.next_id


def _unmatchable(action: Any, addr: Any) -> str | None:
    """Why an event with these fields cannot be replayed (its skip reason), or None: an action
    that is not a string (e.g. a dict or list: not an action at all), an address that cannot be
    matched (unhashable)."""
    if action.__class__ is not str:
        return "bad_action"
    if addr.__class__ is not int:
        try:
            hash(addr)
        except TypeError:
            return "bad_addr"
    return None


class _Conversion:
    """One device's conversion in progress: the compact rows so far (``out``: ``(op, stream,
    id, bytes, time_us)``, None where a free moved later), the live allocations by address, the
    requested frees not yet completed, the dense stream indices, the skip counts and the next
    allocation id. Each event comes with the clock ``t`` (microseconds)."""

    __slots__ = ("out", "live", "pending", "streams", "counts", "moved", "next_id")

    def __init__(self) -> None:
        self.out: list[Any] = []
        self.live: dict[Any, tuple[int, int, int]] = {}  # addr -> (id, bytes, stream index)
        self.pending: dict[Any, int] = {}  # addr -> index in out of a requested free
        self.streams: dict[Any, int] = {}
        self.counts: dict[str, int] = {}
        self.moved = 0  # frees moved to their completion (their old rows are None)
        self.next_id = 0

    def alloc(self, addr: Any, size: Any, ev: Any, t: int) -> None:
        """An allocation of ``size`` bytes at ``addr`` (an integer size below 2**64, else
        skipped as ``bad_size``) on the event's stream (default 0; numbered densely in order of
        first appearance, an unhashable value by its repr); a block still live at ``addr`` is
        freed first (``implicit_free``)."""
        if size.__class__ is not int:
            if isinstance(size, bool) or not isinstance(size, int):
                _count(self.counts, "bad_size")
                return
            size = int(size)
        if size < 0 or size >= 2**64:
            _count(self.counts, "bad_size")
            return
        streams = self.streams
        try:
            stream = ev.get("stream", 0)
            s = streams.get(stream)
        except TypeError:  # unhashable stream value
            stream = repr(stream)
            s = streams.get(stream)
        if s is None:
            s = streams[stream] = len(streams)
        live, out, blk_id = self.live, self.out, self.next_id
        old = live.pop(addr, None)
        if old is not None:
            out.append((OP_FREE, old[2], old[0], old[1], t))
            _count(self.counts, "implicit_free")
        if self.pending:
            self.pending.pop(addr, None)
        live[addr] = (blk_id, size, s)
        out.append((OP_ALLOC, s, blk_id, size, t))
        self.next_id = blk_id + 1

    def free(self, addr: Any, requested: bool, t: int) -> None:
        """A free of the block live at ``addr`` (skipped when none is); a requested free is
        remembered, to move to its completion if one follows."""
        blk = self.live.pop(addr, None)
        if blk is None:
            _count(self.counts, "free_of_unknown_addr")
            return
        if requested:
            self.pending[addr] = len(self.out)
        self.out.append((OP_FREE, blk[2], blk[0], blk[1], t))

    def free_completed(self, addr: Any, t: int) -> None:
        """A completed free: its requested free moves here (unless nothing came between); a
        completion without a recorded request still frees the block live at ``addr``."""
        out = self.out
        idx = self.pending.pop(addr, None)
        if idx is not None:
            if idx != len(out) - 1:
                prev = out[idx]
                out[idx] = None
                self.moved += 1
                out.append((OP_FREE, prev[1], prev[2], prev[3], t))
            return
        blk = self.live.pop(addr, None)
        if blk is not None:
            out.append((OP_FREE, blk[2], blk[0], blk[1], t))
        else:
            _count(self.counts, "free_completed_unmatched")

    def rows(self) -> list[Any]:
        """The compact rows in trace order, without the places that frees moved from."""
        if self.moved:
            return [e for e in self.out if e is not None]
        return self.out


def _to_array(rows: list[tuple[int, int, int, int, int]]) -> np.ndarray:
    """Pack ``(op, stream, id, bytes, time_us)`` tuples into an :data:`EVENT_DTYPE` array."""
    arr = np.zeros(len(rows), EVENT_DTYPE)
    if rows:
        flat = np.fromiter(
            itertools.chain.from_iterable(rows), dtype=np.uint64, count=5 * len(rows)
        ).reshape(-1, 5)
        for column, name in enumerate(EVENT_DTYPE.names):
            arr[name] = flat[:, column]
    return arr


def _peak_live_bytes(events: np.ndarray) -> int:
    if len(events) == 0:
        return 0
    signed = events["bytes"].astype(np.int64)
    signed[events["op"] == OP_FREE] *= -1
    return int(max(0, np.cumsum(signed).max()))


def _iteration_starts(events: np.ndarray, marks_us: Any) -> np.ndarray:
    """Indices of the first event at or after each mark (marks past the end are dropped)."""
    try:
        marks = np.asarray(
            sorted(float(m) for m in marks_us if isinstance(m, (int, float))), dtype=np.float64
        )
    except TypeError:
        return np.zeros(0, np.int64)
    if len(marks) == 0 or len(events) == 0:
        return np.zeros(0, np.int64)
    times = np.maximum.accumulate(events["time_us"]).astype(np.float64)
    idx = np.searchsorted(times, marks, side="left")
    idx = np.unique(idx[idx < len(events)])
    return idx.astype(np.int64)


def trace_name(path: str | Path) -> str:
    """File name without any extensions: ``runs/resnet50.pkl.gz`` -> ``resnet50``."""
    name = Path(path).name
    return name.split(".", 1)[0] if not name.startswith(".") else name


def load_trace(path: str | Path, device: int | None = None) -> Trace:
    """Load the snapshot at ``path`` and convert one device's events to a :class:`Trace`.

    ``device=None`` picks the device with the most ``alloc`` events; the events of the other
    devices are counted in ``skipped["other_devices"]``.
    """
    snap = load_snapshot(path)
    return snapshot_to_trace(snap, trace_name(path), device=device, source=str(path))


def snapshot_to_trace(
    snap: dict[str, Any], name: str, device: int | None = None, source: str = "<snapshot>"
) -> Trace:
    """Convert an already loaded snapshot dict (see :func:`load_trace`)."""
    traces = snap.get("device_traces")
    if not isinstance(traces, list):
        raise SnapshotError(f"{source} is not a memory snapshot: no 'device_traces' list")
    dev_lists = [d if isinstance(d, list) else [] for d in traces]
    if device is None:
        counts = [
            sum(1 for e in d if isinstance(e, dict) and e.get("action") == "alloc")
            for d in dev_lists
        ]
        device = max(range(len(counts)), key=lambda i: (counts[i], -i)) if counts else 0
    elif not 0 <= device < max(1, len(dev_lists)):
        raise SnapshotError(
            f"{source} has no device {device}: its trace covers {len(dev_lists)} device(s)"
        )
    skipped: dict[str, int] = {}
    others = sum(len(d) for i, d in enumerate(dev_lists) if i != device)
    if others:
        skipped["other_devices"] = others
    chosen = dev_lists[device] if dev_lists else []
    events, allocs = convert_events(chosen, skipped)
    meta = snap.get("trace_source")
    meta = dict(meta) if isinstance(meta, dict) else {}
    marks = meta.get("iteration_marks_us")
    starts = _iteration_starts(events, marks) if isinstance(marks, list) else np.zeros(0, np.int64)
    return Trace(
        name=name,
        events=events,
        allocs=allocs,
        peak_live_bytes=_peak_live_bytes(events),
        iteration_starts=starts,
        skipped=skipped,
        meta=meta,
    )


def validate(events: np.ndarray) -> str:
    """Check the invariants consumers rely on; ``""`` when valid, else one line on what is wrong.

    Ids are dense in allocation order, each allocation is freed at most once and only after it
    was allocated, and a free repeats its allocation's bytes.
    """
    if events.dtype != EVENT_DTYPE:
        return f"events have dtype {events.dtype}, expected EVENT_DTYPE"
    ops = events["op"]
    bad_op = np.flatnonzero(ops > OP_FREE)
    if len(bad_op):
        return f"event {bad_op[0]} has op {ops[bad_op[0]]}, expected 0 (alloc) or 1 (free)"
    ids = events["id"]
    alloc_pos = np.flatnonzero(ops == OP_ALLOC)
    alloc_ids = ids[alloc_pos]
    wrong = np.flatnonzero(alloc_ids != np.arange(len(alloc_ids), dtype=np.uint64))
    if len(wrong):
        i = alloc_pos[wrong[0]]
        return f"event {i} allocates id {ids[i]}, expected {wrong[0]} (ids dense, in order)"
    free_pos = np.flatnonzero(ops == OP_FREE)
    free_ids = ids[free_pos]
    unknown = np.flatnonzero(free_ids >= len(alloc_ids))
    if len(unknown):
        i = free_pos[unknown[0]]
        return f"event {i} frees id {ids[i]}, which is never allocated"
    uniq, first, counts = np.unique(free_ids, return_index=True, return_counts=True)
    if len(uniq) and counts.max() > 1:
        return f"id {uniq[np.argmax(counts)]} is freed {counts.max()} times"
    fi = free_ids.astype(np.int64)
    early = np.flatnonzero(free_pos < alloc_pos[fi])
    if len(early):
        i = free_pos[early[0]]
        return f"event {i} frees id {ids[i]} before its allocation"
    mism = np.flatnonzero(events["bytes"][free_pos] != events["bytes"][alloc_pos[fi]])
    if len(mism):
        i = free_pos[mism[0]]
        return f"event {i} frees id {ids[i]} with a size other than its allocation's"
    return ""


def write_tsev(trace: Trace | np.ndarray, path: str | Path) -> None:
    """Write ``trace`` (or an :data:`EVENT_DTYPE` array) as a ``.tsev`` file.

    Format: ``b"TSEV0001"``, little-endian u64 event count, then the 32-byte records.
    """
    events = trace.events if isinstance(trace, Trace) else trace
    if events.dtype != EVENT_DTYPE:
        raise ValueError(f"events have dtype {events.dtype}, expected EVENT_DTYPE")
    events = np.ascontiguousarray(events)
    with open(path, "wb") as f:
        f.write(TSEV_MAGIC)
        f.write(struct.pack("<Q", len(events)))
        f.write(events.tobytes())


def read_tsev(path: str | Path) -> np.ndarray:
    """Read a ``.tsev`` file written by :func:`write_tsev` (or the C++ writer)."""
    data = Path(path).read_bytes()
    if data[:8] != TSEV_MAGIC or len(data) < 16:
        raise SnapshotError(f"{path} is not a .tsev file: bad magic, expected {TSEV_MAGIC!r}")
    (count,) = struct.unpack_from("<Q", data, 8)
    body = data[16:]
    if len(body) != count * EVENT_DTYPE.itemsize:
        raise SnapshotError(
            f"{path} is truncated: header says {count} events, body holds "
            f"{len(body) / EVENT_DTYPE.itemsize:g}"
        )
    return np.frombuffer(body, dtype=EVENT_DTYPE).copy()


def find_traces(paths: Iterable[str | Path]) -> list[Path]:
    """Expand files and directories into trace files.

    A file is kept as given; a directory contributes its ``*.pkl``, ``*.pkl.gz``,
    ``*.pickle`` and ``*.pickle.gz`` files, sorted by name.
    """
    found: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            found.extend(
                sorted(c for c in p.iterdir() if c.is_file() and c.name.endswith(_TRACE_SUFFIXES))
            )
        elif p.exists():
            found.append(p)
        else:
            raise FileNotFoundError(f"no such trace file or directory: {p}")
    return found


def _main(argv: list[str]) -> int:
    """``python -m timeshare.snapshot [--tsev OUTDIR] PATH...``: summarize or export traces."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m timeshare.snapshot",
        description="Summarize memory snapshots; with --tsev, export them as .tsev files.",
    )
    parser.add_argument("--tsev", metavar="OUTDIR", help="write OUTDIR/NAME.tsev per trace")
    parser.add_argument("--device", type=int, default=None, help="device index to convert")
    parser.add_argument("paths", nargs="+", help="snapshot files or directories")
    args = parser.parse_args(argv)
    try:
        files = find_traces(args.paths)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.tsev:
        Path(args.tsev).mkdir(parents=True, exist_ok=True)
    status = 0
    for f in files:
        try:
            tr = load_trace(f, device=args.device)
        except SnapshotError as exc:
            print(f"error: {exc}", file=sys.stderr)
            status = 1
            continue
        line = (
            f"{tr.name}: {len(tr.events)} events, {tr.allocs} allocs, "
            f"peak live {tr.peak_live_bytes} B, {len(tr.iteration_starts)} iteration marks"
        )
        if args.tsev:
            out = Path(args.tsev) / f"{tr.name}.tsev"
            write_tsev(tr, out)
            line += f" -> {out}"
        print(line)
    return status


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
