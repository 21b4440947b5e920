"""Layout plans, measured: the temporal pool with and without `plan` (TIMESHARE_CONF), in the
replay (the real C++ pools on the strict sim), on the shipped traces and the real GPU snapshots.

    python scripts/bench_plan.py                 # print the table
    python scripts/bench_plan.py --write-docs    # also rewrite its section of docs/temporal_pool.md

Policies: timeshare (the hybrid predictor, as shipped), timeshare-true (true lifespans: the bound
of what prediction gives), timeshare-const (a constant answer), timeshare-shuffled (true
lifespans dealt to the wrong allocations); torch-expandable for reference. Columns per policy:
peak reserved / peak live (frag) and device calls, without and with plans; the calls of the last
six marked iterations (the steady state of a long job, which a trace of twelve iterations
underweighs against the one-time switch to a plan); plan hits and misses. All figures are
deterministic (no timing).
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
BEGIN, END = "<!-- bench_plan:begin -->", "<!-- bench_plan:end -->"
POLICIES = ["timeshare", "timeshare-true", "timeshare-const", "timeshare-shuffled"]


STEADY_ITERATIONS = 6


def steady_calls(r: dict) -> str:
    """Calls of the last STEADY_ITERATIONS marked iterations ("-" without enough marks)."""
    # [before the first marked iteration, iteration 1, iteration 2, ...]
    it = r.get("device_calls_by_iteration") or []
    # As many iterations again before them, so that they come after the warm-up and the switch.
    if len(it) < 2 * STEADY_ITERATIONS + 1:
        return "-"
    return str(sum(it[-STEADY_ITERATIONS:]))


def measure(path: Path) -> list[str]:
    tr = load_trace(path)
    ref = replay_events(tr.events, "torch-expandable", tr.iteration_starts, {})
    rows = []
    for policy in POLICIES:
        off = replay_events(tr.events, policy, tr.iteration_starts, {"conf": "plan:false"})
        on = replay_events(tr.events, policy, tr.iteration_starts, {"conf": "plan:true"})
        faults = off["device_faults"] + on["device_faults"]
        live = tr.peak_live_bytes
        rows.append(
            f"| {tr.name if policy == POLICIES[0] else ''} | `{policy}` "
            f"| {ref['peak_reserved_bytes'] / live:.3f} · {ref['device_calls']} "
            f"| {off['peak_reserved_bytes'] / live:.3f} · {off['device_calls']} "
            f"| {on['peak_reserved_bytes'] / live:.3f} · {on['device_calls']} "
            f"| {steady_calls(off)} / {steady_calls(on)} "
            f"| {on['plan_hits']} / {on['plan_misses']} | {on['plans']} / {on['plans_dropped']} "
            f"| {faults} |")
        print(rows[-1], flush=True)
    return rows


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write-docs", action="store_true")
    args = ap.parse_args(argv)
    head = ["| trace | policy | torch-expandable frag · calls | plan off: frag · calls "
            "| plan on: frag · calls | calls in the last 6 iterations, off / on "
            "| plan hits / misses | plans followed / dropped | faults |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    print("\n".join(head))
    rows = []
    for path in benchlib.traces():
        rows += measure(path)
    if args.write_docs:
        benchlib.write_section(DOC, BEGIN, END, "\n".join(head + rows))
        print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
