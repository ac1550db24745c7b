"""The acquire and release fast paths decide exactly as the policy functions do.

``GuardedPool._take_ready`` and ``GuardedPool.release`` write two policy questions out in
place instead of calling them (``guardedpool/fastpath.py``, tricks 4 and 5):
``policy.ready_to_hand_out`` and the common answer of ``policy.retire_on_release``. This
property drives a real pool over the in-memory connector with a clock the test sets, across
every threshold (idle timeout, check interval, lifetime), dead connections and every kind of
error at release, and holds each acquire and release against the policy's own answer. It
fails if a fast path is looser than the policy (hands out a connection the policy would
check or retire) or stricter (sends a ready one down the slow path, which checks it).
"""

from __future__ import annotations

import asyncio

import pytest
from harness.configs import DEFAULTS, FAST_RETRY, config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guardedpool import ConnectionLost, GuardedPool, policy
from guardedpool.records import ConnectionRecord, ConnState
from guardedpool.testing import MemoryConnection, MemoryConnector

CFG = config(
    DEFAULTS,
    max_per_key=1,
    max_total=1,
    idle_timeout=10.0,
    check_after=5.0,
    max_lifetime=30.0,
    lifetime_jitter=0.0,
    acquire_timeout=5.0,
    housekeeping_interval=3600.0,
    # the clock stands still between steps: no login-rate or backoff wait in the way
    retry=config(FAST_RETRY, max_logins_per_minute=10_000),
)
# Steps of the clock on both sides of every threshold above.
STEPS = [0.0, 1.0, 4.999, 5.0, 5.001, 9.999, 10.0, 10.001, 29.999, 30.0, 30.001]

ACTIONS = st.lists(
    st.one_of(
        st.tuples(st.just("advance"), st.sampled_from(STEPS)),
        st.tuples(st.just("kill"), st.none()),
        st.tuples(
            st.just("use"),
            st.tuples(
                st.sampled_from(["ok", "fault", "user", "logout", "dead"]),
                st.sampled_from(STEPS),  # how long the borrower holds it
            ),
        ),
    ),
    min_size=1,
    max_size=30,
)


class SetClock:
    """A monotonic clock that moves only when the test moves it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.timeout(120)
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(actions=ACTIONS)
def test_fast_paths_agree_with_the_policy(actions: list[tuple[str, object]]) -> None:
    asyncio.run(asyncio.wait_for(_drive(actions), 20))


async def _drive(actions: list[tuple[str, object]]) -> None:
    clock = SetClock()
    connector = MemoryConnector()
    pool: GuardedPool[MemoryConnection] = GuardedPool(connector, CFG, clock=clock)
    idle: MemoryConnection | None = None  # the key's one idle connection, if any
    idle_record: ConnectionRecord | None = None  # its record (record_of asks a borrower)
    async with pool:
        for action, arg in actions:
            if action == "advance":
                assert isinstance(arg, float)
                clock.now += arg
                continue
            if action == "kill":
                if idle is not None:
                    idle.alive = False  # died while idle: the pool must notice
                continue
            ready = (
                idle is not None
                and idle_record is not None
                and idle.alive
                and policy.ready_to_hand_out(idle_record, clock.now, CFG)
            )
            checked_before = idle_record.last_checked_at if idle_record is not None else None
            conn = await pool.acquire("a")
            record = pool.record_of(conn)
            if ready:
                # the fast path: the very same connection, handed out without a check
                assert conn is idle and record.last_checked_at == checked_before
            elif conn is idle:
                # the slow path kept it only after checking it (NOOP), at this time
                assert record.last_checked_at == clock.now
            assert isinstance(arg, tuple)
            how, held_for = arg
            clock.now += held_for
            _use_and_release(pool, conn, how, clock.now)
            idle, idle_record = (conn, record) if record.state is ConnState.IDLE else (None, None)


def _use_and_release(
    pool: GuardedPool[MemoryConnection], conn: MemoryConnection, how: str, now: float
) -> None:
    error: BaseException | None = None
    if how == "fault":
        error = ConnectionLost("injected")
    elif how == "user":
        error = KeyError("a borrower's own bug")
    elif how == "logout":
        conn.logout()
    elif how == "dead":
        conn.alive = False
    record = pool.record_of(conn)
    expected = policy.retire_on_release(
        record,
        now,
        conn.alive,
        isinstance(error, ConnectionLost),
        False,
        conn.logged_out,
    )
    pool.release(conn, error=error)
    if expected is None:
        assert record.state is ConnState.IDLE
    else:
        assert record.state in (ConnState.CLOSING, ConnState.CLOSED)
        assert record.close_reason is expected
