"""Writes the small hand-made seed snapshots in fuzz/corpus/snapshot/ (plain and gzip pickles).

Each is a dict in PyTorch's memory-snapshot schema (see docs/traces.md): ``segments``,
``device_traces`` (one list of event dicts per device) and ``allocator_settings``. Rerun after a
schema change: ``python fuzz/make_snapshot_seeds.py``.
"""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path
from typing import Any

OUT = Path(__file__).parent / "corpus" / "snapshot"
STREAM = 0


def event(action: str, addr: int, size: int, t_us: int, stream: int = STREAM) -> dict[str, Any]:
    """One trace event as torch records it (frames empty: no stacks recorded)."""
    return {"action": action, "addr": addr, "size": size, "stream": stream, "time_us": t_us,
            "frames": []}


def small_training() -> dict[str, Any]:
    """Two iterations of a tiny model: weights live throughout, activations come and go."""
    base = 0x7F00_0000_0000
    evs = [event("segment_alloc", base, 2 << 20, 0), event("alloc", base, 4096, 1)]
    t = 2
    for _ in range(2):
        for layer in range(3):
            evs.append(event("alloc", base + 8192 * (layer + 1), 8192, t))
            t += 1
        for layer in reversed(range(3)):
            evs.append(event("free_requested", base + 8192 * (layer + 1), 8192, t))
            evs.append(event("free_completed", base + 8192 * (layer + 1), 8192, t))
            t += 1
    evs.append(event("oom", 0, 1 << 30, t))
    return {
        "segments": [{"address": base, "total_size": 2 << 20, "stream": 0, "blocks": []}],
        "device_traces": [evs],
        "allocator_settings": {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:False"},
        "external_annotations": [],
        "trace_source": {"tool": "hand-made", "iteration_marks_us": [2, 14]},
    }


def two_devices() -> dict[str, Any]:
    """Two devices and a second stream; device 1 has more allocations."""
    d0 = [event("alloc", 0x1000, 512, 1), event("free_completed", 0x1000, 512, 2)]
    d1 = [event("alloc", 0x2000 + 512 * i, 512, i, stream=7 if i % 2 else 0) for i in range(6)]
    d1 += [event("free_completed", 0x2000 + 512 * i, 512, 10 + i) for i in range(6)]
    return {"segments": [], "device_traces": [d0, d1]}


def messy() -> dict[str, Any]:
    """What real ring-buffered snapshots look like: unknown frees, reused live addresses."""
    evs = [event("free_completed", 0x9000, 64, 0), event("alloc", 0x9000, 64, 1),
           event("alloc", 0x9000, 128, 2), event("snapshot", 0, 0, 3),
           {"action": "alloc", "addr": 0xA000}, event("segment_map", 0xB000, 2 << 20, 4)]
    return {"device_traces": [evs, [], "not a list"]}


def main() -> None:
    """Write the seeds (all small: the corpus stays well under 200 KB)."""
    OUT.mkdir(parents=True, exist_ok=True)
    seeds = {"small_training": small_training(), "two_devices": two_devices(), "messy": messy()}
    for name, snap in seeds.items():
        data = pickle.dumps(snap, protocol=4)
        (OUT / f"{name}.pkl").write_bytes(data)
        (OUT / f"{name}.pkl.gz").write_bytes(gzip.compress(data, mtime=0))
    (OUT / "small_training_p2.pkl").write_bytes(pickle.dumps(small_training(), protocol=2))


if __name__ == "__main__":
    main()
