"""Tests of ``python -m timeshare replay``: figures on hand-made traces, JSON shape, CLI errors."""

from __future__ import annotations

import gzip
import json
import pickle
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

_C = pytest.importorskip("timeshare._C")
if not hasattr(_C, "replay"):  # pragma: no cover
    pytest.skip("timeshare._C was built without the trace bindings", allow_module_level=True)

from timeshare import replay  # noqa: E402
from timeshare.snapshot import EVENT_DTYPE, OP_ALLOC, OP_FREE  # noqa: E402

# shared/ lies beside the repository (in CI beside the fresh clone).
_ROOT = Path(__file__).resolve().parents[2]
SHARED = next((p for p in (_ROOT.parent / "shared", Path("/work/shared")) if p.is_dir()), _ROOT)
SHARED_TOOLS = SHARED / "tools"
GPU_TRACES = SHARED / "traces-gpu"
SHIPPED = _ROOT / "python" / "timeshare" / "traces"
KIB = 1 << 10
MIB = 1 << 20


def _problems(doc: dict[str, Any], paths: list[str]) -> list[str]:
    """The shared checker's verdict on a replay JSON document."""
    if not (SHARED_TOOLS / "check_replay_json.py").exists():
        pytest.skip("shared JSON checker not available")
    sys.path.insert(0, str(SHARED_TOOLS))
    try:
        from check_replay_json import problems
    finally:
        sys.path.remove(str(SHARED_TOOLS))
    return problems(doc, paths)


def _events(ops: list[tuple[str, int]]) -> np.ndarray:
    """Compact events from ("a", bytes) allocations and ("f", alloc_id) frees."""
    sizes: list[int] = []
    rows = np.zeros(len(ops), EVENT_DTYPE)
    for i, (op, value) in enumerate(ops):
        if op == "a":
            rows[i] = (OP_ALLOC, 0, len(sizes), value, i)
            sizes.append(value)
        else:
            rows[i] = (OP_FREE, 0, value, sizes[value], i)
    return rows


def _write_snapshot(path: Path, iterations: int = 3) -> Path:
    """A tiny PyTorch-style memory snapshot: per iteration, a stack of activations."""
    events: list[dict[str, Any]] = []
    t = 1000

    def ev(action: str, addr: int, size: int) -> None:
        nonlocal t
        t += 10
        events.append(
            {"action": action, "addr": addr, "size": size, "stream": 0, "time_us": t, "frames": []}
        )

    ev("alloc", 0x10000000, 4 * MIB)  # a parameter, never freed
    for _ in range(iterations):
        acts = [(0x20000000 + k * 0x1000000, (k + 1) * 300 * KIB) for k in range(6)]
        for addr, size in acts:
            ev("alloc", addr, size)
        for addr, size in reversed(acts):
            ev("free_requested", addr, size)
            ev("free_completed", addr, size)
    snap = {"segments": [], "device_traces": [events]}
    with gzip.open(path, "wb") as f:
        pickle.dump(snap, f)
    return path


def test_torch_policy_hand_computed() -> None:
    # 3 x 300 KiB: small requests share one 2 MiB segment.
    r = replay.replay_events(_events([("a", 300 * KIB)] * 3), "torch")
    assert r["peak_reserved_bytes"] == 2 * MIB
    assert r["device_reserve_calls"] == 1
    assert r["peak_live_bytes"] == 900 * KIB
    assert r["fragmentation"] == pytest.approx(2 * MIB / (900 * KIB))
    # 5 MiB takes a 20 MiB segment; freed then asked again, the block is reused.
    r = replay.replay_events(_events([("a", 5 * MIB), ("f", 0), ("a", 5 * MIB)]), "torch")
    assert (r["peak_reserved_bytes"], r["device_reserve_calls"]) == (20 * MIB, 1)
    # 12 MiB + 1 rounds to 512 B; its segment rounds to 2 MiB: 14 MiB.
    r = replay.replay_events(_events([("a", 12 * MIB + 1)]), "torch")
    assert r["peak_reserved_bytes"] == 14 * MIB


