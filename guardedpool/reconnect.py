"""Connect attempts with backoff that survives across acquires, built on tenacity.

Each key has a :class:`KeyBackoff`: how many transient failures in a row, since when, the
last error, and the earliest time the next attempt may start. It outlives any single
acquire, so a burst of acquires against a dead server does not each start from a zero
delay (that is how a restart turns into a storm).

A successful connect does not reset the delay by itself: the delay's exponent (``level``)
counts failed connects *and* connections that died of a fault younger than
``retry.reset_after``, and resets only once a connection has lived that long. A server
that accepts LOGIN and drops the connection a moment later thus meets a growing delay
(ImapFlow/EmailEngine measured about 17 logins per second without such a guard). The
per-key login rate and the server's own limits are :mod:`guardedpool.limits`; the loop
here asks ``admit()`` before every attempt, once the attempt holds a ``max_connecting``
permit, and gives up, freeing the slot, when the key may not connect now or nobody waits
for it any more (the pool starts a connect again once it may).

The retry loop itself is tenacity's ``AsyncRetrying``: it retries only transient errors
(:func:`guardedpool.policy.is_transient`) and only while someone still wants a connection
for the key; the delay comes from tenacity's exponential wait plus random jitter, indexed
by the key's failure count rather than by the attempt number of this one loop. The first
attempt runs before the loop is built, under the same rules: a connect that succeeds at
once (the usual case) pays nothing for it.
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
from .errors import ConnectError, UnknownKey
from .logs import error_text
from .policy import is_transient

if TYPE_CHECKING:
    from .connector import Connector

__all__ = [
    "CONNECT_BACKSTOP",
    "ConnectDeferred",
    "KeyBackoff",
    "Reconnector",
    "backoff_wait",
    "connect_with_retry",
    "failing_key_permits",
]

log = logging.getLogger("guardedpool.reconnect")

T = TypeVar("T")
C = TypeVar("C")

CONNECT_BACKSTOP = 1.0
"""Seconds past ``connect_timeout`` after which the pool cancels a connector's ``open``
that overran its own bound: no connect attempt lasts longer than the sum."""


class ConnectDeferred(ConnectError):
    """A connect the pool did not attempt: the key may not connect now (throttled, at its
    effective cap, or out of logins for the minute), or nobody waits for it any more when
    its turn under ``max_connecting`` comes. Transient, not a failure of the key; it never
    reaches a caller."""


@dataclass(slots=True)
class KeyBackoff:
    """Transient-failure state of one key (sans-I/O: times come from the caller's clock).

    Attributes:
        failures: connect failures in a row (0 once a connect succeeds): the stats'
            ``consecutive_failures``.
        level: the delay's exponent: failed connects plus connections that died young;
            reset only by :meth:`settle` once a connection has lived ``reset_after``.
        proving_since: when a connect succeeded while ``level > 0``: the reset is due
            ``reset_after`` later, unless a connection dies young first.
        last_failure_at: when the streak's latest failed connect ended (None: no streak).
        failed_amid_progress: the key failed while the pool's connects were succeeding:
            the pool's latest finished attempt before this failure had succeeded, or a
            connect succeeded between this failure and the key's previous one. Its
            failures are then its own, not an outage's that the pool rides out (see
            ``GuardedPool``'s queue rule): while nothing connects, every key fails alike.
    """

    failures: int = 0
    failing_since: float | None = None
    last_error: BaseException | None = None
    next_attempt_at: float = 0.0
    deadline_reported: bool = False
    level: int = 0
    proving_since: float | None = None
    last_failure_at: float | None = None
    failed_amid_progress: bool = False

    def record_failure(
        self,
        exc: BaseException,
        now: float,
        delay: float,
        progress_at: float | None = None,
        setback_at: float | None = None,
    ) -> None:
        """A connect failed at ``now``; the next may start ``delay`` seconds later.
        ``progress_at``: when a connect of the pool last succeeded, ``setback_at``: when
        one last failed before this one (None: never)."""
        previous = self.last_failure_at
        if progress_at is not None and (
            setback_at is None
            or progress_at > setback_at
            or (previous is not None and progress_at > previous)
        ):
            self.failed_amid_progress = True
        self.failures += 1
        self.level += 1
        self.proving_since = None
        if self.failing_since is None:
            self.failing_since = now
        self.last_error = exc
        self.last_failure_at = now
        self.next_attempt_at = now + delay

    def record_success(self, now: float) -> None:
        """A connect succeeded: the failure streak ends; the delay waits for the proof."""
        self.failures = 0
        self.failing_since = None
        self.last_failure_at = None
        self.failed_amid_progress = False
        self.deadline_reported = False
        if self.level and self.proving_since is None:
            self.proving_since = now

    def record_short_life(self, now: float, delay: float) -> None:
        """A connection died of a fault before living ``reset_after``: one more level, and
        the key's next connect waits ``delay`` seconds from now."""
        self.level += 1
        self.proving_since = None
        self.next_attempt_at = max(self.next_attempt_at, now + delay)

    def settle(self, now: float, reset_after: float) -> None:
        """Reset the delay once the connect that succeeded has lived ``reset_after``."""
        since = self.proving_since
        if since is not None and now - since >= reset_after:
            self.level = 0
            self.proving_since = None
            self.next_attempt_at = 0.0

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
        """The delay at the key's current level (exponent ``max(1, level)``)."""
        state = RetryCallState(None, None, (), {})  # type: ignore[arg-type]
        state.attempt_number = max(1, self._backoff.level)
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
    admit: Callable[[], bool] | None = None,
    progress: Callable[[], tuple[float | None, float | None]] | None = None,
) -> T:
    """Run ``attempt`` until it succeeds, a permanent error occurs, or nobody wants it.

    Waits out the key's current backoff first. Each failure but :class:`UnknownKey` (not a
    failure of the key: there is no such key) is recorded in ``backoff``, with a delay
    only when it is transient, and passed to ``on_failure(exc, delay)`` before the delay
    is slept. ``admit()`` is asked right before each attempt (and may count it); when it
    says no, the loop ends with the previous attempt's error, or :class:`ConnectDeferred`
    before any attempt. ``progress()``: when a connect of the pool last succeeded and
    when one last failed, handed to :meth:`KeyBackoff.record_failure`. Raises the last
    error when it is permanent or when ``wanted()`` turned False.
    """
    backoff.settle(clock(), policy.reset_after)
    pending = backoff.next_attempt_at - clock()
    if pending > 0:
        await sleep(pending)
    previous: list[BaseException] = []

    async def one_attempt() -> T:
        if admit is not None and not admit():
            if previous:
                raise previous[-1]
            raise ConnectDeferred("the key may not connect now")
        try:
            return await attempt()
        except ConnectDeferred:
            # Not attempted after all (``attempt`` asked its own admission, see
            # Reconnector): not a failure of the key; the loop ends as when admit() says no.
            if previous:
                raise previous[-1] from None
            raise
        except Exception as exc:
            previous.append(exc)
            delay = 0.0
            now = clock()
            backoff.settle(now, policy.reset_after)
            if is_transient(exc):
                delay = backoff_wait(policy, backoff).delay()
            if not isinstance(exc, UnknownKey):
                # A permanent failure (wrong password, untrusted certificate) is a failure
                # of the key all the same: counted, kept as last_error, but not delayed.
                backoff.record_failure(exc, now, delay, *(progress() if progress else ()))
            on_failure(exc, delay)
            raise

    def retry_wanted(exc: BaseException) -> bool:
        return is_transient(exc) and wanted()

    def next_delay(retry_state: RetryCallState | None = None) -> float:
        # Sleep until the time the failure recorded, so the delay drawn (with its jitter)
        # is the one both the loop and any later acquire honour.
        return max(0.0, backoff.next_attempt_at - clock())

    # The first attempt runs on its own: most connects succeed at once, and tenacity's
    # loop costs ~60 µs per call plus a reference cycle (the retrying object, its state
    # and our closures) that only the garbage collector frees. Its rules are the loop's:
    # a failure is retried when retry_wanted() says so, after next_delay().
    try:
        result: T = await one_attempt()
    except Exception as exc:
        if not retry_wanted(exc):
            raise
    else:
        backoff.record_success(clock())
        return result
    await sleep(next_delay())
    retrying = AsyncRetrying(
        retry=retry_if_exception(retry_wanted),
        wait=next_delay,
        sleep=sleep,
        reraise=True,
    )
    result = await retrying(one_attempt)
    backoff.record_success(clock())
    return result


