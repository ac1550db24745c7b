"""``RedisOwnership``: each key of a set owned by exactly one live worker of a fleet.

* **Membership.** Every worker keeps a heartbeat lease in the sorted set
  ``<prefix>:workers`` (member = worker id, score = expiry on the Redis clock). A worker
  killed with ``kill -9`` drops out within ``ttl``.
* **Assignment.** Rendezvous hashing (:mod:`.rendezvous`) over the live workers: every
  worker computes the same owner for a key, and a join or a leave moves about 1/N keys.
* **Owner leases.** A worker works on a key only under ``<prefix>:owner:<key>``, a string
  ``"<fencing token> <worker id>"`` with a TTL, claimed atomically (``lua/claim.lua``)
  only when no other worker holds it. The fencing token comes from ``INCR`` on
  ``<prefix>:fence:<key>``, so it grows with every claim, fleet-wide and for ever: a
  store that rejects writes under a token lower than the highest it has seen can never
  interleave two owners' writes (Kleppmann, "How to do distributed locking", 2016).
* **One round trip per tick.** The heartbeat and the renewal of every owned key are one
  script (``lua/heartbeat.lua``), every ``ttl/3``; claims and hand-overs, when there are
  any, one more each.
* **Loss.** An owner lease is lost when a renewal finds another value (or none), or
  when its local deadline passes (Redis unreachable, or the process paused past the
  TTL: the watchdog timer marks it lost before the worker's task runs again). A worker
  must check :meth:`RedisOwnership.owns` before each unit of work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import secrets
import socket
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass

import redis.asyncio as aioredis

from .book import LeaseBook
from .budget import StatValue
from .lease import Lease, LostReason, clock, lease_timing, local_deadline
from .rendezvous import owner
from .store import UNREACHABLE, call, client_from, load_script, text, where

__all__ = ["OwnershipChange", "RedisOwnership"]

log = logging.getLogger("guardedpool.fleet")


@dataclass(frozen=True, slots=True)
class OwnershipChange:
    """This worker gained (``gained=True``) or lost a key. ``lease.fencing_token`` is the
    token of that ownership; for a loss, ``lease.lost`` says why (``gone``, ``expired``,
    ``moved``, ``closed``)."""

    key: str
    gained: bool
    lease: Lease

    @property
    def fencing_token(self) -> int:
        return self.lease.fencing_token


class RedisOwnership:
    """Split ``keys`` over the live workers sharing a Redis and ``prefix``.

    Args:
        redis: a URL (a client is made and closed here) or a ``redis.asyncio.Redis``.
        keys: every key the fleet must cover, or a callable returning them (called
            every tick, so keys can be added and removed while running).
        worker_id: this worker's id, unique in the fleet; default
            ``"<hostname>-<pid>-<random>"``.
        ttl: seconds the heartbeat and owner leases live without renewal; default 30.
            A killed worker's keys are taken over about ``ttl`` after its last renewal.
        prefix: namespace of the Redis keys; default ``"guardedpool"``.
        margin: seconds before the TTL at which an owner lease stops being valid
            locally; default ``ttl / 10``.
        op_timeout: bound on one Redis round trip, seconds; default ``min(5, ttl / 6)``.

    Use: ``await own.start()`` (or ``async with``), then ``own.owns(key)`` before each
    unit of work (a :class:`Lease` with ``fencing_token``, or ``None``), and
    ``own.subscribe(callback)`` or ``async for change in own.changes()`` to start and
    stop work as keys come and go. ``aclose()`` hands every key back at once and leaves
    the fleet, so the survivors take over at their next tick instead of after the TTL.
    """

    def __init__(
        self,
        redis: str | aioredis.Redis,
        *,
        keys: Iterable[str] | Callable[[], Iterable[str]],
        worker_id: str | None = None,
        ttl: float = 30.0,
        prefix: str = "guardedpool",
        margin: float | None = None,
        op_timeout: float | None = None,
        name: str = "ownership",
    ) -> None:
        self.ttl, self.margin, self.op_timeout = lease_timing(ttl, margin, op_timeout)
        self.worker_id = worker_id or (
            f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        )
        if not self.worker_id or "\n" in self.worker_id:
            raise ValueError(f"worker_id must be a non-empty line, got {self.worker_id!r}")
        self.prefix = prefix
        self.renew_interval = ttl / 3
        self.where = where(redis)
        self._keys = keys if callable(keys) else frozenset(keys)
        self._client, self._owns_client = client_from(redis, self.op_timeout)
        self._heartbeat = load_script(self._client, "heartbeat")
        self._claim = load_script(self._client, "claim")
        self._disown = load_script(self._client, "disown")
        self._book = LeaseBook(name, "work on the key must stop")
        self._book.subscribe(self._on_lost)
        self._name = name
        self._owned: dict[str, Lease] = {}
        self._listeners: list[Callable[[OwnershipChange], None]] = []
        self._queues: list[asyncio.Queue[OwnershipChange | None]] = []
        self._live: tuple[str, ...] = ()
        self._next_tick = self.renew_interval
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._counts = {
            "ticks": 0,
            "tick_failures": 0,
            "claims": 0,
            "claim_conflicts": 0,
            "handovers": 0,
            "gained": 0,
        }

    # -- keys of Redis ---------------------------------------------------------------

    @property
    def workers_key(self) -> str:
        return f"{self.prefix}:workers"

    def owner_key(self, key: str) -> str:
        return f"{self.prefix}:owner:{key}"

    def fence_key(self, key: str) -> str:
        return f"{self.prefix}:fence:{key}"

    def __repr__(self) -> str:
        return f"<RedisOwnership {self.worker_id} {self.where} owns {len(self._owned)}>"

    # -- what workers call -----------------------------------------------------------

    def owns(self, key: str) -> Lease | None:
        """The owner lease on ``key`` if this worker holds it and it is valid now, else
        ``None``. Synchronous, one clock read: call it before every unit of work, and
        write with ``lease.fencing_token``."""
        lease = self._owned.get(key)
        return lease if lease is not None and lease.valid() else None

    def owned(self) -> dict[str, Lease]:
        """Every key this worker validly owns now, with its lease."""
        return {key: lease for key, lease in self._owned.items() if lease.valid()}

    @property
    def live_workers(self) -> tuple[str, ...]:
        """The live workers seen at the last successful tick, sorted."""
        return self._live

    def subscribe(self, listener: Callable[[OwnershipChange], None]) -> Callable[[], None]:
        """Call ``listener(change)`` synchronously on every gain and loss; returns an
        unsubscribe function. A loss is told before anything else runs on the loop."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    async def changes(self) -> AsyncIterator[OwnershipChange]:
        """Every gain and loss from now on, in order, until the ownership is closed.
        (Losses are also delivered synchronously to :meth:`subscribe` listeners; an
        iterator sees them when its task next runs.)"""
        queue: asyncio.Queue[OwnershipChange | None] = asyncio.Queue()
        unsubscribe = self.subscribe(queue.put_nowait)
        self._queues.append(queue)
        try:
            while True:
                change = await queue.get()
                if change is None:
                    return
                yield change
        finally:
            unsubscribe()
            if queue in self._queues:
                self._queues.remove(queue)

    def stats(self) -> dict[str, StatValue]:
        """``owned``, ``live_workers``, ``ticks``, ``tick_failures``, ``claims`` (keys
        claimed), ``claim_conflicts`` (claims refused: another worker still held the
        key), ``handovers`` (keys given to a worker that joined), ``gained``, ``lost``."""
        return {
            "owned": len(self.owned()),
            "live_workers": len(self._live),
            **self._counts,
            "lost": self._book.lost_total,
        }

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Run the first tick now (so keys are owned on return when Redis is up), then
        every ``ttl/3``. Idempotent."""
        if self._task is not None or self._closed:
            return
        await self.tick()
        self._task = asyncio.create_task(self._loop(), name=f"{self._name}-tick")

    async def aclose(self) -> None:
        """Stop, tell listeners every key is lost (``closed``), give the keys back and
        leave the fleet (bounded by ``op_timeout`` each), close an owned client."""
        if self._closed:
            return
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        leases = [lease for lease in self._book if lease.lost is None]
        for lease in leases:
            self._book.lose(lease, LostReason.CLOSED)
        self._book.disarm()
        try:
            if leases:
                await call(
                    self._disown,
                    [self.owner_key(lease.key) for lease in leases],
                    [lease.token for lease in leases],
                    self.op_timeout,
                )
            await call(
                self._heartbeat,
                [self.workers_key],
                [self.worker_id, int(self.ttl * 1000), "leave"],
                self.op_timeout,
            )
        except UNREACHABLE as exc:
            log.warning(
                "%s: worker %s could not leave cleanly (%s); its keys move after the TTL",
                self._name,
                self.worker_id,
                type(exc).__name__,
                extra={"worker": self.worker_id},
            )
        for lease in list(self._book):
            self._book.remove(lease)
        self._owned.clear()
        for queue in self._queues:
            queue.put_nowait(None)
        if self._owns_client:
            await self._client.aclose()

    async def __aenter__(self) -> RedisOwnership:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- one tick --------------------------------------------------------------------

    async def tick(self) -> None:
        """One round: heartbeat and renew (one round trip), then hand over keys that
        moved away and claim keys that are ours (one round trip each, when needed).
        Redis unreachable: counted, logged, leases past their deadline are lost."""
        for lease in list(self._book):
            if lease.lost is not None:  # lost by the watchdog: forget, claim afresh below
                self._forget(lease)
        held = list(self._owned.values())
        sent = clock()
        try:
            live_raw, statuses, next_expiry_ms = await call(
                self._heartbeat,
                [self.workers_key, *(self.owner_key(lease.key) for lease in held)],
                [self.worker_id, int(self.ttl * 1000), "beat", *(lease.token for lease in held)],
                self.op_timeout,
            )
        except UNREACHABLE as exc:
            self._counts["tick_failures"] += 1
            log.warning(
                "%s: worker %s heartbeat failed (%s: %s); owned keys expire locally "
                "unless the next one succeeds",
                self._name,
                self.worker_id,
                type(exc).__name__,
                exc,
                extra={"worker": self.worker_id, "error": type(exc).__name__},
            )
            for lease in self._book.expire_due():
                self._forget(lease)
            self._next_tick = self.renew_interval / 3
            return
        self._counts["ticks"] += 1
        deadline = local_deadline(sent, self.ttl, self.margin)
        for lease, status in zip(held, statuses, strict=True):
            if lease.lost is not None:
                self._forget(lease)
            elif int(status) == 1:
                lease.valid_until = deadline
            else:
                self._book.lose(lease, LostReason.GONE)
                self._forget(lease)
        self._book.arm()
        self._live = tuple(sorted(text(w) for w in live_raw))
        keys = self._keys() if callable(self._keys) else self._keys
        mine = {key for key in keys if owner(key, self._live) == self.worker_id}
        await self._hand_over([self._owned[k] for k in list(self._owned) if k not in mine])
        wait = await self._claim_keys(sorted(k for k in mine if k not in self._owned))
        if int(next_expiry_ms) >= 0:
            # Tick again when the next other worker's heartbeat runs out: if that worker
            # is dead, its keys are claimable then (its owner leases expire with it), so
            # a takeover comes about ttl after its last renewal, not up to ttl/3 later.
            # A live worker renews long before, so this adds no ticks in steady state.
            wait = min(wait, int(next_expiry_ms) / 1000 + 0.01)
        self._next_tick = max(wait, 0.01)

    async def _hand_over(self, leases: list[Lease]) -> None:
        if not leases:
            return
        for lease in leases:  # stop local work first, then let go in Redis
            self._book.lose(lease, LostReason.MOVED)
            self._forget(lease)
        self._counts["handovers"] += len(leases)
        # Unreachable: the owner keys expire by their TTL; the new owner waits that long.
        with contextlib.suppress(*UNREACHABLE):
            await call(
                self._disown,
                [self.owner_key(lease.key) for lease in leases],
                [lease.token for lease in leases],
                self.op_timeout,
            )

    async def _claim_keys(self, keys: list[str]) -> float:
        """Claim ``keys``; returns seconds until the next tick (sooner when a claim was
        refused and the holder's lease runs out before the next regular tick)."""
        if not keys:
            return self.renew_interval
        sent = clock()
        try:
            replies = await call(
                self._claim,
                [k for key in keys for k in (self.owner_key(key), self.fence_key(key))],
                [self.worker_id, int(self.ttl * 1000)],
                self.op_timeout,
            )
        except UNREACHABLE:
            return self.renew_interval / 3
        deadline = local_deadline(sent, self.ttl, self.margin)
        wait = self.renew_interval
        for key, (ok, value) in zip(keys, replies, strict=True):
            if int(ok) != 1:
                self._counts["claim_conflicts"] += 1
                if int(value) >= 0:
                    wait = min(wait, int(value) / 1000 + 0.01)
                continue
            fence = int(value)
            lease = Lease(
                key, f"{fence} {self.worker_id}", valid_until=deadline, fencing_token=fence
            )
            self._book.add(lease)
            self._owned[key] = lease
            self._counts["claims"] += 1
            self._counts["gained"] += 1
            log.info(
                "%s: worker %s now owns key %r (fencing token %d)",
                self._name,
                self.worker_id,
                key,
                fence,
                extra={"worker": self.worker_id, "key": key, "fencing_token": fence},
            )
            self._emit(OwnershipChange(key, True, lease))
        return max(wait, 0.01)

    def _forget(self, lease: Lease) -> None:
        if self._owned.get(lease.key) is lease:
            del self._owned[lease.key]
        self._book.remove(lease)

    def _on_lost(self, lease: Lease) -> None:
        self._emit(OwnershipChange(lease.key, False, lease))

    def _emit(self, change: OwnershipChange) -> None:
        for listener in list(self._listeners):
            try:
                listener(change)
            except Exception:
                log.exception("%s: ownership listener failed for key %r", self._name, change.key)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._next_tick * random.uniform(0.9, 1.0))
            try:
                await self.tick()
            except Exception:  # a bug must not stop heartbeats: keys would move
                log.exception("%s: tick failed", self._name)
