"""The pool's fleet-budget hook, with LocalBudget and the in-memory connector: a lease
per connection from before the connect until the slot is freed, the budget as the limit
of a timed-out acquire, and lost leases aborting their connections."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from harness.configs import IN_MEMORY, config

from guardedpool import AuthenticationError, ConnectionLost, GuardedPool, PoolConfig, PoolTimeout
from guardedpool.fleet import BudgetUnavailable, Lease, LocalBudget, LostListener
from guardedpool.records import ConnState
from guardedpool.testing import MemoryConnection, MemoryConnector, books_disagree

CFG = config(IN_MEMORY, max_total=8, acquire_timeout=0.5)


def pool_with(
    budget: Any, config: PoolConfig = CFG, **kw: Any
) -> tuple[GuardedPool[MemoryConnection], MemoryConnector]:
    connector = MemoryConnector(**kw)
    return GuardedPool(connector, config, budget=budget), connector


async def until(cond: Any, bound: float = 2.0) -> None:
    """Wait for ``cond()`` to hold, at most ``bound`` seconds (then fail)."""
    async with asyncio.timeout(bound):
        for _ in range(int(bound / 0.005) + 1):
            if cond():
                return
            await asyncio.sleep(0.005)
        raise AssertionError("condition not met in time")


async def test_two_pools_share_the_cap_and_the_timeout_names_the_budget() -> None:
    budget = LocalBudget(1)
    a, ca = pool_with(budget)
    b, cb = pool_with(budget)
    async with a, b:
        async with a.acquire("k"):
            assert budget.held("k") == 1 == len(ca.live)
            with pytest.raises(PoolTimeout) as info:
                await b.acquire("k")
            assert info.value.limited_by == "the fleet budget"
            assert "fleet budget was the limit" in str(info.value)
            assert cb.opens == 0  # never connected without a lease
            assert b.stats()["budget"]["pool_lease_timeouts"] == 1
        assert not books_disagree(a) and not books_disagree(b)
    await budget.aclose()


async def test_the_lease_is_released_only_once_the_socket_is_closed() -> None:
    budget = LocalBudget(1)
    a, ca = pool_with(budget)
    b, cb = pool_with(budget, config(CFG, acquire_timeout=3.0))
    samples: list[int] = []
    async with a, b:
        conn = await a.acquire("k")
        waiting = asyncio.ensure_future(b.acquire("k"))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        a.release(conn, error=ConnectionLost("gone"))  # retired: closed in the background

        async def sample() -> None:
            while not waiting.done():
                samples.append(len(ca.live) + len(cb.live))
                assert budget.held("k") >= len(ca.live) + len(cb.live)
                await asyncio.sleep(0)

        await asyncio.gather(sample(), waiting)
        got = waiting.result()
        assert got.key == "k" and not ca.live and budget.held("k") == 1
        assert max(samples) <= 1
        b.release(got)
    await budget.aclose()


async def test_a_failed_connect_gives_the_lease_back_at_once() -> None:
    budget = LocalBudget(1)
    pool, connector = pool_with(budget)
    connector.fail_keys["k"] = AuthenticationError("refused")
    async with pool:
        with pytest.raises(AuthenticationError):
            await pool.acquire("k")
        assert budget.held("k") == 0
        stats = pool.stats()["budget"]
        assert stats["acquired"] == stats["released"] == 1
    await budget.aclose()


async def test_a_lost_lease_retires_an_idle_connection() -> None:
    budget = LocalBudget(2)
    pool, connector = pool_with(budget)
    async with pool:
        async with pool.acquire("k") as conn:
            pass
        (lease,) = [s for s in budget._book]
        assert budget.revoke(lease)
        await until(lambda: not connector.live and budget.held("k") == 0)
        assert conn.closed
        assert pool.stats()["budget"]["pool_lost_aborts"] == 1
        async with pool.acquire("k") as fresh:
            assert fresh is not conn
    await budget.aclose()


async def test_a_lost_lease_aborts_a_borrowed_connection_under_its_borrower() -> None:
    budget = LocalBudget(2)
    pool, _connector = pool_with(budget)
    async with pool:
        conn = await pool.acquire("k")
        record = pool.record_of(conn)
        (lease,) = list(budget._book)
        budget.revoke(lease)
        assert conn.closed  # aborted synchronously, before the borrower's next step
        assert any("fleet lease lost" in e.detail for e in record.history)
        pool.release(conn)  # dead: retired on release
        await until(lambda: budget.held("k") == 0)
        assert record.state is ConnState.CLOSED and not books_disagree(pool)
    await budget.aclose()


class DeafBudget(LocalBudget):
    """A LocalBudget whose losses reach nobody: only the hand-out check can catch them."""

    def subscribe(self, listener: LostListener) -> Any:
        return lambda: None


async def test_a_lease_no_longer_valid_is_never_handed_out() -> None:
    budget = DeafBudget(2)
    pool, _connector = pool_with(budget)
    async with pool:
        async with pool.acquire("k") as first:
            pass
        (lease,) = list(budget._book)
        budget.revoke(lease)
        assert not first.closed  # nobody told the pool
        async with pool.acquire("k") as second:
            assert second is not first
        assert first.closed
        assert pool.stats()["budget"]["pool_invalid_at_hand_out"] >= 1
    await budget.aclose()


class AwayBudget(LocalBudget):
    """A budget whose store is unreachable: acquire fails at its deadline."""

    async def acquire(self, key: str, *, timeout: float) -> Lease:
        await asyncio.sleep(timeout)
        raise BudgetUnavailable(key, timeout, ConnectionRefusedError("refused"))


async def test_an_unreachable_budget_is_a_typed_error_within_acquire_timeout() -> None:
    budget = AwayBudget(1)
    pool, connector = pool_with(budget)
    loop = asyncio.get_running_loop()
    async with pool:
        begun = loop.time()
        with pytest.raises(BudgetUnavailable):
            await pool.acquire("k")
        assert loop.time() - begun < CFG.acquire_timeout + 0.5  # bounded, not a hang
        assert connector.opens == 0
        assert pool.stats()["budget"]["pool_lease_unavailable"] == 1
    await budget.aclose()


async def test_stats_fold_in_the_budget() -> None:
    budget = LocalBudget(3)
    pool, _ = pool_with(budget)
    async with pool, pool.acquire("k"):
        stats = pool.stats()["budget"]
        assert stats["held"] == 1 and stats["pool_waiting"] == 0
    assert "budget" not in GuardedPool(MemoryConnector(), CFG).stats()
    await budget.aclose()


class _CountingCloses(MemoryConnector):
    """Counts the graceful closes (a LOGOUT, for IMAP) apart from the aborts."""

    def __init__(self) -> None:
        super().__init__()
        self.graceful = 0

    async def close(self, conn: MemoryConnection, timeout: float) -> None:
        self.graceful += 1
        await super().close(conn, timeout)


async def test_a_connection_whose_lease_ran_out_unnoticed_is_aborted_never_logged_out() -> None:
    """The loop frozen past the TTL (as by SIGSTOP), then the first thing that runs closes
    the key's idle connections (a fleet worker that lost the key): before the watchdog has
    said so, the lease is already invalid, so the close sends nothing (abort, no LOGOUT)."""
    budget = LocalBudget(2, ttl=0.2)
    connector = _CountingCloses()
    pool = GuardedPool(connector, CFG, budget=budget)
    async with pool:
        async with pool.acquire("k"):
            pass
        time.sleep(0.3)  # noqa: ASYNC251 -- the whole loop stands still past the lease TTL
        assert pool.close_idle("k") == 1  # before any callback of the loop has run
        await until(lambda: not connector.live)
        assert connector.graceful == 0 and connector.closes == 1
        async with pool.acquire("k"):  # a new lease, a new connection
            pass
        assert pool.close_idle("k") == 1
        await until(lambda: not connector.live)
        assert connector.graceful == 1  # a valid lease: logged out as usual
