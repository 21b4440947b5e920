"""Tests for timeshare.capture: recording a script's CPU allocation trace as a memory snapshot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from timeshare import capture, snapshot

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[2]



TINY = """
import sys
import torch

torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
opt = torch.optim.SGD(model.parameters(), lr=0.1)
steps = int(sys.argv[1])
explicit = len(sys.argv) > 2 and sys.argv[2] == "explicit"
if explicit:
    from {module} import mark_iteration
for _ in range(steps):
    if explicit:
        mark_iteration()
    x = torch.randn(8, 16)
    loss = model(x).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
"""


@pytest.fixture(scope="module")
def tiny_script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small nn.Sequential + SGD training script."""
    p = tmp_path_factory.mktemp("scripts") / "tiny_train.py"
    p.write_text(TINY.format(module=capture.__name__))
    return p


@pytest.fixture(scope="module")
def captured(tiny_script: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny script captured for 3 iterations."""
    out = tmp_path_factory.mktemp("out") / "tiny.pkl.gz"
    rc = capture.main(
        ["--out", str(out), "--model", "tiny", "--device", "cpu", "--", str(tiny_script), "3"]
    )
    assert rc == 0
    return out


def test_capture_writes_a_snapshot(captured: Path) -> None:
    assert captured.read_bytes()[:2] == b"\x1f\x8b"
    snap = snapshot.load_snapshot(captured)
    assert snap["segments"] == [] and snap["allocator_settings"] == {}
    assert snap["external_annotations"] == [] and len(snap["device_traces"]) == 1
    src = snap["trace_source"]
    assert src["tool"] == "timeshare capture" and src["device"] == "cpu"
    assert src["model"] == "tiny" and src["torch"] == str(torch.__version__)
    assert src["unaccounted_events"] == 0
    assert len(src["iteration_marks_us"]) == 3
    events = snap["device_traces"][0]
    assert {e["action"] for e in events} == {"alloc", "free_requested", "free_completed"}
    assert all(e["stream"] == 0 and e["frames"] == [] for e in events)
    allocs = [e for e in events if e["action"] == "alloc"]
    frees = [e for e in events if e["action"] == "free_requested"]
    completes = [e for e in events if e["action"] == "free_completed"]
    assert len(frees) == len(completes) <= len(allocs)
    # Every free names a live allocation of the same size; parameters are allocated.
    live: dict[int, int] = {}
    for e in events:
        if e["action"] == "alloc":
            assert e["addr"] not in live
            live[e["addr"]] = e["size"]
        elif e["action"] == "free_requested":
            assert live.pop(e["addr"]) == e["size"]
    sizes = [e["size"] for e in allocs]
    for param_bytes in (32 * 16 * 4, 32 * 4, 4 * 32 * 4, 4 * 4):
        assert param_bytes in sizes


def test_captured_trace_converts_with_iterations(captured: Path) -> None:
    tr = snapshot.load_trace(captured)
    assert tr.name == "tiny" and snapshot.validate(tr.events) == ""
    assert tr.skipped == {}
    starts = tr.iteration_starts.tolist()
    assert len(starts) >= 2
    # SGD without momentum repeats itself: iterations 2 and 3 allocate the same sizes in order.
    ev = tr.events
    second = ev[starts[0] : starts[1]]
    third = ev[starts[1] : starts[2]] if len(starts) > 2 else ev[starts[1] :]
    assert len(second) > 0
    assert second["op"].tolist() == third["op"].tolist()[: len(second)]
    assert second["bytes"].tolist() == third["bytes"].tolist()[: len(second)]
    assert int(np.count_nonzero(ev["op"] == 0)) == tr.allocs


def test_explicit_marks_replace_step_marks(tiny_script: Path, tmp_path: Path) -> None:
    out = tmp_path / "explicit.pkl.gz"
    assert capture.main(["--out", str(out), "--", str(tiny_script), "2", "explicit"]) == 0
    tr = snapshot.load_trace(out)
    assert len(tr.meta["iteration_marks_us"]) == 2
    assert len(tr.iteration_starts) == 2
    # The first mark comes after the model's parameters were allocated.
    assert tr.iteration_starts[0] >= 4


def test_module_run_reaches_the_scripts_marks(tmp_path: Path) -> None:
    """``python -m timeshare.capture`` (as scripts/corpus/capture.sh runs it, from a copy of the
    two modules): a script importing timeshare.capture marks in the running capture, not in a
    second copy of the module (whose marks were lost, leaving the step marks)."""
    import shutil
    import subprocess
    import sys

    shim = tmp_path / "shim" / "timeshare"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("")
    for name in ("capture.py", "snapshot.py"):
        shutil.copy(ROOT / "python" / "timeshare" / name, shim / name)
    script = tmp_path / "tiny_train.py"
    script.write_text(TINY.format(module="timeshare.capture"))
    out = tmp_path / "module.pkl.gz"
    env = {**__import__("os").environ, "PYTHONPATH": str(shim.parent)}
    subprocess.run(
        [sys.executable, "-m", "timeshare.capture", "--device", "cpu", "--out", str(out), "--",
         str(script), "3", "explicit"],
        check=True, env=env, capture_output=True,
    )
    tr = snapshot.load_trace(out)
    starts = [int(i) for i in tr.iteration_starts]
    assert len(starts) == 3
    # Marks at the top of each iteration: the last iteration is as long as the one before it
    # (step marks would put the last mark after the last step, with almost nothing after it).
    assert starts[0] >= 4 and len(tr.events) - starts[2] >= starts[2] - starts[1]


def test_mark_iteration_without_capture_is_a_no_op() -> None:
    capture.mark_iteration()


def test_memory_viz_opens_captured_trace(captured: Path) -> None:
    from torch.cuda import _memory_viz

    snap = snapshot.load_snapshot(captured)
    html = _memory_viz.trace_plot(snap)
    assert "<html" in html.lower() or "<!doctype" in html.lower()
    assert "snapshot.pickle" in html
    assert _memory_viz.segment_plot(snap)


def test_script_failure_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import torch\nx = torch.ones(4)\nraise RuntimeError('boom')\n")
    out = tmp_path / "bad.pkl.gz"
    assert capture.main(["--out", str(out), "--device", "cpu", "--", str(bad)]) == 1
    assert not out.exists()
    assert "boom" in capsys.readouterr().err


def test_script_exit_codes(tmp_path: Path) -> None:
    ok = tmp_path / "ok.py"
    ok.write_text("import sys, torch\nx = torch.ones(4)\nsys.exit(0)\n")
    out = tmp_path / "ok.pkl.gz"
    assert capture.main(["--out", str(out), "--device", "cpu", "--", str(ok)]) == 0
    assert snapshot.load_trace(out).allocs >= 1
    fail = tmp_path / "fail.py"
    fail.write_text("import sys\nsys.exit(3)\n")
    assert capture.main(["--out", str(tmp_path / "f.pkl.gz"), "--", str(fail)]) == 3


def test_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert capture.main(["--out", str(tmp_path / "x.pkl.gz"), "--", str(tmp_path / "no.py")]) == 2
    assert "no such script" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        capture.main(["--out", str(tmp_path / "x.pkl.gz")])
