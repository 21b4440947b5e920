"""FSDP2 (``torch.distributed.fsdp.fully_shard``) with offload on every rank, 2 ranks on gloo
(CPU), started with torch.multiprocessing: gradients are bit-identical to FSDP2 without
offload; and one rank whose spills fail (its spill_dir is unusable, its pinned arena tiny)
keeps its activations resident, logs it, and neither hangs nor changes the other rank."""

from __future__ import annotations

import contextlib
import copy
import gc
import os
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
from test_offload_ddp import WORLD, _free_port, init_rank  # noqa: E402

from timeshare import _C  # noqa: E402

if not hasattr(_C, "SpillEngine"):
    pytest.skip("this build of timeshare._C has no spill engine", allow_module_level=True)
if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
    pytest.skip("this torch has no gloo backend", allow_module_level=True)
try:
    from torch.distributed.fsdp import fully_shard  # noqa: F401
except ImportError:  # pragma: no cover
    pytest.skip("this torch has no FSDP2 (fully_shard)", allow_module_level=True)



def _rank_main(rank: int, port: int, spill_dir: str, out_dir: str, broken_rank: int) -> None:
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    import timeshare._offload as ofl

    base, data = init_rank(rank, port)
    try:

        def train(make_ctx: Any) -> list[list[Any]]:
            model = copy.deepcopy(base)
            for layer in model:
                if isinstance(layer, torch.nn.Linear):
                    fully_shard(layer)
            fully_shard(model)
            opt = torch.optim.SGD(model.parameters(), lr=0.1)
            grads = []
            for x in data:
                opt.zero_grad()
                with make_ctx():
                    loss = model(x).square().mean()
                loss.backward()
                grads.append([p.grad.to_local().clone() for p in model.parameters()])
                opt.step()
            return grads

        ref = train(contextlib.nullcontext)
        broken = rank == broken_rank
        where = os.path.join(spill_dir, "not-a-dir", "spill") if broken else spill_dir
        if broken:
            Path(spill_dir, "not-a-dir").write_text("a file where a directory should be")

        def offload() -> Any:
            return ofl.offload(budget=40 * 1024, spill="host+ssd", spill_dir=where,
                               pinned=(4 if broken else 48) * 1024, min_spill=16 * 1024)

        got = train(offload)
        stats = offload().stats()
        offload().close()
        same = all(torch.equal(a, b) for sa, sb in zip(ref, got) for a, b in zip(sa, sb))
        torch.save({"same": same, "spills": stats["timeshare.spill.spills"],
                    "ssd": stats["timeshare.spill.spilled_bytes.ssd"]},
                   os.path.join(out_dir, f"rank{rank}.pt"))
        del ref, got
        gc.collect()  # the engine (its I/O thread) goes now, not at interpreter exit
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("broken_rank", [-1, 1], ids=["all-ranks-spill", "rank1-cannot-spill"])
def test_fsdp2_with_offload_on_every_rank(tmp_path: Path, broken_rank: int) -> None:
    import torch.multiprocessing as mp

    spill_dir = tmp_path / "spill"
    spill_dir.mkdir()
    mp.spawn(_rank_main, args=(_free_port(), str(spill_dir), str(tmp_path), broken_rank),
             nprocs=WORLD, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    for r, res in enumerate(results):
        assert res["same"], f"rank {r}: gradients differ from FSDP2 without offload"
        if r == broken_rank:
            assert res["ssd"] == 0  # its SSD tier could not be used: data stayed put
        else:
            assert res["spills"] > 0 and res["ssd"] > 0
