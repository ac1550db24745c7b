"""The pool's budget hook with RedisBudget, against real redis-server and real Dovecot
(through the fault proxy, which counts the sockets that exist): two pools standing in for
two processes share a cap of 2 per account."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from harness import DovecotServer, FaultProxy, ProxyFactory, RedisServer
from harness.configs import DEFAULTS, config

from guardedpool import ConnectionPoisoned, GuardedPool, PoolTimeout
from guardedpool.fleet import RedisBudget
from guardedpool.imap import IMAPAccount, IMAPClient, IMAPConnector

pytestmark = pytest.mark.timeout(60)

# acquire_timeout: 6 borrowers share 2 leases, each borrow a Dovecot login; on a loaded
# machine 1.5 s timed out a waiting borrower now and then (not what these tests are about).
CFG = config(DEFAULTS, max_per_key=4, acquire_timeout=4.0, connect_timeout=5.0, op_timeout=5.0)
KEY = "acct"


def connector(dovecot: DovecotServer, proxy: FaultProxy, user: tuple[str, str]) -> IMAPConnector:
    account = IMAPAccount(
        host=proxy.host, port=proxy.port, username=user[0], password=user[1], tls=False
    )
    return IMAPConnector({KEY: account})


@pytest.fixture
async def rclient(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    r = aioredis.Redis.from_url(redis_server.url)
    try:
        yield r
    finally:
        await r.aclose()


async def test_two_pools_never_hold_more_sockets_than_the_budget(
    dovecot: DovecotServer,
    fault_proxy: ProxyFactory,
    fresh_user: tuple[str, str],
    redis_server: RedisServer,
    fleet_prefix: str,
    rclient: aioredis.Redis,
) -> None:
    proxy = await fault_proxy()
    budgets = [
        RedisBudget(redis_server.url, limit=2, ttl=10, prefix=fleet_prefix, op_timeout=5)
        for _ in range(2)
    ]
    pools: list[GuardedPool[IMAPClient]] = [
        GuardedPool(connector(dovecot, proxy, fresh_user), CFG, budget=b) for b in budgets
    ]
    peak = 0
    stop = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, proxy.current_clients)
            await asyncio.sleep(0.002)

    async def borrower(pool: GuardedPool[IMAPClient], n: int) -> None:
        for _ in range(n):
            async with pool.acquire(KEY) as imap:
                await imap.noop()
                await asyncio.sleep(0.01)
            pool.close_idle(KEY)  # hand the budget back to the fleet at once

    sampler = asyncio.create_task(sample())
    try:
        async with pools[0], pools[1]:
            await asyncio.gather(*(borrower(p, 4) for p in pools for _ in range(3)))
            # Idle (and late-opened) connections closed: the leases go once the sockets
            # are verified closed, after the proxy saw them close.
            for _ in range(500):
                for p in pools:
                    p.close_idle(KEY)
                held = await rclient.zcard(budgets[0].redis_key(KEY))
                if held == 0 and proxy.current_clients == 0:
                    break
                await asyncio.sleep(0.01)
            assert held == 0 and proxy.current_clients == 0
            # Every lease in Redis is a socket the proxy sees, and back.
            c0 = await pools[0].acquire(KEY)
            c1 = await pools[1].acquire(KEY)
            assert await rclient.zcard(budgets[0].redis_key(KEY)) == 2
            assert proxy.current_clients == 2
            # No room: a third connection waits, and the timeout names the budget.
            with pytest.raises(PoolTimeout) as info:
                await pools[1].acquire(KEY)
            assert info.value.limited_by == "the fleet budget"
            assert "fleet budget was the limit" in str(info.value)
            pools[0].release(c0)
            pools[1].release(c1)
        # Closed pools: every socket verified closed, every lease given back.
        assert await rclient.zcard(budgets[0].redis_key(KEY)) == 0
    finally:
        stop.set()
        await sampler
        for b in budgets:
            await b.aclose()
    assert 1 <= peak <= 2


async def test_a_lease_gone_from_redis_aborts_the_connection(
    dovecot: DovecotServer,
    fault_proxy: ProxyFactory,
    fresh_user: tuple[str, str],
    redis_server: RedisServer,
    fleet_prefix: str,
    rclient: aioredis.Redis,
) -> None:
    proxy = await fault_proxy()
    budget = RedisBudget(
        redis_server.url, limit=2, ttl=10, prefix=fleet_prefix, op_timeout=5, auto_renew=False
    )
    pool: GuardedPool[IMAPClient] = GuardedPool(
        connector(dovecot, proxy, fresh_user), CFG, budget=budget
    )
    try:
        async with pool:
            imap = await pool.acquire(KEY)
            (conn,) = proxy.live()
            await rclient.delete(budget.redis_key(KEY))  # the fleet forgot the lease
            lost = await budget.renew()
            assert len(lost) == 1
            with pytest.raises(ConnectionPoisoned):  # aborted under its borrower: not sent
                await imap.noop()
            pool.release(imap)
            sent = conn.bytes_up
            await proxy.wait_until(lambda: not conn.is_open, timeout=5)
            assert conn.bytes_up == sent
            stats = pool.stats()["budget"]
            assert stats["pool_lost_aborts"] == 1 and stats["lost"] == 1
    finally:
        await budget.aclose()
