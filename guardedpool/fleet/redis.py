"""``RedisBudget``: a fleet-wide cap on connections per key, kept in Redis.

Per key, one sorted set ``<prefix>:budget:<key>``: member = lease token, score = the
lease's expiry in milliseconds on the Redis server's clock (``TIME``). Three Lua scripts
(``lua/acquire.lua``, ``renew.lua``, ``release.lua``) each check and change the set in one
atomic step, and each drops expired leases before it counts. See :mod:`.budget` for the
contract the pool relies on, and :mod:`.lease` for why a lease stops being valid locally
``margin`` seconds before Redis would expire it.

**Redis must keep its data across a restart** (AOF: ``appendonly yes``). A Redis that
loses its data (no persistence, ``FLUSHALL``, failover to a lagging replica) forgets the
leases: the holders learn it at their next renewal (within ``ttl/3``) and abort those
connections, but until then the fleet can be over its cap.

Keys of one budget may live in different hash slots: on Redis Cluster, put a hash tag in
the prefix (``prefix="{guardedpool}"``) so the renewal script's keys share a slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections.abc import Callable

import redis.asyncio as aioredis

from .book import LeaseBook, LostListener
from .budget import Limit, StatValue, check_limit, limit_for, new_token
from .errors import BudgetTimeout, BudgetUnavailable
from .lease import Lease, LostReason, clock, lease_timing, local_deadline
from .store import UNREACHABLE, call, client_from, load_script, where

__all__ = ["RedisBudget"]

log = logging.getLogger("guardedpool.fleet")

_FIRST_POLL = 0.02  # s: first wait for room; doubles up to max_poll


class RedisBudget:
    """A :class:`~guardedpool.fleet.Budget` shared by every process that uses the same
    Redis and ``prefix``.

    Args:
        redis: a ``redis://`` / ``rediss://`` / ``unix://`` URL (a client is made and
            closed by this budget) or a ``redis.asyncio.Redis`` (used as is, not closed).
        limit: leases per key, fleet-wide: an int, a mapping or ``key -> int``; >= 1.
        ttl: seconds a lease lives in Redis without renewal; default 30. Renewal of
            every held lease runs every ``ttl / 3`` in one round trip.
        prefix: namespace of the Redis keys; default ``"guardedpool"``.
        fallback_limit: ``None`` (default): Redis unreachable at acquire raises
            :class:`BudgetUnavailable` at the deadline, never admits uncounted. An int
            ``n >= 1``: while Redis is unreachable, grant up to ``n`` leases per key in
            this process (logged, ``fallback_active`` in stats); once Redis is back,
            each fallback lease is added to Redis if the key has room there, else lost.
        margin: seconds before the TTL at which a lease stops being valid locally (time
            to abort a connection plus event-loop lag); default ``ttl / 10``.
        op_timeout: bound on one Redis round trip, seconds; default ``min(5, ttl / 6)``.
        max_poll: longest wait between two tries for room, seconds; default
            ``min(1, ttl / 10)``. A release in this process wakes its waiters at once.
        name: for logs; default ``"redis-budget"``.
        auto_renew: run the renewal loop (default); ``False`` leaves ``renew()`` to the
            caller (a housekeeping loop of its own, or a test of expiry).

    Raises ``ValueError`` for an invalid option. Redis is first contacted by the first
    ``acquire``.
    """

    def __init__(
        self,
        redis: str | aioredis.Redis,
        *,
        limit: Limit,
        ttl: float = 30.0,
        prefix: str = "guardedpool",
        fallback_limit: int | None = None,
        margin: float | None = None,
        op_timeout: float | None = None,
        max_poll: float | None = None,
        name: str = "redis-budget",
        auto_renew: bool = True,
    ) -> None:
        self.ttl, self.margin, self.op_timeout = lease_timing(ttl, margin, op_timeout)
        check_limit(limit)
        if fallback_limit is not None and (
            isinstance(fallback_limit, bool)
            or not isinstance(fallback_limit, int)
            or fallback_limit < 1
        ):
            raise ValueError(f"fallback_limit must be None or an int >= 1, got {fallback_limit!r}")
        self.max_poll = min(1.0, ttl / 10) if max_poll is None else max_poll
        if not (0 < self.max_poll < math.inf):
            raise ValueError(f"max_poll must be finite and > 0, got {self.max_poll!r}")
        self.limit = limit
        self.prefix = prefix
        self.fallback_limit = fallback_limit
        self.renew_interval = ttl / 3
        self.auto_renew = auto_renew
        self.where = where(redis)
        self._client, self._owns_client = client_from(redis, self.op_timeout)
        self._acquire = load_script(self._client, "acquire")
        self._renew = load_script(self._client, "renew")
        self._release = load_script(self._client, "release")
        self._book = LeaseBook(name, "the connection it covers must be aborted")
        self._name = name
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        self._background: set[asyncio.Task[object]] = set()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._away_since: float | None = None  # monotonic time Redis was first unreachable
        self._counts = {
            "acquired": 0,
            "released": 0,
            "acquire_timeouts": 0,
            "renewals": 0,
            "renew_failures": 0,
            "unavailable": 0,
            "fallback_grants": 0,
            "store_errors": 0,
        }

    def redis_key(self, key: str) -> str:
        """The Redis key of ``key``'s sorted set."""
        return f"{self.prefix}:budget:{key}"

    def __repr__(self) -> str:
        return f"<RedisBudget {self._name} {self.where} prefix={self.prefix!r} ttl={self.ttl}>"

    # -- the protocol ----------------------------------------------------------------

    async def start(self) -> None:
        if self.auto_renew and self._task is None and not self._closed:
            self._task = asyncio.create_task(self._renew_loop(), name=f"{self._name}-renew")

    async def acquire(self, key: str, *, timeout: float) -> Lease:
        """A lease on ``key`` within ``timeout`` seconds (>= 0, finite; 0 makes one try,
        its round trip bounded by ``op_timeout``).

        One round trip when the key has room. Without room, tries again after a
        growing pause (at most ``max_poll``, and never past the earliest lease's expiry
        in Redis) or at once when this process releases a lease on the key.

        Raises :class:`BudgetTimeout` (no room in time), :class:`BudgetUnavailable`
        (Redis unreachable until the deadline and no ``fallback_limit``), ``ValueError``
        (bad timeout or limit), ``RuntimeError`` (budget closed).
        """
        if self._closed:
            raise RuntimeError("budget is closed")
        if not (0 <= timeout < math.inf):
            raise ValueError(f"timeout must be finite and >= 0, got {timeout!r}")
        cap = limit_for(self.limit, key)
        await self.start()
        started = time.monotonic()
        deadline = started + timeout
        pause = _FIRST_POLL
        held = 0
        last_error: BaseException | None = None
        tries = 0
        while True:
            left = deadline - time.monotonic()
            if left <= 0 and tries:
                waited = time.monotonic() - started
                if last_error is not None:
                    self._counts["unavailable"] += 1
                    raise BudgetUnavailable(key, waited, last_error)
                self._counts["acquire_timeouts"] += 1
                raise BudgetTimeout(key, waited, cap, held)
            token = new_token()
            sent = clock()
            try:
                tries += 1
                bound = min(self.op_timeout, left) if left > 0 else self.op_timeout
                reply = await self._call_acquire(key, token, cap, bound)
            except UNREACHABLE as exc:
                last_error = exc
                self._store_error(exc, "acquire", key)
                lease = self._fallback_grant(key, token, cap)
                if lease is not None:
                    return lease
                wait = min(pause, max(left, 0.0))
            else:
                self._store_back()
                last_error = None
                granted, held, first_expiry_ms = (int(x) for x in reply)
                if granted:
                    lease = Lease(
                        key, token, valid_until=local_deadline(sent, self.ttl, self.margin)
                    )
                    self._book.add(lease)
                    self._counts["acquired"] += 1
                    return lease
                wait = min(pause, max(left, 0.0))
                if first_expiry_ms >= 0:
                    wait = min(wait, first_expiry_ms / 1000 + 0.001)
            pause = min(pause * 2, self.max_poll)
            await self._wait_for_room(key, wait * random.uniform(0.8, 1.0))

    def release(self, lease: Lease) -> None:
        if not self._book.remove(lease):
            return
        self._counts["released"] += 1
        for waiter in self._waiters.get(lease.key, ()):
            if not waiter.done():
                waiter.set_result(None)
        if not lease.fallback:
            self._forget_on_server(lease.key, lease.token)

    async def renew(self) -> list[Lease]:
        """Renew every held lease in one ``EVALSHA``; returns the leases lost by it
        (gone from Redis, or a fallback lease Redis had no room for) or, when Redis is
        unreachable, the leases whose local deadline has passed."""
        leases = [lease for lease in self._book if lease.lost is None]
        if not leases:
            return []
        args: list[str | int] = [int(self.ttl * 1000)]
        args += [lease.token for lease in leases]
        args += [limit_for(self.limit, lease.key) if lease.fallback else 0 for lease in leases]
        sent = clock()
        try:
            statuses = await call(
                self._renew, [self.redis_key(lease.key) for lease in leases], args, self.op_timeout
            )
        except UNREACHABLE as exc:
            self._counts["renew_failures"] += 1
            self._store_error(exc, "renew", None)
            return self._book.expire_due()
        self._store_back()
        self._counts["renewals"] += 1
        lost: list[Lease] = []
        deadline = local_deadline(sent, self.ttl, self.margin)
        for lease, status in zip(leases, statuses, strict=True):
            status = int(status)
            if lease.released:
                if status == 2:  # added back while being released: take it out again
                    self._forget_on_server(lease.key, lease.token)
                continue
            if status == 0:
                reason = LostReason.NO_ROOM if lease.fallback else LostReason.GONE
                if self._book.lose(lease, reason):
                    lost.append(lease)
            elif lease.lost is None:
                lease.fallback = False
                lease.valid_until = deadline
        self._book.arm()
        return lost

    def subscribe(self, listener: LostListener) -> Callable[[], None]:
        return self._book.subscribe(listener)

    def stats(self) -> dict[str, StatValue]:
        """``held``, ``lost_held``, ``acquired``, ``released``, ``acquire_timeouts``,
        ``renewals`` (successful renewal round trips), ``renew_failures``, ``lost``
        (leases ever lost), ``unavailable`` (acquires that raised BudgetUnavailable),
        ``fallback_active`` (Redis unreachable now and a fallback share configured),
        ``fallback_held``, ``fallback_grants``, ``store_errors`` (failed round trips of
        any kind), ``store_down_for`` (s since Redis was first found unreachable, 0.0
        while reachable)."""
        leases = list(self._book)
        away = self._away_since
        return {
            "held": len(leases),
            "lost_held": sum(1 for lease in leases if lease.lost is not None),
            "acquired": self._counts["acquired"],
            "released": self._counts["released"],
            "acquire_timeouts": self._counts["acquire_timeouts"],
            "renewals": self._counts["renewals"],
            "renew_failures": self._counts["renew_failures"],
            "lost": self._book.lost_total,
            "unavailable": self._counts["unavailable"],
            "fallback_active": away is not None and self.fallback_limit is not None,
            "fallback_held": sum(1 for lease in leases if lease.fallback),
            "fallback_grants": self._counts["fallback_grants"],
            "store_errors": self._counts["store_errors"],
            "store_down_for": 0.0 if away is None else time.monotonic() - away,
        }

    async def aclose(self) -> None:
        """Stop renewing, mark every held lease lost (``closed``) and give it back to
        Redis; waits at most ``op_timeout`` for those releases, then closes the client
        if this budget made it. Idempotent."""
        if self._closed:
            return
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self._book.close_all(self.release)
        if self._background:
            await asyncio.wait(set(self._background), timeout=self.op_timeout)
            for pending in set(self._background):
                pending.cancel()
            await asyncio.gather(*self._background, return_exceptions=True)
        if self._owns_client:
            await self._client.aclose()

    # -- extras ----------------------------------------------------------------------

    def held(self, key: str) -> int:
        """Leases this process holds on ``key`` (lost ones too, until released)."""
        return self._book.held(key)

    def leases(self) -> list[Lease]:
        """The leases this process holds now."""
        return list(self._book)

    async def __aenter__(self) -> RedisBudget:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- internals -------------------------------------------------------------------

    async def _call_acquire(self, key: str, token: str, cap: int, bound: float) -> list[int]:
        try:
            reply: list[int] = await call(
                self._acquire, [self.redis_key(key)], [token, int(self.ttl * 1000), cap], bound
            )
        except BaseException:
            # Cancelled or timed out with the script in flight: Redis may have granted
            # the lease. Take it back (a no-op if it was not granted).
            self._forget_on_server(key, token)
            raise
        return reply

    def _fallback_grant(self, key: str, token: str, cap: int) -> Lease | None:
        if self.fallback_limit is None or self._book.held(key) >= min(self.fallback_limit, cap):
            return None
        lease = Lease(key, token, fallback=True)
        self._book.add(lease)
        self._counts["acquired"] += 1
        self._counts["fallback_grants"] += 1
        log.warning(
            "%s: Redis unreachable, lease on key %r granted from this process's fallback "
            "share (%d of fallback_limit=%d held here); not counted fleet-wide",
            self._name,
            key,
            self._book.held(key),
            self.fallback_limit,
            extra={"budget": self._name, "key": key, "fallback_limit": self.fallback_limit},
        )
        return lease

    def _store_error(self, exc: BaseException, op: str, key: str | None) -> None:
        self._counts["store_errors"] += 1
        if self._away_since is None:
            self._away_since = time.monotonic()
            log.warning(
                "%s: Redis at %s unreachable during %s (%s: %s)%s",
                self._name,
                self.where,
                op,
                type(exc).__name__,
                exc,
                "; new leases come from the per-process fallback share"
                if self.fallback_limit is not None
                else "; acquires wait for it and fail at their deadline",
                extra={"budget": self._name, "op": op, "key": key, "error": type(exc).__name__},
            )

    def _store_back(self) -> None:
        if self._away_since is not None:
            down = time.monotonic() - self._away_since
            self._away_since = None
            log.warning(
                "%s: Redis at %s reachable again after %.1f s",
                self._name,
                self.where,
                down,
                extra={"budget": self._name, "down_for": down},
            )

    def _forget_on_server(self, key: str, token: str) -> None:
        """Remove ``token`` from Redis in the background; if that fails, the TTL does it."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        task: asyncio.Task[object] = loop.create_task(
            call(self._release, [self.redis_key(key)], [token], self.op_timeout)
        )
        self._background.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task[object]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.debug(
                "%s: background release failed (%r); Redis expires the lease by its TTL",
                self._name,
                task.exception(),
            )

    async def _wait_for_room(self, key: str, delay: float) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters = self._waiters.setdefault(key, set())
        waiters.add(waiter)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(waiter), delay)
        finally:
            waiters.discard(waiter)
            if not waiters:
                self._waiters.pop(key, None)
            waiter.cancel()

    async def _renew_loop(self) -> None:
        while True:
            # Redis unreachable: try again sooner, so leases survive a short outage.
            interval = self.renew_interval / (1 if self._away_since is None else 3)
            await asyncio.sleep(interval * random.uniform(0.9, 1.0))
            try:
                await self.renew()
            except Exception:  # a bug must not end renewal: leases would silently expire
                log.exception("%s: renewal round failed", self._name)
