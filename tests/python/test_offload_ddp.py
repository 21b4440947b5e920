"""DDP with offload on every rank: 2 ranks on gloo (CPU), started with torch.multiprocessing.
Gradients are bit-identical to DDP without offload, and the ranks' spill files (one spill_dir
shared by both) never collide."""

from __future__ import annotations

import contextlib
import copy
import gc
import os
import socket
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
from timeshare import _C  # noqa: E402

if not hasattr(_C, "SpillEngine"):
    pytest.skip("this build of timeshare._C has no spill engine", allow_module_level=True)
if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
    pytest.skip("this torch has no gloo backend", allow_module_level=True)

WORLD = 2
STEPS = 3


def init_rank(rank: int, port: int) -> tuple[Any, list[Any]]:
    """Joins the gloo group; returns the model every rank starts from and this rank's data."""
    import torch.distributed as dist

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(32, 128), torch.nn.GELU(),
                               torch.nn.Linear(128, 128), torch.nn.GELU(),
                               torch.nn.Linear(128, 8))
    torch.manual_seed(100 + rank)  # each rank its own shard
    return base, [torch.randn(64, 32) for _ in range(STEPS)]


def _rank_main(rank: int, port: int, spill_dir: str, out_dir: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    import timeshare._offload as ofl

    base, data = init_rank(rank, port)
    try:
        files: list[str] = []

        def train(make_ctx: Any) -> list[list[Any]]:
            model = DistributedDataParallel(copy.deepcopy(base))
            opt = torch.optim.SGD(model.parameters(), lr=0.1)
            grads = []
            for x in data:
                opt.zero_grad()
                ctx = make_ctx()
                with ctx:  # a context per step around the forward, as in docs/usage.md
                    loss = model(x).square().mean()
                if isinstance(ctx, ofl.offload):
                    ctx._engine.drain_io()
                    files.extend(os.listdir(spill_dir))
                loss.backward()
                grads.append([p.grad.clone() for p in model.parameters()])
                opt.step()
            return grads

        ref = train(contextlib.nullcontext)

        def offload() -> Any:
            return ofl.offload(budget=40 * 1024, spill="host+ssd", spill_dir=spill_dir,
                               pinned=48 * 1024, min_spill=16 * 1024)

        got = train(offload)
        stats = offload().stats()
        offload().close()
        same = all(torch.equal(a, b) for sa, sb in zip(ref, got) for a, b in zip(sa, sb))
        torch.save({"same": same, "pid": os.getpid(), "files": sorted(set(files)),
                    "spills": stats["timeshare.spill.spills"],
                    "ssd": stats["timeshare.spill.spilled_bytes.ssd"]},
                   os.path.join(out_dir, f"rank{rank}.pt"))
        del ref, got
        gc.collect()  # the engine (its I/O thread) goes now, not at interpreter exit
        dist.barrier()  # no rank leaves while the other still talks to it
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_ddp_with_offload_on_every_rank(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    spill_dir = tmp_path / "spill"  # shared by both ranks
    spill_dir.mkdir()
    mp.spawn(_rank_main, args=(_free_port(), str(spill_dir), str(tmp_path)), nprocs=WORLD)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    prefixes = {f"ts-{r['pid']}-" for r in results}
    assert len(prefixes) == WORLD  # the files of each rank carry its own process id
    for r in results:
        assert r["same"], "gradients differ from DDP without offload"
        assert r["spills"] > 0 and r["ssd"] > 0
        assert r["files"] and all(f[:f.index("-", 3) + 1] in prefixes for f in r["files"])
    seen = {f[:f.index("-", 3) + 1] for r in results for f in r["files"]}
    assert seen == prefixes  # both ranks' files were in the shared directory
    assert not os.listdir(spill_dir)  # and each rank removed its own
