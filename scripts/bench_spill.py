"""Simulated GPU step under activation offload: timeshare's policy vs. synchronous and
asynchronous save-everything strategies, from real pack/unpack sequences.

1. Record: run real torch.nn models on CPU (a conv net and a transformer encoder) with
   recording saved-tensor hooks: for every saved tensor its bytes, whether it may be spilled
   (the offload hooks' own rule), and the CPU time of its pack and unpack.
2. Model a GPU step: the compute between two consecutive hook events takes its measured CPU
   time divided by SPEEDUP (stated below); copies take 5 us + bytes / PCIe bandwidth, on a
   device-to-host and a host-to-device stream that run beside compute (PCIe is full duplex).
   Device memory = parameters, gradients and Adam state (4x parameter bytes) + saved tensors
   alive on the device (spilled ones until their copy completes; restored ones from the start
   of their restore until their unpack).
3. Strategies:
   - none: no offload (the reference: its peak sets the budgets, its time the 1.00x).
   - sync-all (like torch.autograd.graph.save_on_cpu): every spillable tensor is copied at pack
     and restored at unpack on the compute stream; compute waits for both.
   - async-no-prefetch (like torchtune's OffloadActivations without prefetch): every spillable
     tensor goes out on a side stream at pack; at unpack it is copied back on demand and compute
     waits for that copy.
   - timeshare: the offload hooks' furthest-need-first plan (the real code,
     timeshare.offload.offload._build_plan) against budget - look-ahead, spills at pack on the
     side stream, restores prefetched in need order within the look-ahead (PREFETCH_SHARE of
     the reference peak); compute waits only for a restore not yet complete.

Usage: python scripts/bench_spill.py [--write-docs]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))  # the checkout (with the built .so files)

# Compute-time assumption: an H100-class GPU runs these fp32 models at SPEEDUP times the
# measured CPU rate. Measured below as (assumed GPU matmul rate) / (measured CPU matmul rate),
# with the GPU at GPU_TFLOPS (TF32 dense peak ~495 TFLOP/s at ~40% utilisation).
GPU_TFLOPS = 200.0
COPY_LATENCY_S = 5e-6
BANDWIDTHS = {"PCIe 4 (25 GB/s)": 25e9, "PCIe 5 (50 GB/s)": 50e9}
SHARES = (0.3, 0.5, 0.7)
PREFETCH_SHARE = 0.10
MIN_SPILL = 1 << 20


def cpu_matmul_tflops() -> float:
    n = 1024
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t0 = time.perf_counter()
    reps = 5
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12


def models() -> dict[str, tuple[torch.nn.Module, Any, Any]]:
    torch.manual_seed(0)
    conv = torch.nn.Sequential(
        *[m for c_in, c_out in ((3, 64), (64, 64), (64, 128), (128, 128), (128, 256))
          for m in (torch.nn.Conv2d(c_in, c_out, 3, padding=1), torch.nn.BatchNorm2d(c_out),
                    torch.nn.ReLU())],
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(256, 10))
    layer = torch.nn.TransformerEncoderLayer(512, 8, 2048, dropout=0.0, batch_first=True)
    enc = torch.nn.Sequential(torch.nn.TransformerEncoder(layer, 6, enable_nested_tensor=False),
                              torch.nn.Linear(512, 512))
    return {
        "convnet (5 conv, 32x64x64)": (conv, torch.randn(32, 3, 64, 64),
                                       torch.randint(0, 10, (32,))),
        "transformer (6 layers, d512, 8x512)": (enc, torch.randn(8, 512, 512), None),
    }


def record(model: torch.nn.Module, x: Any, y: Any) -> tuple[list[dict[str, Any]], float, int]:
    """One training step with recording hooks: per saved tensor bytes, spillable, pack/unpack
    times (s, from step start); the step's CPU time; parameter bytes."""
    from timeshare.offload import offload

    rule = offload(budget=1, min_spill=MIN_SPILL)
    recs: list[dict[str, Any]] = []
    t0 = [0.0]

    def pack(t: Any) -> Any:
        r = {"bytes": t.numel() * t.element_size(), "spill": rule._eligible(t),
             "pack": time.perf_counter() - t0[0], "unpack": -1.0}
        recs.append(r)
        return (len(recs) - 1, t)

    def unpack(p: Any) -> Any:
        r = recs[p[0]]
        if r["unpack"] < 0:
            r["unpack"] = time.perf_counter() - t0[0]
        return p[1]

    def step() -> None:
        out = model(x)
        loss = torch.nn.functional.cross_entropy(out, y) if y is not None else out.square().mean()
        loss.backward()

    step()  # warm-up
    model.zero_grad()
    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        t0[0] = time.perf_counter()
        step()
        total = time.perf_counter() - t0[0]
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    return recs, total, params


