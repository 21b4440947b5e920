"""Plots of replay results: reserved bytes over the trace, one panel per trace.

Used by ``python -m timeshare replay --plot OUT.png`` and ``scripts/bench_replay.py``. Each
panel draws, against the event index, the reserved bytes of every policy and the live bytes
(the physical limit) as a dashed black line; timelines are the replayer's downsampled bucket
maxima, so peaks are kept.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

__all__ = ["POLICY_COLORS", "plot_replay"]

#: Line colour per policy (others get matplotlib's cycle).
POLICY_COLORS: dict[str, str] = {
    "torch": "tab:red",
    "torch-expandable": "tab:orange",
    "timeshare": "tab:blue",
    "oracle": "tab:green",
    "timeshare-true": "tab:purple",
    "timeshare-const": "tab:gray",
}
_GIB = float(1 << 30)
_MIB = float(1 << 20)


def plot_replay(doc: dict[str, Any], out: str | Path, columns: int = 2) -> Path:
    """Write the plot of a replay document (``{"traces": [...]}``, see ``replay``) to ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    traces = doc["traces"]
    if not traces:
        raise ValueError("nothing to plot: the replay document has no traces")
    cols = max(1, min(columns, len(traces)))
    rows = math.ceil(len(traces) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(9.5 * cols, 3.8 * rows), squeeze=False)
    for ax in axes.flat[len(traces) :]:
        ax.set_visible(False)
    for ax, t in zip(axes.flat, traces):
        peak = max(
            [t["peak_live_bytes"]] + [r["peak_reserved_bytes"] for r in t["policies"].values()]
        )
        scale, unit = (_GIB, "GiB") if peak >= _GIB else (_MIB, "MiB")
        live_drawn = False
        for policy, r in t["policies"].items():
            tl = r.get("timeline")
            if not tl or not tl["event"]:
                continue
            x = tl["event"]
            ax.plot(
                x,
                [v / scale for v in tl["reserved_bytes"]],
                color=POLICY_COLORS.get(policy),
                lw=1.4,
                label=f"{policy} ({r['fragmentation']:.3f}x)",
            )
            if not live_drawn:
                ax.plot(
                    x,
                    [v / scale for v in tl["live_bytes"]],
                    color="black",
                    lw=0.9,
                    ls="--",
                    label="live (limit)",
                )
                live_drawn = True
        ax.set_title(
            f"{t['name']}: {t['events']:,} events, peak live "
            f"{t['peak_live_bytes'] / scale:.2f} {unit}",
            fontsize=10,
        )
        ax.set_xlabel("event index (allocations and frees)")
        ax.set_ylabel(f"reserved ({unit})")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.suptitle("Reserved memory per policy over the trace (legend: peak reserved / peak live)")
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
