"""Pool behaviour over the in-memory connector: fairness, bounds, cancellation, caps.

No sockets here: these tests exercise the pool's own bookkeeping, fast. The same
behaviours over real sockets live in tests/integration.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
from typing import Any

import pytest
from harness.configs import DEFAULTS, IN_MEMORY, config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guardedpool import (
    AuthenticationError,
    ConnectError,
    ConnectionLost,
    GuardedPool,
    PoolClosed,
    PoolConfig,
    PoolError,
    PoolTimeout,
    UnknownKey,
)
from guardedpool.records import ConnState
from guardedpool.testing import MemoryConnection, MemoryConnector, books_disagree

ONE = config(DEFAULTS, max_per_key=1, max_total=1)
"""One slot in the whole pool: a second borrower waits."""


def make(
    cfg: PoolConfig = IN_MEMORY, **kw: Any
) -> tuple[GuardedPool[MemoryConnection], MemoryConnector]:
    connector = MemoryConnector(**kw)
    return GuardedPool(connector, cfg), connector


async def test_reuses_idle_connection_lifo() -> None:
    pool, connector = make()
    async with pool:
        async with pool.acquire("a") as c1:
            pass
        async with pool.acquire("a") as c2:
            assert c2 is c1
        assert connector.opens == 1
        assert pool.stats()["keys"]["a"]["acquires"] == 2


async def test_waiters_are_served_fifo() -> None:
    pool, _ = make(config(ONE, acquire_timeout=2.0))
    order: list[int] = []
    async with pool:
        holder = await pool.acquire("a")

        async def waiter(i: int) -> None:
            async with pool.acquire("a"):
                order.append(i)
                await asyncio.sleep(0)

        tasks = []
        for i in range(5):
            tasks.append(asyncio.create_task(waiter(i)))
            await asyncio.sleep(0)  # enqueue in order
        pool.release(holder)
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert order == [0, 1, 2, 3, 4]


async def test_acquire_timeout_names_key_and_bound() -> None:
    pool, _ = make(config(ONE, acquire_timeout=0.1))
    async with pool:
        held = await pool.acquire("inbox-7")
        with pytest.raises(PoolTimeout, match="inbox-7") as info:
            await pool.acquire("inbox-7")
        assert info.value.waited >= 0.1
        assert pool.stats()["keys"]["inbox-7"]["waiting"] == 0
        assert pool.stats()["keys"]["inbox-7"]["acquire_timeouts"] == 1
        pool.release(held)


async def test_cancelled_waiter_is_never_handed_a_connection() -> None:
    pool, _ = make(config(ONE, acquire_timeout=5.0))
    async with pool:
        held = await pool.acquire("a")
        task = asyncio.ensure_future(pool.acquire("a"))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        pool.release(held)
        # The connection went back to idle, not to the cancelled waiter.
        assert pool.stats()["keys"]["a"]["idle"] == 1
        async with pool.acquire("a") as again:
            assert again is held


async def test_connection_handed_to_a_cancelled_waiter_is_not_lost() -> None:
    pool, _ = make(config(ONE, acquire_timeout=5.0))
    async with pool:
        held = await pool.acquire("a")
        task = asyncio.ensure_future(pool.acquire("a"))
        await asyncio.sleep(0.01)
        pool.release(held)  # hands it to the waiter's future...
        task.cancel()  # ...which is cancelled before it runs
        with pytest.raises(asyncio.CancelledError):
            await task
        s = pool.stats()["keys"]["a"]
        assert (s["idle"], s["in_use"], s["open"]) == (1, 0, 1)


async def test_unknown_key_is_a_typed_error_not_a_hang() -> None:
    pool, _ = make(known={"a"})
    async with pool:
        with pytest.raises(UnknownKey, match="nope"):
            async with asyncio.timeout(1.0):
                await pool.acquire("nope")


async def test_wrong_password_one_attempt_per_acquire() -> None:
    # 7 logins within a second: room for them under the per-key login limit (issue 13;
    # test_limits.py checks that the default holds the 7th back).
    pool, connector = make(
        config(
            DEFAULTS,
            max_total=4,
            acquire_timeout=1.0,
            retry=config(IN_MEMORY.retry, max_logins_per_minute=7),
        )
    )
    connector.fail_keys["a"] = AuthenticationError("LOGIN rejected")
    async with pool:
        for _ in range(3):
            with pytest.raises(AuthenticationError):
                await pool.acquire("a")
        assert connector.opens == 3
        results = await asyncio.gather(
            *(pool.acquire("a") for _ in range(4)), return_exceptions=True
        )
        assert all(isinstance(r, AuthenticationError) for r in results)
        assert connector.opens == 7


async def test_transient_failures_retry_then_recover() -> None:
    fired: list[tuple[str, str]] = []
    cfg = config(
        DEFAULTS,
        acquire_timeout=3.0,
        retry=config(IN_MEMORY.retry, max_delay=0.02, jitter=0.0, reconnect_deadline=0.05),
    )
    connector = MemoryConnector()
    pool = GuardedPool(
        connector, cfg, on_reconnect_failed=lambda k, e: fired.append((k, type(e).__name__))
    )
    connector.fail_keys["a"] = ConnectError("refused")
    async with pool:
        task = asyncio.ensure_future(pool.acquire("a"))
        await asyncio.sleep(0.2)
        assert not task.done()
        assert fired == [("a", "ConnectError")]  # once per failure streak
        failures = pool.stats()["keys"]["a"]["consecutive_failures"]
        assert failures >= 3
        del connector.fail_keys["a"]
        conn = await asyncio.wait_for(task, 2.0)
        assert pool.stats()["keys"]["a"]["consecutive_failures"] == 0
        pool.release(conn)


async def test_key_state_keeps_no_waiter_list_or_backoff_it_does_not_need() -> None:
    # With one connection per inbox and 10,000 inboxes, per-key state weighs as much as the
    # connections: containers a key no longer needs are dropped.
    pool, connector = make()
    async with pool:
        async with pool.acquire("a"):  # waited for the open: a waiter list and a backoff
            pass
        ks = pool._keys["a"]
        assert ks.waiters is None and ks.backoff is None
        assert ks.closed is None and ks.replaced is None and ks.reconnects is None
        connector.fail_keys["b"] = ConnectError("refused")
        with pytest.raises(PoolTimeout):
            async with asyncio.timeout(5):
                await pool.acquire("b")
        failing = pool._keys["b"]
        assert failing.backoff is not None and failing.backoff.failures >= 1  # remembered
        assert failing.waiters is None
        del connector.fail_keys["b"]
        async with pool.acquire("b"):
            pass
        assert failing.backoff is not None and failing.backoff.failures == 0  # reset, kept:
        assert pool.stats()["keys"]["b"]["last_error"] == "ConnectError: refused"


async def test_borrower_is_the_task_and_the_line_that_acquired() -> None:
    pool, _ = make()
    here = inspect.currentframe()
    assert here is not None
    async with pool:
        for path in ("opens (slow path)", "idle (fast path)"):
            line = here.f_lineno + 1
            conn = await pool.acquire("a")
            record = pool.record_of(conn)
            borrower = record.borrower
            assert borrower is not None, path
            assert borrower.task == asyncio.current_task().get_name()  # type: ignore[union-attr]
            site = f"{__file__}:{line} in test_borrower_is_the_task_and_the_line_that_acquired"
            assert borrower.stack[0] == site, path
            pool.release(conn)
            assert record.borrower is None
        line = here.f_lineno + 1
        async with pool.acquire("a") as conn:
            borrower = pool.record_of(conn).borrower
            assert borrower is not None and borrower.stack[0].endswith(
                f":{line} in {here.f_code.co_qualname}"
            )


async def test_timeout_carries_the_last_connect_error() -> None:
    pool, connector = make(
        config(
            DEFAULTS,
            acquire_timeout=0.2,
            retry=config(DEFAULTS.retry, initial=0.01, max_delay=0.02),
        )
    )
    connector.fail_keys["a"] = ConnectError("connection refused")
    async with pool:
        with pytest.raises(PoolTimeout, match="connection refused") as info:
            await pool.acquire("a")
        assert isinstance(info.value.__cause__, ConnectError)


async def test_error_from_connection_poisons_it() -> None:
    pool, _ = make()
    async with pool:
        with pytest.raises(ConnectionLost):
            async with pool.acquire("a") as c1:
                raise ConnectionLost("peer went away")
        async with pool.acquire("a") as c2:
            assert c2 is not c1
        assert c1.closed
        assert pool.stats()["keys"]["a"]["closed"]["poisoned"] == 1


async def test_user_error_keeps_a_healthy_connection() -> None:
    pool, _ = make()
    async with pool:
        with pytest.raises(KeyError):
            async with pool.acquire("a") as c1:
                raise KeyError("user bug")
        async with pool.acquire("a") as c2:
            assert c2 is c1


async def test_dead_idle_connection_is_never_handed_out() -> None:
    pool, _ = make()
    async with pool:
        async with pool.acquire("a") as c1:
            pass
        c1.alive = False  # died while idle
        async with pool.acquire("a") as c2:
            assert c2 is not c1 and c2.alive
        assert pool.stats()["keys"]["a"]["closed"]["error"] == 1


async def test_housekeeping_retires_idle_connections() -> None:
    pool, connector = make(config(DEFAULTS, idle_timeout=0.05, housekeeping_interval=0.01))
    async with pool:
        async with pool.acquire("a"):
            pass
        for _ in range(100):
            await asyncio.sleep(0.01)
            if pool.stats()["keys"]["a"]["closed"]["idle"] and not connector.live:
                break
        assert pool.stats()["keys"]["a"]["closed"]["idle"] == 1
        assert not connector.live


async def test_lifetime_is_jittered_and_enforced_on_release() -> None:
    cfg = config(DEFAULTS, max_lifetime=0.05, lifetime_jitter=0.5, housekeeping_interval=10.0)
    pool, _ = make(cfg)
    async with pool:
        async with pool.acquire("a") as c1:
            await asyncio.sleep(0.06)
        async with pool.acquire("a") as c2:
            assert c2 is not c1
        assert pool.stats()["keys"]["a"]["closed"]["lifetime"] == 1


async def test_max_total_evicts_idle_connection_of_another_key() -> None:
    pool, _ = make(config(ONE, acquire_timeout=1.0))
    async with pool:
        async with pool.acquire("a"):
            pass
        async with pool.acquire("b") as b:
            assert b.key == "b"
        stats = pool.stats()
        assert stats["keys"]["a"]["closed"]["evicted"] == 1


async def test_close_wakes_waiters_and_is_idempotent() -> None:
    pool, connector = make(config(ONE, acquire_timeout=5.0, close_timeout=0.1))
    await pool.__aenter__()
    held = await pool.acquire("a")
    waiter = asyncio.ensure_future(pool.acquire("a"))
    await asyncio.sleep(0.01)
    await asyncio.wait_for(asyncio.gather(pool.close(), pool.close()), 3)
    with pytest.raises(PoolClosed):
        await waiter
    with pytest.raises(PoolClosed):
        await pool.acquire("a")
    assert held.closed and not connector.live  # the borrowed one was aborted after close_timeout
    pool.release(held)  # a late release after close is harmless
    await pool.close()


async def test_release_of_foreign_connection_is_an_error() -> None:
    pool, _ = make()
    async with pool:
        with pytest.raises(PoolError):
            pool.release(MemoryConnection("a", 0))


async def test_cancelled_open_leaves_nothing_behind() -> None:
    pool, connector = make(open_delay=0.2)
    async with pool:
        task = asyncio.ensure_future(pool.acquire("a"))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert not connector.live
    s = pool.stats()["total"]
    assert s["slots"] == 0 and s["opened"] - s["closed_total"] == s["open"] == 0


# -- property: the caps and the books hold under any interleaving ----------------------

OPS = st.lists(
    st.tuples(
        st.sampled_from("abc"),
        st.integers(0, 3),
        st.sampled_from(["ok", "fault", "cancel", "dead"]),
    ),
    min_size=1,
    max_size=25,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS, seed=st.integers(0, 2**16))
def test_caps_and_books_hold_under_random_work(ops: list[tuple[str, int, str]], seed: int) -> None:
    asyncio.run(_random_work(ops, seed))


async def _random_work(ops: list[tuple[str, int, str]], seed: int) -> None:
    rnd = random.Random(seed)
    cfg = config(
        DEFAULTS,
        max_total=3,
        acquire_timeout=0.5,
        close_timeout=0.05,
        housekeeping_interval=0.005,
        idle_timeout=0.02,
        max_lifetime=0.08,
        check_after=0.0,
    )
    connector = MemoryConnector(open_delay=0.001)
    pool = GuardedPool(connector, cfg, rng=rnd.random)
    handed: list[MemoryConnection] = []
    violations: list[str] = []

    def check_books() -> None:
        violations.extend(books_disagree(pool))  # every count, recounted from the records
        s = pool.stats()
        per_key: dict[str, int] = {}
        for c in connector.live:
            per_key[c.key] = per_key.get(c.key, 0) + 1
        if any(n > cfg.max_per_key for n in per_key.values()):
            violations.append(f"per-key cap: {per_key}")
        if len(connector.live) > cfg.max_total:
            violations.append(f"total cap: {len(connector.live)}")
        t = s["total"]
        if t["opened"] - t["closed_total"] != t["open"]:
            violations.append(f"books: {t}")

    async def job(key: str, hold: int, outcome: str) -> None:
        try:
            async with pool.acquire(key) as conn:
                if conn.closed or not conn.alive:
                    violations.append("handed out a retired connection")
                handed.append(conn)
                check_books()
                for _ in range(hold):
                    await asyncio.sleep(0.002)
                    check_books()
                if outcome == "fault":
                    raise ConnectionLost("injected")
                if outcome == "dead":
                    conn.alive = False
                if outcome == "cancel":
                    raise asyncio.CancelledError
        except (ConnectionLost, PoolTimeout, asyncio.CancelledError):
            pass
        check_books()  # after the release (or the failed acquire)

    async with pool:
        tasks = [asyncio.create_task(job(*op)) for op in ops]
        for _ in range(3):
            await asyncio.sleep(0.003)
            check_books()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
        check_books()
    violations.extend(books_disagree(pool))  # after close(): nothing left, nothing owed
    assert not violations, violations
    assert not connector.live, "every opened connection is closed after close()"
    for record in pool.audit_target.graveyard():
        assert record.state is ConnState.CLOSED and record.close_reason is not None
    assert pool.stats()["total"]["slots"] == 0


async def test_stats_keys_are_stable_and_json_ready() -> None:
    import json

    pool, _ = make()
    empty = pool.stats()
    async with pool:
        async with pool.acquire("a"):
            pass
        full = pool.stats()
    assert set(empty["total"]) == set(full["total"])
    assert set(full["keys"]["a"]) >= {
        "open",
        "idle",
        "in_use",
        "waiting",
        "acquires",
        "acquire_wait_total",
        "opened",
        "closed",
        "reconnects",
        "consecutive_failures",
        "last_error",
    }
    assert set(full["total"]["closed"]) == {
        "idle",
        "lifetime",
        "error",
        "poisoned",
        "shutdown",
        "audit",
        "evicted",
        "logged_out",
    }
    json.dumps(full)


async def test_reset_peaks_starts_a_new_window() -> None:
    pool, _ = make(config(ONE, acquire_timeout=1.0))
    async with pool:
        held = await pool.acquire("a")
        waiter = asyncio.ensure_future(pool.acquire("a"))
        await asyncio.sleep(0.05)
        pool.release(held)
        pool.release(await waiter)
        stats = pool.stats()
        assert stats["total"]["acquire_wait_max"] >= 0.05
        assert stats["total"]["peak_connecting"] == 1
        pool.reset_peaks()
        stats = pool.stats()
        assert stats["total"]["acquire_wait_max"] == 0.0
        assert stats["total"]["peak_connecting"] == 0


async def test_repr_says_keys_counts_and_whether_closed() -> None:
    pool, _ = make()
    async with pool, pool.acquire("a"):
        assert repr(pool) == (
            "<GuardedPool open keys=1 open=1 idle=0 in_use=1 opening=0 closing=0 slots=1>"
        )
    assert repr(pool).startswith("<GuardedPool closed keys=1 open=0 idle=0 in_use=0")


# -- per-key state that does not grow forever; stats that tell the truth (issue 12) -----


async def test_unknown_keys_leave_no_state_and_are_no_connect_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A generous acquire_timeout: a loaded machine must not turn UnknownKey into a timeout.
    pool, _ = make(config(IN_MEMORY, acquire_timeout=20.0), known={"a"})
    caplog.set_level(logging.DEBUG, logger="guardedpool")
    async with pool:
        async with pool.acquire("a"):
            pass
        for i in range(1000):
            with pytest.raises(UnknownKey):
                await pool.acquire(f"nope-{i}")
        stats = pool.stats()
        assert list(stats["keys"]) == ["a"]
        assert stats["total"]["connect_failures"] == 0
        assert stats["total"]["slots"] == 1
        assert books_disagree(pool) == []
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("'nope-999' is unknown" in r.getMessage() for r in caplog.records)


async def test_quiet_keys_are_forgotten_and_their_counters_kept_in_the_totals() -> None:
    cfg = config(
        DEFAULTS,
        max_per_key=1,
        max_total=50,
        idle_timeout=0.05,
        housekeeping_interval=0.01,
        forget_keys_after=0.05,
        check_after=60.0,
    )
    pool, connector = make(cfg)
    async with pool:
        for i in range(20):
            async with pool.acquire(f"k{i}"):
                pass
        for _ in range(500):  # bounded: each turn 10 ms, 5 s at most
            if not pool.stats()["keys"]:
                break
            await asyncio.sleep(0.01)
        stats = pool.stats()
        assert stats["keys"] == {}
        total = stats["total"]
        assert total["acquires"] == 20 and total["opened"] == 20
        assert total["closed"]["idle"] == 20
        assert total["opened"] - total["closed_total"] == total["open"] == 0
        async with pool.acquire("k0"):  # a forgotten key comes back as a new one
            assert pool.stats()["keys"]["k0"]["acquires"] == 1
        total = pool.stats()["total"]
        assert total["acquires"] == 21
        assert total["opened"] - total["closed_total"] == total["open"] == 1
        assert books_disagree(pool) == []
    assert not connector.live


async def test_a_failing_key_is_not_forgotten_while_its_backoff_runs() -> None:
    cfg = config(
        DEFAULTS,
        acquire_timeout=0.1,
        housekeeping_interval=0.01,
        forget_keys_after=0.01,
        retry=config(DEFAULTS.retry, initial=5.0, max_delay=5.0, jitter=0.0),
    )
    pool, connector = make(cfg)
    connector.fail_keys["a"] = ConnectError("refused")
    async with pool:
        with pytest.raises(PoolTimeout):
            await pool.acquire("a")
        await asyncio.sleep(0.2)  # housekeeping rounds pass; the retry is 5 s away
        assert pool.stats()["keys"]["a"]["consecutive_failures"] == 1


async def test_a_permanent_connect_failure_is_in_last_error_and_consecutive_failures() -> None:
    pool, connector = make()
    connector.fail_keys["a"] = AuthenticationError("LOGIN rejected")
    async with pool:
        for n in (1, 2):
            with pytest.raises(AuthenticationError):
                await pool.acquire("a")
            s = pool.stats()["keys"]["a"]
            assert s["consecutive_failures"] == n
            assert s["last_error"] == "AuthenticationError: LOGIN rejected"
            assert s["connect_failures"] == n
        del connector.fail_keys["a"]
        async with pool.acquire("a"):
            pass
        assert pool.stats()["keys"]["a"]["consecutive_failures"] == 0


async def test_a_connection_the_borrower_logged_out_has_its_own_close_reason() -> None:
    pool, _ = make()
    async with pool:
        async with pool.acquire("a") as conn:
            conn.logout()
        async with pool.acquire("a") as conn:
            conn.alive = False  # died under its borrower: still poisoned
        closed = pool.stats()["keys"]["a"]["closed"]
        assert (closed["logged_out"], closed["poisoned"]) == (1, 1)


async def test_housekeeping_looks_only_at_what_is_due() -> None:
    """Issue 15: a round costs what is due, not what is open. 300 connections held long on
    purpose (IDLE sessions) and 300 idle ones: a round right after they opened finds
    nothing due and pops nothing; each live connection has exactly one due time."""
    cfg = PoolConfig(max_per_key=1, max_total=600, housekeeping_interval=3600.0)
    pool, _ = make(cfg)
    async with pool:
        held = [await pool.acquire(f"h{i}") for i in range(300)]
        for conn in held:
            pool.declare_long_hold(conn)
        for i in range(300):
            async with pool.acquire(f"i{i}"):
                pass
        assert len(pool._housekeeper.due) == len(pool._books.live) == 600
        earliest = pool._housekeeper.due.earliest()
        assert earliest is not None and earliest > pool.clock()
        pool._housekeeper.run_once()
        assert len(pool._housekeeper.due) == 600 and pool._housekeeper.due.earliest() == earliest
        assert not books_disagree(pool)
        for conn in held:
            pool.release(conn)


async def test_closed_connections_do_not_pile_up_in_the_due_heap() -> None:
    """Lazy invalidation leaves a closed connection's entry in the heap; under churn a
    round prunes them once they outnumber the live ones (bounded memory)."""
    cfg = PoolConfig(max_per_key=1, max_total=10, housekeeping_interval=3600.0)
    pool, _ = make(cfg)
    async with pool:
        for r in range(300):  # 3,000 connections opened and closed, 10 at a time
            # a key per connection: the per-key login limit (6 a minute) stays out of it
            conns = [await pool.acquire(f"k{r}-{i}") for i in range(10)]
            for conn in conns:
                conn.alive = False  # poisoned on release: retired, a new one next time
                pool.release(conn)
            await asyncio.sleep(0)
        for _ in range(100):
            if not pool._books.live or all(
                s.record.state is ConnState.CLOSED for s in pool._books.live.values()
            ):
                break
            await asyncio.sleep(0.01)
        assert len(pool._housekeeper.due) > 1024  # stale entries of closed connections
        pool._housekeeper.run_once()
        assert len(pool._housekeeper.due) <= len(pool._books.live)
        assert not books_disagree(pool)
