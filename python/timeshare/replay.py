"""``python -m timeshare replay``: replay allocation traces through several policies side by side.

Every trace (a PyTorch memory snapshot, see :mod:`timeshare.snapshot`) is converted to compact
events and replayed, in C++, through the real allocator code of each policy on a simulated
device with fake addresses (``timeshare._C.replay``): PyTorch's caching allocator model
(``torch``, ``torch-expandable``), timeshare's temporal pool with its online lifespan predictor
(``timeshare``), and the offline planner that knows every lifetime (``oracle``). Ablations
(``--ablation``): ``timeshare-true`` (true lifespans), ``timeshare-const`` (one constant
prediction).

Figures per trace and policy: peak reserved bytes, fragmentation (peak reserved / peak live),
device calls (reserve, release, map, unmap), waits and device faults (the strict sim's), nanoseconds
per event, and for predicting policies the share of lifespans predicted within 2x (overall and
after the first iteration) and the median ``|log2(predicted / true)|``. Replays are
deterministic: the same trace gives the same figures (timings aside).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_POLICIES",
    "ABLATION_POLICIES",
    "SHIPPED_TRACES",
    "format_bytes",
    "main",
    "replay_events",
    "replay_paths",
    "replay_trace",
]

#: Policies replayed when ``--policy`` is not given.
DEFAULT_POLICIES: tuple[str, ...] = ("torch", "torch-expandable", "timeshare", "oracle")
#: Policies added by ``--ablation``.
ABLATION_POLICIES: tuple[str, ...] = ("timeshare-true", "timeshare-const")
#: Where the traces shipped with the package live (replayed when no PATH is given).
SHIPPED_TRACES = Path(__file__).resolve().parent / "traces"

_PROG = "python -m timeshare replay"
_TABLE_WIDTH = 170  # characters: the table stays one line per row in a narrow terminal or a pipe
_PREDICTION_KEYS = (
    "lifespan_within_2x_cold",
    "lifespan_within_2x",
    "lifespan_within_2x_warm",
    "lifespan_log2_mae",
)


class ReplayError(Exception):
    """A replay cannot run: bad path, unreadable trace, unknown policy (one-line message)."""


def format_bytes(n: float) -> str:
    """Human-readable binary size: ``1536`` -> ``"1.50 KiB"``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    return f"{value:.2f} TiB"  # pragma: no cover


def _c_module() -> Any:
    from timeshare import _C

    if not hasattr(_C, "replay"):
        raise ReplayError("this build of timeshare._C has no replay (trace bindings missing)")
    return _C


