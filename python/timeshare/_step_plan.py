"""The keep / spill / recompute planner: pure Python, no torch. ``timeshare.fit`` runs it on the
profile it measures in the first iteration; ``scripts/bench_spill.py`` runs it on a profile
recorded with a modelled GPU clock. Both reach the same functions: ``spill_plan`` (the offload
hooks' furthest-need-first plan, which ``timeshare.offload`` uses too), ``items_for`` (what a
choice of recompute levels leaves on the device, and when), ``simulate`` (the step's time and
peak with copies on a link; the model lives in ``timeshare._step_sim``) and ``choose`` (the
search).

A profile is one iteration as the hooks saw it:
- ``ops``: every forward aten op that wrote new memory, in order: ``block`` (index of the
  repeated block it ran in, -1 outside), ``kind`` ("compute": matmul, convolution, attention;
  "pointwise"; "other": norms, reductions, softmax...), ``t`` and ``dt`` (start and duration,
  seconds), ``bytes`` (its outputs' new storages), ``forced`` (always recomputed when its block
  is checkpointed: random ops, which replay identically only if all of them rerun from the
  block's RNG state, and outputs written in place later in the block, which a cache would hold
  stale);
- ``units``: every storage the saved-tensor hooks packed: ``bytes``, ``spill`` (eligible),
  ``pack``/``unpack`` (seconds; unpack -1 when never), ``op`` (the op that made it, -1 when
  unknown), ``block`` (the block running at its pack);
- ``step`` (seconds, forward start to last unpack) and ``base`` (device bytes besides saved
  activations: parameters, gradients, optimizer state);
- ``in_place`` (optional): blocks that wrote one of their own inputs in place. They are never
  checkpointed (their recomputation would start from an input their forward overwrote):
  ``evaluate`` runs them at level 0 whatever it is asked;
- with ``whole_step`` (fit's own profiles; the benchmark's carry the saved tensors only): the
  rest of the step's memory, so that the plan holds the budget over the whole step. ``temps``:
  the forward's outputs never saved (``op``, ``bytes``, ``free``: when they died, -1: alive at
  the forward's end, so until the backward starts); ``block_peak``: per block, the most bytes
  of its own storages alive at once in its forward (what its recomputation holds beyond the
  tensors it rebuilds and the cache); ``grads``: the gradients alive in backward (``bytes``,
  ``from``, ``to``), measured by hooks on its nodes; ``ends``: when each node ended, so that a
  saved tensor is freed when the node that unpacked it has run, not at the unpack. Their plans
  are simulated with the spill engine's own choice of prefetches (``simulate``'s ``engine``).

Recompute levels of a block (non-reentrant ``torch.utils.checkpoint`` with a selective policy):
0 none (its saved tensors are kept or spilled by the offload hooks), 1 pointwise ops recomputed,
2 everything but compute ops recomputed, 3 everything recomputed (full checkpointing). Under a
level > 0 the outputs of the ops that are not recomputed stay in the policy's cache from their
forward until the block's recomputation (and on as saved tensors until their unpack), the
block's inputs stay with the checkpoint until its backward ends, the recomputed tensors appear
at the block's first unpack, after the recomputation (the sum of the recomputed ops' forward
times), and none of those can be spilled (the hooks never see them).
"""

from __future__ import annotations

import bisect
import heapq
from typing import Any

# the step model; COPY_LATENCY_S is read here by scripts/bench_spill.py
from timeshare._step_sim import COPY_LATENCY_S as COPY_LATENCY_S
from timeshare._step_sim import simulate

__all__: list[str] = []  # internal

LEVELS = ("none", "pointwise", "cheap", "full")
# Restores started ahead of need: this share of the peak is kept free for them (the plan aims at
# budget - look-ahead).
PREFETCH_SHARE = 0.05
# A peak within this share above the budget counts as holding it (copies complete in steps).
BUDGET_TOLERANCE = 0.01
# Prefix lengths of the greedy move list evaluated before refining around the best.
COARSE_STEPS = 12
# Plans of the offload hooks tried per candidate, each against a target lowered by the excess
# of the one before.
TIGHTEN_ATTEMPTS = 3
# Rounds of the local search (one block's level changed at a time) after the prefix search.
LOCAL_ROUNDS = 2
_EPS = 1e-12


