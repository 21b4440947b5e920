"""The planner's step model: a step's time and peak device bytes when saved tensors are copied
over a link (``simulate``). ``timeshare._step_plan`` evaluates every candidate plan with it
(``evaluate``, for ``timeshare.fit`` and ``scripts/bench_spill.py``), and the benchmark its fixed
strategies too. Its inputs are what ``_step_plan.items_for`` makes of a profile: items (bytes,
pack, unpack, spill, category, and ``free`` when the profile recorded node ends) and the
recomputation delays (time, seconds).

The model is a replay of the recorded timeline in time order: packs, unpacks, the ends of the
nodes that unpacked a saved tensor, and recomputations (which hold the compute stream). The
event loop carries the compute clock; a step (``_Step``) carries the rest: the two copy
streams, the device memory as a list of (time, bytes) changes, and what the budget and the
prefetches see. Each kind of event is one of its methods.
"""

from __future__ import annotations

import heapq
from typing import Any

__all__: list[str] = []  # internal

COPY_LATENCY_S = 5e-6

# Event kinds, sorted in this order among events at one time: a recomputation delay, an unpack,
# the end of the node that unpacked an item, a pack.
_DELAY, _UNPACK, _NODE_END, _PACK = 0, 1, 1.5, 2


def simulate(items: list[dict[str, Any]], delays: list[tuple[float, float]], total: float,
             base: int, bw: float, strategy: str, spill: set[int], lookahead: int,
             budget: int = 0, engine: bool = False) -> tuple[float, int]:
    """Step time (s) and peak device bytes. Compute runs the recorded timeline, plus the
    recomputation delays; copies take COPY_LATENCY_S + bytes / bw on a device-to-host and a
    host-to-device stream beside compute. strategy: "sync" (every spill copied at pack and
    restored at unpack on the compute stream), "async" (spills on the side stream at pack,
    restores on demand), "planned" (the offload hooks: spills at pack on the side stream; at
    every unpack, restores of the next needed start in need order within the look-ahead or the
    room left under the budget; an allocation that would pass the budget waits for spill copies
    to complete, the make_room path). ``engine``: the restores started at an unpack are the spill
    engine's own choice (its ``prefetch_candidates``: the soonest needed always, then more
    within the window), as fit's whole-step plans model them; without it, only those that fit
    the room left."""
    events = _timeline(items, delays)
    need = [i for _t, k, i in events if k == _UNPACK and i in spill]  # unpack order of spilled
    step = _Step(items, spill, need, base, bw, strategy, lookahead, budget)
    c = last = 0.0  # the compute clock and the time of the last event
    for t, kind, i in events:
        c += t - last
        last = t
        if kind == _DELAY:
            c += delays[-1 - i][1]
        elif kind == _NODE_END:  # the node that unpacked it has run: its memory goes
            step.release(i, items[i]["bytes"], c)
        elif kind == _PACK:
            c = step.pack(i, c)
        else:
            c = step.unpack(i, c)
            if strategy == "planned" and engine:
                step.engine_prefetch(i, c)
            elif strategy == "planned":
                step.hooks_prefetch(i, c)
    c += total - last
    return c, base + step.peak()


def _timeline(items: list[dict[str, Any]],
              delays: list[tuple[float, float]]) -> list[tuple[float, float, int]]:
    """Every event of the step, (time, kind, index) in time order: each item's pack and unpack,
    the end of the node that unpacked it (items with ``free``: not before the unpack), and each
    recomputation delay (index -1 - its position in ``delays``)."""
    return sorted([(it["pack"], _PACK, i) for i, it in enumerate(items)] +
                  [(it["unpack"], _UNPACK, i) for i, it in enumerate(items)
                   if it["unpack"] >= 0] +
                  [(max(it["unpack"], it["free"]), _NODE_END, i)
                   for i, it in enumerate(items) if it["unpack"] >= 0 and "free" in it] +
                  [(t, _DELAY, -1 - k) for k, (t, _dt) in enumerate(delays)])