def record_short_life(backoff: KeyBackoff, policy: RetryPolicy, now: float) -> float:
    """A connection of the key died of a fault younger than ``policy.reset_after``: count
    it like a failed connect. Returns the delay (seconds) the key's next connect waits."""
    backoff.settle(now, policy.reset_after)
    delay = backoff_wait(policy, backoff).delay()
    backoff.record_short_life(now, delay)
    return delay


def failing_key_permits(max_connecting: int) -> int:
    """How many of the ``max_connecting`` permits connects of keys in a failure streak
    (:attr:`KeyBackoff.failures` > 0) may hold at once: all but a quarter (at least one),
    so keys that are not failing always find a permit; all of them when
    ``max_connecting`` is 1. For example 8 -> 6 (2 kept), 4 -> 3, 2 -> 1, 1 -> 1.

    Why: an account whose server hangs holds its permit for ``connect_timeout`` (15 s by
    default) on every attempt, and retries after its backoff. A few dozen such accounts
    among thousands (about three times ``max_connecting``) used to hold every permit all
    the time, and every other key's connects queued behind them: opens and reconnects
    stalled for the whole pool. The price: after an outage, the keys that failed during it
    reconnect with these permits only (6 of 8), while keys that did not fail use all.
    """
    return max(1, max_connecting - max(1, max_connecting // 4))


class Reconnector(Generic[C]):
    """Every connect of one pool: the pool-wide ``max_connecting`` cap, the per-key backoff,
    and the ``on_reconnect_failed`` callback once a key's failures outlast the deadline.

    A server restart turns hundreds of connections into hundreds of reconnects at once;
    the cap spreads them out, the per-key backoff keeps a dead key from spinning, and the
    jitter keeps keys that failed together from retrying together. Keys in a failure
    streak connect in a lane of their own within the cap (:func:`failing_key_permits`), so
    accounts that hang cannot take every permit from the rest.
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
        # Taken first, and held with a permit, by connects of keys in a failure streak.
        self._failing_permits = asyncio.Semaphore(failing_key_permits(config.max_connecting))
        self.peak_connecting = 0
        # Attempts under way (the connector's open running): number -> when it started.
        self._attempts: dict[int, float] = {}
        self._attempt_number = 0
        # Connects per key queued for a permit or under way, and those still queued
        # (entries only while > 0), and when a connect last succeeded: what lets a queued
        # acquire outlive its acquire_timeout while the queue moves (GuardedPool,
        # PoolConfig.queue_timeout).
        self._pending: dict[str, int] = {}
        self._queued: dict[str, int] = {}
        self.progress_at: float | None = None
        self.setback_at: float | None = None  # when a connect last failed

    @property
    def connecting(self) -> int:
        """Connect attempts under way (the connector's ``open`` running)."""
        return len(self._attempts)

    def pending(self, key: str) -> bool:
        """Whether a connect for ``key`` is queued behind ``max_connecting`` or under way."""
        return key in self._pending

    def queued(self, key: str) -> bool:
        """Whether a connect for ``key`` is waiting for one of ``max_connecting`` permits."""
        return key in self._queued

    @property
    def queue_length(self) -> int:
        """Connects waiting for a permit, all keys together."""
        return sum(self._queued.values())

    async def connect(
        self,
        key: str,
        backoff: KeyBackoff,
        *,
        wanted: Callable[[], bool],
        note: Callable[[BaseException], None],
        admit: Callable[[], bool] | None = None,
    ) -> C:
        """A connection for ``key``, retrying transient failures while ``wanted()``.

        ``note(exc)`` is told of each failed attempt (the pool counts it and writes it into
        the record's history); ``admit()`` is asked before each attempt, once it holds one
        of the ``max_connecting`` permits (a refusal ends the loop as in
        :func:`connect_with_retry`). Raises the last error when it is permanent or unwanted.
        """

        failed_here = 0

        def failed(exc: BaseException, delay: float) -> None:
            nonlocal failed_here
            note(exc)
            failed_here = backoff.failures
            if not isinstance(exc, UnknownKey):
                self.setback_at = self._clock()
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
            lambda: self._once(key, admit, backoff),
            policy=self._config.retry,
            backoff=backoff,
            wanted=wanted,
            clock=self._clock,
            sleep=asyncio.sleep,
            on_failure=failed,
            progress=self._progress,
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

    def _progress(self) -> tuple[float | None, float | None]:
        return self.progress_at, self.setback_at

    def earliest_attempt(self) -> float | None:
        """When the earliest connect attempt now under way (the connector's ``open``
        running) started, in the pool's clock; None when none is."""
        return min(self._attempts.values(), default=None)

    async def _once(self, key: str, admit: Callable[[], bool] | None, backoff: KeyBackoff) -> C:
        """One attempt: wait for one of ``max_connecting`` permits (a key in a failure
        streak first for one of :func:`failing_key_permits`), then ask ``admit()`` (the pool: is
        anyone still waiting, may the key log in now? It counts the login), then connect.
        Admission comes after the queue, not before it: callers may give up while it
        queues, and a login counted before a long queue would be counted early. Raises
        :class:`ConnectDeferred` when not admitted."""
        pending, queued = self._pending, self._queued
        pending[key] = pending.get(key, 0) + 1
        queued[key] = queued.get(key, 0) + 1
        lane = self._failing_permits if backoff.failures else None
        try:
            try:
                if lane is not None:
                    await lane.acquire()
                try:
                    await self._connect_permits.acquire()
                except BaseException:
                    if lane is not None:
                        lane.release()
                    raise
            finally:
                _drop(queued, key)
            try:
                if admit is not None and not admit():
                    # Its callers gave up while it queued (timed out, cancelled, served by
                    # a connection given back), or the key's limits say not now: its turn
                    # goes to the next in line.
                    raise ConnectDeferred(f"key {key!r} may not connect now")
                self._attempt_number = number = self._attempt_number + 1
                self._attempts[number] = self._clock()
                self.peak_connecting = max(self.peak_connecting, len(self._attempts))
                try:
                    # The connector bounds itself by connect_timeout; this is a backstop.
                    bound = self._config.connect_timeout + CONNECT_BACKSTOP
                    async with asyncio.timeout(bound):
                        conn = await self._connector.open(key, self._config)
                finally:
                    del self._attempts[number]
                self.progress_at = self._clock()
                return conn
            finally:
                self._connect_permits.release()
                if lane is not None:
                    lane.release()
        finally:
            _drop(pending, key)


def _drop(counts: dict[str, int], key: str) -> None:
    """One less for ``key``; no entry at zero."""
    left = counts[key] - 1
    if left:
        counts[key] = left
    else:
        del counts[key]