def recomputed(op: dict[str, Any], level: int) -> bool:
    """Whether ``op`` reruns in backward when its block is checkpointed at ``level``."""
    if level <= 0:
        return False
    if level >= 3 or op["forced"]:
        return True
    if level == 2:
        return op["kind"] != "compute"
    return op["kind"] == "pointwise"


def allowed(profile: dict[str, Any], levels: list[int]) -> list[int]:
    """``levels`` with the blocks that write their own input in place at 0."""
    frozen = set(profile.get("in_place", ()))
    return [0 if b in frozen else lvl for b, lvl in enumerate(levels)]


def spill_plan(hist: dict[int, list[int]], budget: int) -> set[int]:
    """Furthest-need-first: the positions one iteration had to evict to stay under ``budget``.
    ``hist``: position -> [bytes, pack, unpack (-1: never), other bytes at pack, eligible]. The
    offload hooks spill these positions at their pack in the next iteration."""
    events: list[tuple[int, int, int]] = []  # (time, kind: 0 unpack 1 pack, pos)
    for pos, (_nbytes, t_pack, t_unpack, _other, _eligible) in hist.items():
        events.append((t_pack, 1, pos))
        if t_unpack >= 0:
            events.append((t_unpack, 0, pos))
    events.sort()
    resident: dict[int, int] = {}
    far_key: list[tuple[int, int]] = []  # max-heap by need: (-unpack, pos)
    used = 0
    plan: set[int] = set()
    for _t, kind, pos in events:
        nbytes, _tp, t_unpack, other, eligible = hist[pos]
        if kind == 0:
            used -= resident.pop(pos, 0)
            continue
        if not eligible:
            continue
        resident[pos] = nbytes
        used += nbytes
        heapq.heappush(far_key, (-(t_unpack if t_unpack >= 0 else 1 << 62), pos))
        while other + used > budget and resident:
            _k, far = heapq.heappop(far_key)
            if far not in resident:
                continue
            used -= resident.pop(far)
            plan.add(far)
    return plan


def items_for(profile: dict[str, Any], levels: list[int]) -> tuple[list[dict[str, Any]],
                                                                  list[tuple[float, float]]]:
    """What a choice of levels (one per block) holds on the device: items (bytes, pack, unpack,
    spill, category) and recomputation delays (time, seconds)."""
    ops, units = profile["ops"], profile["units"]
    first: dict[int, float] = {}
    last: dict[int, float] = {}
    for u in units:
        b = u["block"]
        if b >= 0 and u["unpack"] >= 0:
            first[b] = min(first.get(b, u["unpack"]), u["unpack"])
            last[b] = max(last.get(b, u["unpack"]), u["unpack"])
    items: list[dict[str, Any]] = []
    delays: list[tuple[float, float]] = []
    op_unpack: dict[int, float] = {}
    for u in units:
        b = u["block"]
        lvl = levels[b] if b >= 0 else 0
        op = ops[u["op"]] if u["op"] >= 0 else None
        ob = op["block"] if op is not None else -1
        if (ob >= 0 and ob != b and ob in first and levels[ob] > 0
                and not recomputed(op, levels[ob])):
            continue  # the output of another block's cached op: the cache item below holds it
        if lvl == 0 or b not in first:
            items.append({"bytes": u["bytes"], "pack": u["pack"], "unpack": u["unpack"],
                          "spill": u["spill"], "cat": "kept"})
            continue
        if op is None or op["block"] != b:  # an input of the block: the checkpoint holds it
            items.append({"bytes": u["bytes"], "pack": u["pack"], "unpack": last[b],
                          "spill": 0, "cat": "kept"})
        elif recomputed(op, lvl):
            items.append({"bytes": u["bytes"], "pack": first[b] - _EPS, "unpack": u["unpack"],
                          "spill": 0, "cat": "recomputed", "block": b})
        else:
            op_unpack[u["op"]] = max(op_unpack.get(u["op"], -1.0), u["unpack"])
    cost: dict[int, float] = {}
    for i, op in enumerate(ops):
        b = op["block"]
        lvl = levels[b] if b >= 0 else 0
        if lvl == 0 or b not in first:
            continue
        if recomputed(op, lvl):
            cost[b] = cost.get(b, 0.0) + op["dt"]
        elif op["bytes"]:  # in the policy's cache until the recomputation, then saved
            items.append({"bytes": op["bytes"], "pack": op["t"],
                          "unpack": max(first[b], op_unpack.get(i, -1.0)), "spill": 0,
                          "cat": "kept", "block": b})
    for b, dt in cost.items():
        delays.append((first[b] - 2 * _EPS, dt))
    _transients(profile, levels, first, items)
    ends = profile.get("ends")
    if ends:  # a saved tensor lives on until the node that unpacked it has run
        for it in items:
            if it["unpack"] >= 0 and it["cat"] != "temp":
                k = bisect.bisect_left(ends, it["unpack"])
                it["free"] = ends[k] if k < len(ends) else it["unpack"]
    return items, delays


