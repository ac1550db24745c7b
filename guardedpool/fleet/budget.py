"""The ``Budget`` protocol the pool asks for leases, and :class:`LocalBudget`.

A budget caps how many connections per key may exist at once across every process that
shares it. The pool talks to it at four points, and only these:

1. **Before a connect** (the slot is already taken in the pool, the socket does not exist
   yet): ``lease = await budget.acquire(key, timeout=remaining)``. No room within
   ``timeout`` raises :class:`BudgetTimeout`; an unreachable store raises
   :class:`BudgetUnavailable`. Either way no lease is held and the pool frees the slot.
   If the connect fails, the pool calls ``release(lease)`` at once (no socket exists).
2. **When the socket is verified closed** (the moment the slot is freed today):
   ``budget.release(lease)``. Synchronous and idempotent, so it can sit in shielded
   close paths; a store round trip it needs runs in the background.
3. **Before handing out a connection** (and wherever the pool checks a record):
   ``lease.valid()``. False means the lease was lost or its local deadline passed (the
   process may have been paused past the TTL): abort that connection, never send on it.
4. **Once, at pool start**: ``budget.subscribe(on_lost)``. ``on_lost(lease)`` is called
   synchronously on the loop thread when a lease is lost (renewal found it gone, or its
   deadline passed without a renewal); the pool aborts the connection holding it. The
   listener runs from a timer callback, so after a pause it runs before the borrower's
   task can take another step.

Renewal is the budget's own business: ``start()`` runs it every ``ttl/3``, covering every
held lease in one store round trip; ``renew()`` does one round by hand. ``stats()`` is a
flat dict with stable names, for ``pool.stats()["budget"]``. The pool does not own the
budget: whoever made it calls ``aclose()`` after closing the pool(s) that use it.
"""

from __future__ import annotations

import asyncio
import math
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Protocol, runtime_checkable

from .book import LeaseBook, LostListener
from .errors import BudgetTimeout
from .lease import Lease, LostReason, clock, local_deadline

__all__ = ["Budget", "Limit", "LocalBudget", "LostListener", "StatValue", "limit_for"]

Limit = int | Mapping[str, int] | Callable[[str], int]
"""A fleet-wide cap per key: one int for every key, a mapping, or ``key -> int``."""

StatValue = int | float | bool | str


def limit_for(limit: Limit, key: str) -> int:
    """The cap for ``key``; raises ``ValueError`` for a cap below 1 or not an int,
    ``KeyError`` for a key a mapping does not have."""
    if isinstance(limit, Mapping):
        value = limit[key]
    elif callable(limit):
        value = limit(key)
    else:
        value = limit
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"budget limit for key {key!r} must be an int >= 1, got {value!r}")
    return value


def check_limit(limit: Limit) -> None:
    """Raise ``ValueError`` now for a limit that can be checked without a key."""
    if isinstance(limit, Mapping):
        for key in limit:
            limit_for(limit, key)
    elif not callable(limit):
        limit_for(limit, "")


def new_token() -> str:
    """A random lease token: 128 bits, hex. Unique, not secret (it only names the lease)."""
    return secrets.token_hex(16)


@runtime_checkable
class Budget(Protocol):
    """What the pool needs from a fleet budget. See the module docstring for when the
    pool calls what."""

    async def start(self) -> None:
        """Start renewing (idempotent). ``acquire`` also starts it."""

    async def acquire(self, key: str, *, timeout: float) -> Lease:
        """A lease on ``key`` within ``timeout`` seconds (finite, >= 0; 0: one try).

        Raises :class:`BudgetTimeout` when there was no room in time and
        :class:`BudgetUnavailable` when the store could not be reached (and no fallback
        share applies). Cancellation-safe: a cancelled acquire holds nothing.
        """
        ...

    def release(self, lease: Lease) -> None:
        """Give ``lease`` back: call only once what it covers is verified gone.
        Synchronous, never raises, idempotent."""

    async def renew(self) -> list[Lease]:
        """Renew every held lease in one round trip; return the leases this lost."""
        ...

    def subscribe(self, listener: LostListener) -> Callable[[], None]:
        """Call ``listener(lease)`` for every lease lost from now on; returns unsubscribe."""
        ...

    def stats(self) -> dict[str, StatValue]:
        """Flat figures with stable names (see :class:`LocalBudget.stats`)."""
        ...

    async def aclose(self) -> None:
        """Stop renewing and give back every lease still held (they are marked lost
        ``closed`` first, so a pool still using them aborts them). Idempotent, bounded."""


