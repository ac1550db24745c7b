"""guardedpool.reconnect.connect_with_retry: the retry loop's rules over scripted attempts.

The first attempt runs before tenacity's loop is built (a connect that succeeds at once
pays nothing for it); these tests pin that the rules are the same either way: transient
failures are retried after the delay the failure recorded, permanent ones and unwanted
ones are not, and the key's backoff sees every failure and the success.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from guardedpool import AuthenticationError, ConnectError, RetryPolicy
from guardedpool.reconnect import KeyBackoff, connect_with_retry, failing_key_permits

POLICY = RetryPolicy(initial=1.0, multiplier=2.0, max_delay=30.0, jitter=0.0)


class Script:
    """Attempts that fail with the given errors in turn, then return "conn"; a clock that
    only the loop's sleeps move; every sleep and every failure seen, in order."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.attempts = 0
        self.now = 100.0
        self.sleeps: list[float] = []
        self.failures: list[tuple[str, float]] = []

    async def attempt(self) -> str:
        self.attempts += 1
        if self.errors:
            raise self.errors.pop(0)
        return "conn"

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def on_failure(self, exc: BaseException, delay: float) -> None:
        self.failures.append((type(exc).__name__, delay))

    async def run(self, backoff: KeyBackoff, wanted: Callable[[], bool] = lambda: True) -> str:
        return await connect_with_retry(
            self.attempt,
            policy=POLICY,
            backoff=backoff,
            wanted=wanted,
            clock=self.clock,
            sleep=self.sleep,
            on_failure=self.on_failure,
        )


async def test_a_connect_that_succeeds_at_once_is_one_attempt_without_a_wait() -> None:
    script, backoff = Script(), KeyBackoff()
    assert await script.run(backoff) == "conn"
    assert (script.attempts, script.sleeps, script.failures) == (1, [], [])
    assert backoff.failures == 0 and backoff.level == 0


async def test_transient_failures_are_retried_after_the_delays_they_recorded() -> None:
    script, backoff = Script(ConnectError("refused"), OSError("reset")), KeyBackoff()
    assert await script.run(backoff) == "conn"
    assert script.attempts == 3
    # Exponential in the key's level before the failure, at least 1 (jitter 0): 1 s, 1 s
    # (a third would wait 2 s); each sleep is what the failure recorded in the backoff.
    assert script.failures == [("ConnectError", 1.0), ("OSError", 1.0)]
    assert script.sleeps == [1.0, 1.0]
    assert backoff.failures == 0  # the streak ended with the success
    assert backoff.level == 2 and backoff.proving_since == script.now


async def test_a_permanent_failure_is_not_retried_but_counted() -> None:
    script, backoff = Script(AuthenticationError("wrong password")), KeyBackoff()
    with pytest.raises(AuthenticationError, match="wrong password"):
        await script.run(backoff)
    assert (script.attempts, script.sleeps) == (1, [])
    assert script.failures == [("AuthenticationError", 0.0)]
    assert backoff.failures == 1 and isinstance(backoff.last_error, AuthenticationError)


async def test_a_transient_failure_nobody_wants_retried_ends_the_loop() -> None:
    script, backoff = Script(ConnectError("refused")), KeyBackoff()
    with pytest.raises(ConnectError, match="refused"):
        await script.run(backoff, wanted=lambda: False)
    assert (script.attempts, script.sleeps) == (1, [])
    assert backoff.failures == 1 and backoff.next_attempt_at == 101.0


async def test_a_permanent_failure_after_a_retry_ends_the_loop_with_it() -> None:
    script = Script(ConnectError("refused"), AuthenticationError("wrong password"))
    backoff = KeyBackoff()
    with pytest.raises(AuthenticationError, match="wrong password"):
        await script.run(backoff)
    assert (script.attempts, script.sleeps) == (2, [1.0])
    assert backoff.failures == 2


async def test_a_pending_backoff_is_waited_out_before_the_first_attempt() -> None:
    script, backoff = Script(), KeyBackoff(next_attempt_at=103.5)
    assert await script.run(backoff) == "conn"
    assert script.sleeps == [3.5] and script.attempts == 1


async def test_cancellation_during_the_first_attempt_is_not_retried() -> None:
    script, backoff = Script(), KeyBackoff()

    async def hangs() -> str:
        script.attempts += 1
        await asyncio.Event().wait()  # cancelled below
        return "never"

    task = asyncio.ensure_future(
        connect_with_retry(
            hangs,
            policy=POLICY,
            backoff=backoff,
            wanted=lambda: True,
            clock=script.clock,
            sleep=script.sleep,
            on_failure=script.on_failure,
        )
    )
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (script.attempts, script.sleeps, script.failures) == (1, [], [])
    assert backoff.failures == 0


# -- a key that fails on its own ---------------------------------------------------------


@pytest.mark.parametrize(
    ("failures_at", "progress_at", "setback_at", "own"),
    [
        ((), None, None, False),
        ((1.0,), None, None, False),  # nothing ever connected: an outage, maybe
        ((1.0,), 0.5, None, True),  # the pool connected, and no connect had failed
        ((1.0,), 0.5, 0.4, True),  # the pool's latest outcome before it: a success
        ((1.0,), 0.5, 0.7, False),  # a failure came first: an outage's onset, maybe
        ((1.0,), 0.5, 0.5, False),
        ((1.0, 2.0), None, None, False),
        ((1.0, 2.0), 0.5, 0.7, False),  # every success came before the streak
        ((1.0, 2.0), 1.5, 1.8, True),  # connected between two of its failures
        ((1.0, 2.0, 3.0), 2.5, 2.9, True),
    ],
)
def test_failed_amid_progress_when_the_pool_was_connecting(
    failures_at: tuple[float, ...], progress_at: float | None, setback_at: float | None, own: bool
) -> None:
    # Each failure sees the pool's latest failure before it, the key's own included.
    backoff = KeyBackoff()
    setback = setback_at
    for at in failures_at:
        backoff.record_failure(ConnectError("x"), at, 1.0, progress_at, setback)
        setback = at
    assert backoff.failed_amid_progress is own
    backoff.record_success(10.0)
    assert not backoff.failed_amid_progress and backoff.last_failure_at is None


async def test_the_loop_hands_the_pools_progress_to_the_backoff() -> None:
    script = Script(ConnectionResetError("a"), ConnectionResetError("b"), ConnectionResetError("c"))
    backoff = KeyBackoff()
    progress: list[float | None] = [None]
    setback: list[float | None] = [None]

    def seen() -> tuple[float | None, float | None]:
        return progress[0], setback[0]

    async def attempt() -> str:
        if script.attempts == 1:
            progress[0] = script.now  # another key connected after the first failure
        return await script.attempt()

    def failed(exc: BaseException, delay: float) -> None:
        setback[0] = script.now

    with pytest.raises(ConnectionResetError):
        await connect_with_retry(
            attempt,
            policy=POLICY,
            backoff=backoff,
            wanted=lambda: script.attempts < 3,
            clock=script.clock,
            sleep=script.sleep,
            on_failure=failed,
            progress=seen,
        )
    assert backoff.failures == 3 and backoff.failed_amid_progress


@pytest.mark.parametrize(("cap", "lane"), [(1, 1), (2, 1), (3, 2), (4, 3), (8, 6), (16, 12)])
def test_keys_in_a_failure_streak_leave_a_quarter_of_the_permits(cap: int, lane: int) -> None:
    assert failing_key_permits(cap) == lane