def _transients(profile: dict[str, Any], levels: list[int], first: dict[int, float],
                items: list[dict[str, Any]]) -> None:
    """The memory no saved tensor holds (profiles that recorded it): the forward's temporaries
    (outputs never saved, from their op to their death; those alive at the forward's end, to
    the backward's start), and per checkpointed block, what its recomputation holds beyond the
    saved tensors it rebuilds and the cache (the block's forward peak of its own storages)."""
    ops = profile["ops"]
    unpacks = [u["unpack"] for u in profile["units"] if u["unpack"] >= 0]
    backward = min(unpacks) if unpacks else profile["step"]
    for tmp in profile.get("temps", ()):
        t = ops[tmp["op"]]["t"]
        items.append({"bytes": tmp["bytes"], "pack": t, "spill": 0, "cat": "temp",
                      "unpack": max(t, tmp["free"] if tmp["free"] >= 0 else backward)})
    for g in profile.get("grads", ()):
        items.append({"bytes": g["bytes"], "pack": g["from"], "unpack": g["to"], "spill": 0,
                      "cat": "temp"})
    peaks = profile.get("block_peak")
    if not peaks:
        return
    rebuilt: dict[int, int] = {}
    for it in items:
        if it.get("block", -1) >= 0:
            rebuilt[it["block"]] = rebuilt.get(it["block"], 0) + it["bytes"]
    for b, t in first.items():
        extra = peaks[b] - rebuilt.get(b, 0) if levels[b] > 0 else 0
        if extra > 0:
            items.append({"bytes": extra, "pack": t - _EPS, "unpack": t, "spill": 0,
                          "cat": "recomputed"})


def _other_at_pack(items: list[dict[str, Any]], base: int) -> list[int]:
    """Per item, the device bytes at its pack besides spillable items: base + unspillable items
    alive, the forward's temporaries included (what the offload hooks measure as 'other' at a
    pack)."""
    ev = []
    for i, it in enumerate(items):
        ev.append((it["pack"], 1, i))
        if it["unpack"] >= 0:
            ev.append((it["unpack"], 0, i))
    ev.sort()
    cur = base
    out = [base] * len(items)
    for _t, kind, i in ev:
        it = items[i]
        if kind == 1:
            out[i] = cur
            if not it["spill"]:
                cur += it["bytes"]
        elif not it["spill"]:
            cur -= it["bytes"]
    return out


def plan_spills(items: list[dict[str, Any]], base: int, budget: int) -> set[int]:
    """The offload hooks' plan for these items (timeshare.offload's own spill_plan)."""
    other = _other_at_pack(items, base)
    hist = {i: [it["bytes"], int(it["pack"] * 1e9), int(it["unpack"] * 1e9)
                if it["unpack"] >= 0 else -1, other[i], int(bool(it["spill"]))]
            for i, it in enumerate(items)}
    return spill_plan(hist, max(budget, 1))


