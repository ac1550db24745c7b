"""The pool's side of a fleet budget: a lease per slot, taken before the connect.

The contract is :mod:`guardedpool.fleet.budget`'s; this module is where the pool keeps it,
so that ``pool.py`` only calls in at four points:

* :meth:`LeaseHook.take` in the open task, after the slot is taken and before the
  connect: waits for a lease until just before the first waiter's deadline, so that the
  waiter gets the budget's verdict (a :class:`~guardedpool.errors.PoolTimeout` saying the
  fleet budget was the limit, or :class:`~guardedpool.fleet.BudgetUnavailable`) rather
  than a bare timeout.
* :meth:`LeaseHook.give_back` where the slot is freed (connect failed, or the socket is
  verified closed): the lease is released there and nowhere else, so the fleet-wide count
  counts sockets that exist.
* :meth:`LeaseHook.usable` before every hand-out: a lost or expired lease means the
  connection is aborted, never used.
* the listener :meth:`LeaseHook.subscribe` registers at pool start: a lost lease aborts
  the connection holding it at once (idle: retired; borrowed: aborted under its borrower,
  whose next command fails without reaching the server).

The pool does not own the budget: it never starts or closes it beyond ``acquire``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from .books import Slot
from .errors import PoolTimeout
from .records import ConnState, Event

if TYPE_CHECKING:
    from .fleet.budget import Budget
    from .fleet.lease import Lease
    from .keystate import KeyState, Waiter

__all__ = ["LeaseHook", "budget_timeout"]

log = logging.getLogger("guardedpool.pool")

C = TypeVar("C")

_COUNTS = (
    "lease_waits",
    "lease_timeouts",
    "lease_unavailable",
    "lost_aborts",
    "invalid_at_hand_out",
)
_LEAD = 0.05  # s: the budget's verdict comes this long before the first waiter's deadline


def budget_timeout(
    key: str, waited: float, cause: BaseException | None, *, failed_check: str | None = None
) -> PoolTimeout:
    """The ``PoolTimeout`` of an acquire whose wait was for the fleet budget."""
    return PoolTimeout(
        key, waited, cause, failed_check=failed_check, limited_by="the fleet budget"
    )


class LeaseHook(Generic[C]):
    """Leases of one pool from one budget.

    Args:
        budget: the fleet budget (see :class:`guardedpool.fleet.Budget`).
        acquire_timeout: the pool's ``acquire_timeout``, seconds: the bound on a lease
            wait when no waiter's deadline is known.
        on_lost: ``(slot)`` for a slot whose lease was lost: the pool retires or aborts it.
        clock: the pool's monotonic clock, seconds.
    """

    def __init__(
        self,
        budget: Budget,
        acquire_timeout: float,
        on_lost: Callable[[Slot[C]], None],
        clock: Callable[[], float],
    ) -> None:
        self.budget = budget
        self._acquire_timeout = acquire_timeout
        self._on_lost = on_lost
        self._clock = clock
        self._slots: dict[Lease, Slot[C]] = {}
        self._deadlines: dict[Waiter[C], float] = {}
        self._unsubscribe: Callable[[], None] | None = None
        self.waiting: dict[str, int] = {}  # key -> opens waiting for a lease now
        self.counts = dict.fromkeys(_COUNTS, 0)

    # -- pool start / close ----------------------------------------------------------

    def subscribe(self) -> None:
        """Listen for lost leases (idempotent)."""
        if self._unsubscribe is None:
            self._unsubscribe = self.budget.subscribe(self._lost)

    def unsubscribe(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    # -- waiters' deadlines ----------------------------------------------------------

    def waiting_until(self, waiter: Waiter[C], deadline: float) -> None:
        """``waiter`` gives up at ``deadline`` (pool clock)."""
        self._deadlines[waiter] = deadline

    def done_waiting(self, waiter: Waiter[C]) -> None:
        self._deadlines.pop(waiter, None)

    def _timeout_for(self, ks: KeyState[C]) -> float:
        """Seconds to wait for a lease: until just before the first live waiter's deadline
        (so it hears the verdict); ``acquire_timeout`` when no waiter is known."""
        now = self._clock()
        ends = [self._deadlines[w] for w in ks.waiters or () if w in self._deadlines]
        if not ends:
            return self._acquire_timeout
        left = min(ends) - now
        return max(0.0, left - min(_LEAD, left / 10))

    # -- the four points -------------------------------------------------------------

    async def take(self, slot: Slot[C]) -> None:
        """Put a lease for the slot's key on ``slot``. Raises the budget's
        ``BudgetTimeout`` / ``BudgetUnavailable``; a cancelled take holds nothing."""
        ks = slot.keystate
        key = ks.key
        self.waiting[key] = self.waiting.get(key, 0) + 1
        self.counts["lease_waits"] += 1
        try:
            lease = await self.budget.acquire(key, timeout=self._timeout_for(ks))
        except Exception as exc:
            from .fleet.errors import BudgetTimeout, BudgetUnavailable

            if isinstance(exc, BudgetTimeout):
                self.counts["lease_timeouts"] += 1
            elif isinstance(exc, BudgetUnavailable):
                self.counts["lease_unavailable"] += 1
            raise
        finally:
            left = self.waiting[key] - 1
            if left:
                self.waiting[key] = left
            else:
                del self.waiting[key]
        # No await from here: the lease is on the slot before anyone can cancel us.
        slot.lease = lease
        self._slots[lease] = slot

    def give_back(self, slot: Slot[C]) -> None:
        """The slot is freed (its socket is verified gone, or never existed): release."""
        lease = slot.lease
        if lease is not None:
            slot.lease = None
            self._slots.pop(lease, None)
            self.budget.release(lease)

    def usable(self, slot: Slot[C]) -> bool:
        """Whether ``slot``'s connection may be handed out (its lease is valid)."""
        lease = slot.lease
        if lease is None or lease.valid():
            return True
        self.counts["invalid_at_hand_out"] += 1
        return False

    def fail(self, ks: KeyState[C], exc: Exception, waited: float) -> Exception:
        """The error the first waiter gets when ``take`` raised ``exc``."""
        from .fleet.errors import BudgetTimeout

        if isinstance(exc, BudgetTimeout):
            return budget_timeout(ks.key, waited, exc)
        return exc

    def _lost(self, lease: Lease) -> None:
        slot = self._slots.get(lease)
        if slot is None or slot.record.state in (ConnState.CLOSING, ConnState.CLOSED):
            return
        record = slot.record
        log.warning(
            "guardedpool: fleet lease lost (%s) for key %s, connection %s %s: aborting it",
            lease.lost,
            record.key,
            record.id,
            record.state.value,
            extra={"key": record.key, "conn_id": record.id, "lease_lost": lease.lost},
        )
        if slot.record.state is ConnState.OPENING:
            return  # the open checks the lease once connected
        self.counts["lost_aborts"] += 1
        record.note(self._clock(), Event.POISONED, f"fleet lease lost: {lease.lost}")
        self._on_lost(slot)

    # -- stats -----------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """The budget's figures (``held``, ``lost``, ``renewals``...) plus the pool's:
        ``pool_waiting`` (opens waiting for a lease now), ``pool_lease_waits``,
        ``pool_lease_timeouts``, ``pool_lease_unavailable``, ``pool_lost_aborts``
        (connections aborted for a lost lease), ``pool_invalid_at_hand_out``."""
        out: dict[str, Any] = dict(self.budget.stats())
        out["pool_waiting"] = sum(self.waiting.values())
        for name, value in self.counts.items():
            out[f"pool_{name}"] = value
        return out
