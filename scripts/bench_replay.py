#!/usr/bin/env python3
"""Replays every shipped trace through every policy and writes docs/benchmarks.md + docs/replay.png.

usage: python scripts/bench_replay.py [--out-dir docs] [--json OUT.json] [--gpu-traces DIR]
                                     [PATH...]

Every replay figure in docs/benchmarks.md comes from this script (sections that other scripts
write, marked by an HTML comment naming them, are kept): ratios are against the ``torch``
policy measured in the same run, on the same machine. Needs the built ``timeshare._C``
(``pip install -e .``).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/: benchlib, also under runpy
import benchlib  # noqa: E402

ROOT = benchlib.ROOT
benchlib.use_checkout_package()

from timeshare import _C  # noqa: E402
from timeshare.plot import plot_replay  # noqa: E402
from timeshare.replay import (  # noqa: E402
    ABLATION_POLICIES,
    DEFAULT_POLICIES,
    format_bytes,
    replay_paths,
)

__all__ = ["main", "render_markdown"]

RERUN = "python scripts/bench_replay.py"
GPU_TRACES = benchlib.GPU_TRACES

TORCH_MODEL = """\
The `torch` and `torch-expandable` policies are `timeshare::pool::CachingPool`
(`csrc/timeshare/pool/caching/caching_pool.h`), a model of PyTorch's `CUDACachingAllocator` default
policy written from its rules. **Modelled:** 512-byte rounding (and optional
`roundup_power2_divisions`); separate small (<= 1 MiB) and large pools; segment sizes (2 MiB for
small requests, 20 MiB for large requests under 10 MiB, the request rounded to 2 MiB above);
best fit over free blocks keyed by (stream, size, address) with splitting (small pool: >= 512 B
left; large pool: > 1 MiB left) and `max_split_size`/`max_non_split_rounding` oversize rules;
coalescing of free neighbours; stream-ordered reuse (a block is reused only on its allocation
stream; `record_stream` events delay reuse); free-cache-and-retry on device OOM
(`num_alloc_retries`), garbage-collection threshold under a limit; expandable segments (one
virtual range per stream and pool, 2 MiB / 20 MiB pages mapped as it grows); torch's
`DeviceStats` field by field. **Not modelled:** CUDA-graph private pools and MemPools, IPC
sharing, free-memory callbacks, the allocation-history recorder, and the release of the lock
around `cudaMalloc`. In a replay the device never runs out (a 1 TiB simulated device), so the
retry paths are not exercised and reserved bytes are what the policy asks for.
"""

PREDICTOR_TRAINING = """\
`timeshare` runs `TemporalPool` with the hybrid `LifespanPredictor` built by
`predict::make_predictor` with `kind = "hybrid"` and `deterministic = true`, seed fixed. It starts
untrained at the first event of each trace and learns online, exactly as inside the allocator:
every allocation is predicted, every free reveals a true lifespan (allocator ticks = event
indices) to the predictor. As in the allocator, the predictor sits behind `AsyncPredictor`: the
pool gets, at once, the answer its board holds for the allocation's context (size, stream, the two
sizes before it), published by the predictor for the last allocation of that context, or none;
here the events are fed to the predictor inline, a batch of 64 at a time, where the allocator's
thread would take them. *pool got* is the share of allocations that got an answer and, in
brackets, the share of those within 2x; *within 2x*, *warm* and *log2 MAE* score the predictor's
own answers (the same figures as without the board). `timeshare-const` goes the same way. In
deterministic mode, (re)training runs synchronously at the allocation where it is due and the
LSTM state advances at fixed allocations, so one trace gives one set of figures (timings aside).
`timeshare`'s ns/event comes from a second, timing pass run as the allocator runs by default:
the predictor fed through `AsyncPredictor` on its own thread (trainer on another), the pool placing
without waiting for it (the deterministic pass, training inside the loop, is
`ns_per_event_deterministic` in the JSON); `scripts/bench_hotpath.py` measures the hot path per
malloc+free pair in detail. Prediction figures are computed after the run from the true lifespans:
*within 2x* is the share of allocations with predicted/true in [1/2, 2], *log2 MAE* the median
|log2(predicted/true)| (lifespans clamped to >= 1), *warm* the within-2x share counted from the
start of the second training iteration (from the trace's iteration marks; else from the cycle the
predictor detected; else after the first 25% of events). Allocations never freed are not scored.
Ablations: `timeshare-true` gives the pool the true lifespans (never-freed = permanent),
`timeshare-const` one constant prediction for every allocation.
"""


def _ratio(x: float, ref: float) -> str:
    return f"{x / ref:.3f}" if ref else "-"


BASELINES = """\
Each column is the temporal pool replayed with another predictor kind (`timeshare+KIND`
policies), trained online in the same deterministic replay from the first event; cells are
*within 2x* online / *warm* (definitions below). `timeshare` is the default hybrid (the twin one
detected iteration back, found by sizes or, when sizes change, by the pattern of frees; context
table; LSTM; gates between them); `hybrid_nolstm` the same without the LSTM; `lstm` the LSTM
alone (with the table's answer among its inputs); `aligned` the size twin alone (the same
position in the previous detected iteration, same size) with `table_cycle` as fallback; `table`
the context table keyed by (size, stream, sizes of the previous k allocations), falling back to
shorter k; `table_cycle` that table with the occurrence of the size in the iteration; `prev_iter`
the lifespan at the same position in the previous iteration; `last_size` the last lifespan seen for
the same size; `size_mean` the running mean per size. Each learns a lifespan only when that block is
freed.
"""


def render_baselines(doc: dict[str, Any]) -> list[str]:
    """The predictor-against-baselines table (timeshare and every timeshare+KIND policy)."""
    kinds = ["timeshare"] + [p for p in doc["policies"] if p.startswith("timeshare+")]
    if len(kinds) < 2:
        return []
    head = ["trace"] + [f"`{k.removeprefix('timeshare+')}`" for k in kinds] + ["best other"]
    lines = ["## Lifespan prediction against baselines (same replay)", "", BASELINES,
             "| " + " | ".join(head) + " |", "| --- |" + " ---: |" * (len(head) - 1)]
    for t in doc["traces"]:
        pols = t["policies"]
        cells, others = [], []
        for k in kinds:
            r = pols.get(k, {})
            online, warm = r.get("lifespan_within_2x"), r.get("lifespan_within_2x_warm")
            cells.append("-" if online is None else f"{online:.3f} / {warm:.3f}")
            if k not in ("timeshare", "timeshare+hybrid_nolstm") and online is not None:
                others.append((online, k.removeprefix("timeshare+")))
        best = max(others) if others else None
        cells.append(f"`{best[1]}` {best[0]:.3f}" if best else "-")
        lines.append("| " + " | ".join([t["name"], *cells]) + " |")
    return lines + [""]


def render_markdown(doc: dict[str, Any], plot_name: str,
                    baselines: dict[str, Any] | None = None,
                    gpu_doc: dict[str, Any] | None = None,
                    unsafe: dict[str, Any] | None = None) -> str:
    """The benchmark page for a replay document (see ``timeshare.replay.replay_paths``)."""
    m = benchlib.machine()
    lines = [
        "# Replay benchmarks",
        "",
        f"Generated by `{RERUN}` on {m['platform']} ({m['cpus']} CPUs), Python "
        f"{platform.python_version()}. Do not edit by hand: rerun the command.",
        "",
        "Each shipped trace (`python/timeshare/traces/`) is replayed event by event through the",
        "real C++ pools on a simulated device with fake addresses. *frag* = peak reserved / peak",
        "live (1.0 is the physical limit); *vs torch* = peak reserved / the `torch` policy's, same",
        "run; *calls* = every device reserve, release, map and unmap call; *waits* = host",
        "synchronisations the pool made to give memory back; *faults* = device faults the strict",
        "sim counted (unmapping memory that queued work still used: must be 0; see *Work in",
        "flight* below); ns/event and Mevents/s time the event loop only.",
        "",
        *summary_lines(doc),
        "",
        *table_lines(doc),
    ]
    if gpu_doc:
        lines += [
            "",
            "## Real GPU snapshots (held out)",
            "",
            "Two `torch.cuda.memory._snapshot()` pickles recorded by other people's GPU training",
            "runs (`shared/traces-gpu/`, licences beside them): no choice of the policies was",
            "tuned on them.",
            "",
            *summary_lines(gpu_doc),
            "",
            *table_lines(gpu_doc),
        ]
    if unsafe:
        lines += ["", *render_safety(doc, gpu_doc, unsafe)]
    lines += ["", "## Throughput (all traces together)", ""]
    lines += ["| policy | events | Mevents/s |", "| --- | ---: | ---: |"]
    for p in doc["policies"]:
        ev = sum(t["events"] for t in doc["traces"])
        ns = sum(t["policies"][p]["loop_ns"] for t in doc["traces"])
        lines.append(f"| `{p}` | {ev:,} | {ev / ns * 1e3 if ns else 0:.2f} |")
    lines += [
        "",
        "`oracle` is an offline planner, not an allocator: its time is planning time "
        "(greedy by size over an interval index), shown per event for comparison only.",
        "",
        f"![reserved bytes per policy over each trace]({plot_name})",
        "",
        "## Rerun",
        "",
        "```",
        RERUN,
        "python -m timeshare replay --ablation --json out.json --plot out.png   # same figures",
        "python -m timeshare replay --policy timeshare --conf unsafe_unmap:true  # the detector",
        "scripts/corpus/capture.sh && python scripts/bench_corpus.py --write-docs  # the corpus",
        "```",
        "",
        *(render_baselines(baselines) if baselines else []),
        "## What the `torch` policy models",
        "",
        TORCH_MODEL,
        "## How the predictor is trained during replay",
        "",
        PREDICTOR_TRAINING,
    ]
    return "\n".join(lines)


def table_lines(doc: dict[str, Any]) -> list[str]:
    """The per-trace, per-policy table."""
    lines = [
        "| trace | events | peak live | policy | peak reserved | frag | vs torch | calls | waits "
        "| faults | ns/event | Mevents/s | within 2x | warm | log2 MAE | pool got (within 2x) |",
        "| --- | ---: | ---: | --- |" + " ---: |" * 12,
    ]
    for t in doc["traces"]:
        pols = t["policies"]
        ref = pols.get("torch", {}).get("peak_reserved_bytes", 0)
        for i, (name, r) in enumerate(pols.items()):
            head = (
                [t["name"], f"{t['events']:,}", format_bytes(t["peak_live_bytes"])]
                if i == 0
                else ["", "", ""]
            )
            pred = [
                f"{r[k]:.3f}" if k in r else "-"
                for k in ("lifespan_within_2x", "lifespan_within_2x_warm", "lifespan_log2_mae")
            ]
            row = [
                *head,
                f"`{name}`",
                format_bytes(r["peak_reserved_bytes"]),
                f"{r['fragmentation']:.3f}",
                _ratio(r["peak_reserved_bytes"], ref),
                str(r.get("device_calls", r["device_reserve_calls"])),
                str(r.get("device_waits", 0)),
                str(r.get("device_faults", 0)),
                f"{r['ns_per_event']:.0f}",
                f"{r['mevents_per_second']:.2f}",
                *pred,
                (f"{r['answered_share']:.2f} ({r['answers_within_2x']:.3f})"
                 if "answered_share" in r else "-"),
            ]
            lines.append("| " + " | ".join(row) + " |")
    return lines


def summary_lines(doc: dict[str, Any]) -> list[str]:
    """Computed verdicts: timeshare's fragmentation against torch's, the median, faults."""
    frags, worse, faults = [], [], 0
    for t in doc["traces"]:
        pols = t["policies"]
        faults += sum(r.get("device_faults", 0) for r in pols.values())
        if "timeshare" not in pols:
            continue
        f = pols["timeshare"]["fragmentation"]
        frags.append(f)
        for ref in ("torch", "torch-expandable"):
            if ref in pols and f >= pols[ref]["fragmentation"]:
                worse.append(f"{t['name']} (`{ref}` {pols[ref]['fragmentation']:.3f})")
    if not frags:
        return []
    frags.sort()
    mid = len(frags) // 2
    median = frags[mid] if len(frags) % 2 else (frags[mid - 1] + frags[mid]) / 2
    return [
        f"**timeshare** fragmentation: median {median:.3f} over {len(frags)} traces "
        f"(min {frags[0]:.3f}, max {frags[-1]:.3f}); "
        + ("below `torch` and `torch-expandable` on every trace" if not worse
           else "not below on " + ", ".join(worse))
        + f"; device faults, all policies: {faults}."
    ]


SAFETY = """\
The sim models work in flight (`device/sim/sim_backend.h`, `replay/replayer.h`): each block is
used by work on its stream from its allocation to its free, and the work queued by the time of
the free completes when the host reaches the event 128 allocator events later (that event's
`time_us`): the GPU runs a launch queue behind the host. Unmapping memory before that work is
done is a device fault (on a GPU, an illegal-address error that kills the context, or silent
corruption). `unsafe_unmap:true` restores the temporal pool's behaviour before the fix (a
granule unmapped as soon as its last block was freed) as a test of the detector. The fixed
pool quarantines emptied granules until a fence on their stream completes, and moves memory
between regions of one stream's arena with `map_alias` (same physical memory at the new
address at once, the old address unmapped after its fence), so safety costs neither waits nor,
mostly, memory; *frag* and *calls* side by side show what it costs.
"""


def render_safety(doc: dict[str, Any], gpu_doc: dict[str, Any] | None,
                  unsafe: dict[str, Any]) -> list[str]:
    """The detector and the cost of safety: timeshare with and without unsafe_unmap."""
    lines = ["## Work in flight: the detector and the cost of safety", "", SAFETY,
             "| trace | frag | frag, unsafe | calls | calls, unsafe | waits | faults, unsafe |",
             "| --- |" + " ---: |" * 6]
    safe = {t["name"]: t["policies"]["timeshare"]
            for d in (doc, gpu_doc) if d for t in d["traces"] if "timeshare" in t["policies"]}
    for t in unsafe["traces"]:
        u = t["policies"]["timeshare"]
        r = safe.get(t["name"])
        if r is None:
            continue
        lines.append(
            f"| {t['name']} | {r['fragmentation']:.3f} | {u['fragmentation']:.3f} "
            f"| {r['device_calls']} | {u['device_calls']} "
            f"| {r.get('device_waits', 0)} | {u.get('device_faults', 0)} |"
        )
    return lines + [""]


KEEP_FROM = "<!-- bench_"


def main(argv: list[str]) -> int:
    """Run the benchmark; returns the exit status."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("paths", nargs="*", help="traces (default: the shipped ones)")
    p.add_argument("--out-dir", default=str(ROOT / "docs"))
    p.add_argument("--json", help="also write the replay JSON here")
    p.add_argument("--gpu-traces", default=str(GPU_TRACES),
                   help="real GPU snapshots replayed as a held-out set (default: %(default)s)")
    args = p.parse_args(argv)
    known = set(_C.policies())
    policies = [x for x in (*DEFAULT_POLICIES, *ABLATION_POLICIES) if x in known]
    doc = replay_paths(args.paths, policies, {"timeline_points": 1500}, progress=True)
    gpu = sorted(Path(args.gpu_traces).glob("*.pkl*")) if args.gpu_traces else []
    gpu_doc = (replay_paths([str(x) for x in gpu], list(DEFAULT_POLICIES),
                            {"timeline_points": 2}, progress=True) if gpu else None)
    unsafe_options: dict[str, Any] = {"timeline_points": 2, "conf": "unsafe_unmap:true"}
    unsafe = replay_paths(args.paths, ["timeshare"], unsafe_options, progress=True)
    if gpu:
        unsafe["traces"] += replay_paths([str(x) for x in gpu], ["timeshare"], unsafe_options,
                                         progress=True)["traces"]
    others = ["timeshare", *(x for x in _C.policies() if x.startswith("timeshare+"))]
    baselines = replay_paths(args.paths, others, {"timeline_points": 2}, progress=True)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot_replay(doc, out / "replay.png")
    md = out / "benchmarks.md"
    # Sections other scripts generate (bench_spill.py, bench_hotpath.py) start with an HTML
    # comment naming their script; they are kept as they are.
    old = md.read_text() if md.exists() else ""
    keep = old[old.index(KEEP_FROM):] if KEEP_FROM in old else ""
    md.write_text(render_markdown(doc, "replay.png", baselines, gpu_doc, unsafe) + "\n" +
                  (f"\n{keep}" if keep else ""))
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {out / 'benchmarks.md'} and {out / 'replay.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