def evaluate(profile: dict[str, Any], levels: list[int], bw: float, budget: int,
             offload: bool) -> dict[str, Any]:
    """One candidate: its modelled step time, peak and bytes kept / spilled / recomputed."""
    levels = allowed(profile, levels)
    items, delays = items_for(profile, levels)
    base, total = profile["base"], profile["step"]
    look = int(PREFETCH_SHARE * budget)
    spills: set[int] = set()
    target = budget - look
    t, peak = simulate(items, delays, total, base, bw, "none", set(), 0)
    if offload and peak > budget:
        # the offload hooks' plan against target; where restores in flight or recomputed
        # blocks still pass the budget, plan again against a target lowered by the excess
        for _attempt in range(TIGHTEN_ATTEMPTS):
            spills = plan_spills(items, base, target)
            t, peak = simulate(items, delays, total, base, bw, "planned", spills, look, target,
                               bool(profile.get("whole_step")))
            if peak <= budget * (1 + BUDGET_TOLERANCE) or target <= base:
                break
            target = max(base, target - (peak - budget))
    split = {"kept": 0, "spilled": 0, "recomputed": 0}
    for i, it in enumerate(items):
        if it["cat"] != "temp":  # the forward's temporaries are no saved activation
            split["spilled" if i in spills else it["cat"]] += it["bytes"]
    return {"levels": list(levels), "offload": offload, "time": t, "peak": peak,
            "spill_budget": target if spills else budget,
            "recompute_s": sum(dt for _t, dt in delays), "spilled_units": spills,
            "items": items, **{f"{k}_bytes": v for k, v in split.items()}}


def _held_by_block(profile: dict[str, Any], nblocks: int, level: int) -> list[int]:
    """Bytes each block holds through its forward at ``level`` (what checkpointing removes)."""
    items, _d = items_for(profile, [level] * nblocks)
    held = [0] * nblocks
    if level == 0:
        for u in profile["units"]:
            if u["block"] >= 0:
                held[u["block"]] += u["bytes"]
        return held
    # items are in unit order then op order; attribute by pack time to the block running then
    spans = profile["blocks"]
    for it in items:
        if it["cat"] in ("recomputed", "temp"):
            continue
        for b, (s, e) in enumerate(spans):
            if s <= it["pack"] <= e:
                held[b] += it["bytes"]
                break
    return held


def moves(profile: dict[str, Any], hull: bool = False) -> list[tuple[int, int]]:
    """(block, level) upgrades, cheapest recompute seconds per byte removed first (ties: later
    blocks first, whose spills would have the least time before the peak; a block's levels in
    increasing order)."""
    n = len(profile["blocks"])
    if n == 0:
        return []
    held = [_held_by_block(profile, n, lvl) for lvl in range(4)]
    cost = [[0.0] * n for _ in range(4)]
    for op in profile["ops"]:
        b = op["block"]
        if b < 0:
            continue
        for lvl in range(1, 4):
            if recomputed(op, lvl):
                cost[lvl][b] += op["dt"]
    out: list[tuple[float, int, int]] = []
    frozen = set(profile.get("in_place", ()))
    for b in range(n):
        if b in frozen:
            continue
        if hull:  # per block only the upgrades on its lower convex hull of (seconds, bytes)
            cur = 0
            while cur < 3:
                best = None
                for lvl in range(cur + 1, 4):
                    gain = held[cur][b] - held[lvl][b]
                    if gain > 0:
                        ratio = (cost[lvl][b] - cost[cur][b]) / gain
                        if best is None or ratio < best[0]:
                            best = (ratio, lvl)
                if best is None:
                    break
                out.append((best[0], -b, best[1]))
                cur = best[1]
            continue
        # each level that removes more than the one before, in order; a block's chain keeps
        # its order in the global list (its ratios made non-decreasing)
        cur, worst = 0, 0.0
        for lvl in range(1, 4):
            gain = held[cur][b] - held[lvl][b]
            if gain <= 0:
                continue
            worst = max(worst, (cost[lvl][b] - cost[cur][b]) / gain)
            out.append((worst, -b, lvl))
            cur = lvl
    out.sort()
    seen: dict[int, int] = {}
    ordered: list[tuple[int, int]] = []
    for _r, nb, lvl in out:  # a block's upgrades in increasing order
        if lvl > seen.get(-nb, 0):
            seen[-nb] = lvl
            ordered.append((-nb, lvl))
    return ordered


