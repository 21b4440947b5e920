"""On a GPU: torch.cuda's memory features with timeshare enabled on the native route.

    python scripts/gpu_torch_features.py            # one process, timeshare enabled first

Checks, each printed as one line "[features] NAME: ok|FAIL ...", exit 0 when all hold:
  route          timeshare.route() is "native" (timeshare is PyTorch's own CUDAAllocator)
  memory_stats   torch.cuda.memory_stats() equals timeshare.memory_stats() on torch's keys and
                 follows a probe tensor exactly
  cudnn          torch.backends.cudnn.benchmark=True on a small CNN: forward+backward runs, the
                 output equals cudnn.benchmark=False's within float tolerance
  cuda_graph     torch.cuda.graph capture of a small MLP, 3 replays on new inputs, outputs equal
                 eager; the graph's pool shows in the snapshot and is released with the graph
  compile        torch.compile(mode="reduce-overhead") of a small model: outputs equal eager
  memory_viz     _record_memory_history -> work -> _dump_snapshot -> memory_viz trace_plot HTML,
                 and `python -m timeshare replay` reads the dump
  ipc            torch.multiprocessing (spawn, TIMESHARE=1 in the child): a CUDA tensor sent to
                 a child process holds the parent's values there, and the child's in-place write
                 shows in the parent's tensor (CUDA IPC over timeshare's POSIX-fd handles)
Only plain device allocations; never managed memory. Called by scripts/gpu_check.sh.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import traceback


def _ipc_child(q_in, q_out) -> None:  # noqa: ANN001 - torch.multiprocessing queues
    """The receiving process of the ipc check (top level: spawn pickles it by name)."""
    import torch

    import timeshare

    x = q_in.get()
    read = bool((x == 3).all().item())
    x.add_(1)
    torch.cuda.synchronize()
    q_out.put((read, timeshare.route()))
    del x


def main() -> int:
    import timeshare

    timeshare.enable(route=os.environ.get("TIMESHARE_ROUTE", "auto"))
    import torch
    import torch.nn as nn

    dev = torch.device("cuda")
    results: list[tuple[str, bool, str]] = []

    def check(name: str):
        def wrap(fn):
            t0 = time.time()
            try:
                ok, note = fn()
            except Exception as e:  # one failing feature must not hide the others
                ok, note = False, f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
                traceback.print_exc()
            results.append((name, ok, f"{note} ({time.time() - t0:.1f} s)"))
            print(f"[features] {name}: {'ok' if ok else 'FAIL'} {note}", flush=True)
            return fn
        return wrap

    @check("route")
    def _route():
        return timeshare.route() == "native", f"route={timeshare.route()}"

    @check("memory_stats")
    def _stats():
        before = torch.cuda.memory_allocated()
        probe = torch.empty(7 << 20, dtype=torch.uint8, device=dev)
        grew = torch.cuda.memory_allocated() - before
        ts = timeshare.memory_stats()
        th = torch.cuda.memory_stats()
        same = all(ts[k] == v for k, v in th.items() if k in ts)
        del probe
        return grew >= 7 << 20 and same and len(th) > 20, f"probe +{grew} B, same={same}"

    @check("cudnn")
    def _cudnn():
        torch.manual_seed(0)
        net = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3),
                            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)).to(dev)
        x = torch.randn(16, 3, 64, 64, device=dev)
        torch.backends.cudnn.benchmark = False
        ref = net(x)
        torch.backends.cudnn.benchmark = True
        out = net(x)
        out.sum().backward()
        torch.cuda.synchronize()
        close = torch.allclose(ref, out, rtol=1e-3, atol=1e-4)
        return torch.backends.cudnn.benchmark and close, f"benchmark on, allclose={close}"

    @check("cuda_graph")
    def _graph():
        torch.manual_seed(0)
        mlp = nn.Sequential(nn.Linear(256, 512), nn.GELU(), nn.Linear(512, 256)).to(dev)
        static_in = torch.randn(64, 256, device=dev)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up on a side stream, as PyTorch's docs do
            for _ in range(3):
                mlp(static_in)
        torch.cuda.current_stream().wait_stream(side)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            static_out = mlp(static_in)
        pool = g.pool()
        in_snapshot = any(tuple(s["segment_pool_id"]) == tuple(pool)
                          for s in torch.cuda.memory._snapshot()["segments"])
        ok = True
        for _ in range(3):
            x = torch.randn(64, 256, device=dev)
            static_in.copy_(x)
            g.replay()
            ok &= torch.allclose(static_out, mlp(x), rtol=1e-4, atol=1e-5)
        reserved = torch.cuda.memory_reserved()
        del g, static_out
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        released = torch.cuda.memory_reserved() < reserved
        return ok and in_snapshot, f"replays equal eager={ok}, pool in snapshot={in_snapshot}, " \
                                   f"released={released}"

    @check("compile")
    def _compile():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, 128)).to(dev)
        compiled = torch.compile(model, mode="reduce-overhead")
        ok = True
        for _ in range(4):
            x = torch.randn(32, 128, device=dev)
            ok &= torch.allclose(compiled(x), model(x), rtol=1e-3, atol=1e-4)
        return ok, f"outputs equal eager={ok}"

    @check("memory_viz")
    def _viz():
        torch.cuda.memory._record_memory_history(max_entries=100_000)
        xs = [torch.randn(1 << 20, device=dev) for _ in range(8)]
        del xs[::2]
        d = tempfile.mkdtemp()
        path = os.path.join(d, "snapshot.pickle")
        torch.cuda.memory._dump_snapshot(path)
        torch.cuda.memory._record_memory_history(enabled=None)
        from torch.cuda import _memory_viz

        snap = torch.cuda.memory._snapshot()
        html = _memory_viz.trace_plot(snap)
        r = subprocess.run([sys.executable, "-m", "timeshare", "replay", path,
                            "--json", os.path.join(d, "r.json")], capture_output=True, text=True)
        return len(html) > 1000 and r.returncode == 0, \
            f"trace_plot {len(html)} chars, replay rc={r.returncode}"

    @check("ipc")
    def _ipc():
        import torch.multiprocessing as mp

        os.environ["TIMESHARE"] = "1"  # the child enables timeshare before its first CUDA call
        ctx = mp.get_context("spawn")
        q_in, q_out = ctx.Queue(), ctx.Queue()
        child = ctx.Process(target=_ipc_child, args=(q_in, q_out))
        child.start()
        x = torch.full((3 << 20,), 3.0, device=dev)
        q_in.put(x)
        read, route = q_out.get(timeout=180)
        child.join(60)
        wrote = bool((x == 4).all().item())
        return read and wrote and route == "native" and child.exitcode == 0, \
            f"child read={read}, child's write seen={wrote}, child route={route}, " \
            f"exit={child.exitcode}"

    failed = [n for n, ok, _ in results if not ok]
    print(f"[features] {len(results) - len(failed)}/{len(results)} hold"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
