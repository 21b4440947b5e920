"""scripts/bench_hotpath.py and its C++ tool on one tiny trace: what they report and write, never
how fast (the timings live in scripts/). Every run is tiny and waits for nothing: the @warm
variants get a few warm-up events and no wait for a first trained model (``--warm-wait 0``), so
no test depends on the machine's speed; the subprocess timeouts only guard against a hang."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from timeshare.snapshot import EVENT_DTYPE, OP_ALLOC, OP_FREE, write_tsev

ROOT = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("TIMESHARE_BUILD_DIR", ROOT / "build"))
TOOL = BUILD / "bench_hotpath"
SCRIPT = ROOT / "scripts/bench_hotpath.py"
VARIANTS = ["torch", "temporal", "temporal+constant", "temporal+hybrid_nolstm", "temporal+hybrid",
            "temporal+hybrid@warm", "hybrid_nolstm", "hybrid", "hybrid@warm",
            "temporal+hybrid@async@ff"]

needs_tool = pytest.mark.skipif(
    not TOOL.exists(), reason=f"{TOOL} not built (cmake --build {BUILD} --target bench_hotpath)"
)
# A hang guard, not a time limit: the runs below take well under a second on an idle machine.
HANG_S = 900


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_hotpath", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _tiny_trace(path: Path, iterations: int = 6) -> int:
    """A periodic loop: 5 activations freed in reverse, one scratch block, on two streams."""
    rows = []
    next_id = 0
    t = 0
    for _ in range(iterations):
        live = []
        for k in range(5):
            rows.append((OP_ALLOC, k % 2, next_id, (k + 1) * 4096, t))
            live.append((next_id, (k + 1) * 4096, k % 2))
            next_id += 1
            t += 3
        rows.append((OP_ALLOC, 0, next_id, 3 << 20, t))
        rows.append((OP_FREE, 0, next_id, 3 << 20, t + 1))
        next_id += 1
        for i, b, s in reversed(live):
            t += 2
            rows.append((OP_FREE, s, i, b, t))
    ev = np.zeros(len(rows), dtype=EVENT_DTYPE)
    for j, (op, stream, i, b, tu) in enumerate(rows):
        ev[j]["op"], ev[j]["stream"], ev[j]["id"], ev[j]["bytes"], ev[j]["time_us"] = (
            op, stream, i, b, tu)
    write_tsev(ev, path)
    return len(rows)


@needs_tool
def test_tool_reports_every_variant(tmp_path: Path) -> None:
    trace = tmp_path / "tiny.tsev"
    n = _tiny_trace(trace)
    out = tmp_path / "out.json"
    done = subprocess.run(
        [str(TOOL), "--rounds", "2", "--rates", "0,2000000", "--variants", ",".join(VARIANTS),
         "--warm-events", str(2 * n), "--warm-wait", "0", "--json", str(out), str(trace)],
        capture_output=True, text=True, timeout=HANG_S)
    assert done.returncode == 0, done.stderr
    data = json.loads(out.read_text())
    assert data["rounds"] == 2
    cells = data["cells"]
    assert {(c["rate"], c["variant"]) for c in cells} == {
        (r, v) for r in (0, 2000000) for v in VARIANTS}
    for c in cells:
        assert c["trace"] == "tiny"
        assert c["events"] == n
        assert c["allocs"] == n // 2
        assert len(c["ns_per_pair"]) == 2 and all(x > 0 for x in c["ns_per_pair"])
        assert c["ooms"] == 0


@needs_tool
@pytest.mark.parametrize("variant,why", [
    ("torch+hybrid", "torch takes no predictor"),
    ("torch@warm", "@warm needs a predictor"),
    ("temporal@warm", "@warm needs a predictor"),
    ("temporal@async", "@async needs a predictor"),
    ("torch@async", "@async needs a predictor"),
    ("temporal+nosuchkind", "unknown predictor kind"),
    ("temporal+hybrid@ff", "@ff needs @async"),
])
def test_tool_rejects_bad_variant(tmp_path: Path, variant: str, why: str) -> None:
    trace = tmp_path / "tiny.tsev"
    _tiny_trace(trace)
    done = subprocess.run([str(TOOL), "--variants", variant, str(trace)],
                          capture_output=True, text=True, timeout=HANG_S)
    assert done.returncode == 2
    assert why in done.stderr


def _cells(variants: list[str], n: int) -> list[dict[str, Any]]:
    return [{"trace": "tiny", "rate": 0, "variant": v, "events": n, "allocs": n // 2,
             "ns_per_pair": [100.0 + i], "ooms": 0, "max_retrains": 0}
            for i, v in enumerate(variants)]


def test_driver_writes_one_section_and_replaces_it(tmp_path: Path) -> None:
    """The driver renders figures given as JSON (--from-json: no tool run, no timing) into one
    marked section of the doc, and a second run replaces it."""
    mod = _bench_module()
    variants = mod.DEFAULT_VARIANTS.split(",")
    n = 66
    data = {"rounds": 1, "burst_events": 64, "cells": _cells(variants, n),
            "machine": {"platform": "test", "cpus": 1, "load": "0"}, "command": "test"}
    figures = tmp_path / "figures.json"
    figures.write_text(json.dumps(data))
    doc = tmp_path / "predictor.md"
    doc.write_text("# Predictor\n\n## Hot path\n\nProse that stays.\n\n## Rerun\n\nmore\n")
    for _ in range(2):
        assert mod.main(["--from-json", str(figures), "--doc", str(doc)]) == 0
    text = doc.read_text()
    assert text.count(mod.MARK_BEGIN) == 1 and text.count(mod.MARK_END) == 1
    assert text.index("## Hot path") < text.index(mod.MARK_BEGIN) < text.index("## Rerun")
    assert "Prose that stays." in text
    section = text[text.index(mod.MARK_BEGIN):text.index(mod.MARK_END)]
    assert f"| tiny | {n} |" in section
    for v in variants:
        assert f"`{v}`" in section
    assert "`temporal+hybrid@async`" in section


@needs_tool
def test_driver_runs_the_tool(tmp_path: Path) -> None:
    """The driver passes its options to the tool and keeps what it reports (two variants, one
    round, no @warm: tiny)."""
    trace = tmp_path / "tiny.tsev"
    n = _tiny_trace(trace)
    out = tmp_path / "out.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--build", str(BUILD), "--rounds", "1", "--rates", "max",
         "--variants", "torch,temporal", "--warm-wait", "0", "--no-doc", "--json", str(out),
         str(trace)],
        capture_output=True, text=True, timeout=HANG_S)
    assert done.returncode == 0, done.stderr
    data = json.loads(out.read_text())
    assert data["rounds"] == 1
    assert {(c["trace"], c["variant"], c["events"]) for c in data["cells"]} == {
        ("tiny", "torch", n), ("tiny", "temporal", n)}


@needs_tool
def test_driver_runs_the_held_out_split(tmp_path: Path) -> None:
    """--split heldout takes the corpus's held-out traces (at least the shipped llama_adamw,
    whether or not out/corpus/ was captured) and the GPU snapshots where shared/ has them."""
    out = tmp_path / "out.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--build", str(BUILD), "--rounds", "1", "--rates", "max",
         "--variants", "torch,temporal", "--no-doc", "--json", str(out), "--split", "heldout"],
        capture_output=True, text=True, timeout=HANG_S)
    assert done.returncode == 0, done.stderr
    traces = {c["trace"] for c in json.loads(out.read_text())["cells"]}
    assert "llama_adamw" in traces
    assert "bert_mlm" not in traces  # shipped, tuned on: not held out
    assert "--split heldout" in done.stdout


def test_driver_needs_the_tool(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "--build", str(tmp_path), "--no-doc"],
                          capture_output=True, text=True, timeout=HANG_S)
    assert done.returncode == 2
    assert "bench_hotpath" in done.stderr and "not found" in done.stderr


def test_summary_ratios_pair_rounds() -> None:
    mod = _bench_module()
    data = {"rounds": 2, "burst_events": 64, "cells": [
        {"trace": "a", "rate": 0, "variant": "torch", "events": 4, "allocs": 2,
         "ns_per_pair": [100.0, 200.0], "ooms": 0, "max_retrains": 0},
        {"trace": "a", "rate": 0, "variant": "temporal+constant", "events": 4, "allocs": 2,
         "ns_per_pair": [150.0, 300.0], "ooms": 0, "max_retrains": 0},
    ]}
    s = mod.summarize(data)
    row = next(r for r in s["rows"] if r["variant"] == "temporal+constant")
    assert row["ratio"] == pytest.approx(1.5)   # per-round ratio, not a ratio of medians only
    assert row["ns"] == pytest.approx(225.0)
    assert s["totals"][(0, "temporal+constant")]["ratio"] == pytest.approx(1.5)


def test_summary_median_is_over_traces_not_pairs() -> None:
    # One long trace at 1.2x and two short ones at 2x and 3x: all traces together is weighted
    # by allocations (near 1.2x), the median trace is the middle ratio (2x).
    mod = _bench_module()
    cells = []
    for name, allocs, ratio in (("long", 1000, 1.2), ("b", 2, 2.0), ("c", 2, 3.0)):
        cells.append({"trace": name, "rate": 0, "variant": "torch", "events": 2 * allocs,
                      "allocs": allocs, "ns_per_pair": [100.0], "ooms": 0, "max_retrains": 0})
        cells.append({"trace": name, "rate": 0, "variant": "temporal", "events": 2 * allocs,
                      "allocs": allocs, "ns_per_pair": [100.0 * ratio], "ooms": 0,
                      "max_retrains": 0})
    data = {"rounds": 1, "burst_events": 64, "cells": cells,
            "machine": {"platform": "test", "cpus": 1, "load": "0"}, "command": "test"}
    t = mod.summarize(data)["totals"][(0, "temporal")]
    assert t["median"] == pytest.approx(2.0)
    assert t["ratio"] == pytest.approx((1000 * 1.2 + 2 * 2.0 + 2 * 3.0) / 1004)
    assert t["worst"] == pytest.approx(3.0)
    text = mod.render_markdown(data, ["torch", "temporal"], "test")
    assert "| median trace (ratio) | | 1.00x | 2.00x |" in text
    assert "median trace 2.00x (misses)" in text and "all traces 1.21x (meets)" in text