def test_oracle_and_timeline() -> None:
    overlapping = _events([("a", MIB), ("a", 2 * MIB), ("f", 0), ("f", 1)])
    disjoint = _events([("a", MIB), ("f", 0), ("a", 2 * MIB), ("f", 1)])
    assert replay.replay_events(overlapping, "oracle")["peak_reserved_bytes"] == 3 * MIB
    assert replay.replay_events(disjoint, "oracle")["peak_reserved_bytes"] == 2 * MIB
    arena, offsets = _C.oracle_offsets(disjoint)
    assert arena == 2 * MIB and list(offsets) == [0, 0]
    r = replay.replay_events(overlapping, "torch", options={"timeline_points": 2})
    assert len(r["timeline"]["event"]) == 2
    assert int(r["timeline"]["live_bytes"].max()) == 3 * MIB


def test_replay_is_deterministic(tmp_path: Path) -> None:
    from timeshare.snapshot import load_trace

    trace = load_trace(_write_snapshot(tmp_path / "tiny.pkl.gz", iterations=8))
    for policy in (*replay.DEFAULT_POLICIES, *replay.ABLATION_POLICIES):
        a = replay.replay_events(trace.events, policy, trace.iteration_starts)
        b = replay.replay_events(trace.events, policy, trace.iteration_starts)
        assert a["peak_reserved_bytes"] == b["peak_reserved_bytes"], policy
        assert a.get("lifespan_within_2x") == b.get("lifespan_within_2x"), policy
        assert np.array_equal(a["timeline"]["reserved_bytes"], b["timeline"]["reserved_bytes"])
        assert a["peak_reserved_bytes"] >= a["peak_live_bytes"] == trace.peak_live_bytes


def test_predictor_baseline_policies(tmp_path: Path) -> None:
    """timeshare+KIND: the same pool with another predictor, scored in the same replay."""
    from timeshare.snapshot import load_trace

    kinds = [p for p in _C.policies() if p.startswith("timeshare+")]
    assert {"timeshare+table", "timeshare+last_size", "timeshare+lstm"} <= set(kinds)
    trace = load_trace(_write_snapshot(tmp_path / "tiny.pkl.gz", iterations=8))
    scores = {}
    for policy in ("timeshare", *kinds):
        r = replay.replay_events(trace.events, policy, trace.iteration_starts)
        assert 0.0 <= r["lifespan_within_2x"] <= 1.0, policy
        assert r["peak_reserved_bytes"] >= r["peak_live_bytes"], policy
        scores[policy] = r["lifespan_within_2x_warm"]
    # A strictly periodic trace: after the first iteration, the same position in the previous
    # iteration is exact, and so is the default predictor.
    assert scores["timeshare+prev_iter"] == pytest.approx(1.0)
    assert scores["timeshare"] >= 0.99
    with pytest.raises(ValueError, match="unknown policy 'timeshare\\+bogus'"):
        _C.replay(_events([("a", 512)]), "timeshare+bogus")


def test_cold_figure_is_the_first_marked_iteration(tmp_path: Path) -> None:
    """lifespan_within_2x_cold scores [first mark, second mark) alone, beside online and warm."""
    from timeshare.snapshot import load_trace

    path = _write_snapshot(tmp_path / "tiny.pkl.gz", iterations=8)
    with gzip.open(path, "rb") as f:
        snap = pickle.load(f)
    events = snap["device_traces"][0]
    per_iteration = 6 * 3  # six allocations, six frees requested and completed
    marks = [events[1 + k * per_iteration]["time_us"] for k in range(8)]
    snap["trace_source"] = {"iteration_marks_us": marks}
    with gzip.open(path, "wb") as f:
        pickle.dump(snap, f)
    trace = load_trace(path)
    starts = sorted(trace.iteration_starts)
    assert len(starts) == 8 and starts[0] > 0
    r = replay.replay_events(trace.events, "timeshare+prev_iter", trace.iteration_starts)
    assert r["cold_from_event"] == starts[0]
    assert r["warm_from_event"] == starts[1]
    assert r["lifespan_cold_scored"] > 0
    assert r["lifespan_cold_scored"] + r["lifespan_warm_scored"] <= r["lifespan_scored"]
    # The previous iteration's twin has nothing to say in the first iteration, everything after.
    assert r["lifespan_within_2x_cold"] < 0.5
    assert r["lifespan_within_2x_warm"] == pytest.approx(1.0)
    # The shares add up: online is the scored-weighted mix of before-cold, cold and warm.
    before = r["lifespan_scored"] - r["lifespan_cold_scored"] - r["lifespan_warm_scored"]
    assert before >= 0