def _fits(c: dict[str, Any], budget: int) -> bool:
    return c["peak"] <= budget * (1 + BUDGET_TOLERANCE)


def _better(a: dict[str, Any] | None, b: dict[str, Any], budget: int) -> bool:
    """Whether b beats a: holding the budget first, then the shorter step, then the lower peak."""
    if a is None:
        return True
    fa, fb = _fits(a, budget), _fits(b, budget)
    if fa != fb:
        return fb
    if fb:
        return (b["time"], b["peak"]) < (a["time"], a["peak"])
    return (b["peak"], b["time"]) < (a["peak"], a["time"])


def _best_prefix(seq: list[tuple[int, int]], n: int, ev: Any, budget: int) -> dict[str, Any]:
    """The best prefix of a move list: every COARSE_STEPS-th, then refined around the best and
    below the first that holds the budget (the fewest recomputations that do)."""

    def levels_at(k: int) -> list[int]:
        lv = [0] * n
        for b, lvl in seq[:k]:
            lv[b] = lvl
        return lv

    step = max(1, len(seq) // COARSE_STEPS)
    ks = sorted(set(range(0, len(seq) + 1, step)) | {len(seq)})
    by_k = {k: ev(levels_at(k), True) for k in ks}

    def score(k: int) -> tuple[bool, float]:
        c = by_k[k]
        return (not _fits(c, budget), c["time"] if _fits(c, budget) else c["peak"])

    kbest = min(ks, key=score)
    first = next((k for k in ks if _fits(by_k[k], budget)), None)
    todo = set(range(max(0, kbest - step + 1), min(len(seq), kbest + step - 1) + 1))
    if first is not None:
        todo |= set(range(max(0, first - step + 1), first))
    for k in sorted(todo - set(by_k)):
        by_k[k] = ev(levels_at(k), True)
    best = None
    for c in by_k.values():
        if _better(best, c, budget):
            best = c
    assert best is not None
    return best


def choose(profile: dict[str, Any], budget: int, bw: float) -> dict[str, Any]:
    """The combined plan: recompute levels per block and the offload hooks' spills for the rest,
    the shortest modelled step that holds the budget (else the lowest peak). Candidates: every
    prefix of the greedy move list (coarse, then refined around the best), and each level for
    all blocks alike, each with and without offload."""
    n = len(profile["blocks"])
    cache: dict[tuple[tuple[int, ...], bool], dict[str, Any]] = {}

    def ev(lv: list[int], off: bool) -> dict[str, Any]:
        key = (tuple(lv), off)
        if key not in cache:
            cache[key] = evaluate(profile, lv, bw, budget, off)
        return cache[key]

    best: dict[str, Any] | None = None
    for lvl in range(4):
        for off in (False, True):
            c = ev([lvl] * n, off)
            if _better(best, c, budget):
                best = c
    for seq in (moves(profile), moves(profile, hull=True)):
        c = _best_prefix(seq, n, ev, budget)
        if _better(best, c, budget):
            best = c
    # local search: one block's level changed at a time, while that improves
    assert best is not None
    for _round in range(LOCAL_ROUNDS):
        improved = False
        cur = best
        for b in range(n):
            for lvl in range(4):
                if lvl == cur["levels"][b]:
                    continue
                lv = list(cur["levels"])
                lv[b] = lvl
                c = ev(lv, True)
                if _better(best, c, budget):
                    best, improved = c, True
        if not improved:
            break
    assert best is not None
    best = dict(best)
    best["fits"] = _fits(best, budget)
    best["candidates"] = len(cache)
    return best
