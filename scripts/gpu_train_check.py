"""Train a small real model for a few steps on the GPU and report losses, peak memory, step time.

    python scripts/gpu_train_check.py --mode default|save_on_cpu|timeshare --json out.json
    python scripts/gpu_train_check.py --mode timeshare --conf budget:3GiB --label ts-3GiB ...
    python scripts/gpu_train_check.py --compare default.json timeshare.json ...

save_on_cpu is PyTorch's torch.autograd.graph.save_on_cpu(pin_memory=True) around the step
with the default allocator; timeshare with a budget in --conf also spills saved activations.

Run each mode in its own process: timeshare must be enabled before CUDA initialises.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def train(mode: str, steps: int, conf: str, label: str) -> dict:
    if mode == "timeshare":
        import timeshare

        timeshare.enable(conf or None)
    import torch
    from torch import nn

    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    dev = torch.device("cuda")

    class Net(nn.Module):
        """A small CNN stem feeding a transformer encoder: convs, norms, attention, MLPs."""

        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(
                nn.Conv2d(3, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
                nn.Conv2d(64, 128, 3, stride=2, padding=1), nn.BatchNorm2d(128), nn.ReLU(),
                nn.Conv2d(128, 256, 3, stride=2, padding=1), nn.BatchNorm2d(256), nn.ReLU(),
            )
            layer = nn.TransformerEncoderLayer(256, 8, 1024, batch_first=True, dropout=0.0)
            self.encoder = nn.TransformerEncoder(layer, 4)
            self.head = nn.Linear(256, 100)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.stem(x).flatten(2).transpose(1, 2)
            return self.head(self.encoder(h).mean(1))

    model = Net().to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(1)
    data = [(torch.randn(64, 3, 64, 64, generator=gen), torch.randint(0, 100, (64,), generator=gen))
            for _ in range(4)]
    losses, times = [], []
    import contextlib

    for step in range(steps):
        x, y = (t.to(dev, non_blocking=True) for t in data[step % len(data)])
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        saving = (torch.autograd.graph.save_on_cpu(pin_memory=True) if mode == "save_on_cpu"
                  else contextlib.nullcontext())
        with saving:
            loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        losses.append(loss.item())
    times.sort()
    spill = {}
    if mode == "timeshare":
        import timeshare

        spill = {k: v for k, v in timeshare.memory_stats().items()
                 if k.startswith("timeshare.spill.") and "bytes" in k}
    return {
        "mode": label or mode,
        "spill": spill,
        "losses": losses,
        "median_step_ms": 1e3 * times[len(times) // 2],
        "peak_allocated_bytes": torch.cuda.max_memory_allocated(),
        "peak_reserved_bytes": torch.cuda.max_memory_reserved(),
    }


def compare(paths: list[str]) -> int:
    runs = [json.load(open(p)) for p in paths]
    base = runs[0]
    print(f"{'mode':<22}{'step ms':>10}{'x default':>10}{'peak alloc MiB':>16}"
          f"{'peak reserved MiB':>19}  losses")
    for r in runs:
        same = "identical" if r["losses"] == base["losses"] else "DIFFERENT"
        print(f"{r['mode']:<22}{r['median_step_ms']:>10.2f}"
              f"{r['median_step_ms'] / base['median_step_ms']:>10.2f}"
              f"{r['peak_allocated_bytes'] / 2**20:>16.1f}"
              f"{r['peak_reserved_bytes'] / 2**20:>19.1f}  {same} (last {r['losses'][-1]:.6f})")
    return 0 if all(r["losses"] == base["losses"] for r in runs) else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--mode", choices=["default", "save_on_cpu", "timeshare"])
    ap.add_argument("--label", default="", help="name of this run in the table")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--conf", default="", help="TIMESHARE_CONF-style options for timeshare")
    ap.add_argument("--json")
    ap.add_argument("--compare", nargs="+")
    a = ap.parse_args()
    if a.compare:
        return compare(a.compare)
    result = train(a.mode, a.steps, a.conf, a.label)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f)
    print(json.dumps({k: v for k, v in result.items() if k != "losses"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
