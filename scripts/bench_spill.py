"""Simulated GPU training step under activation offload: timeshare's policy vs. synchronous and
asynchronous save-everything strategies, from real pack/unpack sequences.

1. Record: one forward + backward of each model, built from torch.nn at real training sizes on
   the ``meta`` device (shapes and dtypes, no data, so a 24-layer GPT and a batch-64 ResNet-50
   fit on this machine), under recording saved-tensor hooks: for every saved tensor its bytes,
   whether it may be spilled (the offload hooks' own rule, ``offload._eligible``), and when it
   was packed and unpacked. As in the offload hooks, the unit is a storage: views of one buffer
   saved by several ops (q, k, v of one projection), or a tensor saved twice, are one record.
2. Time: a dispatch mode gives every aten op a modelled H100 time, a roofline:
   max(FLOPs / MATMUL_TFLOPS, bytes read and written / HBM_GBPS), at least KERNEL_MIN_US;
   views cost nothing. FLOPs come from torch.utils.flop_counter's formulas (matmul,
   convolution, attention). Attention is FlashAttention (``_scaled_dot_product_flash_attention``,
   which saves O(sequence) state), as on a GPU. Pack and unpack times are the modelled clock.
3. Model a step: copies take COPY_LATENCY_US + bytes / link bandwidth, on a device-to-host and a
   host-to-device stream that run beside compute (PCIe is full duplex). Device memory =
   parameters, gradients and two Adam moments (4x parameter bytes) + saved tensors alive on the
   device (spilled ones until their copy completes; restored ones from the start of their
   restore until their unpack). The optimizer step and non-saved temporaries are not modelled.
4. Strategies:
   - none: no offload (the reference: its peak sets the budgets, its time the 1.00x).
   - sync-all (like torch.autograd.graph.save_on_cpu): every spillable tensor is copied at pack
     and restored at unpack on the compute stream; compute waits for both.
   - async-no-prefetch (like torchtune's OffloadActivations without prefetch): every spillable
     tensor goes out on a side stream at pack; at unpack it is copied back on demand and compute
     waits for that copy.
   - timeshare: the offload hooks' furthest-need-first plan (the real code,
     timeshare._offload.offload._build_plan) against budget - look-ahead, spills at pack on the
     side stream; at every unpack, restores of the next needed start in need order within the
     look-ahead (PREFETCH_SHARE of the reference peak) or, when more, the room left under the
     budget; compute waits only for a restore not yet complete; an allocation
     that would pass the budget waits for spill copies to complete (the make_room path).
   *bound*: no strategy that lowers the peak from P0 (no offload) to P can beat
   max(1, 2 (P0 - P) / bandwidth / reference time): at the moment of the peak P0 - P bytes are
   off the device; all of them left before that moment and all come back after it, over one
   link each way. Shown for timeshare's peak.

Usage: python scripts/bench_spill.py [--write-docs] [--models NAME,...]
"""

from __future__ import annotations

import argparse
import heapq
import sys
import weakref
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

ROOT = Path(__file__).resolve().parents[1]
try:
    import timeshare  # noqa: F401  (installed, or on PYTHONPATH)
except ImportError:
    sys.path.insert(0, str(ROOT / "python"))  # a checkout with the built .so files

from timeshare._offload import offload  # noqa: E402

# H100 SXM figures (NVIDIA's data sheet: 989 TFLOP/s dense BF16, 3.35 TB/s HBM3), derated to
# what training kernels reach: half the matmul peak, 70% of the memory bandwidth.
MATMUL_TFLOPS = 495.0
HBM_GBPS = 2350.0
KERNEL_MIN_US = 2.0
COPY_LATENCY_US = 5.0
BANDWIDTHS = {"PCIe 4 (25 GB/s)": 25e9, "PCIe 5 (50 GB/s)": 50e9}
SHARES = (0.3, 0.5, 0.7)
PREFETCH_SHARE = 0.05
MIN_SPILL = 1 << 20


