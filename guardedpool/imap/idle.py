"""Long-lived IDLE on top of the pool: pushes in, reconnects and lifetimes handled.

``async with idle(pool, key, "INBOX") as pushes: async for event in pushes: ...`` keeps a
connection in IDLE for as long as the block runs. Each IDLE round lasts at most
``renew_after`` seconds (RFC 2177 asks for less than 29 minutes) and never past the
connection's jittered ``max_lifetime``; between rounds the connection is given back to the
pool when it is due, and a fresh one takes over, transparently.

A dead IDLE is never a hang (aioimaplib #110): a lost connection or ``BYE`` fails the wait
at once; a peer that stops answering is caught when the round ends and DONE goes
unanswered within ``op_timeout``; TCP keepalive catches a peer that vanished. Either way
the connection is poisoned, the pool replaces it with backoff, and the consumer receives a
``CONNECTED`` event with ``resumed=True``: pushes may have been missed, resync.

No transient error ends the session for good. When the server refuses for its limits
(:class:`~guardedpool.errors.ServerLimit`: a ``BYE`` for too many connections or a quota,
a throttled SELECT...), the session waits before it asks the pool again: the delay the
server suggested, at most ``retry.max_throttle_delay``, or else the pool's retry backoff
(``retry.initial * retry.multiplier ** n`` up to ``retry.max_delay``), counted from the
last time IDLE was reached. ``stop()`` ends the wait at once.

When the pool closes, the session learns of it at once (``pool.when_closing()``), gives
its connection back still in IDLE (the pool's close sends DONE and LOGOUT) and ends.

The session runs as a task feeding a bounded queue, so a slow consumer never delays a
DONE. If the consumer falls more than ``queue_size`` events behind, the backlog is dropped
and one ``OVERFLOW`` event says so (resync, like after a reconnect). A read may be
cancelled (``asyncio.wait_for(it.__anext__(), t)`` timing out): it takes nothing from the
queue, and the same iterator goes on with the next event; only the session's end ends an
iteration.

Each reconnect is logged at INFO in words: the key, the connection lost and the error
(its type and redacted text), or that no connection came within ``acquire_timeout``
(a :class:`~guardedpool.errors.PoolTimeout`: nothing was lost) or none could be had (a
transient connect error), and that the session reconnects at once: it asks the pool
again, and the pool paces failing connects with the key's backoff (its own lines say how
long each retry waits). ``extra=``: ``key``, ``conn_id`` (None without a connection),
``error``, ``error_type``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType

from ..errors import (
    ConnectionPoisoned,
    IMAPCommandError,
    PoolClosed,
    PoolError,
    PoolTimeout,
    ServerBusyClosed,
    ServerLimit,
)
from ..logs import error_text
from ..policy import is_transient
from ..pool import GuardedPool
from .client import IMAPClient
from .parse import parse_idle_push
from .refusals import classify_refusal

__all__ = ["IdleEvent", "IdleSession", "idle"]

log = logging.getLogger("guardedpool.imap.idle")

TWENTY_NINE_MINUTES = 29 * 60.0


@dataclass(frozen=True, slots=True)
class IdleEvent:
    """What an IDLE session yields.

    ``kind``: a server push (``"EXISTS"``, ``"EXPUNGE"``, ``"RECENT"``, ``"FETCH"``,
    ``"OK"`` for keepalives, ``"OTHER"``), or the session's own ``"CONNECTED"`` (IDLE
    started on a connection; ``resumed`` is True after a reconnect or a lifetime
    hand-over, when pushes may have been missed) and ``"OVERFLOW"`` (the consumer fell
    behind and events were dropped). ``number`` is the message count or sequence number.
    """

    kind: str
    number: int | None = None
    raw: bytes = b""
    resumed: bool = False


_END = object()


class IdleSession:
    """The running IDLE loop behind :func:`idle`. Use it as an async context manager.

    ``async for event in session`` reads its events. Every ``__aiter__()`` returns an
    iterator over the one queue of the session (each event goes to one reader). A read
    that is cancelled -- ``asyncio.wait_for(it.__anext__(), t)`` timing out, a task
    cancelled -- takes no event: the event it would have returned stays queued, and the
    next ``__anext__()`` of the same iterator returns it; the iterator is not closed
    (an async generator would be). The iteration ends only with the session: when it is
    stopped or the pool closes (``StopAsyncIteration``, for every iterator and every read
    after), or with the permanent error that ended it (raised by each read).

    Args:
        pool: a pool of :class:`IMAPClient` connections.
        key: the inbox to watch.
        mailbox: the mailbox to select (default ``"INBOX"``).
        renew_after: seconds per IDLE round before DONE and re-IDLE (default 29 min).
        queue_size: events buffered for a slow consumer (default 1024).
    """

    def __init__(
        self,
        pool: GuardedPool[IMAPClient],
        key: str,
        mailbox: str = "INBOX",
        *,
        renew_after: float = TWENTY_NINE_MINUTES,
        queue_size: int = 1024,
    ) -> None:
        if not renew_after > 0:
            raise ValueError(f"renew_after must be > 0, got {renew_after!r}")
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size!r}")
        self.pool = pool
        self.key = key
        self.mailbox = mailbox
        self.renew_after = renew_after
        self.connections = 0  # connections that reached IDLE, for stats and tests
        self.rounds = 0
        self.limited = 0  # server-limit refusals waited out, for stats and tests
        self._limit_streak = 0  # refusals since IDLE was last reached
        # The events not yet taken, and the consumers waiting for one: a bounded queue,
        # without the Queue's own Event and deques of getters and putters per session.
        self._queue_size = queue_size
        self._backlog: collections.deque[IdleEvent | object] = collections.deque()
        self._waiters: list[asyncio.Future[None]] = []
        self._overflowed = False
        self._error: BaseException | None = None
        self._task: asyncio.Task[None] | None = None
        self._conn_id: int | None = None  # the connection in use, for the log

    async def __aenter__(self) -> IdleSession:
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"guardedpool-idle-{self.key}"
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def stop(self) -> None:
        """End the session: DONE (bounded), give the connection back. Idempotent."""
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def __aiter__(self) -> AsyncIterator[IdleEvent]:
        return _Events(self)

    async def _next_event(self) -> IdleEvent:
        """The next event, waiting for one; see the class docstring for cancellation."""
        while not self._backlog:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter  # no bound: the session's own events end it (_END)
            finally:
                self._waiters.remove(waiter)
        # From here to the return, no await: a cancelled read took nothing.
        item = self._backlog[0]
        if item is _END:  # left in place: every later read ends as well
            if self._error is not None:
                raise self._error
            raise StopAsyncIteration
        self._backlog.popleft()
        assert isinstance(item, IdleEvent)
        if item.kind == "OVERFLOW":
            # The consumer has it and will resync: pushes from here on are news again.
            self._overflowed = False
        return item

    def _put(self, item: IdleEvent | object) -> None:
        self._backlog.append(item)
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _emit(self, event: IdleEvent) -> None:
        if self._overflowed:
            return
        if len(self._backlog) >= self._queue_size:
            self._overflowed = True
            self._backlog.clear()
            self._put(IdleEvent("OVERFLOW"))
            return
        self._put(event)

    def _finish(self, error: BaseException | None) -> None:
        self._error = error
        while len(self._backlog) >= self._queue_size:  # make room for the end marker
            self._backlog.popleft()
        self._put(_END)

    async def _run(self) -> None:
        error: BaseException | None = None
        try:
            while not self.pool.closed:
                try:
                    await self._one_connection()
                except (PoolClosed, asyncio.CancelledError):
                    raise
                except ServerLimit as exc:
                    await self._wait_out(exc)
                except PoolTimeout as exc:
                    # The pool paces reconnects (per-key backoff); we just ask again.
                    self._log_reconnect(exc, None)
                except (ConnectionPoisoned, OSError, TimeoutError) as exc:
                    self._log_reconnect(exc, self._conn_id)
                except PoolError as exc:
                    if not is_transient(exc):
                        error = exc
                        return
                    self._log_reconnect(exc, self._conn_id)  # a connect error, say
        except PoolClosed:
            return
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            error = exc
        finally:
            self._finish(error)

    def _log_reconnect(self, exc: BaseException, conn_id: int | None) -> None:
        """The INFO line of a reconnect: key, what happened, error, what comes next."""
        error = error_text(exc)
        if isinstance(exc, PoolTimeout):
            what = (
                f"got no connection within acquire_timeout "
                f"({self.pool.config.acquire_timeout:g} s)"
            )
        elif conn_id is None:  # raised by acquire() itself: there was no connection
            what = "could not get a connection"
        else:
            what = f"lost connection {conn_id}"
        then = (
            "not reconnecting: the pool is closing"
            if self.pool.closed
            else "reconnecting now (the pool paces failing connects with the key's backoff)"
        )
        log.info(
            "guardedpool: IDLE on key %r %s: %s; %s",
            self.key,
            what,
            error,
            then,
            extra={
                "key": self.key,
                "conn_id": conn_id,
                "error": error,
                "error_type": type(exc).__name__,
            },
        )

    async def _wait_out(self, exc: ServerLimit) -> None:
        """Stay away as long as the server asked (bounded), or back off; see the module doc."""
        retry = self.pool.config.retry
        if exc.delay is not None:
            delay = min(exc.delay, retry.max_throttle_delay)
        else:
            delay = min(retry.initial * retry.multiplier**self._limit_streak, retry.max_delay)
        self._limit_streak += 1
        self.limited += 1
        log.warning(
            "guardedpool: IDLE on key %r refused by the server's %s limit (%s); "
            "resuming in %.3g s",
            self.key,
            exc.kind,
            exc.server_text or type(exc).__name__,
            delay,
            extra={
                "key": self.key,
                "error": type(exc).__name__,
                "kind": exc.kind,
                "code": exc.code,
                "delay": delay,
                "suggested_delay": exc.delay,
            },
        )
        await asyncio.sleep(delay)  # bounded by max_throttle_delay; stop() cancels it

    async def _one_connection(self) -> None:
        """Hold one connection in IDLE until it is due, faulty, or the session ends."""
        pool = self.pool
        self._conn_id = None
        conn = await pool.acquire(self.key)
        error: BaseException | None = None
        try:
            record = pool.record_of(conn)
            self._conn_id = record.id  # for the log line if this connection fails
            await conn.select(self.mailbox)
            pool.declare_long_hold(conn)  # held across rounds on purpose: not a leak suspect
            announced = False
            clock = pool.clock  # the pool's monotonic clock, in which expires_at lives
            while not pool.closed:
                start = clock()
                if start >= record.expires_at:
                    return  # due: the pool retires it on release; the next loop reconnects
                round_end = min(start + self.renew_after, record.expires_at)
                await conn.idle_start()
                self.rounds += 1
                if not announced:  # IDLE is live on this connection: pushes will arrive
                    announced = True
                    self._limit_streak = 0
                    self._overflowed = False
                    self._emit(IdleEvent("CONNECTED", resumed=self.connections > 0))
                    self.connections += 1
                closing = pool.when_closing()  # ends the wait at once when close() starts
                while (left := round_end - clock()) > 0 and not pool.closed:
                    lines = await conn.wait_server_push(timeout=left, until=closing)
                    for push in parse_idle_push(lines):
                        if push.kind == "BYE":
                            conn.abort("server sent BYE during IDLE")
                            raise _bye_error(push.raw, self.key)
                        self._emit(IdleEvent(push.kind, push.number, push.raw))
                if pool.closed:
                    # Given back still in IDLE: the pool's close sends DONE and LOGOUT
                    # together with every other goodbye, within shutdown_timeout.
                    return
                await conn.idle_done()
        except IMAPCommandError as exc:
            error = exc  # SELECT said NO: permanent for this mailbox
            raise
        except BaseException as exc:
            error = exc
            if conn.idling:
                # Cancelled mid-round (stop() or close()): end IDLE politely, bounded.
                try:
                    await asyncio.shield(conn.idle_done())
                except BaseException:
                    conn.abort("IDLE not ended cleanly")
            raise
        finally:
            pool.release(conn, error=error if isinstance(error, Exception) else None)


class _Events:
    """An iterator over an :class:`IdleSession`'s events: a class, not an async
    generator, so that a cancelled read does not close it (a generator closes on the
    ``CancelledError`` thrown into it)."""

    __slots__ = ("_session",)

    def __init__(self, session: IdleSession) -> None:
        self._session = session

    def __aiter__(self) -> _Events:
        return self

    async def __anext__(self) -> IdleEvent:
        return await self._session._next_event()


def _bye_error(raw: bytes, key: str) -> ConnectionPoisoned:
    """The error for a ``BYE`` pushed during IDLE: a server limit, or just the end."""
    text = raw.decode("utf-8", "replace").removeprefix("* ")[3:].strip()
    refusal = classify_refusal(text, status="BYE")
    message = f"server sent BYE during IDLE on {key!r}"
    if refusal.limited:
        return ServerBusyClosed(
            f"{message}: {refusal.text}",
            **refusal.limit_fields(),
        )
    return ConnectionPoisoned(message)


def idle(
    pool: GuardedPool[IMAPClient],
    key: str,
    mailbox: str = "INBOX",
    *,
    renew_after: float = TWENTY_NINE_MINUTES,
    queue_size: int = 1024,
) -> IdleSession:
    """Watch ``mailbox`` of ``key`` with IDLE: ``async with idle(...) as pushes``.

    See :class:`IdleSession` for the arguments and :class:`IdleEvent` for what it yields.
    """
    return IdleSession(pool, key, mailbox, renew_after=renew_after, queue_size=queue_size)
