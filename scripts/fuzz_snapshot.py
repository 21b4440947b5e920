"""Fuzz the snapshot reader: ``timeshare.snapshot.load_snapshot`` / ``load_trace`` on mutated
real snapshots. Any exception other than :class:`timeshare.snapshot.SnapshotError` is a finding.

Two kinds of input, chosen by the first byte:
  * bytes: the rest is the file itself (plain pickle, or gzip when it starts with the gzip magic;
    with the second byte odd it is gzip-compressed first, so mutations reach the pickle inside);
  * structure: the rest drives edits of a seed snapshot (events' fields replaced by values of the
    wrong type or range, keys deleted, events replaced by non-dicts, device lists reshaped), which
    is then pickled. Byte mutations alone rarely get past the unpickler to the converter.

Runs under atheris (coverage-guided libFuzzer) when it is installed, else a plain random-mutation
loop for the same time. Seeds: fuzz/corpus/snapshot/ (never written; the working corpus is a copy).

    python scripts/fuzz_snapshot.py --seconds 300 [--corpus DIR] [--artifacts DIR]
    python scripts/fuzz_snapshot.py --replay FILE...      # rerun saved inputs (regressions)
"""

from __future__ import annotations

import argparse
import gzip
import math
import pickle
import random
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "python"))

try:
    import atheris
except ImportError:  # pragma: no cover - depends on the machine
    atheris = None

if atheris is not None:
    with atheris.instrument_imports(include=["timeshare.snapshot"]):
        import timeshare.snapshot as snapshot
else:
    import timeshare.snapshot as snapshot

MODE_BYTES_MAX = 127  # first byte <= this: raw bytes; above: structured edits
MAX_EDITS = 8
WEIRD_VALUES: list[Any] = [
    None, True, -1, 0, 2**63, 2**64, -(2**70), 10**400, math.nan, math.inf, -0.0, 1.5, "",
    "alloc", "0x10", b"\x00", [], [1, 2], {}, {"a": 1}, (1,), frozenset(), 3 + 4j,
]
FIELDS = ["action", "addr", "size", "stream", "time_us", "frames", "device_free"]
ACTIONS = ["alloc", "free_requested", "free_completed", "segment_alloc", "segment_free", "oom",
           "snapshot", "annotate", "bogus"]


class Finding(Exception):
    """An exception other than SnapshotError escaped the reader."""


def signature(exc: BaseException) -> str:
    """Where a finding comes from: exception type and the innermost reader frame (file:line)."""
    cause = exc.__cause__ or exc
    frames = traceback.extract_tb(cause.__traceback__)
    inner = [f for f in frames if f.filename.endswith("snapshot.py") and "fuzz" not in f.filename]
    where = f"{Path(inner[-1].filename).name}:{inner[-1].lineno}" if inner else "?"
    return f"{type(cause).__name__} at {where}"


class Findings:
    """Distinct findings of one run, by signature; each first input is saved, the run goes on."""

    def __init__(self, artifacts: Path) -> None:
        self.artifacts = artifacts
        self.seen: dict[str, str] = {}
        self.log = artifacts / "snapshot-findings.txt"

    def add(self, exc: Finding, data: bytes) -> None:
        """Record ``exc`` (raised for input ``data``) unless its signature was seen already."""
        sig = signature(exc)
        if sig in self.seen:
            return
        out = self.artifacts / f"snapshot-finding-{len(self.seen) + 1}"
        out.write_bytes(data)
        self.seen[sig] = str(exc)
        line = f"{sig}: {exc} (input {out})"
        with self.log.open("a") as f:
            f.write(line + "\n")
        print(f"\nFINDING {line}", file=sys.stderr, flush=True)


def _seed_snapshots(corpus: Path) -> list[dict[str, Any]]:
    seeds = []
    for f in sorted(corpus.iterdir()):
        try:
            seeds.append(snapshot.load_snapshot(f))
        except snapshot.SnapshotError:
            continue
    return seeds or [{"device_traces": [[]]}]


def _structured(data: bytes, seeds: list[dict[str, Any]]) -> bytes:
    """Edit a copy of a seed snapshot as ``data`` directs; return it pickled."""
    rng = random.Random(data)
    snap = pickle.loads(pickle.dumps(seeds[rng.randrange(len(seeds))]))
    traces = snap.setdefault("device_traces", [[]])
    for _ in range(rng.randint(1, MAX_EDITS)):
        kind = rng.randrange(7)
        lists = [d for d in traces if isinstance(d, list)] if isinstance(traces, list) else []
        events = [e for d in lists for e in d if isinstance(e, dict)]
        if kind <= 2 and events:  # a field gets a weird value
            rng.choice(events)[rng.choice(FIELDS)] = rng.choice(WEIRD_VALUES)
        elif kind == 3 and events:  # a field disappears, or an action changes
            e = rng.choice(events)
            if rng.random() < 0.5:
                e.pop(rng.choice(FIELDS), None)
            else:
                e["action"] = rng.choice(ACTIONS)
        elif kind == 4 and lists:  # an event becomes a non-dict, or is duplicated
            d = rng.choice(lists)
            if d:
                i = rng.randrange(len(d))
                d[i] = rng.choice(WEIRD_VALUES) if rng.random() < 0.5 else dict(d[i]) if isinstance(
                    d[i], dict) else d[i]
        elif kind == 5:  # the device lists are reshaped
            snap["device_traces"] = traces = (
                [[], *lists] if rng.random() < 0.5 else rng.choice([[], [None], [[]], lists[::-1]])
            )
        else:  # top-level metadata of the wrong shape
            key = rng.choice(["trace_source", "segments", "allocator_settings"])
            marks = {"iteration_marks_us": rng.choice(WEIRD_VALUES)}
            snap[key] = rng.choice([*WEIRD_VALUES, marks])
    return pickle.dumps(snap, protocol=rng.choice([2, 4, 5]))


