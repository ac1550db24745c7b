"""Closing a connection, and proving at the OS level that its socket is gone.

The reconnect guarantee ("the old socket is closed before the new one is opened") rests
here: the pool frees a slot only after :func:`close_and_verify` returns. A goodbye is tried
when it is worth it (bounded by ``close_timeout``), the transport is aborted, and then the
fd recorded at connect is checked by inode; a socket still there is shut down through a
``dup`` (never ``os.close``: see :mod:`guardedpool.sockets`) and checked again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from .connector import Connector
from .logs import error_text
from .records import ConnectionRecord, Event, SocketIdentity
from .sockets import is_open, shutdown_socket

__all__ = ["VERIFY_WAIT", "Closed", "close_and_verify", "wait_gone"]

log = logging.getLogger("guardedpool.pool")

C = TypeVar("C")

VERIFY_WAIT = 0.5
"""Seconds an aborted (then a shut down) socket gets to leave the process."""


@dataclass(frozen=True, slots=True)
class Closed:
    """How a close went: ``goodbye`` is ``"done"`` (the connector's graceful close
    returned), ``"sent"`` (written without waiting: ``Connector.farewell``), ``"failed"``
    (it raised or overran its bound) or ``"skipped"`` (not tried); ``os_closed``: the
    socket verifiably left the process."""

    goodbye: str
    os_closed: bool


async def wait_gone(ident: SocketIdentity, seconds: float) -> bool:
    """True once the recorded fd no longer holds that socket; False after ``seconds``."""
    loop = asyncio.get_running_loop()
    # The transport closes its socket from a loop callback: a few iterations usually do.
    for _ in range(3):
        if not is_open(ident):
            return True
        await asyncio.sleep(0)
    end = loop.time() + seconds
    while is_open(ident):
        if loop.time() >= end:
            return False
        await asyncio.sleep(0.01)
    return True


async def close_and_verify(
    connector: Connector[C],
    conn: C | None,
    record: ConnectionRecord,
    *,
    graceful: bool,
    close_timeout: float,
    clock: Callable[[], float],
) -> Closed:
    """Close ``conn``: how the goodbye went, and whether its socket verifiably left the
    process (see :class:`Closed`).

    Bounded: ``close_timeout`` for the goodbye, then at most ``2 * VERIFY_WAIT``.
    """
    goodbye = "skipped"
    if conn is not None:
        if graceful:
            goodbye = "done"
            try:
                async with asyncio.timeout(close_timeout):
                    await connector.close(conn, close_timeout)
            except Exception as exc:
                goodbye = "failed"
                record.note(clock(), Event.CLOSE_FAILED, type(exc).__name__)
                log.debug(
                    "guardedpool: goodbye on connection %d of key %r failed (%s); aborting",
                    record.id,
                    record.key,
                    error_text(exc),
                    extra={"key": record.key, "conn_id": record.id, "error": error_text(exc)},
                )
        connector.abort(conn)
    ident = record.socket
    if ident is None or await wait_gone(ident, VERIFY_WAIT):
        return Closed(goodbye, True)
    forced = shutdown_socket(ident.fd, ident.inode)
    record.note(clock(), Event.FORCE_CLOSE, "shutdown on dup" if forced else "not needed")
    where = {"key": record.key, "conn_id": record.id, "fd": ident.fd, "inode": ident.inode}
    log.warning(
        "guardedpool: socket of connection %d of key %r (fd %d, inode %d) still open %.1f s "
        "after abort; shutting it down through a dup",
        record.id,
        record.key,
        ident.fd,
        ident.inode,
        VERIFY_WAIT,
        extra=where,
    )
    if await wait_gone(ident, VERIFY_WAIT):
        return Closed(goodbye, True)
    log.error(
        "guardedpool: socket of connection %d of key %r (fd %d, inode %d) still open after "
        "a forced shutdown: a straggler the pool cannot close (someone holds another fd "
        "of it); the audit reports it",
        record.id,
        record.key,
        ident.fd,
        ident.inode,
        extra=where,
    )
    return Closed(goodbye, False)