def test_bad_input_raises_one_line() -> None:
    with pytest.raises(TypeError, match="expected EVENT_DTYPE"):
        _C.replay(np.zeros(4), "torch")
    with pytest.raises(ValueError, match="unknown policy 'tourch'"):
        _C.replay(_events([("a", 512)]), "tourch")
    bad = _events([("a", 512), ("f", 0), ("f", 0)])
    with pytest.raises(ValueError, match="invalid trace: event 2"):
        _C.replay(bad, "torch")
    with pytest.raises(ValueError, match="unknown replay option"):
        _C.replay(_events([("a", 512)]), "torch", None, {"colour": 1})
    assert _C.validate_events(bad).startswith("event 2")


def test_cli_json_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    snap = _write_snapshot(tmp_path / "tiny.pkl.gz")
    out, png = tmp_path / "out.json", tmp_path / "out.png"
    code = replay.main([str(snap), "--ablation", "--json", str(out), "--plot", str(png)])
    assert code == 0
    doc = json.loads(out.read_text())
    assert _problems(doc, [str(snap)]) == []
    t = doc["traces"][0]
    assert t["name"] == "tiny" and t["allocs"] == 1 + 3 * 6
    assert set(t["policies"]) == {*replay.DEFAULT_POLICIES, *replay.ABLATION_POLICIES}
    assert t["policies"]["timeshare-true"]["lifespan_within_2x"] == pytest.approx(1.0)
    assert png.stat().st_size > 0
    table = capsys.readouterr().out
    assert "tiny" in table and "oracle" in table


