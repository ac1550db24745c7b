"""The held-lease book a budget keeps in its own process: counts, losses, the watchdog.

Shared by :class:`~guardedpool.fleet.LocalBudget` and
:class:`~guardedpool.fleet.RedisBudget` so that both lose leases the same way:

* :meth:`LeaseBook.lose` marks a lease lost once and tells every listener at once,
  synchronously, so the pool can abort the connection before its next command.
* :meth:`LeaseBook.arm` keeps one ``loop.call_at`` timer on the earliest local deadline.
  A timer callback runs in the same event-loop turn as the I/O callbacks that were ready
  with it, and so *before* any task step they wake: after a SIGSTOP, the pool hears that
  the leases expired before a borrower's task can send another command.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable, Iterator

from .lease import Lease, LostReason, clock

__all__ = ["LeaseBook", "LostListener"]

log = logging.getLogger("guardedpool.fleet")

# Losses that are part of normal operation are logged at INFO, the others at WARNING.
_ROUTINE = frozenset({LostReason.CLOSED, LostReason.MOVED, LostReason.REVOKED})

LostListener = Callable[[Lease], None]
"""Called once per lost lease, synchronously, on the event loop's thread; must not block."""


class LeaseBook:
    """The leases one budget holds, by token, with per-key counts and loss listeners."""

    def __init__(self, name: str, consequence: str) -> None:
        self.name = name
        self.consequence = consequence  # for the log: what the holder must do now
        self.leases: dict[tuple[str, str], Lease] = {}  # by (key, token)
        self.per_key: dict[str, int] = {}
        self.lost_total = 0
        self._listeners: list[LostListener] = []
        self._timer: asyncio.TimerHandle | None = None
        self._armed_for = math.inf  # the deadline the timer is set for (inf: no timer)

    def __iter__(self) -> Iterator[Lease]:
        return iter(list(self.leases.values()))

    def __len__(self) -> int:
        return len(self.leases)

    def held(self, key: str) -> int:
        """Leases on ``key`` this process holds (lost ones too, until released)."""
        return self.per_key.get(key, 0)

    def add(self, lease: Lease) -> None:
        self.leases[lease.key, lease.token] = lease
        self.per_key[lease.key] = self.per_key.get(lease.key, 0) + 1
        if lease.valid_until < self._armed_for:  # O(1) on the hot path: rarely earlier
            self.arm()

    def remove(self, lease: Lease) -> bool:
        """Forget ``lease``; False if it was not held (released twice). The watchdog is
        left as it is: if it fires for a lease gone since, it finds nothing and re-arms."""
        if self.leases.pop((lease.key, lease.token), None) is None:
            return False
        left = self.per_key[lease.key] - 1
        if left:
            self.per_key[lease.key] = left
        else:
            del self.per_key[lease.key]
        lease.released = True
        return True

    # -- losses ----------------------------------------------------------------------

    def subscribe(self, listener: LostListener) -> Callable[[], None]:
        self._listeners.append(listener)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._listeners.remove(listener)

        return unsubscribe

    def lose(self, lease: Lease, reason: str) -> bool:
        """Mark ``lease`` lost for ``reason`` and notify; False if it already was or is gone."""
        if lease.lost is not None or lease.released:
            return False
        lease.lost = reason
        self.lost_total += 1
        log.log(
            logging.INFO if reason in _ROUTINE else logging.WARNING,
            "%s: lease on key %r lost (%s); %s",
            self.name,
            lease.key,
            reason,
            self.consequence,
            extra={"lease_holder": self.name, "key": lease.key, "reason": reason},
        )
        for listener in list(self._listeners):
            try:
                listener(lease)
            except Exception:  # one bad listener must not keep the others from hearing
                log.exception(
                    "%s: lost-lease listener failed for key %r",
                    self.name,
                    lease.key,
                    extra={"lease_holder": self.name, "key": lease.key},
                )
        return True

    def expire_due(self, now: float | None = None) -> list[Lease]:
        """Lose every held lease whose local deadline has passed; return them."""
        now = clock() if now is None else now
        due = [
            lease
            for lease in self.leases.values()
            if lease.lost is None and lease.valid_until <= now
        ]
        for lease in due:
            self.lose(lease, "expired")
        return due

    # -- the watchdog ----------------------------------------------------------------

    def arm(self) -> None:
        """(Re)schedule the watchdog on the earliest local deadline of a held lease.

        Outside a running event loop (a synchronous test) there is no watchdog; callers
        then rely on :meth:`Lease.valid` and :meth:`expire_due`.
        """
        self.disarm()
        earliest = min(
            (lease.valid_until for lease in self.leases.values() if lease.lost is None),
            default=math.inf,
        )
        if earliest == math.inf:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        delay = max(0.0, earliest - clock())
        self._timer = loop.call_at(loop.time() + delay, self._fire)
        self._armed_for = earliest

    def _fire(self) -> None:
        self._timer = None
        self._armed_for = math.inf
        self.expire_due()
        self.arm()

    def close_all(self, release: Callable[[Lease], None]) -> None:
        """The budget is closing: every lease lost as ``closed`` (listeners hear it), then
        given back through ``release``; the watchdog stops."""
        for lease in self:
            self.lose(lease, LostReason.CLOSED)
            release(lease)
        self.disarm()

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._armed_for = math.inf
