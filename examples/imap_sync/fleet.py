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

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

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

    def owns(self, key: str) -> bool:
        lease = self.ownership.owns(key)
        return lease is not None and lease.valid()


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
    budget = RedisBudget(
        fc.redis, limit=fc.max_connections_per_account, ttl=fc.ttl, prefix=fc.prefix
    )
    ownership = RedisOwnership(
        fc.redis,
        keys=[a.key for a in config.accounts],
        ttl=fc.ttl,
        prefix=fc.prefix,
        worker_id=fc.worker_id,
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
        yield Fleet(budget, ownership, FencedStore(fenced_store, ownership.owns))
    finally:
        await ownership.aclose()
        await budget.aclose()
