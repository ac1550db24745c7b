"""Connect attempts with backoff that survives across acquires, built on tenacity.

Each key has a :class:`KeyBackoff`: how many transient failures in a row, since when, the
last error, and the earliest time the next attempt may start. It outlives any single
acquire, so a burst of acquires against a dead server does not each start from a zero
delay (that is how a restart turns into a storm). A success resets it.

The retry loop itself is tenacity's ``AsyncRetrying``: it retries only transient errors
(:func:`guardedpool.policy.is_transient`) and only while someone still wants a connection
for the key; the delay comes from tenacity's exponential wait plus random jitter, indexed
by the key's failure count rather than by the attempt number of this one loop.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception
from tenacity.wait import wait_base, wait_exponential, wait_random

from .config import RetryPolicy
from .policy import is_transient

__all__ = ["KeyBackoff", "backoff_wait", "connect_with_retry"]

log = logging.getLogger("guardedpool.reconnect")

T = TypeVar("T")


@dataclass(slots=True)
class KeyBackoff:
    """Transient-failure state of one key (sans-I/O: times come from the caller's clock)."""

    failures: int = 0
    failing_since: float | None = None
    last_error: BaseException | None = None
    next_attempt_at: float = 0.0
    deadline_reported: bool = False

    def record_failure(self, exc: BaseException, now: float, delay: float) -> None:
        self.failures += 1
        if self.failing_since is None:
            self.failing_since = now
        self.last_error = exc
        self.next_attempt_at = now + delay

    def record_success(self) -> None:
        self.failures = 0
        self.failing_since = None
        self.next_attempt_at = 0.0
        self.deadline_reported = False

    def deadline_passed(self, now: float, policy: RetryPolicy) -> bool:
        """True once per failure streak, when it has lasted ``reconnect_deadline``."""
        if self.deadline_reported or self.failing_since is None:
            return False
        if now - self.failing_since >= policy.reconnect_deadline:
            self.deadline_reported = True
            return True
        return False


class backoff_wait(wait_base):
    """tenacity wait: exponential in the key's failure count, capped, plus jitter."""

    def __init__(self, policy: RetryPolicy, backoff: KeyBackoff) -> None:
        self._backoff = backoff
        self._exp = wait_exponential(
            multiplier=policy.initial, max=policy.max_delay, exp_base=policy.multiplier
        )
        self._jitter = wait_random(0, policy.jitter)

    def delay(self) -> float:
        state = RetryCallState(None, None, (), {})  # type: ignore[arg-type]
        state.attempt_number = max(1, self._backoff.failures)
        return float(self._exp(state)) + float(self._jitter(state))

    def __call__(self, retry_state: RetryCallState) -> float:
        return self.delay()


async def connect_with_retry(
    attempt: Callable[[], Awaitable[T]],
    *,
    policy: RetryPolicy,
    backoff: KeyBackoff,
    wanted: Callable[[], bool],
    clock: Callable[[], float],
    sleep: Callable[[float], Awaitable[Any]],
    on_failure: Callable[[BaseException, float], None],
) -> T:
    """Run ``attempt`` until it succeeds, a permanent error occurs, or nobody wants it.

    Waits out the key's current backoff first. Each failure is recorded in ``backoff``
    and passed to ``on_failure(exc, delay)`` before the delay is slept. Raises the last
    error when it is permanent or when ``wanted()`` turned False.
    """
    wait = backoff_wait(policy, backoff)
    pending = backoff.next_attempt_at - clock()
    if pending > 0:
        await sleep(pending)

    async def one_attempt() -> T:
        try:
            return await attempt()
        except Exception as exc:
            delay = 0.0
            if is_transient(exc):
                delay = wait.delay()
                backoff.record_failure(exc, clock(), delay)
            on_failure(exc, delay)
            raise

    def next_delay(retry_state: RetryCallState) -> float:
        # Sleep until the time the failure recorded, so the delay drawn (with its jitter)
        # is the one both the loop and any later acquire honour.
        return max(0.0, backoff.next_attempt_at - clock())

    retrying = AsyncRetrying(
        retry=retry_if_exception(lambda exc: is_transient(exc) and wanted()),
        wait=next_delay,
        sleep=sleep,
        reraise=True,
    )
    result: T = await retrying(one_attempt)
    backoff.record_success()
    return result