def make_file(data: bytes, seeds: list[dict[str, Any]]) -> bytes:
    """The snapshot file an input stands for (see the module docstring)."""
    if not data:
        return b""
    if data[0] > MODE_BYTES_MAX:
        return _structured(data[1:], seeds)
    body = data[2:]
    if len(data) > 1 and data[1] % 2:
        body = gzip.compress(body, mtime=0)
    return body


def check_file(blob: bytes, scratch: Path) -> None:
    """Load ``blob`` every way a user can; raise Finding for any non-SnapshotError exception."""
    try:
        snapshot.loads_snapshot(blob, "<fuzz>")
    except snapshot.SnapshotError:
        pass
    except RecursionError:
        raise Finding("RecursionError from loads_snapshot") from None
    except Exception as exc:
        raise Finding(f"{type(exc).__name__} from loads_snapshot: {exc}") from exc
    scratch.write_bytes(blob)
    try:
        trace = snapshot.load_trace(scratch)
        why = snapshot.validate(trace.events)
        if why:
            raise Finding(f"load_trace produced an invalid trace: {why}")
    except snapshot.SnapshotError:
        pass
    except Finding:
        raise
    except Exception as exc:
        raise Finding(f"{type(exc).__name__} from load_trace: {exc}") from exc


def run_atheris(seconds: int, corpus: Path, findings: Findings, seeds: list[dict[str, Any]],
                scratch: Path) -> None:
    """Coverage-guided run for ``seconds``; libFuzzer writes a crashing input to ``artifacts``."""
    work = Path(tempfile.mkdtemp(prefix="fuzz_snapshot_corpus_"))
    # libFuzzer's seed inputs: each seed as a raw-bytes input (mode byte 0, second byte even).
    for f in sorted(corpus.iterdir()):
        raw = f.read_bytes()
        (work / f.name).write_bytes(b"\x00\x00" + raw)
        (work / f"{f.name}.s").write_bytes(b"\xff" + raw[:64])

    def one_input(data: bytes) -> None:
        try:
            check_file(make_file(data, seeds), scratch)
        except Finding as exc:
            findings.add(exc, data)

    argv = [sys.argv[0], str(work), f"-max_total_time={seconds}", "-timeout=20",
            "-rss_limit_mb=2048", "-max_len=8192",
            f"-artifact_prefix={findings.artifacts}/snapshot-",
            "-print_final_stats=1"]
    atheris.Setup(argv, one_input)
    try:
        atheris.Fuzz()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_random(seconds: int, corpus: Path, findings: Findings, seeds: list[dict[str, Any]],
               scratch: Path) -> None:
    """Fallback without atheris: random byte flips, truncations and structured edits."""
    rng = random.Random(1)
    raws = [f.read_bytes() for f in sorted(corpus.iterdir())]
    end = time.monotonic() + seconds
    runs = 0
    while time.monotonic() < end:
        raw = bytearray(rng.choice(raws))
        for _ in range(rng.randint(1, 8)):
            if raw:
                raw[rng.randrange(len(raw))] = rng.randrange(256)
        if rng.random() < 0.2:
            raw = raw[: rng.randrange(len(raw) + 1)]
        data = bytes([rng.randrange(256), rng.randrange(256)]) + bytes(raw)
        try:
            check_file(make_file(data, seeds), scratch)
        except Finding as exc:
            findings.add(exc, data)
        runs += 1
    print(f"random mutation: {runs} runs in {seconds} s, {len(findings.seen)} distinct findings")


def main(argv: list[str]) -> int:
    """Command-line entry point; returns the exit status."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=300)
    ap.add_argument("--corpus", type=Path, default=ROOT / "fuzz" / "corpus" / "snapshot")
    ap.add_argument("--artifacts", type=Path, default=ROOT / "build-rel-fuzz" / "artifacts")
    ap.add_argument("--replay", type=Path, nargs="*", help="rerun saved fuzz inputs and exit")
    ap.add_argument("--no-atheris", action="store_true", help="use the plain random loop")
    args = ap.parse_args(argv)
    args.artifacts.mkdir(parents=True, exist_ok=True)
    seeds = _seed_snapshots(args.corpus)
    findings = Findings(args.artifacts)
    findings.log.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="fuzz_snapshot_") as tmp:
        scratch = Path(tmp) / "input.pkl"
        if args.replay is not None:
            status = 0
            for f in args.replay:
                try:
                    check_file(make_file(f.read_bytes(), seeds), scratch)
                    print(f"{f}: ok")
                except Finding as exc:
                    traceback.print_exception(exc.__cause__ or exc)
                    print(f"{f}: FINDING {signature(exc)}: {exc}")
                    status = 1
            return status
        if atheris is None or args.no_atheris:
            run_random(args.seconds, args.corpus, findings, seeds, scratch)
        else:
            run_atheris(args.seconds, args.corpus, findings, seeds, scratch)
    return 1 if findings.seen else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
