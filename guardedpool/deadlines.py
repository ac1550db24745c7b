"""When each connection next needs the pool's attention: due times in a heap (sans-I/O).

Housekeeping used to walk every connection every ``housekeeping_interval``: at 10,000
connections that is ~1% of a core spent finding out that nothing is due. Here each live
connection has one entry in a :class:`Deadlines` heap, keyed by the time it next needs a
look (:func:`attention_at`): its idle timeout, its jittered ``max_lifetime``, its heartbeat,
its leak threshold while it is lent out. Housekeeping pops what is due, decides, and pushes
the connection back with its next due time, so a round costs what is due, not what is open.

The invalidation is lazy. The acquire and release hot paths never touch the heap: a due
time computed before a borrow or a release may come early (the connection is looked at,
nothing is due, it is pushed again) and is never more than :func:`recheck_after` late,
because every connection is looked at again within that bound whatever its state:

* ``leak_threshold`` is part of the bound, so a borrow that starts right after a look is
  still flagged on time (the look before its threshold sets the exact due time);
* a heartbeat due while a connection was lent out comes at most ``recheck_after`` after
  its release (it was lent out: it was in use, hence not silently dead for long);
* an idle connection's cheap liveness check (``Connector.is_alive``) runs every round
  while the pool holds at most :data:`LIVENESS_PER_ROUND` connections, as before; above
  that the checks are spread so that a round makes at most about that many.

Heartbeats are spread: each connection's interval is shortened by a fixed share of up to
:data:`HEARTBEAT_SPREAD` of itself, drawn from its record id, so 10,000 connections opened
together do not all NOOP in the same round, and the spread survives re-anchoring.

Everything here is plain data and arithmetic over a record, a config and ``now``.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable
from typing import Generic, TypeVar

from .config import PoolConfig
from .records import ConnectionRecord, ConnState

__all__ = [
    "HEARTBEAT_SPREAD",
    "LIVENESS_PER_ROUND",
    "Deadlines",
    "attention_at",
    "heartbeat_at",
    "recheck_after",
    "spread",
]

T = TypeVar("T")

HEARTBEAT_SPREAD = 0.1
"""Largest share of ``heartbeat_interval`` a connection's heartbeat comes early by."""

LIVENESS_PER_ROUND = 256
"""Idle connections whose liveness a housekeeping round checks, about, at most."""

_IDLE = ConnState.IDLE
_IN_USE = ConnState.IN_USE
_GOLDEN = 0x9E3779B1  # Knuth's multiplicative hash: consecutive ids land far apart


def spread(ident: int) -> float:
    """A fixed draw in [0, 1) for the integer ``ident`` (a record id), evenly spread over
    consecutive ids: the same connection always gets the same share."""
    return ((ident * _GOLDEN) & 0xFFFFFFFF) / 4294967296.0


def heartbeat_at(record: ConnectionRecord, config: PoolConfig) -> float | None:
    """When an idle connection is due for its heartbeat NOOP (pool-clock seconds), or None
    when heartbeats are off: ``last_checked_at`` plus ``heartbeat_interval`` shortened by
    up to :data:`HEARTBEAT_SPREAD` of itself (a share fixed per record, see :func:`spread`)."""
    interval = config.heartbeat_interval
    if interval is None:
        return None
    return record.last_checked_at + interval * (1.0 - HEARTBEAT_SPREAD * spread(record.id))


def recheck_after(config: PoolConfig, live: int) -> tuple[float, float]:
    """The longest gaps, in seconds, between two looks at one connection: ``(idle, lent)``.

    ``lent`` (any connection out of the idle stack) is the smallest of ``leak_threshold``,
    ``heartbeat_interval`` and ``idle_timeout``, and at least ``housekeeping_interval``.
    ``idle`` is ``housekeeping_interval`` while ``live`` (connections the pool holds) is at
    most :data:`LIVENESS_PER_ROUND`, then grows with ``live`` so that a round checks the
    liveness of about that many; never more than ``lent``.
    """
    step = config.housekeeping_interval
    heartbeat = config.heartbeat_interval
    lent = min(
        config.leak_threshold, config.idle_timeout, math.inf if heartbeat is None else heartbeat
    )
    lent = max(lent, step)
    idle = min(step * max(1.0, live / LIVENESS_PER_ROUND), lent)
    return idle, lent


def attention_at(
    record: ConnectionRecord,
    now: float,
    config: PoolConfig,
    recheck: tuple[float, float],
    *,
    warned: bool = False,
) -> float | None:
    """When housekeeping should next look at ``record`` (pool-clock seconds), or None when
    it never needs to again (retired: ``CLOSING`` or ``CLOSED``; ``OPENING`` is not yet).

    ``recheck``: :func:`recheck_after`'s ``(idle, lent)`` bounds. ``warned``: the current
    borrow was already reported as a leak suspect (only ``reclaim_after`` is left to watch).
    An IDLE connection is due at its expiry, its idle timeout, its heartbeat or its next
    liveness check, whichever comes first; one out of the idle stack at its leak threshold,
    its reclaim time (both for a borrower only) or its next look, whichever comes first.
    The result may be ``<= now`` (due already).
    """
    state = record.state
    if state is _IDLE:
        due = min(
            record.expires_at,
            record.last_used_at + config.idle_timeout,
            now + recheck[0],
        )
        beat = heartbeat_at(record, config)
        return due if beat is None or beat > due else beat
    if state is not _IN_USE:
        return None
    due = now + recheck[1]
    if record.borrowed_by is not None:
        if not record.long_hold and not warned:
            due = min(due, record.borrowed_at + config.leak_threshold)
        if config.reclaim_after is not None:
            due = min(due, record.borrowed_at + config.reclaim_after)
    return due


class Deadlines(Generic[T]):
    """Items by due time (a binary heap): push one, pop those due, peek at the earliest.

    Ties pop first in, first out. No removal: a caller that changes its mind leaves the
    entry and ignores it when it pops (lazy invalidation). Each entry is one tuple.
    """

    __slots__ = ("_heap", "_seq")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, T]] = []
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, due: float, item: T) -> None:
        """Schedule ``item`` at ``due`` (any float on the caller's clock)."""
        heapq.heappush(self._heap, (due, next(self._seq), item))

    def earliest(self) -> float | None:
        """The earliest due time held, or None when empty."""
        return self._heap[0][0] if self._heap else None

    def prune(self, keep: Callable[[T], bool]) -> int:
        """Drop every entry whose item ``keep`` rejects (stale ones); returns how many.
        O(entries): for a caller whose stale entries came to outnumber the live ones."""
        heap = self._heap
        kept = [entry for entry in heap if keep(entry[2])]
        dropped = len(heap) - len(kept)
        if dropped:
            heapq.heapify(kept)
            self._heap = kept
        return dropped

    def pop_due(self, now: float, limit: int) -> list[tuple[float, T]]:
        """Take up to ``limit`` (>= 1) entries due at or before ``now``, earliest first, as
        ``(due, item)`` pairs; fewer than ``limit`` means none due is left."""
        heap = self._heap
        out: list[tuple[float, T]] = []
        while heap and heap[0][0] <= now and len(out) < limit:
            due, _, item = heapq.heappop(heap)
            out.append((due, item))
        return out
