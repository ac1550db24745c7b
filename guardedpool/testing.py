"""A light loopback server and connector, for tests and benchmarks of the pool itself.

The pool is generic over its :class:`~guardedpool.connector.Connector`; measuring or
testing pool logic against Dovecot would mostly measure Dovecot. :class:`LineServer` is
an in-process TCP server that answers ``PING`` with ``PONG`` (a NOOP in miniature), and
:class:`LineConnector` opens real sockets to it. Everything is real TCP on loopback: the
auditor sees these sockets exactly as it would see IMAP ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import Mapping, Set
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .config import PoolConfig
from .connector import Address
from .errors import ConnectError, ConnectionLost, ConnectTimeout, OperationTimeout, UnknownKey
from .sockets import SocketLike, set_keepalive, socket_tcp_state

if TYPE_CHECKING:
    from .pool import GuardedPool

__all__ = [
    "LineConnection",
    "LineConnector",
    "LineServer",
    "MemoryConnection",
    "MemoryConnector",
    "books_disagree",
]


def books_disagree(pool: GuardedPool[Any]) -> list[str]:
    """Recount ``pool``'s books from its live records; every disagreement, in words.

    Empty when the books hold: per key, slots = opening + idle + in use + closing and
    opened - closed = open; pool-wide, slots = the sum over keys. O(connections): call it
    between the steps of a test, never on a hot path.
    """
    return pool._books.verify(pool._keys.values())


class LineServer:
    """``PING\\n`` -> ``PONG\\n`` on 127.0.0.1. ``silent=True`` accepts and never answers."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, silent: bool = False) -> None:
        self.host = host
        self.port = port
        self.silent = silent
        self.accepted = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def address(self) -> Address:
        return (self.host, self.port)

    async def start(self) -> LineServer:
        self._server = await asyncio.start_server(self._serve, self.host, self.port, backlog=4096)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._writers.add(writer)
        try:
            while line := await reader.readline():
                if not self.silent and line.strip() == b"PING":
                    writer.write(b"PONG\n")
        except (ConnectionError, OSError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    def drop_all(self) -> None:
        """Close every server-side connection (FIN): clients see EOF."""
        for writer in list(self._writers):
            writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self.drop_all()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> LineServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


class _LineProtocol(asyncio.Protocol):
    """Client side of the line protocol. Like aioimaplib's, it closes its transport on EOF."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.waiter: asyncio.Future[bytes] | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if b"\n" in self.buffer and self.waiter is not None and not self.waiter.done():
            line, _, self.buffer = self.buffer.partition(b"\n")
            self.waiter.set_result(line + b"\n")

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(b"")


@dataclass(eq=False)
class LineConnection:
    """One client connection to a :class:`LineServer`."""

    key: str
    protocol: _LineProtocol
    op_timeout: float
    poisoned: bool = False
    pings: int = field(default=0)

    @property
    def transport(self) -> asyncio.Transport:
        assert self.protocol.transport is not None
        return self.protocol.transport

    async def ping(self, timeout: float | None = None) -> None:
        """Round-trip one PING; any failure poisons the connection (like the IMAP client)."""
        if self.poisoned or self.protocol.lost:
            raise ConnectionLost("connection is poisoned")
        waiter = self.protocol.waiter = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(self.op_timeout if timeout is None else timeout):
                self.transport.write(b"PING\n")
                line = await waiter
        except TimeoutError as exc:
            self.abort()
            raise OperationTimeout("PING timed out") from exc
        except BaseException:
            self.abort()
            raise
        if line != b"PONG\n":
            self.abort()
            raise ConnectionLost("connection closed by peer")
        self.pings += 1

    def abort(self) -> None:
        self.poisoned = True
        self.transport.abort()


class LineConnector:
    """Connects keys to :class:`LineServer` addresses: ``{key: (host, port)}``."""

    def __init__(self, addresses: Mapping[str, Address]) -> None:
        self.addresses = dict(addresses)
        self.opens = 0

    async def open(self, key: str, config: PoolConfig) -> LineConnection:
        try:
            host, port = self.addresses[key]
        except KeyError:
            raise UnknownKey(key) from None
        self.opens += 1
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(config.connect_timeout):
                _, protocol = await loop.create_connection(_LineProtocol, host, port)
        except TimeoutError as exc:
            raise ConnectTimeout(f"connect to {host}:{port} timed out") from exc
        except OSError as exc:
            raise ConnectError(f"connect to {host}:{port} failed: {exc}") from exc
        conn = LineConnection(key, protocol, config.op_timeout)
        try:
            set_keepalive(
                conn.transport.get_extra_info("socket"),
                config.keepalive_idle,
                config.keepalive_interval,
                config.keepalive_count,
            )
        except OSError as exc:  # e.g. EINVAL: a keepalive value the kernel refuses
            # The connector contract: a failed open leaves no socket open. Abort, and let
            # the transport release its fd (a loop callback) before the error leaves.
            conn.abort()
            await asyncio.sleep(0)
            raise ConnectError(f"keepalive on {host}:{port} failed: {exc}") from exc
        return conn

    async def check(self, conn: LineConnection, timeout: float) -> None:
        await conn.ping(timeout)

    async def close(self, conn: LineConnection, timeout: float) -> None:
        conn.transport.close()

    def abort(self, conn: LineConnection) -> None:
        conn.abort()

    def is_alive(self, conn: LineConnection) -> bool:
        if conn.poisoned or conn.protocol.lost or conn.transport.is_closing():
            return False
        sock = conn.transport.get_extra_info("socket")
        state = socket_tcp_state(sock) if sock is not None else None
        return state in (None, "ESTABLISHED")

    def socket_of(self, conn: LineConnection) -> SocketLike | None:
        sock: SocketLike | None = conn.transport.get_extra_info("socket")
        return sock

    def endpoints(self) -> Set[Address]:
        out: set[Address] = set()
        for host, port in self.addresses.values():
            try:  # an IP literal as it is: no resolver, no file (an audit at the fd limit)
                out.add((str(ipaddress.ip_address(host)), port))
                continue
            except ValueError:
                pass
            for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
                out.add((str(info[4][0]), port))
        return out


@dataclass(eq=False)
class MemoryConnection:
    """A connection that exists only in memory: for measuring and testing pool logic alone."""

    key: str
    serial: int
    alive: bool = True
    closed: bool = False
    logged_out: bool = False

    def logout(self) -> None:
        """End the session as a borrower would (an IMAP LOGOUT): dead, and said so."""
        self.logged_out = True
        self.alive = False


class MemoryConnector:
    """Opens :class:`MemoryConnection` objects; ``fail_keys`` makes opens for a key fail.

    ``open_delay`` (seconds) makes each open take that long, so tests can cancel and time
    out around it. There is no socket, so ``socket_of`` is None and ``endpoints`` empty.
    """

    def __init__(self, *, open_delay: float = 0.0, known: Set[str] | None = None) -> None:
        self.open_delay = open_delay
        self.known = known
        self.fail_keys: dict[str, BaseException] = {}
        self.opens = 0
        self.closes = 0
        self.live: set[MemoryConnection] = set()

    async def open(self, key: str, config: PoolConfig) -> MemoryConnection:
        if self.known is not None and key not in self.known:
            raise UnknownKey(key)
        self.opens += 1
        if self.open_delay:
            await asyncio.sleep(self.open_delay)
        failure = self.fail_keys.get(key)
        if failure is not None:
            raise failure
        conn = MemoryConnection(key, self.opens)
        self.live.add(conn)
        return conn

    async def check(self, conn: MemoryConnection, timeout: float) -> None:
        if not conn.alive:
            raise ConnectionLost("memory connection is dead")

    async def close(self, conn: MemoryConnection, timeout: float) -> None:
        self.abort(conn)

    def abort(self, conn: MemoryConnection) -> None:
        if not conn.closed:
            conn.closed = True
            conn.alive = False
            self.closes += 1
            self.live.discard(conn)

    def is_alive(self, conn: MemoryConnection) -> bool:
        return conn.alive

    def logged_out(self, conn: MemoryConnection) -> bool:
        return conn.logged_out

    def socket_of(self, conn: MemoryConnection) -> SocketLike | None:
        return None

    def endpoints(self) -> Set[Address]:
        return frozenset()
