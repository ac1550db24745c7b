"""RedisBudget against a real redis-server: grants, expiry by the server's clock, loss,
batched renewal, NOSCRIPT recovery, Redis unreachable, the fallback share."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as aioredis
from harness import RedisServer

from guardedpool.fleet import (
    Budget,
    BudgetTimeout,
    BudgetUnavailable,
    LostReason,
    RedisBudget,
)

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    r = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        yield r
    finally:
        await r.aclose()


async def _server_ms(r: aioredis.Redis) -> int:
    seconds, micros = await r.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def test_grants_up_to_the_limit_across_budgets_then_times_out(
    redis_server: RedisServer, fleet_prefix: str, client: aioredis.Redis
) -> None:
    a = RedisBudget(redis_server.url, limit=2, ttl=5, prefix=fleet_prefix, op_timeout=5)
    b = RedisBudget(
        client, limit=2, ttl=5, prefix=fleet_prefix, op_timeout=5
    )  # a client, not closed by b
    assert isinstance(a, Budget)
    try:
        la = await a.acquire("inbox", timeout=2)
        lb = await b.acquire("inbox", timeout=2)
        assert await client.zcard(a.redis_key("inbox")) == 2
        with pytest.raises(BudgetTimeout) as caught:
            await a.acquire("inbox", timeout=0)  # one try
        assert caught.value.held == 2 and caught.value.limit == 2
        # A release elsewhere makes room for a waiter.
        waiter = asyncio.create_task(a.acquire("inbox", timeout=5))
        await asyncio.sleep(0.05)
        b.release(lb)
        lc = await waiter
        assert lc.valid() and la.valid()
        assert a.stats()["held"] == 2 and a.stats()["acquire_timeouts"] == 1
        a.release(la)
        a.release(lc)
    finally:
        await a.aclose()
        await b.aclose()
    assert await client.ping()  # b did not close the client it was given
    assert await client.exists(a.redis_key("inbox")) == 0  # releases reached Redis


async def test_lease_expiry_is_stamped_by_the_server_clock(
    redis_server: RedisServer, fleet_prefix: str, client: aioredis.Redis
) -> None:
    budget = RedisBudget(
        redis_server.url, limit=1, ttl=1.5, prefix=fleet_prefix, auto_renew=False, op_timeout=5
    )
    try:
        before = await _server_ms(client)
        lease = await budget.acquire("k", timeout=2)
        after = await _server_ms(client)
        score = await client.zscore(budget.redis_key("k"), lease.token)
        assert score is not None
        assert before + 1500 <= score <= after + 1500
        # Another holder gets room only once the server's clock passes that score.
        other = RedisBudget(redis_server.url, limit=1, ttl=1.5, prefix=fleet_prefix, op_timeout=5)
        try:
            with pytest.raises(BudgetTimeout):
                await other.acquire("k", timeout=0)
            for _ in range(100):
                if await _server_ms(client) > score:
                    break
                await asyncio.sleep(0.05)
            granted = await other.acquire("k", timeout=2)
            assert granted.valid()
        finally:
            await other.aclose()
    finally:
        await budget.aclose()


async def test_a_lease_gone_from_redis_is_lost_at_the_next_renewal(
    redis_server: RedisServer, fleet_prefix: str, client: aioredis.Redis
) -> None:
    budget = RedisBudget(redis_server.url, limit=3, ttl=10, prefix=fleet_prefix, op_timeout=5)
    heard: list[tuple[str, str | None]] = []
    budget.subscribe(lambda lease: heard.append((lease.key, lease.lost)))
    try:
        keep = await budget.acquire("k", timeout=2)
        gone = await budget.acquire("k", timeout=2)
        await client.zrem(budget.redis_key("k"), gone.token)
        lost = await budget.renew()
        assert lost == [gone]
        assert heard == [("k", LostReason.GONE)]
        assert keep.valid() and not gone.valid()
        assert budget.stats()["lost"] == 1 and budget.stats()["lost_held"] == 1
        budget.release(gone)
        budget.release(keep)
    finally:
        await budget.aclose()


async def test_renewal_of_many_leases_is_one_script_call(
    redis_server: RedisServer, fleet_prefix: str, client: aioredis.Redis
) -> None:
    budget = RedisBudget(redis_server.url, limit=5, ttl=30, prefix=fleet_prefix, op_timeout=5)
    try:
        leases = [await budget.acquire(f"k{i % 8}", timeout=2) for i in range(40)]
        await budget.renew()  # scripts loaded, connection warm

        async def evalsha_calls() -> int:
            stats = await client.info("commandstats")
            return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))

        before = await evalsha_calls()
        for _ in range(3):
            assert await budget.renew() == []
        assert await evalsha_calls() - before == 3  # 40 leases, 8 keys: 1 call per round
        assert budget.stats()["renewals"] >= 4
        assert all(lease.valid() for lease in leases)
        for lease in leases:
            budget.release(lease)
    finally:
        await budget.aclose()


async def test_scripts_are_loaded_again_after_the_cache_is_flushed(
    redis_server: RedisServer, fleet_prefix: str, client: aioredis.Redis
) -> None:
    budget = RedisBudget(redis_server.url, limit=1, ttl=5, prefix=fleet_prefix, op_timeout=5)
    try:
        first = await budget.acquire("k", timeout=2)
        budget.release(first)
        await asyncio.sleep(0.05)
        await client.script_flush()
        second = await budget.acquire("k", timeout=2)  # NOSCRIPT -> SCRIPT LOAD -> EVALSHA
        assert second.valid()
        budget.release(second)
    finally:
        await budget.aclose()


async def test_unreachable_redis_is_a_typed_error_at_the_deadline(
    redis_factory: Callable[..., RedisServer], fleet_prefix: str
) -> None:
    server = redis_factory()
    server.stop(_cleanup=False)  # a port nobody listens on
    budget = RedisBudget(server.url, limit=1, ttl=3, prefix=fleet_prefix, op_timeout=5)
    try:
        with pytest.raises(BudgetUnavailable) as caught:
            await budget.acquire("k", timeout=0.5)
        assert caught.value.key == "k" and caught.value.last_error is not None
        assert "redis://" not in str(caught.value)
        stats = budget.stats()
        assert stats["unavailable"] == 1 and stats["held"] == 0
        assert stats["fallback_active"] is False and stats["store_errors"] >= 1
    finally:
        await budget.aclose()


async def test_fallback_share_while_redis_is_away_then_adopted_when_it_returns(
    redis_factory: Callable[..., RedisServer], fleet_prefix: str
) -> None:
    server = redis_factory()
    budget = RedisBudget(
        server.url, limit=2, ttl=3, prefix=fleet_prefix, fallback_limit=1, op_timeout=5
    )
    try:
        server.stop(_cleanup=False)
        lease = await budget.acquire("k", timeout=1)
        assert lease.fallback and lease.valid()
        stats = budget.stats()
        assert stats["fallback_active"] is True
        assert stats["fallback_held"] == 1 and stats["fallback_grants"] == 1
        with pytest.raises(BudgetUnavailable):  # the share is 1 per process
            await budget.acquire("k", timeout=0.3)
        server.resume()
        assert await budget.renew() == []
        assert not lease.fallback and lease.valid()
        r = aioredis.Redis.from_url(server.url)
        try:
            assert await r.zscore(budget.redis_key("k"), lease.token) is not None
        finally:
            await r.aclose()
        assert budget.stats()["fallback_active"] is False
        budget.release(lease)
    finally:
        await budget.aclose()


async def test_a_fallback_lease_redis_has_no_room_for_is_lost(
    redis_factory: Callable[..., RedisServer], fleet_prefix: str
) -> None:
    server = redis_factory()
    other = RedisBudget(server.url, limit=1, ttl=5, prefix=fleet_prefix, op_timeout=5)
    budget = RedisBudget(
        server.url, limit=1, ttl=5, prefix=fleet_prefix, fallback_limit=1, op_timeout=5
    )
    try:
        server.stop(_cleanup=False)
        lease = await budget.acquire("k", timeout=1)
        assert lease.fallback
        server.resume()
        taken = await other.acquire("k", timeout=2)  # the fleet's one place, taken meanwhile
        assert await budget.renew() == [lease]
        assert lease.lost == LostReason.NO_ROOM
        other.release(taken)
        budget.release(lease)
    finally:
        await budget.aclose()
        await other.aclose()


async def test_leases_survive_a_redis_restart(
    redis_factory: Callable[..., RedisServer], fleet_prefix: str
) -> None:
    server = redis_factory()
    budget = RedisBudget(server.url, limit=1, ttl=5, prefix=fleet_prefix, op_timeout=5)
    other = RedisBudget(server.url, limit=1, ttl=5, prefix=fleet_prefix, op_timeout=5)
    try:
        lease = await budget.acquire("k", timeout=2)
        server.restart()  # AOF: the lease is still there
        assert await budget.renew() == []
        assert lease.valid()
        with pytest.raises(BudgetTimeout):
            await other.acquire("k", timeout=0)
        budget.release(lease)
    finally:
        await budget.aclose()
        await other.aclose()


async def test_acquires_cancelled_anywhere_leave_nothing_in_redis(
    redis_server: RedisServer, fleet_prefix: str, client: aioredis.Redis
) -> None:
    """Cancelled before, during or after the script ran: a lease Redis granted to a
    cancelled acquire is taken back, so none is left counted."""
    budget = RedisBudget(redis_server.url, limit=50, ttl=30, prefix=fleet_prefix, op_timeout=5)
    try:
        for turns in range(30):
            task = asyncio.create_task(budget.acquire("k", timeout=2))
            for _ in range(turns % 6):
                await asyncio.sleep(0)
            if turns % 6 == 5:
                await asyncio.sleep(0.002 * (turns % 3))
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                budget.release(await task)  # finished before the cancel landed
        once = await budget.acquire("k", timeout=0)  # timeout 0: one try
        budget.release(once)
    finally:
        await budget.aclose()  # waits for the background take-backs
    assert budget.held("k") == 0
    assert await client.zcard(budget.redis_key("k")) == 0


def test_bad_options_are_rejected() -> None:
    for kwargs in ({"ttl": 0}, {"ttl": float("nan")}, {"fallback_limit": 0}, {"margin": 30}):
        with pytest.raises(ValueError):
            RedisBudget("redis://127.0.0.1:1/0", limit=1, **kwargs)  # type: ignore[arg-type]