class LocalBudget:
    """An in-process :class:`Budget`: the same contract as ``RedisBudget``, no store.

    For tests of the pool hook, and for one process that wants a budget shared by
    several pools.

    Args:
        limit: connections per key (an int, a mapping or ``key -> int``), >= 1.
        ttl: seconds a lease lives without renewal; ``None`` (default) for leases that
            never expire. With a TTL, ``renew()`` (run every ``ttl/3`` once started)
            moves every deadline forward.
        margin: seconds before the TTL at which a lease stops being valid locally;
            default ``ttl / 10``.
        name: for logs.

    ``revoke(lease)`` takes a lease away on purpose (for tests of the loss path).
    """

    def __init__(
        self,
        limit: Limit,
        *,
        ttl: float | None = None,
        margin: float | None = None,
        name: str = "local-budget",
    ) -> None:
        if ttl is not None and not (0 < ttl < math.inf):
            raise ValueError(f"ttl must be a finite number of seconds > 0, got {ttl!r}")
        check_limit(limit)
        self.limit = limit
        self.ttl = ttl
        self.margin = (ttl / 10 if ttl is not None else 0.0) if margin is None else margin
        if ttl is not None and not (0 <= self.margin < ttl):
            raise ValueError(f"margin must be in [0, ttl), got {self.margin!r}")
        self._book = LeaseBook(name, "the connection it covers must be aborted")
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._counts = {"acquired": 0, "released": 0, "acquire_timeouts": 0, "renewals": 0}

    # -- the protocol ----------------------------------------------------------------

    async def start(self) -> None:
        if self.ttl is not None and self._task is None and not self._closed:
            self._task = asyncio.create_task(self._renew_loop(), name=f"{self._book.name}-renew")

    async def acquire(self, key: str, *, timeout: float) -> Lease:
        if self._closed:
            raise RuntimeError("budget is closed")
        if not (0 <= timeout < math.inf):
            raise ValueError(f"timeout must be finite and >= 0, got {timeout!r}")
        cap = limit_for(self.limit, key)
        await self.start()
        started = time.monotonic()
        deadline = started + timeout
        while self._book.held(key) >= cap:
            left = deadline - time.monotonic()
            if left <= 0:
                self._counts["acquire_timeouts"] += 1
                raise BudgetTimeout(key, time.monotonic() - started, cap, self._book.held(key))
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.setdefault(key, []).append(waiter)
            try:
                await asyncio.wait_for(asyncio.shield(waiter), left)
            except TimeoutError:
                pass
            finally:
                self._drop_waiter(key, waiter)
        # No await from here to return: a cancelled acquire holds nothing.
        lease = Lease(key, new_token())
        if self.ttl is not None:
            lease.valid_until = local_deadline(clock(), self.ttl, self.margin)
        self._book.add(lease)
        self._counts["acquired"] += 1
        return lease

    def release(self, lease: Lease) -> None:
        if self._book.remove(lease):
            self._counts["released"] += 1
            for waiter in self._waiters.get(lease.key, ()):
                if not waiter.done():
                    waiter.set_result(None)

    async def renew(self) -> list[Lease]:
        lost = self._book.expire_due()
        if self.ttl is not None:
            deadline = local_deadline(clock(), self.ttl, self.margin)
            for lease in self._book:
                if lease.lost is None:
                    lease.valid_until = deadline
            self._book.arm()
        self._counts["renewals"] += 1
        return lost

    def subscribe(self, listener: LostListener) -> Callable[[], None]:
        return self._book.subscribe(listener)

    def stats(self) -> dict[str, StatValue]:
        """``held`` (leases held now), ``lost_held`` (of those, lost and not yet
        released), ``acquired``, ``released``, ``acquire_timeouts``, ``renewals``,
        ``renew_failures``, ``lost`` (ever), ``unavailable`` (acquires failed for an
        unreachable store), ``fallback_active``, ``fallback_held``, ``fallback_grants``:
        the same names as ``RedisBudget.stats()``; the store-only ones are 0 here."""
        return {
            "held": len(self._book),
            "lost_held": sum(1 for lease in self._book if lease.lost is not None),
            **self._counts,
            "renew_failures": 0,
            "lost": self._book.lost_total,
            "unavailable": 0,
            "fallback_active": False,
            "fallback_held": 0,
            "fallback_grants": 0,
        }

    async def aclose(self) -> None:
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self._book.close_all(self.release)

    # -- extras ----------------------------------------------------------------------

    def revoke(self, lease: Lease, reason: str = LostReason.REVOKED) -> bool:
        """Lose ``lease`` now (listeners hear it); it stays counted until released."""
        return self._book.lose(lease, reason)

    def held(self, key: str) -> int:
        """Leases held on ``key`` (lost ones too, until released)."""
        return self._book.held(key)

    async def __aenter__(self) -> LocalBudget:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _drop_waiter(self, key: str, waiter: asyncio.Future[None]) -> None:
        waiters = self._waiters.get(key)
        if waiters is not None:
            if waiter in waiters:
                waiters.remove(waiter)
            if not waiters:
                del self._waiters[key]
        if not waiter.done():
            waiter.cancel()

    async def _renew_loop(self) -> None:
        assert self.ttl is not None
        while True:
            await asyncio.sleep(self.ttl / 3)
            await self.renew()