def replay_events(
    events: Any,
    policy: str,
    iteration_starts: Any = None,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Replay compact ``events`` (:data:`timeshare.snapshot.EVENT_DTYPE`) through ``policy``.

    Returns the C++ figures as a dict; ``timeline`` holds NumPy arrays ``event``,
    ``live_bytes`` and ``reserved_bytes``. Raises ``ValueError``/``TypeError`` on bad input.
    """
    return _c_module().replay(events, policy, iteration_starts, options or {})


def _policy_record(result: dict[str, Any], peak_live: int) -> dict[str, Any]:
    """JSON-ready figures of one policy (fragmentation against the trace's peak live bytes)."""
    rec = {k: v for k, v in result.items() if k != "timeline"}
    rec["fragmentation"] = result["peak_reserved_bytes"] / peak_live if peak_live else 0.0
    rec["mevents_per_second"] = result["events_per_second"] / 1e6
    timeline = result["timeline"]
    rec["timeline"] = {k: [int(x) for x in timeline[k]] for k in timeline}
    return rec


def replay_trace(
    trace: Any,
    policies: Sequence[str],
    options: dict[str, Any] | None = None,
    on_policy_done: Any = None,
) -> dict[str, Any]:
    """Replay one :class:`timeshare.snapshot.Trace` through every policy.

    Returns the trace's JSON record: ``name``, ``events``, ``allocs``, ``peak_live_bytes``,
    ``iterations``, ``skipped``, ``meta`` and ``policies`` (policy name -> figures).
    ``on_policy_done(policy)`` is called after each policy.
    """
    rec: dict[str, Any] = {
        "name": trace.name,
        "events": int(len(trace.events)),
        "allocs": int(trace.allocs),
        "peak_live_bytes": int(trace.peak_live_bytes),
        "iterations": int(len(trace.iteration_starts)),
        "skipped": {str(k): int(v) for k, v in dict(trace.skipped).items()},
        "meta": _jsonable(trace.meta),
        "policies": {},
    }
    for policy in policies:
        result = replay_events(trace.events, policy, trace.iteration_starts, options)
        rec["policies"][policy] = _policy_record(result, rec["peak_live_bytes"])
        if on_policy_done is not None:
            on_policy_done(policy)
    return rec


def _jsonable(value: Any) -> Any:
    """``value`` with anything JSON cannot hold turned into strings."""
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        if isinstance(value, dict):
            return {str(k): _jsonable(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [_jsonable(v) for v in value]
        return str(value)


def _trace_paths(paths: Sequence[str]) -> list[Path]:
    from timeshare.snapshot import find_traces

    if paths:
        try:
            found = find_traces(paths)
        except FileNotFoundError as e:
            raise ReplayError(str(e)) from None
        if not found:
            raise ReplayError(f"no trace files (*.pkl, *.pkl.gz) in {', '.join(paths)}")
        return found
    found = find_traces([SHIPPED_TRACES]) if SHIPPED_TRACES.is_dir() else []
    if not found:
        raise ReplayError(f"no PATH given and no shipped traces in {SHIPPED_TRACES}")
    return found


def _check_policies(policies: Sequence[str]) -> None:
    known = list(_c_module().policies())
    for p in policies:
        if p not in known:
            raise ReplayError(f"unknown policy {p!r} (expected one of {', '.join(known)})")


def replay_paths(
    paths: Sequence[str],
    policies: Sequence[str] = DEFAULT_POLICIES,
    options: dict[str, Any] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Load every trace under ``paths`` (none: the shipped ones) and replay it.

    Returns ``{"traces": [...], "policies": [...], "machine": {...}}``; raises
    :class:`ReplayError` with one line on bad input.
    """
    from timeshare.snapshot import SnapshotError, load_trace

    _check_policies(policies)
    files = _trace_paths(paths)
    records: list[dict[str, Any]] = []

    def run_all(advance: Any) -> None:
        for f in files:
            try:
                trace = load_trace(f)
            except (SnapshotError, OSError, ValueError) as e:
                raise ReplayError(f"cannot read trace {f}: {e}") from None
            if len(trace.events) == 0:
                raise ReplayError(f"trace {f} has no allocation events")
            try:
                records.append(replay_trace(trace, policies, options, advance(trace.name)))
            except (ValueError, TypeError) as e:
                raise ReplayError(f"cannot replay {f}: {e}") from None

    if progress:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        console = Console(stderr=True)
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
        with Progress(*columns, console=console, transient=True) as bar:
            task = bar.add_task("replay", total=len(files) * len(policies))

            def advance(name: str) -> Any:
                def done(policy: str) -> None:
                    bar.update(task, advance=1, description=f"{name}: {policy} done")

                bar.update(task, description=f"{name}: replaying")
                return done

            run_all(advance)
    else:
        run_all(lambda name: None)
    return {
        "traces": records,
        "policies": list(policies),
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
    }


def _print_table(doc: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="timeshare replay (fragmentation = peak reserved / peak live)")
    for col, justify in (
        ("trace", "left"),
        ("peak live", "right"),
        ("policy", "left"),
        ("peak reserved", "right"),
        ("frag", "right"),
        ("device calls", "right"),
        ("waits", "right"),
        ("faults", "right"),
        ("ns/event", "right"),
        ("Mevents/s", "right"),
        ("cold", "right"),
        ("within 2x", "right"),
        ("warm", "right"),
        ("log2 MAE", "right"),
    ):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for t in doc["traces"]:
        first = True
        for policy, r in t["policies"].items():
            pred = [f"{r[k]:.3f}" if k in r else "-" for k in _PREDICTION_KEYS]
            name, live = (t["name"], format_bytes(t["peak_live_bytes"])) if first else ("", "")
            table.add_row(
                name,
                live,
                policy,
                format_bytes(r["peak_reserved_bytes"]),
                f"{r['fragmentation']:.3f}",
                str(r.get("device_calls", r["device_reserve_calls"])),
                str(r.get("device_waits", 0)),
                str(r.get("device_faults", 0)),
                f"{r['ns_per_event']:.0f}",
                f"{r['mevents_per_second']:.2f}",
                *pred,
                end_section=policy == list(t["policies"])[-1],
            )
            first = False
    console = Console()
    console.width = max(console.width, _TABLE_WIDTH)
    console.print(table)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=_PROG, description="Replay memory snapshots through allocation policies side by side."
    )
    p.add_argument(
        "paths",
        nargs="*",
        metavar="PATH",
        help="snapshot files or directories (default: the shipped traces)",
    )
    p.add_argument(
        "--policy",
        default=",".join(DEFAULT_POLICIES),
        help="comma-separated policies (default: %(default)s)",
    )
    p.add_argument(
        "--ablation",
        action="store_true",
        help=f"also replay the ablations ({', '.join(ABLATION_POLICIES)})",
    )
    p.add_argument("--json", metavar="OUT.json", help="write every figure as JSON")
    p.add_argument("--plot", metavar="OUT.png", help="plot reserved bytes over events per trace")
    p.add_argument(
        "--timeline-points",
        type=int,
        default=1500,
        help="points per timeline (default: %(default)s)",
    )
    p.add_argument(
        "--capacity",
        type=int,
        default=None,
        metavar="BYTES",
        help="simulated device memory in bytes (default: 1 TiB, no OOM)",
    )
    p.add_argument(
        "--conf",
        default="",
        metavar="KEY:VALUE,...",
        help="TIMESHARE_CONF options for the timeshare policies (predictor, budget, "
        "unsafe_unmap, ...; `python -m timeshare options` lists them)",
    )
    p.add_argument(
        "--gpu-lag-events",
        type=int,
        default=None,
        metavar="N",
        help="work in flight: the GPU finishes the work queued at a free N allocator events "
        "later (default: 128; 0: no work in flight)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar and no table")
    return p


def main(argv: list[str]) -> int:
    """Entry point of ``python -m timeshare replay``; returns the exit status."""
    args = _parser().parse_args(argv)
    policies = [p.strip() for p in args.policy.split(",") if p.strip()]
    if args.ablation:
        policies += [p for p in ABLATION_POLICIES if p not in policies]
    options: dict[str, Any] = {"timeline_points": max(1, args.timeline_points)}
    if args.capacity is not None:
        options["capacity_bytes"] = args.capacity
    if args.gpu_lag_events is not None:
        if args.gpu_lag_events < 0:
            print(f"{_PROG}: error: --gpu-lag-events must be >= 0", file=sys.stderr)
            return 1
        options["gpu_lag_events"] = args.gpu_lag_events
    if args.conf:
        from timeshare import _C

        try:
            _C.parse_conf(args.conf)
        except ValueError as e:
            print(f"{_PROG}: error: --conf: {e}", file=sys.stderr)
            return 1
        options["conf"] = args.conf
    try:
        doc = replay_paths(args.paths, policies, options, progress=not args.quiet)
        doc["command"] = " ".join([_PROG, *argv])
        if args.json:
            Path(args.json).write_text(json.dumps(doc, indent=1) + "\n")
        if args.plot:
            from timeshare.plot import plot_replay

            plot_replay(doc, args.plot)
    except (ReplayError, OSError) as e:
        print(f"{_PROG}: error: {e}", file=sys.stderr)
        return 1
    if not args.quiet:
        _print_table(doc)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
