"""Record the allocation trace of a user's script as a PyTorch memory snapshot.

``python -m timeshare capture --out T.pkl.gz -- script.py args...`` runs ``script.py`` (as
``python script.py args...`` would, through :mod:`runpy`) while recording every allocation and
free, then writes a gzip pickle in the schema of ``torch.cuda.memory._snapshot()``, so both
``timeshare replay`` and PyTorch's memory visualizer read it.

- With CUDA: PyTorch's own recorder, ``torch.cuda.memory._record_memory_history()`` and
  ``_snapshot()``.
- Without a GPU: the CPU tensor allocations. ``torch.profiler`` with ``profile_memory=True``
  receives every allocation and free that c10's CPU allocator reports (``reportMemoryUsage``),
  with the pointer, the exact requested size and a timestamp; these become ``alloc``,
  ``free_requested`` and ``free_completed`` events on stream 0. The allocator's running total
  that comes with each report is checked against the events, so a missed report is counted
  (``trace_source["unaccounted_events"]``), never silently lost.

Iterations: every ``optimizer.step()`` ends one (a global optimizer step post-hook), unless the
script calls :func:`mark_iteration` itself, in which case only its marks are kept. The marks are
stored as ``trace_source["iteration_marks_us"]``. See docs/traces.md for limits.
"""

from __future__ import annotations

import argparse
import gzip
import os
import pickle
import platform
import runpy
import sys
import time
import traceback
from pathlib import Path
from typing import Any

__all__ = ["CaptureError", "capture_script", "main", "mark_iteration"]

_MARK_STEP = "timeshare::iteration_step"
_MARK_USER = "timeshare::iteration_mark"
#: Default ring size of PyTorch's CUDA recorder: enough for many iterations of large models.
_DEFAULT_MAX_ENTRIES = 2_000_000
_NS_PER_US = 1000


class CaptureError(RuntimeError):
    """A capture could not be set up or written."""


class _Recorder:
    """Base class: collects iteration marks; subclasses record allocations."""

    device = "cpu"

    def __init__(self) -> None:
        self.marks: list[tuple[int, str]] = []  # (time, kind)

    def start(self) -> None:
        """Begin recording."""

    def stop(self) -> None:
        """Stop recording."""

    def mark(self, kind: str) -> None:
        """Record the start of an iteration (``kind`` is _MARK_STEP or _MARK_USER)."""
        self.marks.append((time.time_ns(), kind))

    def snapshot(self) -> dict[str, Any]:
        """The recorded trace as a memory-snapshot dict (without ``trace_source``)."""
        raise NotImplementedError

    def marks_us(self) -> list[int]:
        """Iteration marks in µs: the script's own marks if it made any, else the step marks."""
        user = [t for t, k in self.marks if k == _MARK_USER]
        chosen = user if user else [t for t, k in self.marks if k == _MARK_STEP]
        return [t // _NS_PER_US for t in chosen]


class _CudaRecorder(_Recorder):
    """PyTorch's own CUDA allocation recorder."""

    device = "cuda"

    def __init__(self, max_entries: int) -> None:
        super().__init__()
        self._max_entries = max_entries

    def start(self) -> None:  # noqa: D102
        import torch

        torch.cuda.memory._record_memory_history(
            enabled="all", context="alloc", stacks="python", max_entries=self._max_entries
        )

    def stop(self) -> None:  # noqa: D102
        import torch

        self._snap = torch.cuda.memory._snapshot()
        torch.cuda.memory._record_memory_history(enabled=None)

    def snapshot(self) -> dict[str, Any]:  # noqa: D102
        return dict(self._snap)


class _CpuRecorder(_Recorder):
    """CPU tensor allocations, as reported by c10's CPU allocator to torch.profiler."""

    device = "cpu"

    def __init__(self) -> None:
        super().__init__()
        import torch

        self._torch = torch
        self._prof = torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CPU],
            profile_memory=True,
            record_shapes=False,
            with_stack=False,
        )
        self.unaccounted = 0
        self._events: list[dict[str, Any]] = []
        self._marks_us: list[int] = []

    def start(self) -> None:  # noqa: D102
        self._prof.start()

    def mark(self, kind: str) -> None:
        """Emit a zero-length profiler range: it shares the allocation events' clock."""
        with self._torch.profiler.record_function(kind):
            pass

    def stop(self) -> None:  # noqa: D102
        self._prof.stop()
        self._collect()

    def _collect(self) -> None:
        from torch._C._profiler import _EventType

        allocation = _EventType.Allocation
        results = self._prof.profiler.kineto_results  # type: ignore[union-attr]
        raw: list[tuple[int, int, int, int]] = []  # (ns, ptr, signed bytes, allocator total)
        marks: list[tuple[int, str]] = []
        stack = list(results.experimental_event_tree())
        while stack:
            node = stack.pop()
            if node.tag == allocation:
                f = node.extra_fields
                if f.device.type == "cpu" and f.alloc_size != 0:
                    raw.append((node.start_time_ns, f.ptr, f.alloc_size, f.total_allocated))
            elif node.name in (_MARK_STEP, _MARK_USER):
                marks.append((node.start_time_ns, node.name))
            stack.extend(node.children)
        raw = _order_ties(raw)
        self.unaccounted = _count_unaccounted(raw)
        self.marks = sorted(marks)
        self._events, self._marks_us = _to_snapshot_events(raw, self.marks_ns_chosen())

    def marks_ns_chosen(self) -> list[int]:
        """Mark times in ns (user marks if any, else step marks)."""
        user = [t for t, k in self.marks if k == _MARK_USER]
        return user if user else [t for t, k in self.marks if k == _MARK_STEP]

    def marks_us(self) -> list[int]:  # noqa: D102
        return list(self._marks_us)

    def snapshot(self) -> dict[str, Any]:  # noqa: D102
        return {
            "segments": [],
            "device_traces": [self._events],
            "allocator_settings": {},
            "external_annotations": [],
        }


