"""Device calls and peak reserved, measured: the temporal pool against torch-expandable in the
replay (the real C++ pools on the strict sim), on the shipped traces (where the defaults were
chosen) and the real GPU snapshots (held out), with the ablations that say what prediction adds.

    python scripts/bench_calls.py                 # print the table and the goal lines
    python scripts/bench_calls.py --write-docs  # also rewrite its section of docs/temporal_pool.md

Per trace: torch-expandable's device calls and peak reserved (the reference); then, as calls
(ratio to torch-expandable) and peak reserved (MiB): `timeshare` as shipped (hybrid predictor,
map-ahead sized by the pool), `timeshare` with `map_ahead:0`, `timeshare-true` (true lifespans:
the bound of what prediction gives), `timeshare-const` (one constant answer) and
`timeshare-shuffled` (true lifespans dealt to the wrong allocations); `ff`: the same three
with `free_forecast:128` (predicted frees cut the map-ahead); the device calls of the first
two marked iterations (with what came before them) and of the rest: warm-up against steady
state; device faults over every run. Deterministic figures only (no timing).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/: benchlib, also under runpy
import benchlib  # noqa: E402

from timeshare.replay import replay_events  # noqa: E402
from timeshare.snapshot import load_trace  # noqa: E402

DOC = benchlib.ROOT / "docs" / "temporal_pool.md"
BEGIN, END = "<!-- bench_calls:begin -->", "<!-- bench_calls:end -->"
MiB = 1 << 20
FORECAST = "free_forecast:128"
RUNS = [  # (column, policy, conf)
    ("timeshare", "timeshare", ""),
    ("map_ahead:0", "timeshare", "map_ahead:0"),
    ("true", "timeshare-true", ""),
    ("const", "timeshare-const", ""),
    ("shuffled", "timeshare-shuffled", ""),
    # Predicted frees cut the map-ahead (option free_forecast, off by default).
    ("ff", "timeshare", FORECAST),
    ("ff const", "timeshare-const", FORECAST),
    ("ff true", "timeshare-true", FORECAST),
]


def _cell(r: dict, ref: dict) -> str:
    return (f"{r['device_calls']} ({r['device_calls'] / ref['device_calls']:.2f}x) · "
            f"{r['peak_reserved_bytes'] / MiB:.0f}")


def _split(r: dict) -> str:
    # [before the first marked iteration, iteration 1, iteration 2, ...]
    it = r.get("device_calls_by_iteration") or []
    if len(it) < 4:
        return "-"
    return f"{sum(it[:3])} / {sum(it[3:])}"


def measure(path: Path) -> tuple[str, dict]:
    tr = load_trace(path)
    ref = replay_events(tr.events, "torch-expandable", tr.iteration_starts, {})
    runs = {col: replay_events(tr.events, pol, tr.iteration_starts, {"conf": conf} if conf else {})
            for col, pol, conf in RUNS}
    faults = ref["device_faults"] + sum(r["device_faults"] for r in runs.values())
    row = (f"| {tr.name} | {ref['device_calls']} · {ref['peak_reserved_bytes'] / MiB:.0f} | "
           + " | ".join(_cell(runs[c], ref) for c, _, _ in RUNS)
           + f" | {_split(ref)} | {_split(runs['timeshare'])} | {faults} |")
    print(row, flush=True)
    return row, {"ref": ref, **runs}


def _better(a: dict, b: dict) -> bool:
    """a better than b: fewer calls or lower peak, and worse on neither."""
    calls, peak = a["device_calls"], a["peak_reserved_bytes"]
    bc, bp = b["device_calls"], b["peak_reserved_bytes"]
    return (calls < bc or peak < bp) and calls <= bc and peak <= bp


def goals(figures: dict[str, dict], names: list[str]) -> list[str]:
    def count(pred) -> str:
        hits = [n for n in names if pred(figures[n])]
        misses = [n for n in names if n not in hits]
        which = (f" (not: {', '.join(misses)})" if misses and len(misses) <= len(hits)
                 else f" (only: {', '.join(hits)})" if hits and misses else "")
        return f"{len(hits)} of {len(names)}{which}"
    ts = "timeshare"
    return [
        "calls at most 1.5x torch-expandable: "
        + count(lambda f: f[ts]["device_calls"] <= 1.5 * f["ref"]["device_calls"]),
        "peak reserved at most torch-expandable's: "
        + count(lambda f: f[ts]["peak_reserved_bytes"] <= f["ref"]["peak_reserved_bytes"]),
        "timeshare better than timeshare-const: " + count(lambda f: _better(f[ts], f["const"])),
        "timeshare-const better than timeshare: " + count(lambda f: _better(f["const"], f[ts])),
        f"with {FORECAST}: timeshare better than timeshare-const: "
        + count(lambda f: _better(f["ff"], f["ff const"])),
        f"with {FORECAST}: timeshare-const better than timeshare: "
        + count(lambda f: _better(f["ff const"], f["ff"])),
        f"with {FORECAST}: better than without it: " + count(lambda f: _better(f["ff"], f[ts])),
        f"with {FORECAST}: worse than without it: " + count(lambda f: _better(f[ts], f["ff"])),
        "device faults: "
        + str(sum(r["device_faults"] for f in figures.values() for r in f.values())),
    ]


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write-docs", action="store_true")
    args = ap.parse_args(argv)
    head = ["| trace | torch-expandable: calls · peak MiB | "
            + " | ".join(f"`{c}`: calls · peak MiB" for c, _, _ in RUNS)
            + " | expandable calls, iterations 1-2 / rest | timeshare calls, 1-2 / rest | faults |",
            "| --- | ---: | " + " | ".join("---:" for _ in RUNS) + " | ---: | ---: | ---: |"]
    print("\n".join(head))
    rows, figures = [], {}
    shipped = []
    for path in benchlib.traces():  # the shipped traces, then the GPU snapshots
        row, fig = measure(path)
        rows.append(row)
        name = load_trace(path).name
        figures[name] = fig
        if "traces-gpu" not in str(path):
            shipped.append(name)
    gpu = [n for n in figures if n not in shipped]
    lines = [f"Shipped traces (defaults chosen on them): {g}." for g in goals(figures, shipped)]
    if gpu:
        lines += [f"GPU snapshots (held out): {g}." for g in goals(figures, gpu)]
    print("\n".join(lines))
    if args.write_docs:
        table = "\n".join(head + rows) + "\n\n" + "\n".join(f"- {ln}" for ln in lines)
        benchlib.write_section(DOC, BEGIN, END, table)
        print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
