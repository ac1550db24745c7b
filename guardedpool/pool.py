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
import random
import sys
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Set
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from . import policy
from .acquisition import Acquisition, is_connection_fault
from .audit.auditor import run_audit  # at import: an audit at the fd limit cannot import
from .closing import close_and_verify
from .config import PoolConfig
from .connector import Address, Connector
from .errors import PoolClosed, PoolError, PoolTimeout
from .keystate import KeyState, Pooled, Waiter, aggregate
from .reconnect import Reconnector
from .records import CloseReason, ConnectionRecord, ConnState
from .sockets import identify

if TYPE_CHECKING:
    from .audit.report import AuditReport

__all__ = ["GuardedPool"]

log = logging.getLogger("guardedpool.pool")

_HOUSEKEEPING_CHUNK = 512  # connections looked at between two turns of the event loop
_MAX_HEARTBEATS = 256  # NOOPs in flight from housekeeping; the rest wait a round

# Every pool of the process, so an audit can tell a sibling pool's socket from an orphan.
_POOLS: weakref.WeakSet[GuardedPool[Any]] = weakref.WeakSet()

C = TypeVar("C")

# The task running on a loop: asyncio.current_task(loop) is a Python function on 3.11
# whose work is this one dict lookup (~120 ns against ~35 ns); from 3.12 it is C.
_current_tasks: dict[asyncio.AbstractEventLoop | None, asyncio.Task[Any]] | None = getattr(
    asyncio.tasks, "_current_tasks", None
)
if sys.version_info < (3, 12) and isinstance(_current_tasks, dict):
    _task_on: Callable[[asyncio.AbstractEventLoop | None], object] = _current_tasks.get
else:
    _task_on = asyncio.current_task
_NO_TASK = "<no task>"  # a borrower all the same: leak detection must not skip it

# The states the pool tests most, as module constants: on Python 3.11 ``ConnState.IDLE``
# costs ~75 ns (EnumType.__getattr__ takes class attribute lookups off the fast path).
_IDLE, _IN_USE = ConnState.IDLE, ConnState.IN_USE

