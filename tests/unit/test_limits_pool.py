"""The pool honours the server's limits: throttling, a lowered cap, the login rate.

Over the in-memory connector with an injected clock: the pool's decisions read the clock,
so a test moves time forward by minutes without waiting for them.
"""

from __future__ import annotations

import asyncio

import pytest
from harness.configs import DEFAULTS, IN_MEMORY, config

from guardedpool import (
    AuthenticationError,
    CommandThrottled,
    ConnectionLost,
    GuardedPool,
    PoolTimeout,
    ServerBusy,
)
from guardedpool.testing import MemoryConnection, MemoryConnector, books_disagree

O365 = "Request is throttled. Suggested Backoff Time: 299961 milliseconds"
RETRY = config(IN_MEMORY.retry, jitter=0.0)
"""The in-memory backoff without jitter: the injected clock meets each delay exactly."""


class Clock:
    """Monotonic time plus an offset a test can jump forward."""

    def __init__(self) -> None:
        self.offset = 1000.0

    def __call__(self) -> float:
        import time

        return time.monotonic() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


def make(
    *, max_per_key: int = 2, acquire_timeout: float = 0.3, **retry: object
) -> tuple[GuardedPool[MemoryConnection], MemoryConnector, Clock]:
    cfg = config(
        DEFAULTS,
        max_per_key=max_per_key,
        max_total=10,
        acquire_timeout=acquire_timeout,
        check_after=3600.0,
        housekeeping_interval=0.05,
        retry=config(RETRY, **retry),
    )
    connector = MemoryConnector()
    clock = Clock()
    return GuardedPool(connector, cfg, clock=clock), connector, clock


async def test_a_throttled_login_holds_the_key_back_for_the_named_wait() -> None:
    pool, connector, clock = make()
    connector.fail_keys["a"] = ServerBusy(
        "throttled", kind="throttled", delay=299.961, server_text=O365
    )
    async with pool:
        with pytest.raises(PoolTimeout) as info:
            await pool.acquire("a")
        assert connector.opens == 1  # one login, then the key waits: no retry meanwhile
        err = info.value
        assert err.throttled_for is not None and 299.0 < err.throttled_for <= 299.961
        assert "throttling by the server" in str(err) and "Suggested Backoff Time" in str(err)
        stats = pool.stats()["keys"]["a"]
        assert stats["throttled"] is True and stats["throttled_until"] is not None
        assert 299.0 < stats["throttled_for"] <= 299.961
        del connector.fail_keys["a"]
        with pytest.raises(PoolTimeout):  # still throttled: no login at all
            await pool.acquire("a")
        assert connector.opens == 1
        clock.advance(300.0)
        async with pool.acquire("a"):
            pass
        assert connector.opens == 2
        assert pool.stats()["keys"]["a"]["throttled"] is False
        assert not books_disagree(pool)


async def test_the_named_wait_is_capped_by_max_throttle_delay() -> None:
    pool, connector, clock = make(max_throttle_delay=5.0)
    connector.fail_keys["a"] = ServerBusy("x", kind="throttled", delay=86_400.0)
    async with pool:
        with pytest.raises(PoolTimeout) as info:
            await pool.acquire("a")
        assert info.value.throttled_for is not None and info.value.throttled_for <= 5.0
        del connector.fail_keys["a"]
        clock.advance(5.0)
        async with pool.acquire("a"):
            pass


async def test_a_waiter_is_served_when_the_throttle_ends() -> None:
    pool, connector, _ = make(acquire_timeout=5.0, max_throttle_delay=0.2)
    connector.fail_keys["a"] = ServerBusy("x", kind="throttled", delay=0.2)
    async with pool:
        task = asyncio.ensure_future(pool.acquire("a"))
        for _ in range(100):  # bounded: the refusal comes at the first connect
            await asyncio.sleep(0.005)
            if connector.opens:
                break
        del connector.fail_keys["a"]
        conn = await asyncio.wait_for(task, 4.0)  # the pool's wake-up, not a new acquire
        pool.release(conn)
        assert connector.opens == 2


async def test_a_borrower_throttled_by_a_command_throttles_the_key_not_the_connection() -> None:
    pool, connector, clock = make()
    async with pool:
        conn = await pool.acquire("a")
        throttled = CommandThrottled("SELECT", "BAD", O365, kind="throttled", delay=100.0)
        pool.release(conn, error=throttled)
        stats = pool.stats()["keys"]["a"]
        assert stats["idle"] == 1 and stats["throttled"] is True  # kept, but not handed out
        with pytest.raises(PoolTimeout) as info:
            await pool.acquire("a")
        assert "throttling by the server" in str(info.value)
        assert connector.opens == 1 and not conn.closed
        clock.advance(100.0)  # (not past idle_timeout: the connection is still good)
        again = await pool.acquire("a")
        assert again is conn
        pool.release(again)