# ---- models (torch.nn, real training shapes) ------------------------------------------------
class Bottleneck(nn.Module):
    def __init__(self, c_in: int, width: int, stride: int) -> None:
        super().__init__()
        out = width * 4
        self.body = nn.Sequential(
            nn.Conv2d(c_in, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, out, 1, bias=False), nn.BatchNorm2d(out))
        self.down = (nn.Sequential(nn.Conv2d(c_in, out, 1, stride, bias=False),
                                   nn.BatchNorm2d(out))
                     if stride != 1 or c_in != out else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.down(x))


def resnet50() -> nn.Module:
    layers: list[nn.Module] = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64),
                               nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
    c = 64
    for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for b in range(blocks):
            layers.append(Bottleneck(c, width, stride if b == 0 else 1))
            c = width * 4
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 1000)]
    return nn.Sequential(*layers)


class Block(nn.Module):
    """Pre-norm decoder block: causal FlashAttention and an MLP (GELU, or SwiGLU when gated)."""

    def __init__(self, d: int, heads: int, mlp: int, gated: bool) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.up = nn.Linear(d, 2 * mlp if gated else mlp)
        self.down = nn.Linear(mlp, d)
        self.gated = gated

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, s, 3, self.heads, d // self.heads).unbind(2)
        a = torch.ops.aten._scaled_dot_product_flash_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)[0]
        x = x + self.proj(a.transpose(1, 2).reshape(b, s, d))
        h = self.up(self.ln2(x))
        if self.gated:
            g, u = h.chunk(2, dim=-1)
            h = F.silu(g) * u
        else:
            h = F.gelu(h)
        return x + self.down(h)


class Decoder(nn.Module):
    def __init__(self, layers: int, d: int, heads: int, mlp: int, vocab: int,
                 gated: bool = False) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d) if vocab else None
        self.blocks = nn.Sequential(*[Block(d, heads, mlp, gated) for _ in range(layers)])
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False) if vocab else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.blocks(self.emb(x) if self.emb is not None else x))
        return self.head(h) if self.head is not None else h


def models() -> dict[str, tuple[Any, Any, Any]]:
    """name -> (model factory, input factory, loss); everything on meta, bf16."""
    bf = torch.bfloat16
    return {
        "ResNet-50, batch 64, 224px": (
            resnet50, lambda: torch.randn(64, 3, 224, 224, dtype=bf),
            lambda out: F.cross_entropy(out.float(), torch.zeros(64, dtype=torch.long,
                                                                 device=out.device))),
        "GPT-2 medium (24 x d1024), 8 x 1024 tokens": (
            lambda: Decoder(24, 1024, 16, 4096, 50257),
            lambda: torch.zeros(8, 1024, dtype=torch.long),
            lambda out: F.cross_entropy(out.view(-1, out.shape[-1]).float(),
                                        torch.zeros(8 * 1024, dtype=torch.long,
                                                    device=out.device))),
        "7B-class slice (4 x d4096, SwiGLU), 2 x 4096 tokens": (
            lambda: Decoder(4, 4096, 32, 11008, 0, gated=True),
            lambda: torch.randn(2, 4096, 4096, dtype=bf, requires_grad=True),
            lambda out: out.float().square().mean()),
        "7B-class slice (4 x d4096, SwiGLU), 1 x 32768 tokens": (
            lambda: Decoder(4, 4096, 32, 11008, 0, gated=True),
            lambda: torch.randn(1, 32768, 4096, dtype=bf, requires_grad=True),
            lambda out: out.float().square().mean()),
    }


