"""The temporal pool's trade-off curve: peak reserved against device calls against ns per event,
along the two options a user can set in TIMESHARE_CONF (`map_ahead`, `cache_slack`), on the
traces the defaults never saw (the corpus's held-out split, the real GPU snapshots) and, apart,
on the shipped traces they were chosen on.

    scripts/corpus/capture.sh                      # the corpus in out/corpus/ (docs/traces.md)
    python scripts/bench_tradeoff.py               # print the curve
    python scripts/bench_tradeoff.py --write-docs  # also write it into docs/temporal_pool.md

Every point replays every trace of a set through the real C++ pools on the strict sim (`python
-m timeshare replay --conf POINT`), `torch` and `torch-expandable` beside `timeshare` in the same
replay. Per set and point:
- frag: peak reserved / peak live of `timeshare`, median and worst over the set's traces;
- above: traces whose peak reserved is above `torch-expandable`'s;
- calls: `timeshare`'s device calls over the set (every reserve, release, map and unmap on the
  sim; a map of several granules in one call counts once, as does an alias), their ratio to
  `torch-expandable`'s, and the traces above 1.5x;
- steady calls: device calls per iteration after the second marked one, summed over the set's
  traces that mark iterations (what a long run pays per step; `torch-expandable` pays 0 there);
- ns: `timeshare`'s ns per event against `torch`'s in the same replay (the pool and the
  predictor's feed as the allocator runs them; one run, so noisy), median and worst.
Deterministic but for the ns column.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/: benchlib, also under runpy
import benchlib  # noqa: E402

benchlib.use_checkout_package()
from timeshare.replay import replay_paths  # noqa: E402

__all__ = ["POINTS", "main", "summarize"]

DOC = benchlib.ROOT / "docs" / "temporal_pool.md"
BEGIN, END = "<!-- bench_tradeoff:begin -->", "<!-- bench_tradeoff:end -->"
# (label, TIMESHARE_CONF): from the fewest bytes mapped to the fewest calls.
POINTS = [
    ("map_ahead:0", "map_ahead:0"),
    ("default", ""),
    ("cache_slack:0.01", "cache_slack:0.01"),
    ("cache_slack:0.02", "cache_slack:0.02"),
    ("cache_slack:0.05", "cache_slack:0.05"),
]
POLICIES = ["torch", "torch-expandable", "timeshare"]


def _steady(by_iteration: list[int]) -> float | None:
    """Device calls per iteration after the second marked one (None: too few marks)."""
    rest = by_iteration[3:]  # [before iteration 1, iteration 1, iteration 2, ...]
    return sum(rest) / len(rest) if rest else None


def summarize(traces: list[dict[str, Any]]) -> dict[str, Any]:
    """One point's figures over a set: the replay's per-trace records in, the curve's cells out."""
    frag, above, over, ns = [], [], [], []
    calls = calls_exp = 0
    steady = 0.0
    for t in traces:
        pols = t["policies"]
        ts, exp, torch = pols["timeshare"], pols["torch-expandable"], pols["torch"]
        frag.append(ts["fragmentation"])
        if ts["peak_reserved_bytes"] > exp["peak_reserved_bytes"]:
            above.append(t["name"])
        calls += ts["device_calls"]
        calls_exp += exp["device_calls"]
        if ts["device_calls"] > 1.5 * exp["device_calls"]:
            over.append(t["name"])
        s = _steady(ts.get("device_calls_by_iteration") or [])
        steady += s or 0.0
        if torch["ns_per_event"]:
            ns.append(ts["ns_per_event"] / torch["ns_per_event"])
    return {
        "frag_median": statistics.median(frag), "frag_worst": max(frag),
        "above": above, "calls": calls, "calls_exp": calls_exp, "over": over,
        "steady": steady, "ns_median": statistics.median(ns) if ns else 0.0,
        "ns_worst": max(ns) if ns else 0.0,
        "faults": sum(r.get("device_faults", 0) for t in traces for r in t["policies"].values()),
    }


def render(title: str, n: int, cells: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """The curve of one set: a row per point."""
    lines = [f"**{title}** ({n} traces)", "",
             "| point | frag median · worst | above expandable | calls (expandable's) "
             "| over 1.5x | steady calls / iteration | ns vs `torch` median · worst | faults |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for label, c in cells:
        ratio = c["calls"] / c["calls_exp"] if c["calls_exp"] else float("inf")
        lines.append(
            f"| `{label}` | {c['frag_median']:.3f} · {c['frag_worst']:.3f} | {len(c['above'])} "
            f"| {c['calls']} ({c['calls_exp']}, {ratio:.2f}x) | {len(c['over'])} "
            f"| {c['steady']:.1f} | {c['ns_median']:.2f} · {c['ns_worst']:.2f} | {c['faults']} |")
    return lines + [""]


def main(argv: list[str]) -> int:
    """Run the benchmark; returns the exit status."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    benchlib.add_held_out_args(ap)
    ap.add_argument("--write-docs", action="store_true")
    args = ap.parse_args(argv)
    splits, gpu = benchlib.held_out_sets(args)
    shipped = sorted(benchlib.SHIPPED_TRACES.glob("*.pkl.gz"))
    sets = [("Held out", splits["heldout"]), ("Real GPU snapshots (held out)", gpu),
            ("Shipped (the defaults were chosen on them)", shipped)]
    body = []
    for title, paths in sets:
        if not paths:
            continue
        cells = []
        for label, conf in POINTS:
            options: dict[str, Any] = {"timeline_points": 2}
            if conf:
                options["conf"] = conf
            doc = replay_paths([str(p) for p in paths], POLICIES, options)
            cells.append((label, summarize(doc["traces"])))
            print(f"bench_tradeoff: {title}: {label} done", file=sys.stderr, flush=True)
        body += render(title, len(paths), cells)
    text = "\n".join(body).rstrip("\n")
    print(text)
    if args.write_docs:
        benchlib.write_section(DOC, BEGIN, END, text)
        print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
