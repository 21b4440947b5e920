"""Where offload contexts live: each thread's contexts by their arguments (the next
``offload(...)`` with the same ones on that thread returns the same context; they go with the
thread), the process's contexts in use, and what closed ones counted; ``spill_stats`` sums the
last two. Used by ``timeshare._offload``; of a context it knows only ``stats()``, ``close()`` and
``in_with()``."""

from __future__ import annotations

import threading
import weakref
from collections import Counter, OrderedDict
from typing import Any, Protocol

__all__ = ["MAX_CONTEXTS_PER_THREAD", "spill_stats"]

# Contexts a thread keeps for reuse by their arguments (each may hold a pinned arena).
MAX_CONTEXTS_PER_THREAD = 8
# Figures of a moment, not counts: a closed context adds none of them to the process totals.
_CUMULATIVE_SKIP = ("current_bytes", "entries", "pinned_capacity")


class _Context(Protocol):
    def stats(self) -> dict[str, int]: ...

    def close(self) -> None: ...

    def in_with(self) -> bool: ...


_LIVE: weakref.WeakSet[Any] = weakref.WeakSet()
_RETIRED: Counter[str] = Counter()
_THREAD = threading.local()


def _contexts() -> OrderedDict[tuple[Any, ...], Any]:
    """This thread's contexts by their arguments, least recently made first (they go with the
    thread; past MAX_CONTEXTS_PER_THREAD the oldest one not in a ``with`` is closed)."""
    contexts = getattr(_THREAD, "contexts", None)
    if contexts is None:
        contexts = _THREAD.contexts = OrderedDict()
    return contexts


def keep(key: tuple[Any, ...], ctx: _Context) -> None:
    """Keep ``ctx`` for reuse by its arguments; past MAX_CONTEXTS_PER_THREAD (e.g. a new
    memory_fn every step) close the oldest ones, up to the first one in a ``with``."""
    contexts = _contexts()
    contexts[key] = ctx
    while len(contexts) > MAX_CONTEXTS_PER_THREAD:
        old = next(iter(contexts.values()))
        if old.in_with():
            break
        old.close()


def forget(key: tuple[Any, ...] | None, ctx: _Context) -> None:
    """``ctx`` is no longer returned for its arguments."""
    contexts = _contexts()
    if contexts.get(key) is ctx:
        del contexts[key]


def enter(ctx: _Context) -> None:
    """``ctx`` is in use: ``spill_stats`` counts it."""
    _LIVE.add(ctx)


def retire(ctx: _Context, added: dict[str, int]) -> dict[str, int]:
    """``ctx`` closes: its counts join the process totals, less ``added`` (what an earlier
    retire of it returned, so that closing twice counts once); returns what is added now."""
    _LIVE.discard(ctx)
    stats = ctx.stats()
    for k, v in stats.items():
        if not any(s in k for s in _CUMULATIVE_SKIP):
            _RETIRED[k] += v - added.get(k, 0)
    return stats


def spill_stats() -> dict[str, int]:
    """``timeshare.spill.*`` figures over every offload context of the process (the lead merges
    them into ``timeshare.memory_stats()``)."""
    total: Counter[str] = Counter(_RETIRED)
    for o in list(_LIVE):
        total.update(o.stats())
    return dict(sorted(total.items()))
