"""The worker as one of a fleet: ``[fleet]`` in sync.toml (see :class:`.config.FleetConfig`).

Three parts, each with one job:

* :class:`guardedpool.fleet.RedisBudget` caps each account's connections fleet-wide
  (``max_connections_per_account``); the pool takes a lease before each connect and
  gives it back once the socket is verified closed (:mod:`guardedpool.leasing`).
* :class:`guardedpool.fleet.RedisOwnership` splits the accounts over the live workers;
  a worker lists and syncs only the accounts it owns (``SyncWorker.owned``), and a killed
  worker's accounts are taken over about ``ttl`` later.
* :class:`.stores.FencedStore` over the PostgreSQL store: every write checks ownership
  and carries the owner lease's fencing token, which the store checks in the write's own
  transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from guardedpool import GuardedPool
from guardedpool.fleet import OwnershipChange, RedisBudget, RedisOwnership

from .config import FleetConfig, SyncConfig
from .stores import FencedStore, FencingStore, MailStore

__all__ = ["Fleet", "join_fleet"]

log = logging.getLogger("imap_sync")


@dataclass(slots=True)
class Fleet:
    budget: RedisBudget
    ownership: RedisOwnership
    store: FencedStore
    keys: tuple[str, ...]

    def owns(self, key: str) -> bool:
        lease = self.ownership.owns(key)
        return lease is not None and lease.valid()

    @contextlib.asynccontextmanager
    async def attached(self, pool: GuardedPool[Any]) -> AsyncIterator[None]:
        """While inside: the pool's idle connections of accounts this worker does not own
        are closed -- at once when a key is lost, and every ``ttl/3`` for connections
        released since by a sync that was still running -- so they do not hold the
        account's fleet-wide budget away from its new owner."""

        def sweep() -> None:
            for key in self.keys:
                if not self.owns(key):
                    pool.close_idle(key)

        def on_change(change: OwnershipChange) -> None:
            if not change.gained:
                pool.close_idle(change.key)

        async def sweeping() -> None:
            while True:
                await asyncio.sleep(self.ownership.renew_interval)
                sweep()

        unsubscribe = self.ownership.subscribe(on_change)
        task = asyncio.create_task(sweeping(), name="imap_sync-fleet-sweep")
        try:
            yield
        finally:
            unsubscribe()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


@contextlib.asynccontextmanager
async def join_fleet(config: SyncConfig, store: MailStore) -> AsyncIterator[Fleet]:
    """Budget, ownership and the fenced store for ``config.fleet``; leaves the fleet
    (hands the accounts back, releases every lease) on exit."""
    fc: FleetConfig | None = config.fleet
    if fc is None:
        raise ValueError("join_fleet needs a [fleet] config")
    if not hasattr(store, "set_fence"):
        raise ValueError("a fleet needs a store that checks fencing tokens (PostgreSQL)")
    fenced_store: FencingStore = store  # type: ignore[assignment]
    # A round trip may take a third of the TTL (not the library's sixth): renewals every
    # ttl/3 still end well before the local deadline, and a busy machine's slow round trip
    # is not taken for an unreachable Redis.
    op_timeout = min(5.0, fc.ttl / 3)
    budget = RedisBudget(
        fc.redis,
        limit=fc.max_connections_per_account,
        ttl=fc.ttl,
        prefix=fc.prefix,
        op_timeout=op_timeout,
    )
    ownership = RedisOwnership(
        fc.redis,
        keys=[a.key for a in config.accounts],
        ttl=fc.ttl,
        prefix=fc.prefix,
        worker_id=fc.worker_id,
        op_timeout=op_timeout,
    )

    def on_change(change: OwnershipChange) -> None:
        log.info(
            "fleet: %s account %s (fencing token %d%s)",
            "gained" if change.gained else "lost",
            change.key,
            change.fencing_token,
            "" if change.gained else f", {change.lease.lost}",
            extra={"key": change.key, "fence": change.fencing_token},
        )

    ownership.subscribe(on_change)
    try:
        await ownership.start()
        keys = tuple(a.key for a in config.accounts)
        yield Fleet(budget, ownership, FencedStore(fenced_store, ownership.owns), keys)
    finally:
        await ownership.aclose()
        await budget.aclose()