def simulate(recs: list[dict[str, Any]], total: float, base: int, scale: float, bw: float,
             strategy: str, spill: set[int], lookahead: int, budget: int = 0) -> tuple[float, int]:
    """GPU step time (s) and peak device bytes of one strategy. With a budget (timeshare), an
    allocation that would pass it waits for spill copies to complete (the make_room path)."""
    import heapq

    releases: list[tuple[float, int]] = []
    live = base
    events = sorted([(r["pack"], 1, i) for i, r in enumerate(recs)] +
                    [(r["unpack"], 0, i) for i, r in enumerate(recs) if r["unpack"] >= 0])
    need = [i for _t, k, i in events if k == 0 and i in spill]  # unpack order of spilled
    cp = lambda n: COPY_LATENCY_S + n / bw  # noqa: E731
    c = d2h = h2d = 0.0
    last = 0.0
    mem: list[tuple[float, int]] = []
    ready: dict[int, float] = {}
    next_need = 0
    inflight = 0
    for t, kind, i in events:
        c += (t - last) * scale
        last = t
        n = recs[i]["bytes"]
        if kind == 1:
            if budget:
                while releases and releases[0][0] <= c:
                    live -= heapq.heappop(releases)[1]
                while releases and live + n > budget:
                    when, m = heapq.heappop(releases)
                    c = max(c, when)
                    live -= m
                live += n
            mem.append((c, n))
            if i in spill:
                if strategy == "sync-all":
                    c += cp(n)
                    mem.append((c, -n))
                else:
                    d2h = max(c, d2h) + cp(n)
                    mem.append((d2h, -n))
                    heapq.heappush(releases, (d2h, n))
            continue
        if i not in spill:
            mem.append((c, -n))
            live -= n
            continue
        if strategy == "sync-all":
            mem.append((c, n))
            c += cp(n)
        elif i in ready:
            c = max(c, ready.pop(i))
            inflight -= n
        else:
            start = max(c, h2d, d2h if recs[i]["pack"] >= 0 else 0)
            mem.append((start, n))
            h2d = start + cp(n)
            c = h2d
        mem.append((c, -n))
        if strategy == "timeshare":
            while next_need < len(need) and need[next_need] != i and need[next_need] in ready:
                next_need += 1
            if next_need < len(need) and need[next_need] == i:
                next_need += 1
            j = next_need
            while j < len(need) and inflight + recs[need[j]]["bytes"] <= max(lookahead, 1):
                k = need[j]
                if k not in ready:
                    start = max(c, h2d)
                    h2d = start + cp(recs[k]["bytes"])
                    ready[k] = h2d
                    inflight += recs[k]["bytes"]
                    mem.append((start, recs[k]["bytes"]))
                j += 1
    c += (total - last) * scale
    cur = peak = 0
    for _t, delta in sorted(mem, key=lambda e: (e[0], -e[1])):
        cur += delta
        peak = max(peak, cur)
    return c, base + peak


def plan(recs: list[dict[str, Any]], base: int, budget: int) -> set[int]:
    from timeshare.offload import offload

    o = offload(budget=max(budget, 1), min_spill=MIN_SPILL)
    o._prev = {i: [r["bytes"], int(r["pack"] * 1e9), int(r["unpack"] * 1e9), base,
                   int(r["spill"])] for i, r in enumerate(recs)}
    o._build_plan()
    return set(o._plan)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write-docs", action="store_true", help="append the table to docs/spill.md")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cpu = cpu_matmul_tflops()
    speedup = GPU_TFLOPS / cpu
    scale = 1.0 / speedup
    lines = [f"CPU matmul {cpu * 1e3:.1f} GFLOP/s; assumed GPU {GPU_TFLOPS:.0f} TFLOP/s; "
             f"GPU compute time = CPU time / {speedup:.0f}. Look-ahead {PREFETCH_SHARE:.0%} of "
             "the reference peak. Peak and time relative to no offload.", "",
             "| model | link | budget | timeshare peak | timeshare time | sync-all peak | "
             "sync-all time | async-no-prefetch peak | async-no-prefetch time |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, (model, x, y) in models().items():
        recs, total, params = record(model, x, y)
        base = 4 * params
        everything = {i for i, r in enumerate(recs) if r["spill"]}
        for link, bw in BANDWIDTHS.items():
            t0, p0 = simulate(recs, total, base, scale, bw, "none", set(), 0)
            ts, ps = simulate(recs, total, base, scale, bw, "sync-all", everything, 0)
            ta, pa = simulate(recs, total, base, scale, bw, "async", everything, 0)
            for share in SHARES:
                budget = int(p0 * share)
                look = int(p0 * PREFETCH_SHARE)
                chosen = plan(recs, base, budget - look)
                tt, pt = simulate(recs, total, base, scale, bw, "timeshare", chosen, look,
                                  budget - look)
                lines.append(f"| {name} | {link} | {share:.0%} | {pt / p0:.2f} | {tt / t0:.2f}x "
                             f"| {ps / p0:.2f} | {ts / t0:.2f}x | {pa / p0:.2f} | {ta / t0:.2f}x |")
            print(f"{name} [{link}]: no-offload step {t0 * 1e3:.2f} ms, peak {p0 / 2**20:.0f} MiB",
                  file=sys.stderr)
    table = "\n".join(lines)
    print(table)
    if args.write_docs:
        doc = ROOT / "docs/spill.md"
        text = doc.read_text() if doc.exists() else ""
        marker = "<!-- bench_spill -->"
        head = text.split(marker)[0] if marker in text else text
        doc.write_text(head.rstrip() + f"\n\n{marker}\n{table}\n")


if __name__ == "__main__":
    main()