# ---- recording ---------------------------------------------------------------------------
class GpuClock(TorchDispatchMode):
    """Advances a modelled GPU clock (seconds) by a roofline time per aten op."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.flops = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        returns = func._schema.returns
        if returns and all(r.alias_info is not None and not r.alias_info.is_write
                           for r in returns):
            return out  # a view: no kernel
        flops = 0
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            flops = int(formula(*args, **kwargs, out_val=out))
        moved = sum(t.numel() * t.element_size()
                    for t in torch.utils._pytree.tree_leaves((args, kwargs, out))
                    if isinstance(t, torch.Tensor))
        self.flops += flops
        self.now += max(flops / (MATMUL_TFLOPS * 1e12), moved / (HBM_GBPS * 1e9),
                        KERNEL_MIN_US * 1e-6)
        return out


def record(factory: Any, make_input: Any, loss_fn: Any) -> tuple[list[dict[str, Any]], float,
                                                                  int, int]:
    """One forward+backward on meta: per saved tensor bytes, spillable, pack/unpack times (s,
    modelled); the step's modelled time; parameter bytes; FLOPs."""
    torch.manual_seed(0)
    with torch.device("meta"):
        model = factory().to(torch.bfloat16)
        x = make_input()
    rule = offload(budget=1, min_spill=MIN_SPILL)
    recs: list[dict[str, Any]] = []
    units: dict[int, tuple[Any, int, int]] = {}  # storage -> (weakref to a view, version, rec)
    clock = GpuClock()

    def pack(t: torch.Tensor) -> Any:
        if isinstance(t, nn.Parameter) or isinstance(t._base, nn.Parameter):
            return t  # a weight saved for backward: already counted in the model state
        key = int(t.untyped_storage()._cdata)
        prev = units.get(key)
        if prev is not None and prev[0]() is not None and prev[1] == t._version:
            return (prev[2], t)  # another view of a storage already packed: one unit
        spill = rule._eligible(t)
        nbytes = t.untyped_storage().nbytes() if spill else t.numel() * t.element_size()
        recs.append({"bytes": nbytes, "spill": spill, "pack": clock.now, "unpack": -1.0})
        if spill:
            units[key] = (weakref.ref(t), t._version, len(recs) - 1)
        return (len(recs) - 1, t)

    def unpack(saved: Any) -> torch.Tensor:
        if isinstance(saved, torch.Tensor):
            return saved
        r = recs[saved[0]]
        if r["unpack"] < 0:
            r["unpack"] = clock.now
        return saved[1]

    with clock, torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        loss_fn(model(x)).backward()
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    return recs, clock.now, params, clock.flops


def simulate(recs: list[dict[str, Any]], total: float, base: int, bw: float,
             strategy: str, spill: set[int], lookahead: int, budget: int = 0) -> tuple[float, int]:
    """GPU step time (s) and peak device bytes of one strategy. With a budget (timeshare), an
    allocation that would pass it waits for spill copies to complete (the make_room path)."""
    releases: list[tuple[float, int]] = []
    live = base
    events = sorted([(r["pack"], 1, i) for i, r in enumerate(recs)] +
                    [(r["unpack"], 0, i) for i, r in enumerate(recs) if r["unpack"] >= 0])
    need = [i for _t, k, i in events if k == 0 and i in spill]  # unpack order of spilled
    cp = lambda n: COPY_LATENCY_US * 1e-6 + n / bw  # noqa: E731
    c = d2h = h2d = 0.0
    last = 0.0
    mem: list[tuple[float, int]] = []
    ready: dict[int, float] = {}
    next_need = 0
    inflight = 0
    for t, kind, i in events:
        c += t - last
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
        elif strategy == "sync-all":
            mem.append((c, n))
            c += cp(n)
            mem.append((c, -n))
        elif i in ready:
            c = max(c, ready.pop(i))
            inflight -= n
            mem.append((c, -n))
        else:
            start = max(c, h2d, d2h if recs[i]["pack"] >= 0 else 0)
            mem.append((start, n))
            h2d = start + cp(n)
            c = h2d
            mem.append((c, -n))
        if strategy == "timeshare":  # every unpack starts restores of the next needed
            while next_need < len(need) and need[next_need] != i and need[next_need] in ready:
                next_need += 1
            if next_need < len(need) and need[next_need] == i:
                next_need += 1
            j = next_need
            while j < len(need):
                k = need[j]
                nb = recs[k]["bytes"]
                if k not in ready:
                    # within the look-ahead, or within the room left under the budget
                    held = base + sum(d for when, d in mem if when <= c or d > 0)
                    if inflight + nb > max(lookahead, 1) and held + nb > budget + lookahead:
                        break
                    start = max(c, h2d)
                    h2d = start + cp(nb)
                    ready[k] = h2d
                    inflight += nb
                    mem.append((start, nb))
                j += 1
    c += total - last
    cur = peak = 0
    for _t, delta in sorted(mem, key=lambda e: (e[0], -e[1])):
        cur += delta
        peak = max(peak, cur)
    return c, base + peak


