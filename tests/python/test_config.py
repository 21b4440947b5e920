"""TIMESHARE_CONF and enable(**options) share one parser."""

from __future__ import annotations

import pytest

import timeshare
from timeshare._config import build_conf


def test_defaults() -> None:
    o = timeshare.parse_conf("")
    assert o["policy"] == "timeshare"
    assert o["budget"] == 0
    assert o["spill"] == "none"


def test_good_values() -> None:
    o = timeshare.parse_conf(
        "budget:20GiB,spill:host,pinned:512MiB,policy:torch,expandable_segments:true")
    assert o["budget"] == 20 << 30
    assert o["spill"] == "host"
    assert o["pinned"] == 512 << 20
    assert o["policy"] == "torch"
    assert o["expandable_segments"] is True


@pytest.mark.parametrize(
    ("conf", "fragment"),
    [
        ("budgte:1GiB", "unknown key 'budgte'"),
        ("budget:lots", "budget:lots is invalid"),
        ("spill:host", "needs a budget"),
        ("policy:magic", "expected one of timeshare, torch"),
        ("hidden:100000", "expected an integer"),
        ("justakey", "is not key:value"),
    ],
)
def test_bad_values_one_line(conf: str, fragment: str) -> None:
    with pytest.raises(ValueError) as e:
        timeshare.parse_conf(conf)
    assert fragment in str(e.value)
    assert "\n" not in str(e.value)


def test_unknown_key_lists_valid_keys() -> None:
    with pytest.raises(ValueError, match="valid keys: policy, backend"):
        timeshare.parse_conf("nope:1")


def test_env_then_conf_then_kwargs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIMESHARE_CONF", "budget:1GiB,spill:host,hidden:16")
    conf = build_conf("hidden:24", hidden=48, spill="host+ssd")
    o = timeshare.parse_conf(conf)
    assert o["budget"] == 1 << 30
    assert o["hidden"] == 48
    assert o["spill"] == "host+ssd"


def test_kwargs_types() -> None:
    o = timeshare.parse_conf(build_conf(budget=3 << 30, spill="host", expandable_segments=True))
    assert o["budget"] == 3 << 30
    with pytest.raises(ValueError, match="cannot contain ','"):
        build_conf(spill_dir="/a,b")
    with pytest.raises(ValueError, match="expected a str"):
        build_conf(budget=[1])


def test_options_table_covers_parser() -> None:
    keys = [row[0] for row in timeshare.options_table()]
    assert {"budget", "spill", "spill_dir", "pinned", "policy", "predictor", "history", "hidden",
            "retrain_interval", "drift_threshold"} <= set(keys)
    assert all(len(row) == 4 and row[3] for row in timeshare.options_table())


def test_usage_doc_options_table_is_in_sync() -> None:
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    r = subprocess.run([sys.executable, str(root / "scripts" / "gen_usage.py"), "--check"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout


def test_budget_alone_implies_host_spill() -> None:
    assert timeshare.parse_conf(build_conf(budget="2GiB"))["spill"] == "host"
    assert timeshare.parse_conf(build_conf(budget="2GiB", spill="none"))["spill"] == "none"
    assert timeshare.parse_conf(build_conf(budget="2GiB", spill="host+ssd"))["spill"] == "host+ssd"
    assert timeshare.parse_conf(build_conf())["spill"] == "none"
