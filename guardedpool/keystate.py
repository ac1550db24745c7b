"""Per-key bookkeeping: the idle stack, the waiter queue, the counts, the counters.

One :class:`KeyState` per key (inbox). Plain data plus the arithmetic the stats need; the
pool mutates it without awaiting between a decision and its recording, which is what keeps
the counts consistent under cancellation.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from .reconnect import KeyBackoff
from .records import CloseReason, ConnectionRecord

__all__ = ["KeyState", "Pooled", "Waiter", "aggregate"]

C = TypeVar("C")


@dataclass(slots=True, eq=False)
class Pooled(Generic[C]):
    """A record and the live connection object it describes (``None`` while opening)."""

    record: ConnectionRecord
    keystate: KeyState[C]
    conn: C | None = None
    leak_logged: bool = False
    fresh: bool = True  # straight from the connector: login just proved it works


Waiter = asyncio.Future[Pooled[C]]


# Every close reason at zero: the stable shape of the "closed" and "reconnects" stats.
_NO_CLOSES = {reason.value: 0 for reason in CloseReason}


@dataclass(slots=True, eq=False)
class KeyState(Generic[C]):
    key: str
    idle: list[Pooled[C]] = field(default_factory=list)  # a stack: LIFO hand-out
    waiters: list[Waiter[C]] = field(default_factory=list)  # FIFO, short
    count: int = 0  # slots held: opening + idle + in use + closing
    opening: int = 0
    in_use: int = 0
    closing: int = 0
    backoff: KeyBackoff = field(default_factory=KeyBackoff)
    replaced: list[CloseReason] = field(default_factory=list)
    # counters
    acquires: int = 0
    acquire_wait_total: float = 0.0
    acquire_wait_max: float = 0.0
    timeouts: int = 0
    opened: int = 0
    connect_failures: int = 0
    closed: dict[str, int] = field(default_factory=dict)
    reconnects: dict[str, int] = field(default_factory=dict)

    def live_waiters(self) -> int:
        return sum(1 for w in self.waiters if not w.done())

    def stats(self) -> dict[str, Any]:
        err = self.backoff.last_error
        return {
            "open": len(self.idle) + self.in_use,
            "idle": len(self.idle),
            "in_use": self.in_use,
            "opening": self.opening,
            "closing": self.closing,
            "waiting": self.live_waiters(),
            "acquires": self.acquires,
            "acquire_wait_total": self.acquire_wait_total,
            "acquire_wait_max": self.acquire_wait_max,
            "acquire_timeouts": self.timeouts,
            "opened": self.opened,
            "closed": {**_NO_CLOSES, **self.closed},
            "closed_total": sum(self.closed.values()),
            "connect_failures": self.connect_failures,
            "reconnects": {**_NO_CLOSES, **self.reconnects},
            "consecutive_failures": self.backoff.failures,
            "last_error": None if err is None else f"{type(err).__name__}: {err}",
        }


# Per-key figures that make no sense summed over keys.
_NOT_SUMMED = frozenset({"consecutive_failures", "last_error"})


def aggregate(per_key: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Sum per-key stats into pool totals; the same keys whether or not any key exists."""
    totals = {k: v for k, v in KeyState("").stats().items() if k not in _NOT_SUMMED}
    for entry in per_key:
        for name, value in entry.items():
            if name in _NOT_SUMMED:
                continue
            if isinstance(value, dict):
                bucket = totals[name]
                for sub, n in value.items():
                    bucket[sub] += n
            elif name == "acquire_wait_max":
                totals[name] = max(totals[name], value)
            else:
                totals[name] += value
    return totals