async def test_too_many_connections_lowers_the_cap_to_what_the_key_holds() -> None:
    pool, connector, clock = make(max_per_key=4, capacity_cooldown=100.0)
    async with pool:
        held = [await pool.acquire("a") for _ in range(2)]
        connector.fail_keys["a"] = ServerBusy(
            "too many", kind="capacity", server_text="Too many simultaneous connections"
        )
        with pytest.raises(PoolTimeout) as info:
            await pool.acquire("a")
        assert "capped at 2" in str(info.value)
        assert connector.opens == 3  # one refused login, then the pool stopped knocking
        assert pool.stats()["keys"]["a"]["effective_max_per_key"] == 2
        # a waiter is served by a held connection coming back
        waiter = asyncio.ensure_future(pool.acquire("a"))
        await asyncio.sleep(0.05)
        pool.release(held[0])
        held[0] = await asyncio.wait_for(waiter, 1.0)
        assert connector.opens == 3
        # after one cool-down the cap rises by one: one probing login
        clock.advance(100.0)
        assert pool.stats()["keys"]["a"]["effective_max_per_key"] == 3
        with pytest.raises(PoolTimeout):
            await pool.acquire("a")
        assert connector.opens == 4  # refused again: back to 2, no second knock
        assert pool.stats()["keys"]["a"]["effective_max_per_key"] == 2
        del connector.fail_keys["a"]
        clock.advance(200.0)
        assert pool.stats()["keys"]["a"]["effective_max_per_key"] == 4
        third = await pool.acquire("a")
        for conn in (*held, third):
            pool.release(conn)
        assert not books_disagree(pool)


async def test_logins_per_minute_against_a_server_that_drops_after_login() -> None:
    """Every connection dies right after LOGIN: at most max_logins_per_minute logins per
    minute of the pool's clock, however hard borrowers ask."""
    pool, connector, clock = make(
        max_logins_per_minute=6, initial=0.001, max_delay=0.002, acquire_timeout=0.05
    )
    logins_per_minute = []
    async with pool:
        for _minute in range(3):
            before = connector.opens
            for _ in range(12):  # bounded: 12 borrows a "minute"
                try:
                    async with pool.acquire("a") as conn:
                        conn.alive = False  # dropped by the server a moment after LOGIN
                        raise ConnectionLost("connection closed by peer")
                except (ConnectionLost, PoolTimeout):
                    pass
            logins_per_minute.append(connector.opens - before)
            assert pool.stats()["keys"]["a"]["logins_last_minute"] <= 6
            clock.advance(60.0)
    assert logins_per_minute == [6, 6, 6]


async def test_a_wrong_password_is_not_sent_a_seventh_time_within_a_minute() -> None:
    pool, connector, clock = make(max_logins_per_minute=6)
    connector.fail_keys["a"] = AuthenticationError("LOGIN rejected")
    async with pool:
        for _ in range(6):
            with pytest.raises(AuthenticationError):
                await pool.acquire("a")
        with pytest.raises(PoolTimeout) as info:
            await pool.acquire("a")
        assert "at most 6 logins per minute" in str(info.value)
        assert connector.opens == 6
        clock.advance(60.0)
        with pytest.raises(AuthenticationError):
            await pool.acquire("a")
        assert connector.opens == 7


async def test_failed_connects_that_never_reached_login_are_paced_by_the_backoff_only() -> None:
    from guardedpool import ConnectError

    pool, connector, _ = make(max_logins_per_minute=2, acquire_timeout=0.5)
    connector.fail_keys["a"] = ConnectError("connection refused")
    async with pool:
        with pytest.raises(PoolTimeout):
            await pool.acquire("a")
        assert connector.opens > 2  # refused ports are not logins
        assert pool.stats()["keys"]["a"]["logins_last_minute"] == 0


async def test_one_login_costs_a_float_and_a_second_one_starts_the_log() -> None:
    pool, _, clock = make()
    async with pool:
        async with pool.acquire("a"):
            pass
        ks = pool._keys["a"]
        assert ks.limits is None and ks.first_login is not None  # no KeyLimits for one
        assert pool.stats()["keys"]["a"]["logins_last_minute"] == 1
        held = [await pool.acquire("a") for _ in range(2)]  # the second connection
        assert ks.limits is not None and len(ks.limits.logins) == 2
        for conn in held:
            pool.release(conn)
        clock.advance(61.0)
        assert pool.stats()["keys"]["a"]["logins_last_minute"] == 0


async def test_a_limit_of_one_login_a_minute_waits_for_the_window_without_spinning() -> None:
    pool, connector, clock = make(max_per_key=1, max_logins_per_minute=1)
    async with pool:
        conn = await pool.acquire("a")
        pool.release(conn, error=ConnectionLost("dropped"))
        with pytest.raises(PoolTimeout) as info:
            await pool.acquire("a")
        assert "at most 1 logins per minute" in str(info.value)
        assert connector.opens == 1
        clock.advance(60.0)
        async with pool.acquire("a"):
            pass
        assert connector.opens == 2


async def test_a_throttled_key_is_not_forgotten_until_the_throttle_ends() -> None:
    cfg = config(
        DEFAULTS,
        acquire_timeout=0.1,
        housekeeping_interval=0.01,
        forget_keys_after=0.01,
        retry=config(RETRY, max_delay=0.02),
    )
    connector = MemoryConnector()
    clock = Clock()
    pool = GuardedPool(connector, cfg, clock=clock)
    connector.fail_keys["a"] = ServerBusy("x", kind="throttled", delay=100.0)
    async with pool:
        with pytest.raises(PoolTimeout):
            await pool.acquire("a")
        await asyncio.sleep(0.1)  # housekeeping rounds that would forget a quiet key
        assert pool.stats()["keys"]["a"]["throttled"] is True  # remembered
        clock.advance(100.0)
        for _ in range(200):  # bounded: forgotten within a few rounds once it is over
            if "a" not in pool.stats()["keys"]:
                break
            await asyncio.sleep(0.01)
        assert "a" not in pool.stats()["keys"]
