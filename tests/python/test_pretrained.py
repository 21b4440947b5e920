"""The pretrained LSTM (cold start): shipped beside the library, loaded by every predictor that
has an LSTM, from-scratch fallback with one log line; measured on a held-out corpus trace."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from timeshare import _C, replay
from timeshare.snapshot import load_trace

ROOT = Path(__file__).resolve().parents[2]
# A held-out family of the corpus (scripts/corpus/models.py): never used for any choice.
HELD_OUT = ROOT / "tests" / "data" / "corpus" / "llama_adamw.pkl.gz"
WEIGHTS = Path(_C.__file__).resolve().parent / "lstm_pretrained.tsw"
FEATURE_SET_VERSION = 1  # predict/features.h kFeatureSetVersion


def test_weights_ship_beside_the_library() -> None:
    data = WEIGHTS.read_bytes()
    assert data[:8] == b"TSLSTMW1"
    version, inputs, hidden, head = struct.unpack_from("<Iiii", data, 8)
    assert (version, inputs, hidden, head) == (FEATURE_SET_VERSION, 21, 32, 16)
    (count,) = struct.unpack_from("<Q", data, 24)
    assert len(data) == 32 + 4 * count + 8
    assert len(data) < 64 * 1024  # small


def _cold(policy: str, trace) -> dict:
    return replay.replay_events(trace.events, policy, trace.iteration_starts)


def test_pretrained_lstm_beats_the_lstm_from_scratch_cold_and_online() -> None:
    trace = load_trace(HELD_OUT)
    pre = _cold("timeshare+lstm_pre", trace)
    scratch = _cold("timeshare+lstm", trace)
    assert pre["lifespan_cold_scored"] > 500
    # From the first event, on a model family the weights never saw.
    assert pre["lifespan_within_2x_cold"] > scratch["lifespan_within_2x_cold"] + 0.02
    assert pre["lifespan_within_2x"] > scratch["lifespan_within_2x"] + 0.02


def test_hybrid_with_pretrained_weights_is_not_worse_than_from_scratch() -> None:
    trace = load_trace(HELD_OUT)
    hybrid = _cold("timeshare", trace)
    scratch = _cold("timeshare+hybrid_scratch", trace)
    table = _cold("timeshare+table", trace)
    for key in ("lifespan_within_2x_cold", "lifespan_within_2x"):
        assert hybrid[key] >= scratch[key], key
        assert hybrid[key] > table[key], key


@pytest.mark.parametrize("contents", [None, b"TSLSTMW1 truncated", "other-version"])
def test_bad_weights_fall_back_with_one_log_line(tmp_path: Path, contents) -> None:
    path = tmp_path / "weights.tsw"
    if contents == "other-version":
        data = bytearray(WEIGHTS.read_bytes())
        data[8:12] = struct.pack("<I", FEATURE_SET_VERSION + 1)
        path.write_bytes(bytes(data))
    elif contents is not None:
        path.write_bytes(contents)
    code = (
        "from timeshare import replay\n"
        "from timeshare.snapshot import load_trace\n"
        f"t = load_trace({str(HELD_OUT)!r})\n"
        "for p in ('timeshare+lstm_pre', 'timeshare+lstm', 'timeshare+lstm_pre'):\n"
        "    r = replay.replay_events(t.events, p, t.iteration_starts)\n"
        "    print(p, r['lifespan_within_2x_cold'], r['lifespan_within_2x'])\n"
    )
    env = {**os.environ, "TIMESHARE_LSTM_WEIGHTS": str(path)}
    env.pop("TIMESHARE_LOG", None)
    res = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    lines = [ln for ln in res.stderr.splitlines() if "pretrained LSTM weights" in ln]
    assert len(lines) == 1, res.stderr
    assert str(path) in lines[0] and "starts from scratch" in lines[0]
    # Every LSTM started from scratch: the "pretrained" kind answers as the scratch one.
    rows = [ln.split() for ln in res.stdout.splitlines()]
    assert rows[0][1:] == rows[1][1:] == rows[2][1:]