def test_checker_catches_a_broken_document() -> None:
    doc = {
        "traces": [
            {
                "name": "x",
                "events": 1,
                "allocs": 1,
                "peak_live_bytes": 10,
                "policies": {
                    "torch": {"peak_reserved_bytes": 20, "fragmentation": 3.0, "ns_per_event": 1.0}
                },
            }
        ]
    }
    found = _problems(doc, [])
    assert any("fragmentation" in p for p in found)
    assert any("lacks 'oracle'" in p for p in found)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["/nonexistent/trace.pkl.gz"], "no such trace file or directory"),
        (["--policy", "torch,tourch", "."], "unknown policy 'tourch'"),
    ],
)
def test_cli_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert replay.main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_cli_unreadable_trace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "broken.pkl"
    bad.write_bytes(b"not a pickle")
    assert replay.main([str(bad)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot read trace" in err[0]


def _gpu_traces() -> list[Path]:
    found = sorted(GPU_TRACES.glob("*.pkl.gz"))
    if not found:
        pytest.skip("shared/traces-gpu not available")
    return found


@pytest.mark.parametrize("which", ["shipped", "gpu"])
def test_no_policy_faults_on_real_traces(which: str) -> None:
    """The strict sim: no policy unmaps memory that queued work still uses."""
    paths = [SHIPPED / "resnet18.pkl.gz", SHIPPED / "bert_mlm.pkl.gz"]
    doc = replay.replay_paths(
        [str(p) for p in (paths if which == "shipped" else _gpu_traces())], replay.DEFAULT_POLICIES
    )
    for t in doc["traces"]:
        for policy, r in t["policies"].items():
            assert r["device_faults"] == 0, (t["name"], policy, r.get("first_fault"))
            assert r["device_waits"] >= 0
            assert r["device_calls"] >= r["device_reserve_calls"] >= 1


def test_unsafe_unmap_makes_the_detector_fire_on_real_traces() -> None:
    """unsafe_unmap (immediate unmapping, the behaviour before the fix) faults on real traces;
    without work in flight (the permissive model the sim had before) nothing is seen."""
    paths = [str(p) for p in _gpu_traces()] + [str(SHIPPED / "bert_mlm.pkl.gz")]
    unsafe = replay.replay_paths(paths, ["timeshare"], {"conf": "unsafe_unmap:true"})
    faults = {t["name"]: t["policies"]["timeshare"]["device_faults"] for t in unsafe["traces"]}
    assert all(n > 0 for n in faults.values()), faults
    first = unsafe["traces"][0]["policies"]["timeshare"]["first_fault"]
    assert first.startswith("unmap of granule 0x") and "while stream" in first
    blind = replay.replay_paths(
        paths, ["timeshare"], {"conf": "unsafe_unmap:true", "gpu_lag_events": 0}
    )
    assert all(t["policies"]["timeshare"]["device_faults"] == 0 for t in blind["traces"])


def test_cli_conf_reaches_the_timeshare_policies(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    snap = str(SHIPPED / "resnet18.pkl.gz")
    out = tmp_path / "c.json"
    argv = [snap, "--policy", "torch,timeshare", "--json", str(out), "--quiet"]
    assert replay.main([*argv, "--conf", "predictor:constant"]) == 0
    const = json.loads(out.read_text())["traces"][0]["policies"]
    assert replay.main(argv) == 0
    default = json.loads(out.read_text())["traces"][0]["policies"]
    assert const["torch"]["peak_reserved_bytes"] == default["torch"]["peak_reserved_bytes"]
    assert const["timeshare"]["lifespan_within_2x"] < default["timeshare"]["lifespan_within_2x"]
    # A budget from the conf caps the timeshare pool.
    assert replay.main([*argv, "--conf", "budget:160MiB"]) == 0
    capped = json.loads(out.read_text())["traces"][0]["policies"]["timeshare"]
    assert capped["peak_reserved_bytes"] <= 160 * MIB
    assert capped["device_faults"] == 0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--conf", "unsafe_unmap:maybe", "."], "--conf"),
        (["--conf", "no_such_key:1", "."], "no_such_key"),
        (["--gpu-lag-events", "-1", "."], "--gpu-lag-events"),
    ],
)
def test_cli_bad_conf_is_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert replay.main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_device_calls_by_iteration_and_a_steady_state_without_calls() -> None:
    """Per-iteration device calls add up to the total; on resnet18 (12 marked iterations) every
    timeshare iteration after the second makes none, and the whole run stays within 1.5x
    torch-expandable's calls. Before placement used empty mapped granules and growth mapped
    ahead, timeshare made 16-22 calls in every iteration (284 in all against 22)."""
    doc = replay.replay_paths(
        [str(SHIPPED / "resnet18.pkl.gz")], ["torch-expandable", "timeshare"], {}
    )
    policies = doc["traces"][0]["policies"]
    for name, r in policies.items():
        by_iteration = r["device_calls_by_iteration"]
        assert len(by_iteration) == doc["traces"][0]["iterations"] + 1, name
        assert sum(by_iteration) == r["device_calls"], name
    ts = policies["timeshare"]
    assert ts["device_calls_by_iteration"][3:] == [0] * (len(ts["device_calls_by_iteration"]) - 3)
    assert ts["device_calls"] <= 1.5 * policies["torch-expandable"]["device_calls"]
    assert ts["peak_reserved_bytes"] <= policies["torch-expandable"]["peak_reserved_bytes"]
    # With map_ahead:0 only what blocks cover is mapped: less memory, more calls.
    tight = replay.replay_paths(
        [str(SHIPPED / "resnet18.pkl.gz")], ["timeshare"], {"conf": "map_ahead:0"}
    )["traces"][0]["policies"]["timeshare"]
    assert tight["peak_reserved_bytes"] <= ts["peak_reserved_bytes"]
    assert tight["device_calls"] > ts["device_calls"]
