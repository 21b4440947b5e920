"""Layout plans (``plan:true``): the temporal pool follows the layout of one iteration that the
predictor's thread planned from predicted lifespans (csrc/timeshare/pool/layout_plan.h).

Run through the replay, i.e. the real C++ pool on the strict sim (work in flight modelled),
with the planner fed as the allocator feeds it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

_C = pytest.importorskip("timeshare._C")
if not hasattr(_C, "replay"):  # pragma: no cover
    pytest.skip("timeshare._C was built without the trace bindings", allow_module_level=True)

from timeshare.replay import replay_events  # noqa: E402
from timeshare.snapshot import load_trace  # noqa: E402

SHIPPED = Path(__file__).resolve().parents[2] / "python" / "timeshare" / "traces"


@pytest.fixture(scope="module")
def resnet18():
    return load_trace(SHIPPED / "resnet18.pkl.gz")


def _run(trace, policy: str, conf: str) -> dict:
    return replay_events(trace.events, policy, trace.iteration_starts, {"conf": conf})


def test_predicted_layout_is_followed_without_device_calls(resnet18) -> None:
    """With true lifespans the plan is followed from the third iteration on and the steady state
    makes no device call. (Best fit without plans makes none either since it places in empty
    mapped granules and maps ahead while growing, with fewer calls in all: plans are off by
    default, docs/temporal_pool.md.)"""
    base = _run(resnet18, "timeshare-true", "plan:false")
    planned = _run(resnet18, "timeshare-true", "plan:true")
    assert planned["plans"] >= 1 and planned["plans_dropped"] == 0
    assert planned["plan_hits"] > 0.6 * resnet18.allocs
    assert planned["plan_misses"] == 0
    assert planned["device_faults"] == 0 and base["device_faults"] == 0
    # Per iteration, after the plan: no more calls.
    by_iteration = planned["device_calls_by_iteration"]
    assert by_iteration[5:] == [0] * len(by_iteration[5:]), by_iteration


def test_predicted_layout_ends_the_release_remap_cycle_best_fit_makes() -> None:
    """bert_mlm: best fit keeps moving memory under the two 89 MiB logits blocks every iteration
    (6-15 calls each, to the end of the trace). With true lifespans the plan, once followed,
    makes none from the fourth iteration on, for the switch (about 300 calls, once) and 2 % more
    peak. The hybrid predictor's plan, as shipped, did the same from the eighth iteration until
    map-ahead followed the climb (issue 28): best fit's layout before the plan is now a few
    granules different, and in the sixth iteration the plan's layout holds 1051 granules where
    best fit needed 946, past the 10 % guard, so it is dropped; the layout it leaves makes no
    calls either. A plan that costs too much memory is dropped, its peak bounded by the guard
    plus the block that crossed it."""
    trace = load_trace(SHIPPED / "bert_mlm.pkl.gz")
    base = _run(trace, "timeshare", "plan:false")
    true_base = _run(trace, "timeshare-true", "plan:false")
    true_plan = _run(trace, "timeshare-true", "plan:true")
    hybrid_plan = _run(trace, "timeshare", "plan:true")
    for r in (base, true_base, true_plan, hybrid_plan):
        assert r["device_faults"] == 0
    assert true_plan["plans"] >= 1 and true_plan["plans_dropped"] == 0
    # [before iteration 1, iteration 1, ..., iteration 12]; the last one ends with the trace.
    steady = slice(8, len(base["device_calls_by_iteration"]) - 1)
    off_calls = true_base["device_calls_by_iteration"]
    assert all(c > 0 for c in off_calls[steady]), off_calls
    assert true_plan["device_calls_by_iteration"][steady] == [0] * 4, true_plan
    assert true_plan["peak_reserved_bytes"] <= 1.1 * true_base["peak_reserved_bytes"]
    # The hybrid predictor's plan: no steady-state call more than best fit makes, and a peak
    # within the guard (10 % and 2 granules over best fit's) and one 89 MiB block.
    on_calls = hybrid_plan["device_calls_by_iteration"]
    assert sum(on_calls[steady]) <= sum(base["device_calls_by_iteration"][steady]), on_calls
    granule = 2 << 20
    assert hybrid_plan["peak_reserved_bytes"] <= (
        1.1 * base["peak_reserved_bytes"] + 2 * granule + 45 * granule)


def test_plan_off_by_default_changes_nothing(resnet18) -> None:
    default = _run(resnet18, "timeshare-true", "")
    off = _run(resnet18, "timeshare-true", "plan:false")
    assert default["plans"] == 0 and default["plan_hits"] == 0
    for key in ("peak_reserved_bytes", "device_calls", "device_waits"):
        assert default[key] == off[key]


@pytest.mark.parametrize("name", ["resnet18", "gpt2_fixed"])
def test_wrong_predictions_cost_bounded_memory_and_calls(name: str) -> None:
    """Shuffled lifespans (true ones dealt to the wrong allocations): the plans miss, the pool
    drops them and stops following plans; peak and calls stay within a bound, no fault. Each
    plan followed and dropped costs at most a re-layout of the iteration's memory (measured:
    +102 calls on resnet18, +377 on gpt2_fixed, for two plans)."""
    trace = load_trace(SHIPPED / f"{name}.pkl.gz")
    base = _run(trace, "timeshare-shuffled", "plan:false")
    wrong = _run(trace, "timeshare-shuffled", "plan:true")
    assert wrong["device_faults"] == 0
    assert wrong["plans_dropped"] >= 1
    assert wrong["plans"] <= 2  # no more plans followed after the drops
    assert wrong["peak_reserved_bytes"] <= 1.05 * base["peak_reserved_bytes"]
    assert wrong["device_calls"] <= base["device_calls"] + 200 * wrong["plans"]


def test_replay_reports_plan_figures(resnet18) -> None:
    r = _run(resnet18, "timeshare", "plan:true")
    for key in ("plan_hits", "plan_misses", "plans", "plans_dropped"):
        assert isinstance(r[key], int)
    assert r["device_faults"] == 0


def test_a_plan_holding_far_more_memory_is_dropped(resnet18) -> None:
    """A constant answer packs a whole iteration's blocks side by side: the slots are free, so
    they hit, but the pool would hold far more granules than best fit (1.77x before the memory
    guard). Dropped once it holds 10 % (and 2 granules) more than best fit's peak demand."""
    base = _run(resnet18, "timeshare-const", "plan:false")
    const = _run(resnet18, "timeshare-const", "plan:true")
    assert const["plans_dropped"] >= 1
    assert const["device_faults"] == 0
    assert const["peak_reserved_bytes"] <= 1.2 * base["peak_reserved_bytes"]