class _Step:
    """One simulated step in progress, beside the compute clock (``c``, which the event loop
    carries and each method that can make compute wait returns): the copy streams (``d2h``,
    ``h2d``: when each is next free), the device memory as (time, delta) changes, the bytes the
    budget sees (``live``, with ``releases``: spill copies completing), the restores started
    (``ready``: when each completes; ``inflight``: their bytes) and what each prefetch policy
    remembers of the unpack order ``need``."""

    __slots__ = ("items", "spill", "need", "base", "bw", "strategy", "lookahead", "budget",
                 "d2h", "h2d", "mem", "releases", "live", "ready", "next_need", "inflight",
                 "pos_total", "neg_heap", "neg_done", "unpacked", "first_left")

    def __init__(self, items: list[dict[str, Any]], spill: set[int], need: list[int], base: int,
                 bw: float, strategy: str, lookahead: int, budget: int) -> None:
        self.items, self.spill, self.need = items, spill, need
        self.base, self.bw, self.strategy = base, bw, strategy
        self.lookahead, self.budget = lookahead, budget
        self.d2h = self.h2d = 0.0
        self.mem: list[tuple[float, int]] = []
        self.releases: list[tuple[float, int]] = []
        self.live = base
        self.ready: dict[int, float] = {}
        self.next_need = 0  # the hooks' position in need
        self.inflight = 0
        # held bytes at c for the prefetch window: positive deltas so far, minus negatives passed
        self.pos_total = 0
        self.neg_heap: list[tuple[float, int]] = []
        self.neg_done = 0
        self.unpacked: set[int] = set()  # spilled items unpacked (the engine has released them)
        self.first_left = 0  # the engine's first entry of need not yet unpacked

    def cp(self, n: int) -> float:
        """Seconds to copy n bytes over the link."""
        return COPY_LATENCY_S + n / self.bw

    def add(self, when: float, d: int) -> None:
        """Device memory changes by d bytes at ``when``."""
        self.mem.append((when, d))
        if d > 0:
            self.pos_total += d
        else:
            heapq.heappush(self.neg_heap, (when, d))

    def held(self, c: float) -> int:
        """Device bytes held at c, as the prefetch window sees them (restores already started
        count from their start)."""
        neg_heap = self.neg_heap
        while neg_heap and neg_heap[0][0] <= c:
            self.neg_done += heapq.heappop(neg_heap)[1]
        return self.base + self.pos_total + self.neg_done

    def restore(self, k: int, held: int, c: float) -> int:
        """A prefetch of item k starts at c, after those before it on the copy stream."""
        nb = self.items[k]["bytes"]
        start = max(c, self.h2d)
        self.h2d = start + self.cp(nb)
        self.ready[k] = self.h2d
        self.inflight += nb
        self.add(start, nb)
        return held + nb

    def release(self, i: int, n: int, c: float) -> None:
        """Item i's n bytes leave the device at c (a spilled item's left the budget's count
        when its spill copy completed)."""
        self.add(c, -n)
        if i not in self.spill:
            self.live -= n

    def pack(self, i: int, c: float) -> float:
        """Item i is saved at c: under a budget it first waits for the room (make_room); a
        spilled item is then copied out, on the compute stream ("sync") or the device-to-host
        one. Returns the compute clock after."""
        n = self.items[i]["bytes"]
        if self.budget:
            c = self.make_room(n, c)
        self.live += n
        self.add(c, n)
        if i not in self.spill:
            return c
        if self.strategy == "sync":
            c += self.cp(n)
            self.add(c, -n)
        else:
            self.d2h = max(c, self.d2h) + self.cp(n)
            self.add(self.d2h, -n)
            heapq.heappush(self.releases, (self.d2h, n))
        return c

    def make_room(self, n: int, c: float) -> float:
        """Spill copies completed by c free their bytes; while n more would pass the budget,
        compute waits for the next spill copy to complete. Returns the compute clock after."""
        releases = self.releases
        while releases and releases[0][0] <= c:
            self.live -= heapq.heappop(releases)[1]
        while releases and self.live + n > self.budget:
            when, m = heapq.heappop(releases)
            c = max(c, when)
            self.live -= m
        return c

    def unpack(self, i: int, c: float) -> float:
        """Item i is unpacked at c: a spilled one is restored (on the compute stream for "sync",
        else by its prefetch or on demand on the host-to-device stream) and held from here until
        its node has run; without recorded node ends its memory goes at the unpack. Returns the
        compute clock after."""
        it = self.items[i]
        n = it["bytes"]
        if i not in self.spill:
            if "free" not in it:
                self.add(c, -n)
                self.live -= n
            return c
        if self.strategy == "sync":
            self.add(c, n)
            c += self.cp(n)
        elif i in self.ready:
            c = max(c, self.ready.pop(i))
            self.inflight -= n
        else:
            start = max(c, self.h2d, self.d2h)
            self.add(start, n)
            self.h2d = start + self.cp(n)
            c = self.h2d
        if "free" not in it:
            self.add(c, -n)
        return c

    def engine_prefetch(self, i: int, c: float) -> None:
        """The offload hooks ask the engine at every unpack of a tensor they hold: its
        prefetch_candidates, the spilled entries not yet unpacked soonest first while their
        bytes fit a window of the look-ahead or the room left under the budget, whichever is
        larger; the soonest one not yet restoring is always started."""
        items, need, ready, unpacked = self.items, self.need, self.ready, self.unpacked
        if not (items[i]["spill"] and items[i]["cat"] == "kept"):
            return
        unpacked.add(i)
        while self.first_left < len(need) and need[self.first_left] in unpacked:
            self.first_left += 1
        held = self.held(c)
        window = max(self.lookahead, self.budget - held)
        taken, started = 0, False
        for k in need[self.first_left:]:
            if k in unpacked:
                continue
            taken += items[k]["bytes"]
            if window <= 0 or taken > window and (started or k in ready):
                break
            if k not in ready:
                held = self.restore(k, held, c)
                started = True
            if taken > window:
                break

    def hooks_prefetch(self, i: int, c: float) -> None:
        """The offload hooks without the engine: every unpack starts restores of the next
        needed, in need order, while they fit the look-ahead or the room left under the
        budget."""
        need, ready = self.need, self.ready
        while (self.next_need < len(need) and need[self.next_need] != i
               and need[self.next_need] in ready):
            self.next_need += 1
        if self.next_need < len(need) and need[self.next_need] == i:
            self.next_need += 1
        held = self.held(c)
        for k in need[self.next_need:]:
            nb = self.items[k]["bytes"]
            if k not in ready:
                if (self.inflight + nb > max(self.lookahead, 1)
                        and held + nb > self.budget + self.lookahead):
                    break
                held = self.restore(k, held, c)

    def peak(self) -> int:
        """The most bytes the memory changes reach above base (at one time, increases before
        decreases)."""
        cur = peak = 0
        for _t, delta in sorted(self.mem, key=lambda e: (e[0], -e[1])):
            cur += delta
            peak = max(peak, cur)
        return peak