def _order_ties(raw: list[tuple[int, int, int, int]]) -> list[tuple[int, int, int, int]]:
    """Sort by time; within events of the same nanosecond, follow the allocator's running total.

    Each report carries the allocator's total after it, so among simultaneous events the one
    whose size takes the previous total to its own total came first.
    """
    raw.sort(key=lambda r: r[0])
    out: list[tuple[int, int, int, int]] = []
    i = 0
    n = len(raw)
    total = raw[0][3] - raw[0][2] if raw else 0
    while i < n:
        j = i + 1
        while j < n and raw[j][0] == raw[i][0]:
            j += 1
        group = raw[i:j]
        while group:
            pick = next((g for g in group if total + g[2] == g[3]), group[0])
            group.remove(pick)
            out.append(pick)
            total = pick[3]
        i = j
    return out


def _count_unaccounted(raw: list[tuple[int, int, int, int]]) -> int:
    """Reports whose running total does not follow from the previous one (a missed report)."""
    missed = 0
    for prev, cur in zip(raw, raw[1:]):
        if prev[3] + cur[2] != cur[3]:
            missed += 1
    return missed


def _to_snapshot_events(
    raw: list[tuple[int, int, int, int]], marks_ns: list[int]
) -> tuple[list[dict[str, Any]], list[int]]:
    """Snapshot events (µs times, non-decreasing) and mark times that split them exactly.

    Times are unix µs like PyTorch's. A mark that falls in the same µs as an earlier event is
    moved 1 µs later (and later events with it), so ``first event at or after the mark`` is the
    first event recorded after it.
    """
    events: list[dict[str, Any]] = []
    marks_us: list[int] = []
    mi = 0
    last_us = 0
    floor_us = 0
    for ns, ptr, size, _total in raw:
        while mi < len(marks_ns) and marks_ns[mi] <= ns:
            m_us = max(marks_ns[mi] // _NS_PER_US, last_us + 1 if events else 0, floor_us)
            marks_us.append(m_us)
            floor_us = m_us
            mi += 1
        us = max(ns // _NS_PER_US, floor_us, last_us)
        last_us = us
        if size > 0:
            events.append(
                {
                    "action": "alloc",
                    "addr": ptr,
                    "size": size,
                    "stream": 0,
                    "time_us": us,
                    "frames": [],
                }
            )
        else:
            for action in ("free_requested", "free_completed"):
                events.append(
                    {
                        "action": action,
                        "addr": ptr,
                        "size": -size,
                        "stream": 0,
                        "time_us": us,
                        "frames": [],
                    }
                )
    for m in marks_ns[mi:]:
        m_us = max(m // _NS_PER_US, last_us + 1 if events else 0, floor_us)
        marks_us.append(m_us)
        floor_us = m_us
    return events, marks_us


_active: _Recorder | None = None


def mark_iteration() -> None:
    """Mark the start of a training iteration in the running capture (no-op when none runs).

    Once a script calls this, its own marks replace the automatic ones at ``optimizer.step()``.
    """
    if _active is not None:
        _active.mark(_MARK_USER)


def _step_hook(optimizer: Any, args: Any, kwargs: Any) -> None:
    if _active is not None:
        _active.mark(_MARK_STEP)


def capture_script(
    script: str | os.PathLike[str],
    args: list[str],
    out: str | os.PathLike[str],
    model: str | None = None,
    device: str = "auto",
    max_entries: int = _DEFAULT_MAX_ENTRIES,
) -> dict[str, Any]:
    """Run ``script`` with ``args`` under the recorder and write the snapshot to ``out``.

    Returns the snapshot dict written. Exceptions from the script propagate (nothing is
    written); ``SystemExit(0)`` or ``SystemExit(None)`` from the script counts as success.
    """
    global _active
    import torch

    script = Path(script)
    if not script.is_file():
        raise CaptureError(f"no such script: {script}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise CaptureError("--device cuda asked for, but torch.cuda.is_available() is False")
        recorder: _Recorder = _CudaRecorder(max_entries)
    elif device == "cpu":
        recorder = _CpuRecorder()
    else:
        raise CaptureError(f"unknown device {device!r}: expected auto, cpu or cuda")

    from torch.optim.optimizer import register_optimizer_step_post_hook

    saved_argv, saved_path = sys.argv[:], sys.path[:]
    sys.argv = [str(script), *args]
    sys.path.insert(0, str(script.resolve().parent))
    handle = register_optimizer_step_post_hook(_step_hook)
    _active = recorder
    recorder.start()
    try:
        try:
            runpy.run_path(str(script), run_name="__main__")
        except SystemExit as exc:
            if exc.code not in (None, 0):
                raise
    finally:
        try:
            recorder.stop()
        finally:
            _active = None
            handle.remove()
            sys.argv, sys.path[:] = saved_argv, saved_path

    snap = recorder.snapshot()
    source: dict[str, Any] = {
        "tool": "timeshare capture",
        "device": recorder.device,
        "model": model or script.name.split(".", 1)[0],
        "iteration_marks_us": recorder.marks_us(),
        "script": str(script),
        "args": list(args),
        "torch": str(torch.__version__),
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
    }
    if isinstance(recorder, _CpuRecorder):
        source["method"] = "torch.profiler profile_memory: c10 CPU allocator reports"
        source["unaccounted_events"] = recorder.unaccounted
    else:
        source["method"] = "torch.cuda.memory._record_memory_history"
    snap["trace_source"] = source
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with gzip.open(tmp, "wb", compresslevel=9) as f:
        pickle.dump(snap, f, protocol=4)
    tmp.replace(out)
    return snap


def main(argv: list[str]) -> int:
    """``capture [--out T.pkl.gz] [--model NAME] [--device D] -- script.py args...``."""
    if "--" in argv:
        cut = argv.index("--")
        opts, rest = argv[:cut], argv[cut + 1 :]
    else:
        opts, rest = argv, []
    parser = argparse.ArgumentParser(
        prog="python -m timeshare capture",
        description="Run a training script and record its allocation trace as a PyTorch "
        "memory snapshot (gzip pickle).",
        usage="%(prog)s --out T.pkl.gz [--model NAME] [--device auto|cpu|cuda] "
        "-- script.py [args...]",
    )
    parser.add_argument("--out", required=True, help="snapshot to write (gzip pickle)")
    parser.add_argument("--model", default=None, help="model name stored in trace_source")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument(
        "--max-entries",
        type=int,
        default=_DEFAULT_MAX_ENTRIES,
        help="ring size of PyTorch's CUDA recorder (CUDA only)",
    )
    parser.add_argument("script_and_args", nargs="*", help=argparse.SUPPRESS)
    ns = parser.parse_args(opts)
    rest = ns.script_and_args + rest
    if not rest:
        parser.error("no script given: put it after '--'")
    try:
        snap = capture_script(
            rest[0],
            rest[1:],
            ns.out,
            model=ns.model,
            device=ns.device,
            max_entries=ns.max_entries,
        )
    except CaptureError as exc:
        print(f"capture: error: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:
        print(
            f"capture: the script exited with status {exc.code}; no trace written", file=sys.stderr
        )
        return exc.code if isinstance(exc.code, int) else 1
    except Exception:  # the user's script failed: show its traceback, write nothing
        traceback.print_exc()
        print("capture: the script raised; no trace written", file=sys.stderr)
        return 1
    events = sum(len(d) for d in snap["device_traces"])
    src = snap["trace_source"]
    print(
        f"capture: {events} events, {len(src['iteration_marks_us'])} iteration marks "
        f"({src['device']}) -> {ns.out}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    # Run as ``python -m timeshare.capture``: a script that imports timeshare.capture (for
    # mark_iteration) must reach this module, where the recorder is, not a second copy of it.
    sys.modules.setdefault("timeshare.capture", sys.modules[__name__])
    sys.exit(main(sys.argv[1:]))
