"""Real training steps on one GPU: PyTorch's default allocator against timeshare, one table.

    python scripts/gpu_train_check.py --all --out DIR            # every run, then the table
    python scripts/gpu_train_check.py --run cnn default --json out.json   # one run (a child)
    python scripts/gpu_train_check.py --run transformer timeshare --conf budget:300MiB,spill:host
    python scripts/gpu_train_check.py --compare DIR/*.json       # the table again

Two models, a CNN (residual conv blocks, batch norm) and a transformer (embedding, encoder
layers, language-model head), each trained for a few steps with the default allocator, with
torch.autograd.graph.save_on_cpu, with timeshare, and with timeshare under a budget of 60% of
the default run's peak (spilling saved activations to pinned host memory). Every run is its own
process: timeshare must be enabled before CUDA initialises. Each step uploads its batch on a
side stream and hands it to the compute stream with wait_stream + record_stream, as data
loaders that prefetch do, so the allocator's stream-ordered reuse is exercised.

Checks (the exit status is non-zero when one fails):
  - losses identical to the default allocator's, step by step (same seeds, deterministic kernels);
  - under timeshare, torch.cuda.memory_stats() is non-zero and matches what was allocated: a
    probe tensor of known size moves allocated_bytes.all.current and allocation.all.current by
    exactly its rounded size and one, and back when freed;
  - any CUDA error is reported with its message; a sticky one (the context is dead: a later
    trivial kernel fails too) ends the whole run after printing the table so far.
Only plain device allocations are used (cudaMalloc/cuMemCreate under the allocators); managed
(unified) memory never is. The whole --all run is sized to finish in well under 8 minutes on one
H100/H200: --deadline-s stops launching runs when the time is nearly spent.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

MODELS = ("cnn", "transformer")
MODES = ("default", "save_on_cpu", "timeshare", "timeshare-budget")
BUDGET_SHARE = 0.60          # timeshare-budget: this share of the default run's peak allocated
PROBE_BYTES = 48 << 20       # the memory_stats probe tensor
RUN_TIMEOUT_S = 150          # one child process
EXIT_ERROR, EXIT_STICKY = 2, 3


# ---- one run (a child process) ------------------------------------------------------------------

def build_model(name: str, torch, nn):
    if name == "cnn":
        class Block(nn.Module):
            def __init__(self, c: int) -> None:
                super().__init__()
                self.body = nn.Sequential(
                    nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
                    nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))

            def forward(self, x):
                return torch.relu(x + self.body(x))

        class Cnn(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.net = nn.Sequential(
                    nn.Conv2d(3, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                    Block(64), Block(64),
                    nn.Conv2d(64, 128, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(128),
                    nn.ReLU(), Block(128), Block(128),
                    nn.Conv2d(128, 256, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(256),
                    nn.ReLU(), Block(256))
                self.head = nn.Linear(256, 100)

            def forward(self, x):
                # A mean, not adaptive pooling: its backward is deterministic.
                return self.head(self.net(x).mean((2, 3)))

        def batch(gen):
            return (torch.randn(64, 3, 64, 64, generator=gen),
                    torch.randint(0, 100, (64,), generator=gen))
        return Cnn(), batch

    vocab, seq, width = 8192, 256, 512

    class Lm(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(vocab, width)
            self.pos = nn.Parameter(torch.zeros(seq, width))
            layer = nn.TransformerEncoderLayer(width, 8, 4 * width, batch_first=True, dropout=0.0,
                                               norm_first=True)
            self.encoder = nn.TransformerEncoder(layer, 6, enable_nested_tensor=False)
            self.head = nn.Linear(width, vocab)

        def forward(self, x):
            mask = nn.Transformer.generate_square_subsequent_mask(seq, device=x.device)
            h = self.encoder(self.embed(x) + self.pos, mask=mask, is_causal=True)
            return self.head(h).flatten(0, 1)

    def batch(gen):
        tokens = torch.randint(0, vocab, (16, seq + 1), generator=gen)
        return tokens[:, :-1].contiguous(), tokens[:, 1:].reshape(-1).contiguous()
    return Lm(), batch


def probe_memory_stats(torch) -> str:
    """'' when memory_stats() follows a probe tensor exactly, else what is wrong."""
    torch.cuda.synchronize()
    before = torch.cuda.memory_stats()
    x = torch.empty(PROBE_BYTES, dtype=torch.uint8, device="cuda")
    during = torch.cuda.memory_stats()
    del x
    after = torch.cuda.memory_stats()
    key_b, key_n = "allocated_bytes.all.current", "allocation.all.current"
    grew = during.get(key_b, 0) - before.get(key_b, 0)
    problems = []
    if not during.get(key_b, 0) or not during.get("reserved_bytes.all.current", 0):
        problems.append("memory_stats() is zero with tensors live")
    if not PROBE_BYTES <= grew < PROBE_BYTES + (2 << 20):
        problems.append(f"a {PROBE_BYTES}-byte tensor moved {key_b} by {grew}")
    if during.get(key_n, 0) - before.get(key_n, 0) != 1:
        moved = during.get(key_n, 0) - before.get(key_n, 0)
        problems.append(f"one tensor moved {key_n} by {moved}")
    if after.get(key_b, 0) != before.get(key_b, 0):
        problems.append(f"{key_b} did not return after the free")
    return "; ".join(problems)


def train(model_name: str, mode: str, steps: int, conf: str) -> dict:
    if mode.startswith("timeshare"):
        import timeshare

        timeshare.enable(conf or None)
    import torch
    from torch import nn

    torch.manual_seed(0)
    # warn_only: an op without a deterministic kernel shows up as DIFFERENT losses in the table
    # (with torch's warning on stderr) instead of ending every run, the default's included.
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dev = torch.device("cuda")
    model, make_batch = build_model(model_name, torch, nn)
    model = model.to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(1)
    data = [tuple(t.pin_memory() for t in make_batch(gen)) for _ in range(4)]
    side = torch.cuda.Stream()
    compute = torch.cuda.current_stream()
    losses, times = [], []
    for step in range(steps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        # Upload on the side stream; the compute stream waits for it and record_stream tells the
        # allocator that the batch is used there (it was allocated on the side stream).
        with torch.cuda.stream(side):
            x, y = (t.to(dev, non_blocking=True) for t in data[step % len(data)])
        compute.wait_stream(side)
        x.record_stream(compute)
        y.record_stream(compute)
        saving = (torch.autograd.graph.save_on_cpu(pin_memory=True) if mode == "save_on_cpu"
                  else contextlib.nullcontext())
        with saving:
            loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        del x, y
        losses.append(loss.item())  # synchronizes
        times.append(time.perf_counter() - t0)
    torch.cuda.synchronize()
    result = {
        "model": model_name, "mode": mode, "conf": conf, "losses": losses,
        "median_step_ms": 1e3 * median(times[1:] or times),  # the first step warms up
        "peak_allocated_bytes": torch.cuda.max_memory_allocated(),
        "peak_reserved_bytes": torch.cuda.max_memory_reserved(),
        "stats_problem": "", "spill_bytes": 0,
    }
    if mode.startswith("timeshare"):
        import timeshare

        result["stats_problem"] = probe_memory_stats(torch)
        result["spill_bytes"] = sum(v for k, v in timeshare.memory_stats().items()
                                    if k.startswith("timeshare.spill.") and k.endswith("bytes"))
    return result


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def context_is_dead(torch) -> bool:
    try:
        torch.cuda.synchronize()
        return torch.ones(1, device="cuda").add_(1).item() != 2.0
    except Exception:  # noqa: BLE001 - any failure here means the context is gone
        return True


def run_one(model: str, mode: str, steps: int, conf: str, out: str | None) -> int:
    status = 0
    try:
        result = train(model, mode, steps, conf)
    except Exception as e:  # noqa: BLE001 - reported, never a bare traceback
        import torch

        text = str(e).strip()
        message = f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"
        sticky = torch.cuda.is_initialized() and context_is_dead(torch)
        result = {"model": model, "mode": mode, "conf": conf, "error": message, "sticky": sticky}
        status = EXIT_STICKY if sticky else EXIT_ERROR
    if out:
        Path(out).write_text(json.dumps(result))
    print(json.dumps({k: v for k, v in result.items() if k != "losses"}), flush=True)
    return status


# ---- all runs, then one table -------------------------------------------------------------------

def run_all(out_dir: Path, steps: int, deadline_s: float) -> int:
    out_dir.mkdir(parents=True, exist_ok=True)
    t_end = time.monotonic() + deadline_s
    results: list[dict] = []
    stop = ""
    for model in MODELS:
        for mode in MODES:
            if stop:
                break
            left = t_end - time.monotonic()
            if left < 30:
                results.append({"model": model, "mode": mode, "error": "skipped: out of time"})
                continue
            conf = ""
            if mode == "timeshare-budget":
                base = next((r for r in results if r["model"] == model and r["mode"] == "default"
                             and "error" not in r), None)
                if base is None:
                    results.append({"model": model, "mode": mode,
                                    "error": "skipped: no default run"})
                    continue
                conf = f"budget:{int(base['peak_allocated_bytes'] * BUDGET_SHARE)},spill:host"
            path = out_dir / f"{model}-{mode}.json"
            cmd = [sys.executable, __file__, "--run", model, mode, "--steps", str(steps),
                   "--json", str(path)] + (["--conf", conf] if conf else [])
            try:
                proc = subprocess.run(cmd, timeout=min(RUN_TIMEOUT_S, left), capture_output=True,
                                      text=True)
            except subprocess.TimeoutExpired:
                results.append({"model": model, "mode": mode, "error": "timed out"})
                continue
            if path.exists():
                r = json.loads(path.read_text())
            else:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
                r = {"model": model, "mode": mode,
                     "error": f"exit {proc.returncode}: {tail[0]}", "sticky": False}
            results.append(r)
            if r.get("sticky"):
                stop = f"sticky CUDA error in {model}/{mode}: {r['error']} (run ended)"
        if stop:
            break
    print_table(results)
    if stop:
        print(stop)
        return EXIT_STICKY
    return 0 if all_ok(results) else 1


def all_ok(results: list[dict]) -> bool:
    ok = True
    for r in results:
        base = next((b for b in results if b["model"] == r["model"] and b["mode"] == "default"), {})
        if "error" in r or r.get("stats_problem"):
            ok = False
        elif "losses" in base and r["losses"] != base["losses"]:
            ok = False
    return ok


def print_table(results: list[dict]) -> None:
    print(f"{'model':<12}{'mode':<18}{'step ms':>9}{'x default':>10}{'peak alloc MiB':>15}"
          f"{'peak resv MiB':>14}{'spilled MiB':>12}  losses / stats / error")
    for r in results:
        base = next((b for b in results if b["model"] == r["model"] and b["mode"] == "default"
                     and "error" not in b), None)
        label = r["mode"] + (" (conf)" if r.get("conf") and r["mode"] != "timeshare-budget" else "")
        if "error" in r:
            print(f"{r['model']:<12}{label:<18}{'':>60}  ERROR {r['error']}")
            continue
        same = ("identical" if base is None or r["losses"] == base["losses"] else
                f"DIFFERENT (first at step {first_difference(r['losses'], base['losses'])})")
        ratio = r["median_step_ms"] / base["median_step_ms"] if base else float("nan")
        stats = ""
        if r["mode"].startswith("timeshare"):
            problem = r["stats_problem"]
            stats = f", STATS {problem}" if problem else ", memory_stats ok"
        print(f"{r['model']:<12}{label:<18}{r['median_step_ms']:>9.2f}{ratio:>10.2f}"
              f"{r['peak_allocated_bytes'] / 2**20:>15.1f}{r['peak_reserved_bytes'] / 2**20:>14.1f}"
              f"{r.get('spill_bytes', 0) / 2**20:>12.1f}  {same} "
              f"(last {r['losses'][-1]:.6f}){stats}")


def first_difference(a: list[float], b: list[float]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--all", action="store_true", help="every model and mode, then the table")
    ap.add_argument("--out", default="gpu_check_out", help="where --all writes one JSON per run")
    ap.add_argument("--deadline-s", type=float, default=330.0,
                    help="--all launches no run after this many seconds")
    ap.add_argument("--run", nargs=2, metavar=("MODEL", "MODE"), help=f"{MODELS} x {MODES}")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--conf", default="", help="TIMESHARE_CONF-style options for timeshare")
    ap.add_argument("--json", help="where --run writes its result")
    ap.add_argument("--compare", nargs="+", help="print the table of these result files")
    a = ap.parse_args()
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if a.compare:
        results = [json.loads(Path(p).read_text()) for p in a.compare]
        print_table(results)
        return 0 if all_ok(results) else 1
    if a.run:
        model, mode = a.run
        if model not in MODELS or mode not in MODES:
            ap.error(f"--run takes a model of {MODELS} and a mode of {MODES}")
        return run_one(model, mode, a.steps, a.conf, a.json)
    if a.all:
        return run_all(Path(a.out), a.steps, a.deadline_s)
    ap.error("give --all, --run MODEL MODE or --compare FILES")
    return 2


if __name__ == "__main__":
    sys.exit(main())
