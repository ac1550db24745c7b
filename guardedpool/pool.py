"""GuardedPool: who gets which connection, and when connections are opened and retired.

The pool is the I/O edge around :mod:`guardedpool.policy`: it keeps the records, the idle
stacks and the waiter queues, asks the policy what to do, and runs the awaits (connect,
check, close) as pool-owned tasks, each bounded by a named timeout. Bookkeeping changes
happen synchronously (no ``await`` between "taken" and "recorded"), so a caller cancelled
at any await leaves consistent books behind; release is synchronous, hence cannot be
interrupted.

A slot (one unit of ``max_per_key`` / ``max_total``) is held from the moment a connect is
permitted until the socket is verified closed at the OS level. A replacement connection
for a key therefore cannot start while its predecessor's socket still exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from asyncio import current_task
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from . import policy
from .acquisition import Acquisition, is_connection_fault
from .audit.auditor import run_audit  # at import: an audit at the fd limit cannot import
from .audit.target import PoolTarget
from .books import Books, Slot
from .closing import Closed, close_and_verify
from .config import PoolConfig
from .connector import Connector
from .errors import PoolClosed, PoolError, PoolTimeout, ServerLimit, UnknownKey
from .fastpath import IDLE, IN_USE
from .housekeeping import Housekeeper
from .keystate import KeyState, Waiter, aggregate
from .leaks import LeakWatch, borrower_fields, borrower_of, borrower_text
from .leasing import LeaseHook, budget_timeout
from .limits import LOGIN_WINDOW, KeyLimits, limit_stats, login_limit, reached_login
from .logs import error_text
from .reconnect import Reconnector, record_short_life
from .records import CloseReason, ConnectionRecord, ConnState, Event
from .shutdown import ShutdownTally
from .sockets import identify, is_open
from .waits import first_done

if TYPE_CHECKING:
    from .audit.report import AuditReport
    from .fleet.budget import Budget

__all__ = ["GuardedPool"]

_new_acquisition = object.__new__  # see GuardedPool.acquire (fastpath 6)
log = logging.getLogger("guardedpool.pool")


_RETIRE_CHUNK = 32  # connections retired by close() between two turns of the event loop

C = TypeVar("C")

_NO_TASK = "<no task>"  # a borrower all the same: leak detection must not skip it

# Reasons for which a goodbye (LOGOUT) is worth sending; after a fault we abort at once.
_GRACEFUL = frozenset(
    {CloseReason.IDLE, CloseReason.LIFETIME, CloseReason.SHUTDOWN, CloseReason.EVICTED}
)
# Reasons that mean the connection died of a fault: one that dies younger than
# retry.reset_after counts toward the key's backoff (see guardedpool.reconnect).
_FAULTS = frozenset({CloseReason.ERROR, CloseReason.POISONED, CloseReason.AUDIT})

# Why a connection is retired, in words, for the log line that says so.
_WHY = {
    CloseReason.IDLE: "idle longer than idle_timeout",
    CloseReason.LIFETIME: "past its max_lifetime",
    CloseReason.ERROR: "failed a liveness check or died while idle",
    CloseReason.POISONED: "a fault while lent out",
    CloseReason.SHUTDOWN: "the pool is closing",
    CloseReason.AUDIT: "the audit found it unusable",
    CloseReason.EVICTED: "room for another key under max_total",
    CloseReason.LOGGED_OUT: "the borrower logged out",
}


class GuardedPool(Generic[C]):
    """A pool of connections keyed by inbox, with caps, bounded waits and an OS-level audit.

    Args:
        connector: opens, checks and closes connections (see :class:`Connector`).
        config: limits and timeouts (default ``PoolConfig()``).
        on_reconnect_failed: called as ``(key, error)`` once per failure streak when a
            key's connects have failed for ``config.retry.reconnect_deadline`` seconds.
            Retrying goes on at the maximum delay while anyone waits for the key.
        clock: monotonic seconds (injectable for tests; default ``time.monotonic``).
        rng: uniform [0, 1) draws for lifetime jitter (default ``random.random``).
        budget: a fleet budget (:class:`guardedpool.fleet.Budget`, e.g. ``RedisBudget``):
            a lease per connection, taken before the connect and released once the socket
            is verified closed; see :mod:`guardedpool.leasing`. Default ``None``: none.
            The pool does not own it: close it after the pool.
    """

    # Slots, not a __dict__: with more than 30 instance attributes CPython 3.11 gives the
    # instance a dict of its own and `self._x` becomes a dict lookup; slots save ~700
    # instructions per acquire + release (measured with cachegrind; see fastpath.py).
    __slots__ = (
        "__weakref__",
        "_batch",
        "_books",
        "_borrowed",
        "_check_bound",
        "_clock",
        "_close_task",
        "_closes",
        "_closing",
        "_connector",
        "_farewell",
        "_forgotten",
        "_goodbye_until",
        "_heartbeats",
        "_housekeeper",
        "_housekeeping",
        "_keys",
        "_last_audit",
        "_leak_warned",
        "_leaks",
        "_leases",
        "_logged_out",
        "_loop",
        "_opens",
        "_reconnector",
        "_returned",
        "_rng",
        "_shut_down",
        "_starving",
        "_tally",
        "_wakes",
        "audit_target",
        "config",
    )

    def __init__(
        self,
        connector: Connector[C],
        config: PoolConfig | None = None,
        *,
        on_reconnect_failed: Callable[[str, BaseException], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
        budget: Budget | None = None,
    ) -> None:
        if config is None:
            config = PoolConfig()
        if not isinstance(config, PoolConfig):
            raise ValueError(f"config must be a PoolConfig, got {config!r}")
        self.config = config
        self._connector = connector
        self._reconnector: Reconnector[C] = Reconnector(
            connector, config, on_failed=on_reconnect_failed, clock=clock
        )
        self._clock = clock
        self._rng = rng
        self._keys: dict[str, KeyState[C]] = {}
        self._books: Books[C] = Books(config.audit.graveyard_size)
        self._borrowed: dict[int, Slot[C]] = {}  # id(conn) -> slot, while a caller holds it
        self._starving: dict[str, KeyState[C]] = {}  # keys blocked by max_total, FIFO
        self._logged_out: Callable[[C], bool] | None = getattr(connector, "logged_out", None)
        self._farewell: Callable[[C], None] | None = getattr(connector, "farewell", None)
        self._forgotten: KeyState[C] = KeyState("")  # the counters of forgotten keys
        # A NOOP check is a command (op_timeout) with its own, shorter bound (check_timeout).
        self._check_bound = min(config.check_timeout, config.op_timeout)
        self._leaks = LeakWatch(config)
        self._leak_warned = self._leaks.warned  # release reads it: one attribute, not two
        # Pool-owned tasks, by kind: shutdown cancels the connects and waits for the rest.
        self._opens: set[asyncio.Task[Any]] = set()
        self._closes: set[asyncio.Task[Any]] = set()
        self._heartbeats: set[asyncio.Task[Any]] = set()
        self._housekeeping: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # bound by start(); see fastpath
        self._shut_down = False  # close() was called
        self._close_task: asyncio.Task[None] | None = None
        self._closing: asyncio.Future[None] | None = None  # see when_closing()
        self._goodbye_until = math.inf  # pool clock: when close()'s goodbyes must end
        self._tally: ShutdownTally | None = None  # what close() did, for its summary
        self._batch: list[tuple[Slot[C], bool]] = []  # closes queued for _close_batch
        self._returned = asyncio.Event()
        self._last_audit: float | None = None
        self._leases: LeaseHook[C] | None = (
            None
            if budget is None
            else LeaseHook(budget, config.acquire_timeout, self._lease_lost, clock)
        )
        # One wake-up per key held back by the server's limits (guardedpool.limits).
        self._wakes: dict[KeyState[C], asyncio.TimerHandle] = {}
        # When each connection and key next needs a look, and the rounds that look.
        self._housekeeper: Housekeeper[C] = Housekeeper(
            config,
            clock,
            self._books,
            self._keys,
            self._leaks,
            connector.is_alive,
            retire=self._retire,
            heartbeat=self._start_heartbeat,
            heartbeats=self._heartbeats,
            reclaim=self._reclaim,
            forget=self._forget,
        )
        self.audit_target: PoolTarget[C] = PoolTarget(
            config,
            self._books,
            connector,
            clock,
            self._retire,
            self._reconnector.earliest_attempt,
        )
        """What :meth:`audit` hands the auditor: the pool's records (``records()``,
        ``graveyard()``), its clock and the remedies (see ``guardedpool.audit.AuditTarget``)."""

    def __repr__(self) -> str:
        idle = in_use = opening = closing = 0
        for ks in self._keys.values():
            idle += len(ks.idle)
            in_use += ks.in_use
            opening += ks.opening
            closing += ks.closing
        if not self._shut_down:
            state = "open"
        elif self._close_task is not None and self._close_task.done():
            state = "closed"
        else:
            state = "closing"
        return (
            f"<GuardedPool {state} keys={len(self._keys)} open={idle + in_use} idle={idle} "
            f"in_use={in_use} opening={opening} closing={closing} slots={self._books.slots}>"
        )

    # ----------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> GuardedPool[C]:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def start(self) -> None:
        """Start housekeeping (idempotent; also done by the first acquire)."""
        if self._shut_down:
            raise PoolClosed("the pool is closed")
        if self._housekeeping is None:
            if self._leases is not None:
                self._leases.subscribe()
            self._loop = asyncio.get_running_loop()
            self._housekeeping = self._loop.create_task(
                self._housekeeper.run(lambda: not self._shut_down, self._maybe_audit),
                name="guardedpool-housekeeping",
            )
            cfg = self.config
            log.info(
                "guardedpool: pool started (max_per_key %d, max_total %d, acquire_timeout %g s)",
                cfg.max_per_key,
                cfg.max_total,
                cfg.acquire_timeout,
            )

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called (while it runs, too)."""
        return self._shut_down

    @property
    def clock(self) -> Callable[[], float]:
        """The pool's monotonic clock, in seconds: the times of records (``expires_at``,
        ``borrowed_at``...) are readings of it."""
        return self._clock

    async def close(self) -> None:
        """Close every connection and wake every waiter with :class:`PoolClosed`.

        Idempotent and bounded: long holders learn of it at once (:meth:`when_closing`);
        connections still checked out get ``close_timeout`` to be returned, then they are
        aborted; each goodbye is written without waiting for the answer when the
        connector has ``farewell`` (IMAP: DONE + LOGOUT), else awaited, all at once, and
        cut short at ``shutdown_timeout`` after the call; every close ends in a socket
        verified gone. Bounded overall by ``close_timeout + connect_timeout + 2`` s.
        Logs one summary line (counts by outcome; WARNING only when a borrower lost its
        connection or a socket was not verified gone), the per-connection detail at DEBUG.
        """
        if self._close_task is None:
            self._close_task = asyncio.get_running_loop().create_task(self._shutdown())
        await asyncio.shield(self._close_task)

    def when_closing(self) -> asyncio.Future[None]:
        """A future that completes (with None) once :meth:`close` is called.

        For long holders, such as an IDLE session: wait on it alongside your own wait
        (``asyncio.wait({..., pool.when_closing()}, ...)``) and give the connection back
        at once, so that ``close()`` need not wait ``close_timeout`` for it. One future,
        shared by every caller: never cancel it (wait on it, or on a shield of it).
        Call it from the event loop that runs the pool.
        """
        fut = self._closing
        if fut is None or fut.cancelled():
            fut = self._closing = asyncio.get_running_loop().create_future()
            if self._shut_down:
                fut.set_result(None)
        return fut

    async def _shutdown(self) -> None:
        self._shut_down = True
        loop = asyncio.get_running_loop()
        began = loop.time()
        cfg = self.config
        self._goodbye_until = self._clock() + cfg.shutdown_timeout
        self._tally = tally = ShutdownTally()
        log.debug("guardedpool: closing the pool: %r", self, extra={"pool": repr(self)})
        if self._closing is not None and not self._closing.done():
            self._closing.set_result(None)  # long holders give their connections back
        retired = 0
        for ks in list(self._keys.values()):
            while (waiter := ks.next_waiter()) is not None:
                waiter.set_exception(PoolClosed(f"the pool closed while waiting for {ks.key!r}"))
            for slot in list(ks.idle):
                if slot.record.state is IDLE:
                    self._retire(slot, CloseReason.SHUTDOWN)
                    retired += 1
                    if retired % _RETIRE_CHUNK == 0:
                        await asyncio.sleep(0)  # 10,000 retirements are not one loop stall
        if self._housekeeping is not None:
            self._housekeeping.cancel()
        for handle in self._wakes.values():
            handle.cancel()
        for task in list(self._opens):
            task.cancel()
        if self._borrowed:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(cfg.close_timeout):
                    while self._borrowed:
                        self._returned.clear()
                        await self._returned.wait()
            for slot in list(self._borrowed.values()):
                del self._borrowed[id(slot.conn)]
                record = slot.record
                borrower = borrower_of(record)
                tally.aborted_lent += 1
                log.debug(
                    "guardedpool: connection %d of key %r still lent out %g s (close_timeout) "
                    "after close() to %s; aborting it",
                    record.id,
                    record.key,
                    cfg.close_timeout,
                    borrower_text(borrower),
                    extra={"key": record.key, "conn_id": record.id, **borrower_fields(borrower)},
                )
                self._retire(slot, CloseReason.SHUTDOWN)
        # Closing tasks may spawn more (an open finishing as we cancel it is retired): wait
        # until none is left, within one overall bound.
        end = loop.time() + cfg.close_timeout + cfg.connect_timeout + 2.0
        while True:
            tasks = {t for t in (*self._opens, *self._closes, *self._heartbeats) if not t.done()}
            if self._housekeeping is not None and not self._housekeeping.done():
                tasks.add(self._housekeeping)
            remaining = end - loop.time()
            if not tasks:
                break
            if remaining <= 0:
                for task in tasks:
                    log.error(
                        "guardedpool: pool task %r did not finish within close's bound; "
                        "cancelling it",
                        task.get_name(),
                        extra={"task": task.get_name()},
                    )
                    task.cancel()
                break
            await asyncio.wait(tasks, timeout=remaining)
        if self._leases is not None:
            self._leases.unsubscribe()
        log.log(
            tally.level,
            "guardedpool: pool closed: %s",
            tally.text(loop.time() - began, cfg.shutdown_timeout),
            extra={"pool": repr(self), **tally.fields()},
        )

    # ----------------------------------------------------------------- acquire / release

    def acquire(self, key: str) -> Acquisition[C]:
        """A connection for ``key``, as an async context manager (or awaitable + release).

        Waits at most ``acquire_timeout`` (then :class:`PoolTimeout`, naming the key and
        the last connect error). Waiters of a key are served first come, first served.
        An error raised inside the ``async with`` block that came from the connection
        retires it; it is never handed out again.
        """
        # Acquisition(self, key) without the call to its __init__ (fastpath 6)
        acq: Acquisition[C] = _new_acquisition(Acquisition)
        acq._pool, acq._key, acq._conn = self, key, None
        return acq

    def _take_ready(self, key: str) -> C | None:
        """The fast path, without an await: an idle connection nobody queues for, ready as
        it is (not due for retirement or a check, and alive). None: take the slow path."""
        ks = self._keys.get(key)
        if ks is None or not ks.idle or ks.waiters or self._shut_down:
            return None
        slot = ks.idle[-1]
        now = self._clock()
        limits = ks.limits
        if limits is not None and now < limits.throttled_until:
            return None  # throttled by the server: the slow path waits it out
        record, cfg = slot.record, self.config
        if not (
            # policy.ready_to_hand_out, without the call (fastpath 4)
            now < record.expires_at
            and now - record.last_used_at < cfg.idle_timeout
            and now - record.last_checked_at < cfg.check_after
            and self._connector.is_alive(slot.conn)  # type: ignore[arg-type]
            and (slot.lease is None or slot.lease.valid())
        ):
            return None
        slot.fresh = False
        borrower = current_task(self._loop) or _NO_TASK
        conn: C = self._books.lend(slot, borrower, now, now)
        self._borrowed[id(conn)] = slot
        return conn

    async def _acquire_slow(self, key: str) -> C:
        if self._shut_down:
            raise PoolClosed("the pool is closed")
        if not isinstance(key, str):
            raise TypeError(f"key must be a str, got {type(key).__name__}")
        self.start()
        ks = self._keys.get(key)
        if ks is None:
            ks = self._keys[key] = KeyState(key)
        started = self._clock()
        deadline = started + self.config.acquire_timeout
        failed_check: str | None = None  # what a failed hand-out check cost, for PoolTimeout
        while True:
            slot = self._take_idle(ks) or await self._wait(ks, deadline, started, failed_check)
            now = self._clock()
            fresh, slot.fresh = slot.fresh, False
            if not fresh and policy.needs_check(slot.record, now, self.config):
                # Bounded by check_timeout, not by the whole budget: a silent peer must not
                # eat the acquire; on failure a replacement is opened with what is left.
                bound = min(self._check_bound, max(deadline - now, 0.001))
                failure = await self._noop_check(slot, bound, "hand-out")
                if failure is not None:
                    failed_check = failure
                    continue
            if self._leases is not None and not self._leases.usable(slot):
                self._retire(slot, CloseReason.ERROR, "fleet lease not valid")
                continue
            borrower = current_task(self._loop) or _NO_TASK
            conn: C = self._books.lend(slot, borrower, now, started)
            self._borrowed[id(conn)] = slot
            return conn

    def _take_idle(self, ks: KeyState[C]) -> Slot[C] | None:
        """Take the most recently used healthy idle connection (now IN_USE), retiring stale
        ones on the way."""
        now = self._clock()
        if ks.limits is not None and self._throttled(ks, now):
            return None
        while ks.idle:
            slot = ks.idle[-1]
            reason = policy.retire_when_idle(slot.record, now, self.config)
            if reason is None and not self._connector.is_alive(slot.conn):  # type: ignore[arg-type]
                reason = CloseReason.ERROR
            if reason is None and self._leases is not None and not self._leases.usable(slot):
                reason = CloseReason.ERROR
            if reason is not None:
                self._retire(slot, reason)
                continue
            self._books.move(slot, IN_USE)
            return slot
        return None

    async def _wait(
        self, ks: KeyState[C], deadline: float, started: float, failed_check: str | None = None
    ) -> Slot[C]:
        """Wait as a waiter of ``ks`` until ``deadline`` (pool clock), or later while the
        key's connect is queued behind ``max_connecting`` and the queue moves (see
        :meth:`_queued_until`). Raises :class:`PoolTimeout` (or the budget's) at the end."""
        waiter: Waiter[C] = asyncio.get_running_loop().create_future()
        ks.add_waiter(waiter)
        if self._leases is not None:
            self._leases.waiting_until(waiter, deadline)
        try:
            self._dispatch(ks)  # inside the try: whatever it raises, the waiter leaves
            while True:
                remaining = deadline - self._clock()
                if remaining > 0:
                    # Never cancels it; one waiter and one timer, no task or sets.
                    await first_done((waiter,), asyncio.get_running_loop().time() + remaining)
                if waiter.done():
                    return waiter.result()  # a slot, or what the pool failed it with
                later = self._queued_until(ks, started)
                if later <= self._clock():
                    raise self._timed_out(ks, started, failed_check)
                deadline = later
        except BaseException:
            self._abandon(ks, waiter)
            raise
        finally:
            if self._leases is not None:
                self._leases.done_waiting(waiter)

    def _queued_until(self, ks: KeyState[C], started: float) -> float:
        """How long a waiter of ``ks`` that started at ``started`` may wait on, past its
        ``acquire_timeout``: while a connect for the key is queued behind
        ``max_connecting`` (or under way), ``acquire_timeout`` after the pool's last
        successful connect, and never past ``queue_timeout`` after ``started``; not at all
        once the key has failed while the pool's connects were succeeding
        (:attr:`~guardedpool.reconnect.KeyBackoff.failed_amid_progress`).

        Why: 10,000 acquires at once with ``max_connecting`` 8 make a queue that takes
        longer than ``acquire_timeout`` to drain even when every connect succeeds; a caller
        should not fail while the pool is making progress toward it. A queue that does not
        move (no connect succeeded for ``acquire_timeout``: the server is down or hangs)
        still fails its callers at ``acquire_timeout``, as before, and so does a key whose
        own server fails while other keys' connects succeed. A failure while nothing
        connects (a server restarting) does not count against the key: when the server is
        back, its retry queues behind everyone else's, and its caller waits on.
        """
        reconnector = self._reconnector
        progress = reconnector.progress_at
        backoff = ks.backoff
        if (
            progress is None
            or not reconnector.pending(ks.key)
            or (backoff is not None and backoff.failed_amid_progress)
        ):
            return -math.inf
        cfg = self.config
        return min(
            progress + cfg.acquire_timeout, started + max(cfg.queue_timeout, cfg.acquire_timeout)
        )

    def _timed_out(self, ks: KeyState[C], started: float, failed_check: str | None) -> PoolError:
        """The error of a waiter of ``ks`` whose wait ran out (counted in the stats)."""
        ks.timeouts += 1
        last = ks.last_error()
        error: PoolError
        if self._leases is not None and self._leases.waiting.get(ks.key):
            error = budget_timeout(ks.key, self._clock() - started, last, failed_check=failed_check)
        else:
            words = self._limit_words(ks)
            if not words.get("limited_by") and self._reconnector.queued(ks.key):
                # Its connect never started: say so, rather than nothing (or an old error).
                words["limited_by"] = (
                    f"the connect queue (its connect was still waiting behind "
                    f"max_connecting {self.config.max_connecting}, with "
                    f"{self._reconnector.queue_length} queued; queue_timeout "
                    f"{self.config.queue_timeout:g} s)"
                )
            error = PoolTimeout(
                ks.key,
                self._clock() - started,
                last,
                failed_check=failed_check,
                **words,
            )
        error.__cause__ = last
        return error

    def _abandon(self, ks: KeyState[C], waiter: Waiter[C]) -> None:
        """A waiter gave up (timeout, cancellation, error): never lose what it was handed."""
        if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
            self._to_idle(waiter.result())
            return
        waiter.cancel()
        ks.drop_waiter(waiter)
        self._key_may_be_quiet(ks)

    async def _noop_check(self, slot: Slot[C], timeout: float, kind: str) -> str | None:
        """NOOP a connection that no caller holds (``kind``: "hand-out" or "heartbeat"),
        bounded by ``timeout``; retire it on failure. None if it answered, else what failed."""
        conn = slot.conn
        assert conn is not None
        record = slot.record
        if self._leases is not None and not self._leases.usable(slot):
            self._retire(slot, CloseReason.ERROR, "fleet lease not valid")
            # Not even a NOOP on a connection the fleet no longer counts.
            return "its fleet lease is no longer valid"
        try:
            async with asyncio.timeout(timeout):
                await self._connector.check(conn, timeout)
        except BaseException as exc:
            reason = CloseReason.ERROR if isinstance(exc, Exception) else CloseReason.POISONED
            if isinstance(exc, TimeoutError):
                failure = f"{type(exc).__name__}: no answer within {timeout:.3g} s"
            else:
                failure = error_text(exc)
            self._retire(slot, reason, f"{kind} check failed: {failure}")
            if not isinstance(exc, Exception):
                raise
            log.warning(
                "guardedpool: connection %d of key %r failed its %s check (%s); retired%s",
                record.id,
                record.key,
                kind,
                failure,
                ", opening a replacement" if kind == "hand-out" else "",
                extra={"key": record.key, "conn_id": record.id, "check": kind, "error": failure},
            )
            return failure
        record.last_checked_at = self._clock()
        return None

    def release(self, conn: C, *, error: BaseException | None = None) -> None:
        """Give a connection back. Synchronous, so cancellation cannot interrupt it.

        ``error``: the exception that ended the borrower's work, if any; one that came from
        the connection (timeout, protocol error, lost connection) retires it.
        """
        slot = self._borrowed.pop(id(conn), None)
        if slot is None:
            if self._shut_down:
                return  # the pool already took it back while shutting down
            raise PoolError("release() of a connection that is not checked out from this pool")
        record = slot.record
        now = self._clock()
        if self._leak_warned:
            self._leaks.returned(record, now)
        shutting_down = self._shut_down
        if shutting_down:
            self._returned.set()  # close() waits for borrowed connections to come back
        if error is not None and isinstance(error, ServerLimit):
            ks = slot.keystate
            gone = 1 if is_connection_fault(error) else 0  # this one is retired below
            self._limited(ks, error, len(ks.idle) + ks.in_use - gone)
        alive = self._connector.is_alive(conn)
        if error is None and alive and not shutting_down and now < record.expires_at:
            reason = None  # policy.retire_on_release's answer, without the call (fastpath 5)
        else:
            reason = policy.retire_on_release(  # positional: keywords cost ~15% of this call
                record,
                now,
                alive,  # alive
                error is not None and is_connection_fault(error),  # faulted
                shutting_down,  # shutting_down
                not alive and self._logged_out is not None and self._logged_out(conn),
            )
        self._books.give_back(slot, now)  # on top of the idle stack (fresh was cleared)
        if reason is not None:
            self._retire(slot, reason)  # at once: nothing could take it in between
            return
        ks = slot.keystate
        if ks.waiters:
            self._dispatch(ks)

    def close_idle(self, key: str) -> int:
        """Retire every idle connection of ``key`` now; returns how many.

        Each is logged out and closed in the background; its slot (and its fleet budget
        lease, if any) is given back once the socket is verified closed. For a caller
        that stopped working on a key, such as a fleet worker that lost the key's
        ownership: its idle connections would otherwise hold the key's fleet-wide budget
        until ``idle_timeout``. Connections checked out stay with their borrowers.
        """
        ks = self._keys.get(key)
        if ks is None:
            return 0
        idle = list(ks.idle)
        for slot in idle:
            self._retire(slot, CloseReason.IDLE, "closed by close_idle()")
        return len(idle)

    def _to_idle(self, slot: Slot[C]) -> None:
        """Back to the idle stack (from IN_USE or OPENING), or retired if shutting down."""
        slot.fresh = False
        if self._shut_down:
            self._retire(slot, CloseReason.SHUTDOWN)
            return
        self._books.move(slot, IDLE)
        ks = slot.keystate
        if ks.waiters:
            self._dispatch(ks)

    # ----------------------------------------------------------------- dispatch and opening

    def _dispatch(self, ks: KeyState[C]) -> None:
        """Hand idle connections to waiters, then start connects for the demand left over."""
        while (waiter := ks.first_waiter()) is not None:
            slot = self._take_idle(ks)
            if slot is None:
                break
            ks.drop_waiter(waiter)
            waiter.set_result(slot)
        if self._shut_down or ks.slots >= self.config.max_per_key:
            return  # at the key's cap nothing can be opened: no need to count waiters
        unmet = ks.live_waiters() - ks.opening
        if ks.limits is not None and unmet > 0:
            unmet = self._opens_allowed(ks, unmet)
        while unmet > 0:
            blocker = policy.open_blocker(ks.slots, self._books.slots, self.config)
            if blocker is None:
                self._start_open(ks)
                unmet -= 1
                continue
            if blocker == "total":
                self._starving[ks.key] = ks
                self._evict_for(ks)
            break

    def _evict_for(self, starving: KeyState[C]) -> None:
        """Close the least recently used idle connection of another key to make room."""
        if self._books.evicting >= len(self._starving):
            return
        idle = (s.record for k in self._keys.values() if k is not starving for s in k.idle)
        victim = policy.pick_eviction(idle)
        if victim is not None:
            self._retire(self._books.live[victim.id], CloseReason.EVICTED)

    def _start_open(self, ks: KeyState[C]) -> None:
        now = self._clock()
        record = ConnectionRecord(ks.key, created_at=now, expires_at=now + self.config.max_lifetime)
        slot: Slot[C] = Slot(record, ks)
        self._books.take(slot)
        replaces = ks.count_reconnect()
        if replaces is not None:
            record.note(now, Event.RECONNECT, replaces.value)
        self._spawn(self._open(slot), f"guardedpool-open-{ks.key}", self._opens)

    def _spawn(self, coro: Any, name: str, tasks: set[asyncio.Task[Any]]) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def _open(self, slot: Slot[C]) -> None:
        ks = slot.keystate
        record = slot.record
        began = record.created_at
        if self._leases is not None:
            try:
                await self._leases.take(slot)
            except BaseException as exc:
                self._free_slot(slot, Event.OPEN_FAILED, type(exc).__name__)
                ks.connect_finished()
                if isinstance(exc, Exception):
                    self._fail_first_waiter(ks, self._leases.fail(ks, exc, self._clock() - began))
                self._after_slot_freed(ks)
                if not isinstance(exc, Exception):
                    raise
                return
        try:
            conn = await self._reconnector.connect(
                ks.key,
                ks.connect_backoff(),
                wanted=lambda: (
                    not self._shut_down and ks.live_waiters() > 0 and self._may_connect(ks)
                ),
                note=lambda exc: self._connect_failed(ks, record, exc),
                admit=lambda: self._admit(ks, record),
            )
        except BaseException as exc:
            record.attempt_at = None
            self._free_slot(slot, Event.OPEN_FAILED, type(exc).__name__)
            ks.connect_finished()
            if isinstance(exc, Exception) and not policy.is_transient(exc):
                self._fail_first_waiter(ks, exc)
            self._after_slot_freed(ks)
            if isinstance(exc, UnknownKey) and ks.pristine() and ks.quiet(self._clock()):
                self._forget(ks)  # an unknown key leaves nothing behind
            if not isinstance(exc, Exception):
                raise
            return
        now = self._clock()
        record.attempt_at = None
        slot.conn = conn
        sock = self._connector.socket_of(conn)
        if sock is not None:
            try:
                record.socket = identify(sock)
            except OSError as exc:
                record.note(now, Event.IDENTIFY_FAILED, type(exc).__name__)
        record.created_at = record.last_used_at = record.last_checked_at = now
        record.expires_at = policy.expiry_time(now, self.config, self._rng())
        record.note(now, Event.OPEN)  # the socket identity is in record.socket
        if log.isEnabledFor(logging.INFO):
            self._log_opened(slot, now - began)
        self._opened(slot)
        self._housekeeper.watch(slot, now)  # housekeeping's first look (none if retired already)
        if ks.limits is not None:
            ks.limits.accepted(len(ks.idle) + ks.in_use)
        ks.connect_finished()

    @staticmethod
    def _log_opened(slot: Slot[C], seconds: float) -> None:
        """The INFO line of a connection just opened (built only when INFO is on)."""
        record = slot.record
        ident = record.socket
        where = (
            f"fd {ident.fd}, {ident.local[0]}:{ident.local[1]} -> "
            f"{ident.remote[0]}:{ident.remote[1]}"
            if ident is not None
            else "no socket identity"
        )
        log.info(
            "guardedpool: opened connection %d for key %r (%s) in %.3f s",
            record.id,
            record.key,
            where,
            seconds,
            extra={
                "key": record.key,
                "conn_id": record.id,
                "fd": ident.fd if ident is not None else None,
                "seconds": seconds,
            },
        )

    def _opened(self, slot: Slot[C]) -> None:
        """A connect succeeded: straight to the first waiter, else to the idle stack."""
        ks = slot.keystate
        if self._leases is not None and not self._leases.usable(slot):
            self._retire(slot, CloseReason.ERROR, "fleet lease lost while connecting")
            return
        if not self._shut_down:
            waiter = ks.next_waiter()
            if waiter is not None:
                self._books.move(slot, IN_USE)
                waiter.set_result(slot)
                return
        self._to_idle(slot)

    def _connect_failed(
        self, ks: KeyState[C], record: ConnectionRecord, exc: BaseException
    ) -> None:
        """An attempt failed (its socket, if any, is closed: the connector's contract): the
        record is in no attempt any more, and a login that did not happen is not counted."""
        started, record.attempt_at = record.attempt_at, None
        if not isinstance(exc, UnknownKey):  # no such key: not a failure of one
            ks.connect_failures += 1
        record.note(self._clock(), Event.CONNECT_FAILED, type(exc).__name__)
        if isinstance(exc, ServerLimit):
            self._limited(ks, exc, len(ks.idle) + ks.in_use)
        if started is not None and not reached_login(exc):
            if ks.limits is not None:
                ks.limits.unnote_login(started)
            elif ks.first_login == started:
                ks.first_login = None

    def _fail_first_waiter(self, ks: KeyState[C], exc: Exception) -> None:
        waiter = ks.next_waiter()
        if waiter is not None:
            waiter.set_exception(exc)

    # ----------------------------------------------------------------- the server's limits

    def _limited(self, ks: KeyState[C], exc: ServerLimit, held: int) -> None:
        """The server refused for its limits (at connect, or a borrower met it while the key
        held ``held`` open connections): throttle the key or lower its cap
        (:meth:`guardedpool.limits.KeyLimits.refused`)."""
        now = self._clock()
        limits = ks.limits
        if limits is None:
            limits = self._new_limits(ks)
        throttled = limits.refused(exc, now, held=held, config=self.config)
        cap = limits.key_cap(now, self.config)
        log.warning(
            "guardedpool: key %r refused by the server's %s limit (%s: %s); throttled for "
            "%.3f s, effective cap %d of max_per_key %d",
            ks.key,
            exc.kind,
            type(exc).__name__,
            exc.server_text,
            throttled,
            cap,
            self.config.max_per_key,
            extra={
                "key": ks.key,
                "error": type(exc).__name__,
                "kind": exc.kind,
                "code": exc.code,
                "suggested_delay": exc.delay,
                "throttled_for": throttled,
                "effective_max_per_key": cap,
                "connections_held": held,
            },
        )

    def _throttled(self, ks: KeyState[C], now: float) -> bool:
        """Whether the key may hand nothing out now (then a wake-up is set for the end);
        forgets limits that have nothing left to hold back."""
        limits = ks.limits
        assert limits is not None
        if limits.throttled(now):
            self._wake_at(ks, limits.throttled_until)
            return True
        if limits.settled(now, self.config):
            ks.limits = None
        return False

    def _opens_allowed(self, ks: KeyState[C], unmet: int) -> int:
        """At most ``unmet`` connects to start now, as the key's limits allow; a wake-up is
        set for when they allow more."""
        limits = ks.limits
        assert limits is not None
        now = self._clock()
        allowed = limits.opens_allowed(now, ks.slots, self.config)
        if allowed < unmet:
            at = limits.next_change(now, self.config)
            if at is not None:
                self._wake_at(ks, at)
        return min(unmet, allowed)

    def _new_limits(self, ks: KeyState[C]) -> KeyLimits:
        """The key's limits from now on, its one login so far (if any) in the log."""
        first, ks.first_login = ks.first_login, None
        limits = ks.limits = KeyLimits()
        if first is not None:
            limits.logins.append(first)
        return limits

    def _may_connect(self, ks: KeyState[C]) -> bool:
        """Whether a connect attempt of an OPENING slot may start now (the slot counts)."""
        limits = ks.limits
        now = self._clock()
        if limits is None:
            first = ks.first_login
            if first is None or first <= now - LOGIN_WINDOW or login_limit(self.config) > 1:
                return True
            limits = self._new_limits(ks)  # a limit of 1: gated (and woken) like the rest
        return (
            not limits.throttled(now)
            and limits.logins_left(now, self.config) > 0
            and ks.slots <= limits.key_cap(now, self.config)
        )

    def _admit(self, ks: KeyState[C], record: ConnectionRecord) -> bool:
        """Right before a connect attempt: may it start? If so it is counted as a login,
        and its start goes in ``record.attempt_at`` (the audit's sign of a connect in
        flight). Nobody waiting (they gave up during the backoff): no login at all."""
        if self._shut_down or ks.live_waiters() == 0 or not self._may_connect(ks):
            return False
        now = self._clock()
        record.attempt_at = now
        limits = ks.limits
        if limits is None:
            first = ks.first_login
            if first is None or first <= now - LOGIN_WINDOW:
                ks.first_login = now  # one login: no KeyLimits yet
                return True
            limits = self._new_limits(ks)
        limits.note_login(now, self.config)
        return True

    def _wake_at(self, ks: KeyState[C], at: float) -> None:
        """Dispatch ``ks`` again at pool-clock time ``at`` (one pending wake-up per key)."""
        if self._shut_down:
            return
        loop = asyncio.get_running_loop()
        delay = max(0.001, at - self._clock())
        handle = self._wakes.get(ks)
        if handle is not None:
            if handle.when() <= loop.time() + delay:
                return  # an earlier wake-up looks again and sets the next one
            handle.cancel()
        self._wakes[ks] = loop.call_later(delay, self._wake, ks)

    def _wake(self, ks: KeyState[C]) -> None:
        self._wakes.pop(ks, None)
        if not self._shut_down and ks.waiters:
            self._dispatch(ks)

    def _limit_words(self, ks: KeyState[C]) -> dict[str, Any]:
        """What held the key back, for a :class:`PoolTimeout`."""
        limits = ks.limits
        if limits is None:
            return {}
        now = self._clock()
        throttled = limits.throttled(now)
        return {
            "limited_by": limits.why(now, ks.slots, self.config),
            "throttled_for": limits.throttled_until - now if throttled else None,
        }

    def _died(self, slot: Slot[C], reason: CloseReason, now: float) -> None:
        """A connection is retired for a fault: if it lived less than ``retry.reset_after``
        it counts toward the key's backoff, as a failed connect would."""
        record = slot.record
        lived = now - record.created_at
        if record.state is ConnState.OPENING or lived >= self.config.retry.reset_after:
            return
        ks = slot.keystate
        delay = record_short_life(ks.connect_backoff(), self.config.retry, now)
        log.info(
            "guardedpool: connection %d of key %r died young (%s after %.3f s, under "
            "retry.reset_after %.0f s); the key's next connect waits %.3f s",
            record.id,
            ks.key,
            reason.value,
            lived,
            self.config.retry.reset_after,
            delay,
            extra={
                "key": ks.key,
                "conn_id": record.id,
                "reason": reason.value,
                "lived": lived,
                "retry_in": delay,
            },
        )

    # ----------------------------------------------------------------- retiring and closing

    def _retire(self, slot: Slot[C], reason: CloseReason, detail: str = "") -> None:
        """Take a connection out of service now; close it in a pool-owned task."""
        record = slot.record
        now = self._clock()
        if reason in _FAULTS:
            self._died(slot, reason, now)
        self._books.move(slot, ConnState.CLOSING, reason)
        record.retired_at = now
        record.note(now, Event.RETIRE, f"{reason.value} {detail}".strip())
        level = logging.DEBUG if reason is CloseReason.SHUTDOWN else logging.INFO  # close() sums up
        if log.isEnabledFor(level):  # 10,000 retirements by close(): no dict for nothing
            log.log(
                level,
                "guardedpool: retiring connection %d of key %r: %s (%s)",
                record.id,
                record.key,
                reason.value,
                detail or _WHY[reason],
                extra={"key": record.key, "conn_id": record.id, "reason": reason.value},
            )
        if self._shut_down and self._farewell is not None:
            # Closing the pool: one task closes them all (_close_batch), goodbyes written.
            self._batch.append((slot, reason in _GRACEFUL))
            if len(self._batch) == 1:
                self._spawn(self._close_batch(), "guardedpool-close-batch", self._closes)
            return
        name = f"guardedpool-close-{record.key}"
        self._spawn(self._close(slot, reason in _GRACEFUL), name, self._closes)

    async def _close(self, slot: Slot[C], graceful: bool) -> None:
        record = slot.record
        if graceful and not self._may_speak(slot):
            graceful = False
        bound = self.config.close_timeout
        if self._shut_down and graceful and slot.conn is not None:
            # Every awaited goodbye of a closing pool ends by one deadline.
            bound = min(bound, self._goodbye_until - self._clock())
            if bound <= 0:
                graceful = False
        closed: Closed | None = None
        try:
            closed = await close_and_verify(
                self._connector,
                slot.conn,
                record,
                graceful=graceful,
                close_timeout=max(bound, 0.001),
                clock=self._clock,
            )
        finally:
            self._closed(slot, closed)

    def _may_speak(self, slot: Slot[C]) -> bool:
        """Whether a goodbye may go out on ``slot``: not when its fleet lease ran out (a
        pause past the TTL, Redis lost it): the fleet no longer counts the connection."""
        return self._leases is None or self._leases.may_speak(slot)

    async def _close_batch(self) -> None:
        """Close, at shutdown, the connections :meth:`_retire` queued, many per loop turn.

        One task for 10,000 closes instead of 10,000 tasks: each connection gets its
        goodbye written (``Connector.farewell``) and is aborted; one turn of the loop later
        most sockets are gone and verified so. A socket still there gets the full
        :func:`close_and_verify` (the wait, then a forced shutdown) in a task of its own.
        """
        farewell = self._farewell
        assert farewell is not None
        while self._batch:
            batch, self._batch = self._batch, []
            said: list[bool] = []
            try:
                for slot, graceful in batch:
                    conn = slot.conn
                    spoke = conn is not None and graceful and self._may_speak(slot)
                    if spoke:
                        farewell(conn)  # type: ignore[arg-type]
                    if conn is not None:
                        self._connector.abort(conn)
                    said.append(spoke)
                for _ in range(3):  # asyncio closes an aborted socket on its next turn
                    await asyncio.sleep(0)
                    if not any(
                        s.record.socket is not None and is_open(s.record.socket) for s, _ in batch
                    ):
                        break
            except BaseException:
                for slot, _ in batch:  # cancelled (close()'s own bound): free every slot
                    if slot.conn is not None:
                        self._connector.abort(slot.conn)
                    self._closed(slot, None)
                raise
            for (slot, _), spoke in zip(batch, said, strict=True):
                ident = slot.record.socket
                slot.conn = None  # aborted: what is left is the OS check
                goodbye = "sent" if spoke else "skipped"
                if ident is not None and is_open(ident):
                    name = f"guardedpool-close-{slot.record.key}"
                    self._spawn(self._verify_gone(slot, goodbye), name, self._closes)
                else:
                    self._closed(slot, Closed(goodbye, True))

    async def _verify_gone(self, slot: Slot[C], goodbye: str) -> None:
        """The rest of a batch close whose socket outlived its abort (see close_and_verify)."""
        closed: Closed | None = None
        try:
            checked = await close_and_verify(
                self._connector,
                None,
                slot.record,
                graceful=False,
                close_timeout=self.config.close_timeout,
                clock=self._clock,
            )
            closed = Closed(goodbye, checked.os_closed)
        finally:
            self._closed(slot, closed)

    def _closed(self, slot: Slot[C], closed: Closed | None) -> None:
        """A close ended (``closed`` None: it was interrupted): the slot is free."""
        record = slot.record
        if closed is not None:
            record.os_closed = closed.os_closed
            if self._tally is not None:
                self._tally.closed(closed.goodbye, closed.os_closed)
        slot.conn = None
        self._free_slot(slot, Event.CLOSED)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "guardedpool: closed connection %d of key %r (%s); its slot is free",
                record.id,
                record.key,
                "socket verified gone" if record.os_closed else "socket NOT verified gone",
                extra={"key": record.key, "conn_id": record.id, "os_closed": record.os_closed},
            )
        self._after_slot_freed(slot.keystate)

    def _free_slot(self, slot: Slot[C], event: Event, detail: str = "") -> None:
        record = slot.record
        now = self._clock()
        record.closed_at = now
        record.note(now, event, detail)
        self._books.move(slot, ConnState.CLOSED)
        if self._leases is not None:
            self._leases.give_back(slot)  # the socket is verified gone (or never existed)
        self._key_may_be_quiet(slot.keystate)

    def _lease_lost(self, slot: Slot[C]) -> None:
        """The fleet budget lost ``slot``'s lease: the connection must not be used again.
        Idle: retired now. Checked out (a borrower, a NOOP check): aborted, so the next
        command fails without reaching the server; the release then retires it."""
        if slot.record.state is IDLE:
            self._retire(slot, CloseReason.ERROR, "fleet lease lost")
        elif slot.conn is not None:
            self._connector.abort(slot.conn)

    def _after_slot_freed(self, ks: KeyState[C]) -> None:
        if self._shut_down:
            return
        self._dispatch(ks)
        if ks.live_waiters() <= ks.opening:
            self._starving.pop(ks.key, None)
        for other in list(self._starving.values()):
            if self._books.slots >= self.config.max_total:
                break
            self._starving.pop(other.key, None)
            self._dispatch(other)

    # ----------------------------------------------------------------- housekeeping

    def _start_heartbeat(self, slot: Slot[C]) -> None:
        """Housekeeping's NOOP of an idle connection, out of the idle stack meanwhile."""
        self._books.move(slot, IN_USE)
        name = f"guardedpool-heartbeat-{slot.record.key}"
        self._spawn(self._heartbeat(slot), name, self._heartbeats)

    async def _heartbeat(self, slot: Slot[C]) -> None:
        if await self._noop_check(slot, self._check_bound, "heartbeat") is None:
            self._to_idle(slot)

    def _reclaim(self, record: ConnectionRecord, now: float) -> None:
        """Abort a connection held past ``reclaim_after`` under its borrower."""
        slot = self._books.live[record.id]
        if slot.conn is None:
            return
        borrower = borrower_of(record)
        log.warning(
            "guardedpool: reclaiming connection %d of key %r: lent out for %.1f s "
            "(reclaim_after %g s) to %s; aborted under its borrower",
            record.id,
            record.key,
            now - record.borrowed_at,
            self.config.reclaim_after,
            borrower_text(borrower),
            extra={"key": record.key, "conn_id": record.id, **borrower_fields(borrower)},
        )
        record.note(now, Event.RECLAIMED)
        self._connector.abort(slot.conn)

    def _key_may_be_quiet(self, ks: KeyState[C]) -> None:
        if not self._shut_down:
            self._housekeeper.key_may_be_quiet(ks)

    def _forget(self, ks: KeyState[C]) -> None:
        """Drop a quiet key's state; its counters live on in the pool's totals."""
        if self._keys.get(ks.key) is ks:
            del self._keys[ks.key]
            self._starving.pop(ks.key, None)
            ks.fold_into(self._forgotten)
            log.debug(
                "guardedpool: forgot key %r (no connection, waiter or backoff); its counters "
                "are in the pool totals",
                ks.key,
                extra={"key": ks.key},
            )

    async def _maybe_audit(self) -> None:
        interval = self.config.audit.interval
        now = self._clock()
        if interval is None or (self._last_audit is not None and now - self._last_audit < interval):
            return
        self._last_audit = now
        await self.audit()  # the auditor logs each finding

    def record_of(self, conn: C) -> ConnectionRecord:
        """The record of a connection you hold: its expiry, socket identity, history.

        Long holders (an IDLE loop, say) read ``expires_at`` to give the connection back
        on time. Raises :class:`PoolError` for a connection not checked out from this pool.
        """
        slot = self._borrowed.get(id(conn))
        if slot is None:
            raise PoolError("record_of() of a connection that is not checked out from this pool")
        return slot.record

    def declare_long_hold(self, conn: C) -> None:
        """Say that you hold ``conn`` long on purpose, until you release it.

        A connection held past ``leak_threshold`` is a leak suspect (logged, reported by
        the audit, which turns a health check unhealthy), unless its borrower declared the
        hold: an IDLE session (:func:`guardedpool.imap.idle.idle` does), a long sync, a
        subscription. The declaration ends with the release; the next borrow of the same
        connection is a plain one again. ``reclaim_after``, a hard cap, still applies.
        Idempotent. Raises :class:`PoolError` for a connection not checked out from this
        pool.
        """
        slot = self._borrowed.get(id(conn))
        if slot is None:
            raise PoolError(
                "declare_long_hold() of a connection that is not checked out from this pool"
            )
        record = slot.record
        if not record.long_hold:
            record.long_hold = True
            record.note(self._clock(), Event.LONG_HOLD)
            log.debug(
                "guardedpool: connection %d of key %r is held long on purpose (declared); "
                "not a leak suspect until it is released",
                record.id,
                record.key,
                extra={"key": record.key, "conn_id": record.id},
            )

    # ----------------------------------------------------------------- stats and audit

    def stats(self) -> dict[str, Any]:
        """Plain data with stable keys: totals and one entry per key (see the README)."""
        now, cfg = self._clock(), self.config
        per_key = {
            key: {**ks.stats(), **limit_stats(ks.limits, now, cfg, ks.first_login)}
            for key, ks in self._keys.items()
        }
        totals = aggregate([*per_key.values(), self._forgotten.stats()])
        totals.update(
            connecting=self._reconnector.connecting,
            peak_connecting=self._reconnector.peak_connecting,
            slots=self._books.slots,
            closed_pool=self._shut_down,
        )
        if self._leases is not None:
            return {"total": totals, "keys": per_key, "budget": self._leases.stats()}
        return {"total": totals, "keys": per_key}

    def reset_peaks(self) -> None:
        """Start a new window for the high-water marks in :meth:`stats`:
        ``peak_connecting`` and ``acquire_wait_max`` (e.g. once per metrics scrape)."""
        self._reconnector.peak_connecting = self._reconnector.connecting
        self._forgotten.acquire_wait_max = 0.0
        for ks in self._keys.values():
            ks.acquire_wait_max = 0.0

    async def audit(self) -> AuditReport:
        """Hold the pool's records against the OS view of the process's sockets.

        See :mod:`guardedpool.audit` and the README for the findings and actions.
        """
        return await run_audit(self.audit_target)
