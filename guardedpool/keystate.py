"""Per-key bookkeeping: the idle stack, the waiter queue, the counts, the counters.

One :class:`KeyState` per key (inbox). Plain data plus the arithmetic the stats need. The
counts of connections by state (``slots``, ``opening``, ``in_use``, ``closing``, the idle
stack, ``opened``, ``closed``) change only in :meth:`guardedpool.books.Books.move`; the pool
changes the rest without awaiting between a decision and its recording, which is what
keeps them consistent under cancellation.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from .books import Slot
from .limits import KeyLimits
from .reconnect import KeyBackoff
from .records import CloseReason

__all__ = ["KeyState", "Waiter", "aggregate"]

C = TypeVar("C")

Waiter = asyncio.Future[Slot[C]]
"""A task waiting for a connection of a key; its result is the slot handed to it."""


# Every close reason at zero: the stable shape of the "closed" and "reconnects" stats.
_NO_CLOSES = {reason.value: 0 for reason in CloseReason}

# Retirements remembered per key to name the reason of a later reconnect.
_REPLACED_KEPT = 64


@dataclass(slots=True, eq=False)
class KeyState(Generic[C]):
    """One key's connections, waiters and counters.

    Containers most keys never need stay None until first used: with one connection per
    inbox and 10,000 inboxes, per-key state weighs as much as the connections themselves.
    """

    key: str
    idle: list[Slot[C]] = field(default_factory=list)  # a stack: LIFO hand-out
    waiters: list[Waiter[C]] | None = None  # FIFO, short
    slots: int = 0  # slots taken: opening + idle + in use + closing
    opening: int = 0
    in_use: int = 0
    closing: int = 0
    backoff: KeyBackoff | None = None  # while connecting, and once the key has failed
    limits: KeyLimits | None = None  # since a 2nd login or a server limit, until settled
    first_login: float | None = None  # the only login of the last minute, while no limits
    replaced: list[CloseReason] | None = None  # why recent connections went, oldest first
    # counters
    acquires: int = 0
    acquire_wait_total: float = 0.0
    acquire_wait_max: float = 0.0
    timeouts: int = 0
    opened: int = 0
    connect_failures: int = 0
    closed: dict[str, int] | None = None  # by close reason
    reconnects: dict[str, int] | None = None  # by the reason the predecessor closed
    quiet_since: float | None = None  # since when the key has held nothing (see quiet())

    def add_waiter(self, waiter: Waiter[C]) -> None:
        if self.waiters is None:
            self.waiters = [waiter]
        else:
            self.waiters.append(waiter)

    def drop_waiter(self, waiter: Waiter[C]) -> None:
        waiters = self.waiters
        if not waiters:
            return
        try:
            waiters.remove(waiter)  # the first one, mostly: a list stays short
        except ValueError:
            return
        if not waiters:
            self.waiters = None

    def first_waiter(self) -> Waiter[C] | None:
        """The first waiter still waiting (FIFO), left queued; those that gave up are dropped."""
        waiters = self.waiters
        while waiters and waiters[0].done():
            waiters.pop(0)
        if not waiters:
            self.waiters = None
            return None
        return waiters[0]

    def next_waiter(self) -> Waiter[C] | None:
        """Dequeue the first waiter still waiting (FIFO), dropping any that gave up."""
        waiter = self.first_waiter()
        if waiter is not None:
            self.drop_waiter(waiter)
        return waiter

    def connect_backoff(self) -> KeyBackoff:
        """The key's backoff for a connect about to start, shared by concurrent connects."""
        if self.backoff is None:
            self.backoff = KeyBackoff()
        return self.backoff

    def connect_finished(self) -> None:
        """Forget the backoff of a key that never failed: it has nothing to remember."""
        backoff = self.backoff
        if (
            self.opening == 0
            and backoff is not None
            and backoff.last_error is None
            and backoff.level == 0
        ):
            self.backoff = None

    def last_error(self) -> BaseException | None:
        """The key's last transient connect error (kept after it recovers, for the stats)."""
        return None if self.backoff is None else self.backoff.last_error

    def quiet(self, now: float) -> bool:
        """Nothing to remember but counters: no slot, no waiter, no backoff in progress
        (a retry scheduled after ``now``). Such a key may be forgotten."""
        backoff = self.backoff
        limits = self.limits
        return (
            self.slots == 0
            and not self.waiters
            and (backoff is None or backoff.next_attempt_at <= now)
            # a throttle or a lowered cap, until it is over (guardedpool.limits)
            and (limits is None or limits.quiet_at <= now)
        )

    def pristine(self) -> bool:
        """Quiet and never counted anything: forgetting it loses nothing at all."""
        return (
            self.acquires == 0
            and self.opened == 0
            and self.timeouts == 0
            and self.connect_failures == 0
            and self.closed is None
            and self.reconnects is None
            and (self.backoff is None or self.backoff.failures == 0)
        )

    def fold_into(self, totals: KeyState[C]) -> None:
        """Add this (quiet) key's counters to ``totals``, the pool's forgotten keys."""
        totals.acquires += self.acquires
        totals.acquire_wait_total += self.acquire_wait_total
        totals.acquire_wait_max = max(totals.acquire_wait_max, self.acquire_wait_max)
        totals.timeouts += self.timeouts
        totals.opened += self.opened
        totals.connect_failures += self.connect_failures
        for mine, name in ((self.closed, "closed"), (self.reconnects, "reconnects")):
            if mine:
                theirs = getattr(totals, name) or {}
                for reason, n in mine.items():
                    theirs[reason] = theirs.get(reason, 0) + n
                setattr(totals, name, theirs)

    def live_waiters(self) -> int:
        return sum(1 for w in self.waiters if not w.done()) if self.waiters else 0

    def count_close(self, reason: CloseReason, *, replace: bool) -> None:
        """Count a retirement; ``replace``: the next connection opened replaces this one."""
        closed = self.closed
        if closed is None:
            closed = self.closed = {}
        closed[reason.value] = closed.get(reason.value, 0) + 1
        if replace:
            if self.replaced is None:
                self.replaced = []
            self.replaced.append(reason)
            if len(self.replaced) > _REPLACED_KEPT:
                del self.replaced[0]

    def count_reconnect(self) -> CloseReason | None:
        """A connection is opening: the reason of the one it replaces, if any (counted)."""
        replaced = self.replaced
        if not replaced:
            return None
        reason = replaced.pop(0)
        if not replaced:
            self.replaced = None
        reconnects = self.reconnects
        if reconnects is None:
            reconnects = self.reconnects = {}
        reconnects[reason.value] = reconnects.get(reason.value, 0) + 1
        return reason

    def stats(self) -> dict[str, Any]:
        err = self.last_error()
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
            "closed": {**_NO_CLOSES, **(self.closed or {})},
            "closed_total": sum(self.closed.values()) if self.closed else 0,
            "connect_failures": self.connect_failures,
            "reconnects": {**_NO_CLOSES, **(self.reconnects or {})},
            "consecutive_failures": 0 if self.backoff is None else self.backoff.failures,
            "last_error": None if err is None else f"{type(err).__name__}: {err}",
        }


# Per-key figures that make no sense summed over keys.
_NOT_SUMMED = frozenset(
    {
        "consecutive_failures",
        "last_error",
        # guardedpool.limits.limit_stats, added per key by the pool
        "throttled",
        "throttled_until",
        "throttled_for",
        "effective_max_per_key",
        "logins_last_minute",
    }
)


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
