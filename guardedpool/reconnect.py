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

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception
from tenacity.wait import wait_base, wait_exponential, wait_random

from .config import PoolConfig, RetryPolicy
from .errors import UnknownKey
from .logs import error_text
from .policy import is_transient

if TYPE_CHECKING:
    from .connector import Connector

__all__ = ["KeyBackoff", "Reconnector", "backoff_wait", "connect_with_retry"]

log = logging.getLogger("guardedpool.reconnect")

T = TypeVar("T")
C = TypeVar("C")


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

    Waits out the key's current backoff first. Each failure but :class:`UnknownKey` (not a
    failure of the key: there is no such key) is recorded in ``backoff``, with a delay
    only when it is transient, and passed to ``on_failure(exc, delay)`` before the delay
    is slept. Raises the last error when it is permanent or when ``wanted()`` turned False.
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
            if not isinstance(exc, UnknownKey):
                # A permanent failure (wrong password, untrusted certificate) is a failure
                # of the key all the same: counted, kept as last_error, but not delayed.
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


class Reconnector(Generic[C]):
    """Every connect of one pool: the pool-wide ``max_connecting`` cap, the per-key backoff,
    and the ``on_reconnect_failed`` callback once a key's failures outlast the deadline.

    A server restart turns hundreds of connections into hundreds of reconnects at once;
    the cap spreads them out, the per-key backoff keeps a dead key from spinning, and the
    jitter keeps keys that failed together from retrying together.
    """

    def __init__(
        self,
        connector: Connector[C],
        config: PoolConfig,
        *,
        on_failed: Callable[[str, BaseException], None] | None,
        clock: Callable[[], float],
    ) -> None:
        self._connector = connector
        self._config = config
        self._on_failed = on_failed
        self._clock = clock
        # Permits to connect (max_connecting), not pool slots: a slot is taken before this.
        self._connect_permits = asyncio.Semaphore(config.max_connecting)
        self.connecting = 0
        self.peak_connecting = 0

    async def connect(
        self,
        key: str,
        backoff: KeyBackoff,
        *,
        wanted: Callable[[], bool],
        note: Callable[[BaseException], None],
    ) -> C:
        """A connection for ``key``, retrying transient failures while ``wanted()``.

        ``note(exc)`` is told of each failed attempt (the pool counts it and writes it into
        the record's history). Raises the last error when it is permanent or unwanted.
        """

        failed_here = 0

        def failed(exc: BaseException, delay: float) -> None:
            nonlocal failed_here
            note(exc)
            failed_here = backoff.failures
            if isinstance(exc, UnknownKey):
                log.debug(
                    "guardedpool: key %r is unknown to the connector; nothing kept for it",
                    key,
                    extra={"key": key, "error": error_text(exc)},
                )
                return
            error = error_text(exc)
            then = (
                f"retrying in {delay:.2f} s while someone waits"
                if is_transient(exc)
                else "not retried (a permanent error)"
            )
            log.warning(
                "guardedpool: connect for key %r failed (%d in a row): %s; %s",
                key,
                backoff.failures,
                error,
                then,
                extra={
                    "key": key,
                    "error": error,
                    "error_type": type(exc).__name__,
                    "transient": is_transient(exc),
                    "retry_in": delay,
                    "consecutive_failures": backoff.failures,
                },
            )
            if self._on_failed is not None and backoff.deadline_passed(
                self._clock(), self._config.retry
            ):
                try:
                    self._on_failed(key, exc)
                except Exception as cb_exc:
                    log.exception(
                        "guardedpool: on_reconnect_failed callback raised %s for key %r",
                        error_text(cb_exc),
                        key,
                        extra={"key": key, "error": error_text(cb_exc)},
                    )

        streak = backoff.failures  # failed attempts of the key before this connect
        conn = await connect_with_retry(
            lambda: self._once(key),
            policy=self._config.retry,
            backoff=backoff,
            wanted=wanted,
            clock=self._clock,
            sleep=asyncio.sleep,
            on_failure=failed,
        )
        streak = max(streak, failed_here)
        if streak:
            log.info(
                "guardedpool: key %r connected again after %d failed attempts",
                key,
                streak,
                extra={"key": key, "consecutive_failures": streak},
            )
        return conn


    async def _once(self, key: str) -> C:
        async with self._connect_permits:
            self.connecting += 1
            self.peak_connecting = max(self.peak_connecting, self.connecting)
            try:
                # The connector bounds itself by connect_timeout; this is a backstop.
                async with asyncio.timeout(self._config.connect_timeout + 1.0):
                    return await self._connector.open(key, self._config)
            finally:
                self.connecting -= 1
