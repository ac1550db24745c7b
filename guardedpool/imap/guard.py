"""The bounded-call machinery under :class:`~guardedpool.imap.IMAPClient`.

A command ends one of four ways:

* ``OK``: its :class:`~guardedpool.imap.parse.Response` is returned.
* ``NO`` / ``BAD`` (or a command the client refuses before sending it): an
  :class:`~guardedpool.errors.IMAPCommandError`; the connection is fine and stays usable.
  When the refusal is the server's limit (throttled, rate limit, too many connections...,
  see :mod:`guardedpool.imap.refusals`) it is the subclass
  :class:`~guardedpool.errors.CommandThrottled`, carrying the suggested delay.
* A timeout, a protocol error, an untagged ``BYE``, a lost connection, or the caller being
  cancelled while the command is on the wire: the transport is aborted at once, the client
  is *poisoned*, and :class:`~guardedpool.errors.OperationTimeout`,
  :class:`~guardedpool.errors.ProtocolError` or :class:`~guardedpool.errors.ConnectionLost`
  is raised (:class:`~guardedpool.errors.ServerBusyClosed`, a ``ConnectionLost``, when the
  ``BYE`` was for the server's limits, e.g. ``* BYE [OVERQUOTA] ...``). The command's
  state on the server is unknown, so nothing is reused.
* The client was already poisoned: :class:`~guardedpool.errors.ConnectionPoisoned` at once.

Every command waits against the protocol's ``fault`` future as well as its own bound, so
a dropped connection fails the pending command immediately rather than after its timeout.
Commands run one at a time (a lock); the time spent queued counts against the bound.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ..errors import (
    CommandThrottled,
    ConnectionLost,
    ConnectionPoisoned,
    IMAPCommandError,
    OperationTimeout,
    ProtocolError,
    ServerBusyClosed,
)
from ..sockets import SocketLike
from ..waits import callbacks_context, first_done
from .parse import Response
from .protocol import GuardedProtocol
from .refusals import classify_refusal

__all__ = ["GuardedSession", "consume"]

log = logging.getLogger("guardedpool.imap")


def consume(task: asyncio.Future[Any]) -> None:
    """Done-callback: a cancelled or failed inner task nobody awaits must not log
    "exception was never retrieved"."""
    if not task.cancelled():
        task.exception()


class GuardedSession:
    """State, poisoning and the bounded, fault-racing ``_run`` that every command uses.

    Args:
        protocol: the connected, authenticated protocol.
        key: the pool key (inbox id) this connection belongs to; shown in every error.
        op_timeout: default bound of each command, seconds (``PoolConfig.op_timeout``).
    """

    def __init__(self, protocol: GuardedProtocol, *, key: str, op_timeout: float) -> None:
        self._protocol = protocol
        self.key = key
        self.op_timeout = op_timeout
        self._lock = asyncio.Lock()
        self._queued = 0  # commands waiting for the lock (see _run)
        self._poison: ConnectionPoisoned | None = None
        self._inflight: set[asyncio.Future[Any]] = set()
        self._idle: asyncio.Future[Any] | None = None
        # Set by LOGOUT: the session is ending, so a poison from here on is no news.
        self.logged_out = False

    def __repr__(self) -> str:
        state = f"poisoned: {self.poison_reason}" if self.poisoned else self.state
        return f"<{type(self).__name__} key={self.key!r} {state}>"

    # -- state -------------------------------------------------------------------------

    @property
    def poisoned(self) -> bool:
        """True once a fault (or logout, or abort) ended this connection for good."""
        return self._poison is not None or self._protocol.fault.done()

    @property
    def poison_reason(self) -> str | None:
        """Why the connection is poisoned (no credentials in it), or None."""
        if self._poison is not None:
            return str(self._poison)
        if self._protocol.fault.done():
            return str(self._protocol.fault.result())
        return None

    @property
    def state(self) -> str:
        """aioimaplib's protocol state: NONAUTH, AUTH, SELECTED or LOGOUT."""
        return str(self._protocol.state)

    @property
    def capabilities(self) -> frozenset[str]:
        """The server's capabilities (upper-case), as last announced."""
        return frozenset(str(c).upper() for c in self._protocol.capabilities)

    def has_capability(self, name: str) -> bool:
        return name.upper() in self.capabilities

    @property
    def idling(self) -> bool:
        """True between a successful :meth:`idle_start` and :meth:`idle_done`."""
        return self._idle is not None

    @property
    def socket(self) -> SocketLike | None:
        """The connection's socket (``asyncio.TransportSocket``), None before connect."""
        transport = self._protocol.transport
        if transport is None:
            return None
        sock: SocketLike | None = transport.get_extra_info("socket")
        return sock

    @property
    def tls_version(self) -> str | None:
        """The TLS version in use (``"TLSv1.3"``...), implicit or after STARTTLS; None for
        a plaintext connection."""
        transport = self._protocol.transport
        ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
        version = ssl_object.version() if ssl_object is not None else None
        return str(version) if version is not None else None

    @property
    def compressed(self) -> bool:
        """True when COMPRESS=DEFLATE (RFC 4978) is active on this connection."""
        return self._protocol.compressing

    @property
    def transport_closing(self) -> bool:
        return self._protocol.closing

    def abort(self, reason: str = "aborted") -> None:
        """Poison (if not yet) and abort the transport now; idempotent, never raises.

        The socket itself is closed by asyncio on the next loop iteration.
        """
        try:
            if self._poison is None:
                self._poison = ConnectionPoisoned(f"connection for key {self.key!r} {reason}")
            self._idle = None
            for task in list(self._inflight):
                task.cancel()
            self._protocol.abort()
        except Exception:  # pragma: no cover - abort must never raise
            log.exception("aborting an IMAP connection failed", extra={"key": self.key})

    # -- plumbing ----------------------------------------------------------------------

    def _track(self, task: asyncio.Future[Any]) -> asyncio.Future[Any]:
        """Keep ``task`` in the set :meth:`abort` cancels until it is done; return it."""
        self._inflight.add(task)
        task.add_done_callback(self._forget, context=callbacks_context())
        return task

    def _forget(self, task: asyncio.Future[Any]) -> None:
        self._inflight.discard(task)
        consume(task)

    def _bound(self, timeout: float | None) -> float:
        if timeout is None:
            return self.op_timeout
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not (0 < timeout < float("inf"))
        ):
            raise ValueError(f"timeout must be a finite number > 0, got {timeout!r}")
        return float(timeout)

    def _check(self, name: str, *, idle_ok: bool = False) -> None:
        if self.poisoned:
            raise ConnectionPoisoned(
                f"{name} refused: connection for key {self.key!r} is poisoned "
                f"({self.poison_reason}); it is never used again"
            )
        if self._idle is not None and not idle_ok:
            raise RuntimeError(f"{name} while IDLE is active: call idle_done() first")

    def _poisoned_by(self, exc: ConnectionPoisoned) -> ConnectionPoisoned:
        """Poison with ``exc`` (first reason wins), abort, and return what to raise."""
        if self._poison is None and not self._protocol.fault.done():
            self._poison = exc
        elif self._poison is None:
            self._poison = self._protocol.fault.result()
        log.log(
            # During LOGOUT (say, cut short by a closing pool) the connection was being
            # closed anyway: detail for debugging, not a warning per connection.
            logging.DEBUG if self.logged_out else logging.WARNING,
            "imap connection poisoned: %s",
            exc,
            extra={"key": self.key, "reason": str(exc), "error": type(exc).__name__},
        )
        self.abort()
        return exc

    def _fault_error(self, name: str) -> ConnectionPoisoned:
        fault = self._protocol.fault.result() if self._protocol.fault.done() else self._poison
        message = f"{name} on key {self.key!r} failed: {fault}"
        if isinstance(fault, ServerBusyClosed):
            return fault.retold(message)  # keep what the server asked for (kind, delay)
        kind = type(fault) if fault is not None else ConnectionPoisoned
        return kind(message)

    async def _run(
        self,
        name: str,
        factory: Callable[[], Awaitable[Any]],
        timeout: float | None,
        *,
        expect_close: bool = False,
        deadline: float | None = None,
    ) -> Response:
        """Run one aioimaplib call under the lock, the bound and the fault race."""
        self._check(name, idle_ok=name == "IDLE DONE")
        loop = asyncio.get_running_loop()
        bound = self._bound(timeout)
        if deadline is None:
            deadline = loop.time() + bound
        if not self._lock.locked() and self._queued == 0:
            # Free, and nobody queued for it: acquire() returns without suspending, so
            # there is nothing to bound (and no timeout object to make per command).
            await self._lock.acquire()
        else:
            self._queued += 1
            try:
                async with asyncio.timeout_at(deadline):
                    await self._lock.acquire()
            except TimeoutError:
                raise self._poisoned_by(
                    OperationTimeout(
                        f"{name} on key {self.key!r} waited {bound:.3g} s behind another command"
                    )
                ) from None
            finally:
                self._queued -= 1
        try:
            self._check(name, idle_ok=name == "IDLE DONE")
            raw = await self._race(name, factory, deadline, bound, expect_close=expect_close)
        finally:
            self._lock.release()
        return self._result(name, raw)

    async def _race(
        self,
        name: str,
        factory: Callable[[], Awaitable[Any]],
        deadline: float,
        bound: float,
        *,
        expect_close: bool = False,
    ) -> Any:
        proto = self._protocol
        sent_before = proto.sent
        try:
            task: asyncio.Future[Any] = asyncio.ensure_future(factory())
        except Exception as refused:  # raised before it ran (a line that cannot be encoded)
            task = asyncio.get_running_loop().create_future()
            task.set_exception(refused)  # judged below like any failed command
        self._inflight.add(task)  # abort() cancels it while it is in flight
        try:
            await first_done((task, proto.fault), deadline)
        except asyncio.CancelledError:
            # The command may be half-sent or half-answered: its state is unknown.
            self._poisoned_by(
                ConnectionPoisoned(f"{name} on key {self.key!r} was cancelled in flight")
            )
            raise
        finally:
            if task.done():
                # Done within the wait (most commands): forget it now, no callback.
                self._forget(task)
            else:
                task.add_done_callback(self._forget, context=callbacks_context())
        if task.done() and not task.cancelled():
            exc = task.exception()
            if exc is None:
                return task.result()
            if proto.sent == sent_before and not proto.fault.done() and not proto.pending():
                # Refused before anything was written (wrong state, missing capability,
                # bad argument), and nothing left waiting for an answer that will never
                # come: a usage error, the connection is untouched.
                if isinstance(exc, ValueError | NotImplementedError):
                    raise exc
                raise IMAPCommandError(
                    name, "BAD", f"refused by the client on key {self.key!r}: {exc}"
                ) from None
            raise self._poisoned_by(
                ProtocolError(
                    f"{name} on key {self.key!r} failed: {type(exc).__name__}: "
                    f"{proto.redact(str(exc))[:200]}"
                )
            ) from None
        if proto.fault.done() or self._poison is not None:
            task.cancel()
            fault = proto.fault.result() if proto.fault.done() else self._poison
            if expect_close and isinstance(fault, ConnectionLost):
                return None  # the server closed after LOGOUT, as it should
            raise self._poisoned_by(self._fault_error(name)) from None
        if task.cancelled():
            # Not a timeout: the command's task was cancelled from outside -- typically
            # asyncio.run() cancelling every task at event-loop teardown (no pool.close()).
            raise self._poisoned_by(
                ConnectionPoisoned(
                    f"{name} on key {self.key!r} was cancelled before it completed (its task "
                    "was cancelled from outside, e.g. event-loop teardown without pool.close())"
                )
            ) from None
        task.cancel()
        raise self._poisoned_by(
            OperationTimeout(f"{name} on key {self.key!r} did not complete within {bound:.3g} s")
        )

    def _result(self, name: str, raw: Any) -> Response:
        if raw is None:
            return Response("OK", [b"connection closed by the server"])
        result = str(raw.result)
        lines = [bytes(line) for line in raw.lines]
        if result == "OK":
            return Response(result, lines)
        text = lines[-1].decode("utf-8", "replace") if lines else ""
        if result in ("NO", "BAD"):
            refusal = classify_refusal(
                self._protocol.redact(text), status="NO" if result == "NO" else "BAD"
            )
            if refusal.limited:
                raise CommandThrottled(
                    name,
                    result,
                    refusal.text,
                    kind=refusal.kind,
                    delay=refusal.delay,
                    code=refusal.code,
                )
            raise IMAPCommandError(name, result, refusal.text)
        raise self._poisoned_by(
            ProtocolError(f"{name} on key {self.key!r}: unexpected result {result!r} {text[:200]}")
        )
