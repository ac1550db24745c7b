"""Acquires queued behind ``max_connecting``: they wait on while the pool makes progress
(issue 15), bounded by ``queue_timeout``, and still fail at ``acquire_timeout`` when the
queue does not move."""

from __future__ import annotations

import asyncio

import pytest

from guardedpool import GuardedPool, PoolConfig, PoolTimeout
from guardedpool.testing import MemoryConnection, MemoryConnector, books_disagree

KEYS = [f"k{i}" for i in range(16)]


def make(open_delay: float, **config: object) -> GuardedPool[MemoryConnection]:
    base: dict[str, object] = dict(
        max_per_key=1,
        max_total=len(KEYS),
        max_connecting=2,
        acquire_timeout=1.0,
        check_after=3600.0,
        housekeeping_interval=0.05,
    )
    base.update(config)
    return GuardedPool(MemoryConnector(open_delay=open_delay), PoolConfig(**base))  # type: ignore[arg-type]


async def acquire_all(
    pool: GuardedPool[MemoryConnection],
) -> list[MemoryConnection | BaseException]:
    async def one(key: str) -> MemoryConnection:
        return await pool.acquire(key)

    return await asyncio.gather(*(one(k) for k in KEYS), return_exceptions=True)


@pytest.mark.timeout(60)
async def test_queued_acquires_outlive_acquire_timeout_while_connects_succeed() -> None:
    # 16 connects of 0.3 s, two at a time: 2.4 s to drain, against an acquire_timeout of
    # 1 s. Without the queue rule (queue_timeout = acquire_timeout: the old behaviour)
    # the callers at the back time out; with it every one of them is served.
    old = make(0.3, queue_timeout=1.0)
    async with old:
        results = await acquire_all(old)
        assert any(isinstance(r, PoolTimeout) for r in results)
        for r in results:
            if isinstance(r, MemoryConnection):
                old.release(r)
    pool = make(0.3, queue_timeout=30.0)
    async with pool:
        results = await acquire_all(pool)
        assert all(isinstance(r, MemoryConnection) for r in results), results
        assert pool.stats()["total"]["acquire_timeouts"] == 0
        assert pool.stats()["total"]["peak_connecting"] <= 2
        assert not books_disagree(pool)
        for r in results:
            assert isinstance(r, MemoryConnection)
            pool.release(r)


@pytest.mark.timeout(60)
async def test_queue_that_does_not_move_still_fails_at_acquire_timeout() -> None:
    # Every connect hangs (10 s, within connect_timeout): no progress at all, so the
    # queue rule never applies and each caller fails at its acquire_timeout.
    pool = make(10.0, acquire_timeout=0.3, connect_timeout=15.0)
    async with pool:
        results = await acquire_all(pool)
        assert all(isinstance(r, PoolTimeout) for r in results), results
        assert pool.stats()["total"]["acquire_timeouts"] == len(KEYS)


@pytest.mark.timeout(60)
async def test_queue_timeout_bounds_the_wait_even_while_the_queue_moves() -> None:
    # One connect at a time, 0.2 s each: 3.2 s to drain. acquire_timeout 0.5 s (two
    # connects' worth) and queue_timeout 1.5 s: the front of the queue is served, the
    # back fails, and no caller waited less than its queue_timeout before failing.
    pool = make(0.2, max_connecting=1, acquire_timeout=0.5, queue_timeout=1.5)
    async with pool:
        results = await acquire_all(pool)
        served = [r for r in results if isinstance(r, MemoryConnection)]
        failed = [r for r in results if isinstance(r, PoolTimeout)]
        assert served and failed and len(served) + len(failed) == len(KEYS)
        assert len(served) >= 4  # acquire_timeout alone lets two through
        assert all(e.waited >= 1.5 for e in failed)
        for r in served:
            pool.release(r)