# Reasons for which a goodbye (LOGOUT) is worth sending; after a fault we abort at once.
_GRACEFUL = frozenset(
    {CloseReason.IDLE, CloseReason.LIFETIME, CloseReason.SHUTDOWN, CloseReason.EVICTED}
)


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
    """

    def __init__(
        self,
        connector: Connector[C],
        config: PoolConfig | None = None,
        *,
        on_reconnect_failed: Callable[[str, BaseException], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
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
        self._live: dict[int, Pooled[C]] = {}  # record id -> pooled, until closed
        self._in_use: dict[int, Pooled[C]] = {}  # id(conn) -> pooled
        self._graveyard: deque[ConnectionRecord] = deque(maxlen=config.audit.graveyard_size)
        self._starving: dict[str, KeyState[C]] = {}  # keys blocked by max_total, FIFO
        self._total = 0
        self._evicting = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._housekeeper: asyncio.Task[None] | None = None
        # The loop the pool runs on, bound by start(): naming it saves asking for the
        # running loop (~190 ns on Python 3.11) on every acquire.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        self._close_task: asyncio.Task[None] | None = None
        self._returned = asyncio.Event()
        self._last_audit: float | None = None
        self._heartbeats = 0
        _POOLS.add(self)

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
        if self._closing:
            raise PoolClosed("the pool is closed")
        if self._housekeeper is None:
            self._loop = asyncio.get_running_loop()
            self._housekeeper = self._loop.create_task(
                self._housekeeping(), name="guardedpool-housekeeping"
            )

    @property
    def closed(self) -> bool:
        return self._closing

    async def close(self) -> None:
        """Close every connection and wake every waiter with :class:`PoolClosed`.

        Idempotent and bounded: connections still checked out get ``close_timeout`` to be
        returned, then they are aborted; every close is itself bounded by ``close_timeout``.
        """
        if self._close_task is None:
            self._close_task = asyncio.get_running_loop().create_task(self._shutdown())
        await asyncio.shield(self._close_task)

    async def _shutdown(self) -> None:
        self._closing = True
        for ks in self._keys.values():
            while (waiter := ks.next_waiter()) is not None:
                waiter.set_exception(PoolClosed(f"the pool closed while waiting for {ks.key!r}"))
            for pooled in list(ks.idle):
                self._retire(pooled, CloseReason.SHUTDOWN)
        if self._housekeeper is not None:
            self._housekeeper.cancel()
        for task in list(self._tasks):
            if task.get_name().startswith("guardedpool-open"):
                task.cancel()
        if self._in_use:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.close_timeout):
                    while self._in_use:
                        self._returned.clear()
                        await self._returned.wait()
            for pooled in list(self._in_use.values()):
                self._in_use.pop(id(pooled.conn), None)
                pooled.keystate.in_use -= 1
                self._retire(pooled, CloseReason.SHUTDOWN)
        # Closing tasks may spawn more (an open finishing as we cancel it is retired): wait
        # until none is left, within one overall bound.
        loop = asyncio.get_running_loop()
        end = loop.time() + self.config.close_timeout + self.config.connect_timeout + 2.0
        while True:
            tasks = {t for t in self._tasks if not t.done()}
            if self._housekeeper is not None and not self._housekeeper.done():
                tasks.add(self._housekeeper)
            remaining = end - loop.time()
            if not tasks:
                break
            if remaining <= 0:
                for task in tasks:
                    log.error("guardedpool: task %s did not finish during close", task.get_name())
                    task.cancel()
                break
            await asyncio.wait(tasks, timeout=remaining)

    # ----------------------------------------------------------------- acquire / release

    def acquire(self, key: str) -> Acquisition[C]:
        """A connection for ``key``, as an async context manager (or awaitable + release).

        Waits at most ``acquire_timeout`` (then :class:`PoolTimeout`, naming the key and
        the last connect error). Waiters of a key are served first come, first served.
        An error raised inside the ``async with`` block that came from the connection
        retires it; it is never handed out again.
        """
        return Acquisition(self, key)

    async def _checkout(self, key: str) -> C:
        conn = self._take_ready(key)
        return conn if conn is not None else await self._checkout_slow(key)

    def _take_ready(self, key: str) -> C | None:
        """The fast path, without an await: an idle connection nobody queues for, ready as
        it is (not due for retirement or a check, and alive). None: take the slow path."""
        ks = self._keys.get(key)
        if ks is None or not ks.idle or ks.waiters or self._closing:
            return None
        pooled = ks.idle[-1]
        now = self._clock()
        if not (
            policy.ready_to_hand_out(pooled.record, now, self.config)
            and self._connector.is_alive(pooled.conn)  # type: ignore[arg-type]
        ):
            return None
        ks.idle.pop()
        pooled.fresh = False
        pooled.record.state = _IN_USE  # _mark_in_use, inlined on the fast path
        ks.in_use += 1
        return self._hand_out(pooled, now, now)

    async def _checkout_slow(self, key: str) -> C:
        if self._closing:
            raise PoolClosed("the pool is closed")
        if not isinstance(key, str):
            raise TypeError(f"key must be a str, got {type(key).__name__}")
        self.start()
        ks = self._keys.get(key)
        if ks is None:
            ks = self._keys[key] = KeyState(key)
        started = self._clock()
        deadline = started + self.config.acquire_timeout
        while True:
            pooled = self._take_idle(ks) or await self._wait(ks, deadline, started)
            now = self._clock()
            fresh, pooled.fresh = pooled.fresh, False
            if (
                not fresh
                and policy.needs_check(pooled.record, now, self.config)
                and not await self._check_out_of_band(
                    pooled, min(self.config.op_timeout, max(deadline - now, 0.001))
                )
            ):
                continue
            return self._hand_out(pooled, now, started)

    def _hand_out(self, pooled: Pooled[C], now: float, started: float) -> C:
        """Record the borrower and the wait; the connection is the caller's from here."""
        conn = pooled.conn
        assert conn is not None
        record = pooled.record
        # The borrower as raw facts, formatted only when read (``record.borrower``).
        record.borrowed_by = _task_on(self._loop) or _NO_TASK
        record.borrowed_at = record.last_used_at = now
        try:
            # whoever called acquire: past here, _take_ready or _checkout_slow, and
            # Acquisition.__await__ (or _checkout, which tests run as a task)
            frame = sys._getframe(3)
        except ValueError:
            record.borrowed_site = None
        else:
            record.borrowed_site, record.borrowed_lasti = frame.f_code, frame.f_lasti
        self._in_use[id(conn)] = pooled
        ks = pooled.keystate
        ks.acquires += 1
        if now != started:
            waited = now - started
            ks.acquire_wait_total += waited
            if waited > ks.acquire_wait_max:
                ks.acquire_wait_max = waited
        return conn

    def _take_idle(self, ks: KeyState[C]) -> Pooled[C] | None:
        """Pop the most recently used healthy idle connection, retiring stale ones on the way."""
        now = self._clock()
        while ks.idle:
            pooled = ks.idle.pop()
            reason = policy.retire_when_idle(pooled.record, now, self.config)
            if reason is None and not self._connector.is_alive(pooled.conn):  # type: ignore[arg-type]
                reason = CloseReason.ERROR
            if reason is not None:
                self._retire(pooled, reason, from_idle=False)
                continue
            self._mark_in_use(pooled)
            return pooled
        return None

    def _mark_in_use(self, pooled: Pooled[C]) -> None:
        pooled.record.state = _IN_USE
        pooled.keystate.in_use += 1

    async def _wait(self, ks: KeyState[C], deadline: float, started: float) -> Pooled[C]:
        waiter: Waiter[C] = asyncio.get_running_loop().create_future()
        ks.add_waiter(waiter)
        timer: asyncio.Timeout | None = None
        try:
            self._dispatch(ks)  # inside the try: whatever it raises, the waiter leaves
            async with asyncio.timeout(deadline - self._clock()) as timer:
                return await waiter
        except BaseException as exc:
            self._abandon(ks, waiter)
            if isinstance(exc, TimeoutError) and timer is not None and timer.expired():
                ks.timeouts += 1
                last = ks.last_error()
                raise PoolTimeout(ks.key, self._clock() - started, last) from last
            raise

    def _abandon(self, ks: KeyState[C], waiter: Waiter[C]) -> None:
        """A waiter gave up (timeout, cancellation, error): never lose what it was handed."""
        if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
            pooled = waiter.result()
            pooled.keystate.in_use -= 1
            self._to_idle(pooled)
            return
        waiter.cancel()
        ks.drop_waiter(waiter)

    async def _check_out_of_band(self, pooled: Pooled[C], timeout: float) -> bool:
        """NOOP a connection the caller holds but has not received yet; retire it on failure."""
        conn = pooled.conn
        assert conn is not None
        try:
            async with asyncio.timeout(timeout):
                await self._connector.check(conn, timeout)
        except BaseException as exc:
            pooled.keystate.in_use -= 1
            reason = CloseReason.ERROR if isinstance(exc, Exception) else CloseReason.POISONED
            self._retire(pooled, reason, detail=f"check failed: {type(exc).__name__}")
            if not isinstance(exc, Exception):
                raise
            return False
        pooled.record.last_checked_at = self._clock()
        return True

    def release(self, conn: C, *, error: BaseException | None = None) -> None:
        """Give a connection back. Synchronous, so cancellation cannot interrupt it.

        ``error``: the exception that ended the borrower's work, if any; one that came from
        the connection (timeout, protocol error, lost connection) retires it.
        """
        pooled = self._in_use.pop(id(conn), None)
        if pooled is None:
            if self._closing:
                return  # the pool already took it back while shutting down
            raise PoolError("release() of a connection that is not checked out from this pool")
        ks = pooled.keystate
        ks.in_use -= 1
        record = pooled.record
        now = self._clock()
        if pooled.leak_logged:
            pooled.leak_logged = False  # the next borrow is a new suspect, or none
            log.warning(
                "guardedpool: leak suspect returned",
                extra={"key": ks.key, "conn_id": record.id, "held": now - record.borrowed_at},
            )
        record.borrowed_by = None
        record.last_used_at = now
        closing = self._closing
        if closing:
            self._returned.set()  # close() waits for borrowed connections to come back
        if record.state is not _IN_USE:  # reclaimed or shut down meanwhile
            return
        reason = policy.retire_on_release(
            record,
            now,
            alive=self._connector.is_alive(conn),
            faulted=error is not None and is_connection_fault(error),
            closing=closing,
        )
        if reason is not None:
            self._retire(pooled, reason)
            return
        # _to_idle, inlined on this hot path (closing was already answered by the policy;
        # fresh was cleared at hand-out).
        record.state = _IDLE
        ks.idle.append(pooled)
        if ks.waiters:
            self._dispatch(ks)

    def _to_idle(self, pooled: Pooled[C]) -> None:
        pooled.fresh = False
        if self._closing:
            self._retire(pooled, CloseReason.SHUTDOWN)
            return
        pooled.record.state = _IDLE
        ks = pooled.keystate
        ks.idle.append(pooled)
        if ks.waiters:
            self._dispatch(ks)

    # ----------------------------------------------------------------- dispatch and opening

    def _dispatch(self, ks: KeyState[C]) -> None:
        """Hand idle connections to waiters, then start connects for the demand left over."""
        while (waiter := ks.first_waiter()) is not None:
            pooled = self._take_idle(ks)
            if pooled is None:
                break
            ks.drop_waiter(waiter)
            waiter.set_result(pooled)
        if self._closing or ks.count >= self.config.max_per_key:
            return  # at the key's cap nothing can be opened: no need to count waiters
        unmet = ks.live_waiters() - ks.opening
        while unmet > 0:
            blocker = policy.open_blocker(ks.count, self._total, self.config)
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
        if self._evicting >= len(self._starving):
            return
        idle = (p.record for k in self._keys.values() if k is not starving for p in k.idle)
        victim = policy.pick_eviction(idle)
        if victim is not None:
            pooled = self._live[victim.id]
            self._evicting += 1
            self._retire(pooled, CloseReason.EVICTED)

    def _start_open(self, ks: KeyState[C]) -> None:
        now = self._clock()
        record = ConnectionRecord(ks.key, created_at=now, expires_at=now + self.config.max_lifetime)
        pooled: Pooled[C] = Pooled(record, ks)
        ks.count += 1
        ks.opening += 1
        self._total += 1
        self._live[record.id] = pooled
        replaces = ks.count_reconnect()
        if replaces is not None:
            record.note(now, "reconnect", replaces.value)
        self._spawn(self._open(pooled), f"guardedpool-open-{ks.key}")

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _open(self, pooled: Pooled[C]) -> None:
        ks = pooled.keystate
        record = pooled.record
        try:
            conn = await self._reconnector.connect(
                ks.key,
                ks.connect_backoff(),
                wanted=lambda: not self._closing and ks.live_waiters() > 0,
                note=lambda exc: self._connect_failed(ks, record, exc),
            )
        except BaseException as exc:
            ks.opening -= 1
            ks.connect_finished()
            self._free_slot(pooled, f"open failed: {type(exc).__name__}")
            if isinstance(exc, Exception) and not policy.is_transient(exc):
                self._fail_first_waiter(ks, exc)
            self._after_slot_freed(ks)
            if not isinstance(exc, Exception):
                raise
            return
        now = self._clock()
        ks.opening -= 1
        ks.connect_finished()
        ks.opened += 1
        pooled.conn = conn
        sock = self._connector.socket_of(conn)
        if sock is not None:
            try:
                record.socket = identify(sock)
            except OSError as exc:
                record.note(now, "identify_failed", type(exc).__name__)
        record.created_at = record.last_used_at = record.last_checked_at = now
        record.expires_at = policy.expiry_time(now, self.config, self._rng())
        record.note(now, "open")  # the socket identity is in record.socket
        log.debug("guardedpool: opened", extra={"key": ks.key, "conn_id": record.id})
        self._mark_in_use(pooled)
        self._to_idle_or_waiter(pooled)

    def _to_idle_or_waiter(self, pooled: Pooled[C]) -> None:
        ks = pooled.keystate
        if self._closing:
            ks.in_use -= 1
            self._retire(pooled, CloseReason.SHUTDOWN)
            return
        waiter = ks.next_waiter()
        if waiter is not None:
            waiter.set_result(pooled)
            return
        ks.in_use -= 1
        self._to_idle(pooled)

    def _connect_failed(
        self, ks: KeyState[C], record: ConnectionRecord, exc: BaseException
    ) -> None:
        ks.connect_failures += 1
        record.note(self._clock(), "connect_failed", type(exc).__name__)

    def _fail_first_waiter(self, ks: KeyState[C], exc: Exception) -> None:
        waiter = ks.next_waiter()
        if waiter is not None:
            waiter.set_exception(exc)

    # ----------------------------------------------------------------- retiring and closing

    def _retire(
        self, pooled: Pooled[C], reason: CloseReason, *, from_idle: bool = True, detail: str = ""
    ) -> None:
        """Take a connection out of service now; close it in a pool-owned task."""
        record = pooled.record
        ks = pooled.keystate
        if from_idle and record.state is _IDLE:
            with contextlib.suppress(ValueError):
                ks.idle.remove(pooled)
        now = self._clock()
        record.state = ConnState.CLOSING
        record.close_reason = reason
        record.retired_at = now
        record.note(now, "retire", f"{reason.value} {detail}".strip())
        ks.closing += 1
        ks.count_close(
            reason, replace=reason is not CloseReason.SHUTDOWN and reason is not CloseReason.EVICTED
        )
        self._spawn(self._close(pooled, reason in _GRACEFUL), f"guardedpool-close-{ks.key}")

    async def _close(self, pooled: Pooled[C], graceful: bool) -> None:
        record = pooled.record
        try:
            record.os_closed = await close_and_verify(
                self._connector,
                pooled.conn,
                record,
                graceful=graceful,
                close_timeout=self.config.close_timeout,
                clock=self._clock,
            )
        finally:
            pooled.keystate.closing -= 1
            if record.close_reason is CloseReason.EVICTED:
                self._evicting -= 1
            pooled.conn = None
            self._free_slot(pooled, "closed")
            self._after_slot_freed(pooled.keystate)

    def _free_slot(self, pooled: Pooled[C], event: str) -> None:
        record = pooled.record
        ks = pooled.keystate
        now = self._clock()
        was_open = record.state is ConnState.CLOSING
        record.state = ConnState.CLOSED
        record.closed_at = now
        record.note(now, event)
        ks.count -= 1
        self._total -= 1
        self._live.pop(record.id, None)
        if was_open:
            self._graveyard.append(record)

    def _after_slot_freed(self, ks: KeyState[C]) -> None:
        if self._closing:
            return
        self._dispatch(ks)
        if ks.live_waiters() <= ks.opening:
            self._starving.pop(ks.key, None)
        for other in list(self._starving.values()):
            if self._total >= self.config.max_total:
                break
            self._starving.pop(other.key, None)
            self._dispatch(other)

    # ----------------------------------------------------------------- housekeeping

    async def _housekeeping(self) -> None:
        interval = self.config.housekeeping_interval
        while not self._closing:
            await asyncio.sleep(interval)
            try:
                for _ in self._housekeeping_round():
                    await asyncio.sleep(0)  # a turn for the loop between chunks
                await self._maybe_audit()
            except Exception:
                log.exception("guardedpool: housekeeping round failed")

    def _housekeep_once(self) -> None:
        """One whole housekeeping round, without yielding (tests, benchmarks)."""
        for _ in self._housekeeping_round():
            pass

    def _housekeeping_round(self) -> Iterator[None]:
        """Retire what is due, start heartbeats, flag leaks, prune the graveyard.

        A generator that yields every ``_HOUSEKEEPING_CHUNK`` connections so that 10,000
        of them do not stall the event loop in one go; each record's state is checked
        again after a yield, since anything may have happened to it meanwhile.
        """
        now = self._clock()
        cfg = self.config
        seen = 0
        for ks in list(self._keys.values()):
            for pooled in list(ks.idle):
                seen += 1
                if seen % _HOUSEKEEPING_CHUNK == 0:
                    yield
                    now = self._clock()
                record = pooled.record
                if record.state is not _IDLE:
                    continue  # handed out or retired while we yielded
                reason = policy.retire_when_idle(record, now, cfg)
                if reason is None and not self._connector.is_alive(pooled.conn):  # type: ignore[arg-type]
                    reason = CloseReason.ERROR
                if reason is not None:
                    self._retire(pooled, reason)
                elif policy.heartbeat_due(record, now, cfg) and self._heartbeats < _MAX_HEARTBEATS:
                    ks.idle.remove(pooled)
                    self._mark_in_use(pooled)
                    self._heartbeats += 1
                    self._spawn(self._heartbeat(pooled), f"guardedpool-heartbeat-{ks.key}")
        for pooled in list(self._in_use.values()):
            record = pooled.record
            if policy.reclaim_due(record, now, cfg) and pooled.conn is not None:
                log.error(
                    "guardedpool: reclaiming connection held too long",
                    extra={"key": record.key, "conn_id": record.id},
                )
                record.note(now, "reclaimed")
                self._connector.abort(pooled.conn)
            elif policy.leak_suspect(record, now, cfg) and not pooled.leak_logged:
                pooled.leak_logged = True
                borrower = record.borrower  # a view built from the record: build it once
                assert borrower is not None
                log.warning(
                    "guardedpool: connection checked out too long (leak suspect)",
                    extra={
                        "key": record.key,
                        "conn_id": record.id,
                        "task": borrower.task,
                        "stack": list(borrower.stack),
                    },
                )
        ttl = cfg.audit.graveyard_ttl
        grave = self._graveyard
        while grave and grave[0].closed_at is not None and now - grave[0].closed_at > ttl:
            grave.popleft()

    async def _heartbeat(self, pooled: Pooled[C]) -> None:
        try:
            ok = await self._check_out_of_band(pooled, self.config.op_timeout)
        finally:
            self._heartbeats -= 1
        if ok:
            pooled.keystate.in_use -= 1
            self._to_idle(pooled)

    async def _maybe_audit(self) -> None:
        interval = self.config.audit.interval
        now = self._clock()
        if interval is None or (self._last_audit is not None and now - self._last_audit < interval):
            return
        self._last_audit = now
        report = await self.audit()
        for finding in report.findings:
            log.warning("guardedpool: audit finding", extra={"finding": finding.to_dict()})

    def record_of(self, conn: C) -> ConnectionRecord:
        """The record of a connection you hold: its expiry, socket identity, history.

        Long holders (an IDLE loop, say) read ``expires_at`` to give the connection back
        on time. Raises :class:`PoolError` for a connection not checked out from this pool.
        """
        pooled = self._in_use.get(id(conn))
        if pooled is None:
            raise PoolError("record_of() of a connection that is not checked out from this pool")
        return pooled.record

    # ----------------------------------------------------------------- stats and audit

    def stats(self) -> dict[str, Any]:
        """Plain data with stable keys: totals and one entry per key (see the README)."""
        per_key = {key: ks.stats() for key, ks in self._keys.items()}
        totals = aggregate(per_key.values())
        totals.update(
            connecting=self._reconnector.connecting,
            peak_connecting=self._reconnector.peak_connecting,
            slots=self._total,
            closed_pool=self._closing,
        )
        return {"total": totals, "keys": per_key}

    def reset_peaks(self) -> None:
        """Start a new window for the high-water marks in :meth:`stats`:
        ``peak_connecting`` and ``acquire_wait_max`` (e.g. once per metrics scrape)."""
        self._reconnector.peak_connecting = self._reconnector.connecting
        for ks in self._keys.values():
            ks.acquire_wait_max = 0.0

    async def audit(self) -> AuditReport:
        """Hold the pool's records against the OS view of the process's sockets.

        See :mod:`guardedpool.audit` and the README for the findings and actions.
        """
        return await run_audit(self)

    # The AuditTarget protocol (guardedpool.audit.auditor) ----------------------

    def audit_now(self) -> float:
        return self._clock()

    def audit_records(self) -> list[ConnectionRecord]:
        return [pooled.record for pooled in self._live.values()]

    def audit_graveyard(self) -> list[ConnectionRecord]:
        return list(self._graveyard)

    def audit_endpoints(self) -> Set[Address]:
        return self._connector.endpoints()

    def audit_poison(self, record: ConnectionRecord) -> None:
        pooled = self._live.get(record.id)
        if pooled is None or pooled.conn is None:
            return
        if record.state is _IDLE:
            self._retire(pooled, CloseReason.AUDIT, detail="half-open")
        elif record.state is _IN_USE:
            record.note(self._clock(), "poisoned", "audit: half-open")
            self._connector.abort(pooled.conn)

    def audit_retire(self, record: ConnectionRecord) -> None:
        pooled = self._live.get(record.id)
        if pooled is not None and record.state is _IDLE:
            self._retire(pooled, CloseReason.AUDIT, detail="overdue")

    def audit_foreign(self) -> tuple[frozenset[int], int]:
        inodes: set[int] = set()
        connecting = 0
        for pool in list(_POOLS):
            if pool is self:
                continue
            for record in pool.audit_records():
                if record.socket is not None:
                    inodes.add(record.socket.inode)
                elif record.state is ConnState.OPENING:
                    connecting += 1
            inodes.update(r.socket.inode for r in pool._graveyard if r.socket is not None)
        return frozenset(inodes), connecting

    def audit_abort(self, record: ConnectionRecord) -> bool:
        pooled = self._live.get(record.id)
        if pooled is None or pooled.conn is None:
            return False
        self._connector.abort(pooled.conn)
        return True