def plan(recs: list[dict[str, Any]], base: int, budget: int) -> set[int]:
    o = offload(budget=max(budget, 1), min_spill=MIN_SPILL)
    o._prev = {i: [r["bytes"], int(r["pack"] * 1e9), int(r["unpack"] * 1e9), base,
                   int(r["spill"])] for i, r in enumerate(recs)}
    o._build_plan()
    chosen = set(o._plan)
    o.close()
    return chosen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write-docs", action="store_true",
                    help="write the table into docs/benchmarks.md (section 'Spill')")
    ap.add_argument("--models", default="", help="comma-separated name prefixes (default: all)")
    args = ap.parse_args()
    wanted = [m.strip() for m in args.models.split(",") if m.strip()]
    lines = [f"Modelled H100: matmul {MATMUL_TFLOPS:.0f} TFLOP/s, HBM {HBM_GBPS:.0f} GB/s, "
             f"kernels >= {KERNEL_MIN_US:.0f} us; copies {COPY_LATENCY_US:.0f} us + bytes / link. "
             f"Look-ahead {PREFETCH_SHARE:.0%} of the reference peak. Peak and time relative to "
             "no offload. *bound*: the least step time of any strategy that reaches timeshare's "
             "peak (the bytes above it leave the device before that moment and return after "
             "it: 2 x bytes / link).",
             "",
             "| model | step (no offload) | link | budget | bound | timeshare peak "
             "| timeshare time | sync-all peak | sync-all time | async-no-prefetch peak "
             "| async-no-prefetch time |",
             "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, (factory, make_input, loss_fn) in models().items():
        if wanted and not any(name.startswith(w) for w in wanted):
            continue
        recs, total, params, flops = record(factory, make_input, loss_fn)
        base = 4 * params
        everything = {i for i, r in enumerate(recs) if r["spill"]}
        saved = sum(r["bytes"] for r in recs)
        spillable = sum(recs[i]["bytes"] for i in everything)
        for link, bw in BANDWIDTHS.items():
            t0, p0 = simulate(recs, total, base, bw, "none", set(), 0)
            ts, ps = simulate(recs, total, base, bw, "sync-all", everything, 0)
            ta, pa = simulate(recs, total, base, bw, "async", everything, 0)
            for share in SHARES:
                budget = int(p0 * share)
                look = int(p0 * PREFETCH_SHARE)
                chosen = plan(recs, base, budget - look)
                tt, pt = simulate(recs, total, base, bw, "timeshare", chosen, look, budget - look)
                bound = max(1.0, 2 * (p0 - pt) / bw / t0)
                lines.append(f"| {name} | {t0 * 1e3:.1f} ms | {link} | {share:.0%} | {bound:.2f}x "
                             f"| {pt / p0:.2f} | {tt / t0:.2f}x | {ps / p0:.2f} | {ts / t0:.2f}x "
                             f"| {pa / p0:.2f} | {ta / t0:.2f}x |")
        print(f"{name}: {flops / 1e12:.1f} TFLOP, modelled step {total * 1e3:.1f} ms, "
              f"{len(recs)} saved tensors, {saved / 2**30:.2f} GiB saved "
              f"({spillable / max(saved, 1):.0%} spillable), state {base / 2**30:.2f} GiB",
              file=sys.stderr)
    table = "\n".join(lines)
    print(table)
    if args.write_docs:
        write_section(ROOT / "docs/benchmarks.md", table)


MARKER = "<!-- bench_spill: generated by python scripts/bench_spill.py --write-docs -->"


def write_section(doc: Path, table: str) -> None:
    """Replace the spill section of docs/benchmarks.md (everything from MARKER on)."""
    text = doc.read_text() if doc.exists() else ""
    head = text.split(MARKER)[0].rstrip()
    section = (f"{MARKER}\n## Spill: simulated GPU step under a budget\n\n"
               "From `scripts/bench_spill.py` (its docstring states every assumption).\n\n"
               f"{table}\n")
    doc.write_text(f"{head}\n\n{section}")


if __name__ == "__main__":
    main()
