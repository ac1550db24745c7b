"""A fault-injecting TCP proxy for 127.0.0.1, so tests see real socket failures.

The pool must survive servers that stall, trickle, vanish, reset or talk nonsense. Patching
library methods would only test our guesses about those failures; this proxy produces them
on real sockets between the client under test and a real server (Dovecot).

Each connection has a ``Fault``: a ``Mode`` plus parameters. ``FaultProxy.set_mode`` sets
the fault for *new* connections; ``ProxyConnection.set_mode`` (or ``set_mode_all``,
``stall_all``, ``reset_all``) changes *live* ones. A fault may be delayed with
``after_bytes`` (server->client bytes that still pass) or ``after_client_bytes``
(client->server bytes that still pass), e.g. ``Mode.STALL, after_client_bytes=0``: the
greeting passes, the first command is never forwarded.

Built on asyncio protocols rather than streams because a stalled direction must still
notice its peer closing (to keep the counts honest) without reading its data on.
Every wait is bounded, by a timeout or by ``stop()``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import itertools
import math
import os
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

from .waiting import wait_for

__all__ = ["Fault", "FaultProxy", "Mode", "ProxyConnection", "ProxyFactory", "ProxyStats"]

# Bytes buffered per direction before the proxy stops reading from that peer, so a
# stalled direction applies real TCP back-pressure instead of buffering without bound.
_HOLD_CAP = 256 * 1024
_HISTORY_CAP = 10_000


class Mode(enum.Enum):
    """What the proxy does with a connection's traffic once its fault applies."""

    PASS = "pass"  # forward both ways
    LATENCY = "latency"  # hold each chunk ``delay`` seconds, both ways
    STALL = "stall"  # forward nothing either way; sockets stay open
    SLOW = "slow"  # forward one byte per ``interval`` seconds, both ways
    BLACKHOLE = "blackhole"  # read and discard both ways; sockets stay open (vanished peer)
    RESET = "reset"  # RST both sides (SO_LINGER 0)
    CLOSE = "close"  # FIN both sides
    NEVER_GREET = "never_greet"  # new connections: accept, never connect upstream or send
    GARBAGE = "garbage"  # client gets garbage instead of server data; client data passes
    INJECT = "inject"  # client gets ``garbage`` once, in the same write as the trigger; then PASS
    SHAPE = "shape"  # a link: ``rate`` bytes/s each way, ``delay`` s one-way, pipelined


# Modes under which a connection's client socket outlives the upstream one.
_HOLDING = frozenset({Mode.STALL, Mode.BLACKHOLE, Mode.NEVER_GREET})


@dataclass(frozen=True)
class Fault:
    """A mode and its parameters.

    Args:
        mode: see ``Mode``.
        delay: seconds each chunk is held under ``LATENCY``; the one-way delay under
            ``SHAPE``.
        rate: bytes per second each way under ``SHAPE`` (0 = unlimited), e.g.
            ``20e6 / 8`` for 20 Mbit/s, shared by all the proxy's connections (one link).
            Unlike ``LATENCY``, ``SHAPE`` pipelines: a chunk waits for the link to be
            free and then ``delay``, not for earlier chunks' delays, like a real WAN link
            (with a buffer of 256 KiB per connection and direction).
        interval: seconds between single bytes under ``SLOW``; default 0.05.
        after_bytes: server->client bytes that pass before the fault applies (counted from
            when the fault was set); None = no such threshold.
        after_client_bytes: client->server bytes that pass before the fault applies.
            With both thresholds None the fault applies at once.
        garbage: what ``GARBAGE`` sends per server chunk (None = random bytes of the
            chunk's length), and what ``INJECT`` appends once.
        after_match: the fault applies right after the server->client line containing
            these bytes has passed (e.g. ``b"Begin TLS"``: STARTTLS's OK). Under
            ``INJECT`` the injected bytes go in the same write as that line.
    """

    mode: Mode = Mode.PASS
    delay: float = 0.0
    interval: float = 0.05
    after_bytes: int | None = None
    after_client_bytes: int | None = None
    garbage: bytes | None = None
    after_match: bytes | None = None
    rate: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.mode, Mode):
            raise ValueError(f"mode must be a Mode, got {self.mode!r}")
        for name in ("delay", "interval", "rate"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        for name in ("after_bytes", "after_client_bytes"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ValueError(f"{name} must be None or an int >= 0, got {value!r}")
        if self.garbage is not None and not self.garbage:
            raise ValueError("garbage must be None or non-empty bytes")
        if self.after_match is not None and not self.after_match:
            raise ValueError("after_match must be None or non-empty bytes")
        if self.mode is Mode.INJECT and self.garbage is None:
            raise ValueError("Mode.INJECT needs garbage= (the bytes to inject)")

    @property
    def immediate(self) -> bool:
        return (
            self.after_bytes is None
            and self.after_client_bytes is None
            and self.after_match is None
        )


@dataclass(frozen=True)
class ProxyStats:
    """A snapshot of the proxy's counters.

    ``*_clients`` count client sockets the client has not closed yet (updated the moment
    the proxy sees the FIN/RST, so they track the client's view closely);
    ``*_upstream`` count the proxy's open sockets to the server (they close a loop
    iteration or two after the client's).
    """

    accepted: int
    current_clients: int
    peak_clients: int
    current_upstream: int
    peak_upstream: int
    upstream_opened: int
    bytes_up: int
    bytes_down: int


class _Side(asyncio.Protocol):
    """One socket of a proxied connection: buffers what it reads, reports what happens."""

    def __init__(self, conn: ProxyConnection, is_client: bool) -> None:
        self.conn = conn
        self.is_client = is_client
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.eof = False
        self.lost = False
        self.error: BaseException | None = None
        self.writable = asyncio.Event()
        self.writable.set()
        self.gone = asyncio.Event()  # set once the socket is closed
        self._paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self.is_client:
            self.conn._client_made(self)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self.conn._count(self.is_client, len(data))
        if len(self.buffer) >= _HOLD_CAP and self.transport is not None and not self._paused:
            self.transport.pause_reading()
            self._paused = True
        self.conn._notify()

    def eof_received(self) -> bool:
        self.eof = True
        self.conn._side_ended(self)
        return True  # keep the transport: the connection decides how to close

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = self.lost = True
        self.error = exc
        self.writable.set()
        self.gone.set()
        self.conn._side_ended(self)
        self.conn._side_lost(self)

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def take(self) -> bytes:
        data = bytes(self.buffer)
        self.buffer.clear()
        if self._paused and self.transport is not None and not self.lost:
            self.transport.resume_reading()
            self._paused = False
        return data

    async def send(self, data: bytes) -> bool:
        """Write and wait for the kernel to take it (bounded by stop()); False if closed."""
        if self.transport is None or self.lost or self.transport.is_closing():
            return False
        self.transport.write(data)
        await self.writable.wait()
        return not self.lost

    def reset(self) -> None:
        """Close with RST: SO_LINGER (1, 0) then close."""
        if self.transport is None or self.lost:
            return
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()

    def close(self) -> None:
        """Close with FIN once buffered data is written."""
        if self.transport is not None and not self.lost:
            self.transport.close()


class ProxyConnection:
    """One client connection through the proxy, with its own fault and counters."""

    def __init__(self, proxy: FaultProxy, conn_id: int, fault: Fault) -> None:
        self.proxy = proxy
        self.id = conn_id
        self.fault = fault
        self.client_addr: tuple[str, int] | None = None
        self.upstream_local: tuple[str, int] | None = None
        self.accepted_at = time.monotonic()
        self.closed_at: float | None = None
        self.close_reason: str | None = None
        self.bytes_up = 0  # read from the client
        self.bytes_down = 0  # read from the server
        self.client: _Side | None = None
        self.upstream: _Side | None = None
        self._client_gone = False
        self._upstream_counted = False
        self._passed = {True: 0, False: 0}  # per direction (is_client) since set_mode
        self._triggered = fault.immediate
        self._match_carry = b""
        # SHAPE: per direction (is_client), what is in flight on this connection; the link
        # itself (when it is next free) is the proxy's, shared by all its connections.
        self._pipes: dict[bool, collections.deque[tuple[float, bytes]]] = {
            True: collections.deque(),
            False: collections.deque(),
        }
        self._pipe_bytes = {True: 0, False: 0}
        self._pipe_tasks: dict[bool, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._done = asyncio.Event()
        self._graceful = True
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        state = "open" if self.is_open else f"closed ({self.close_reason})"
        return f"<ProxyConnection #{self.id} {self.fault.mode.name} {state}>"

    @property
    def is_open(self) -> bool:
        return self.closed_at is None

    # -- control ---------------------------------------------------------------------

    def set_mode(
        self,
        mode: Mode,
        *,
        delay: float = 0.0,
        interval: float = 0.05,
        after_bytes: int | None = None,
        after_client_bytes: int | None = None,
        garbage: bytes | None = None,
        after_match: bytes | None = None,
        rate: float = 0.0,
    ) -> None:
        """Change this live connection's fault; thresholds count from now."""
        self.apply(
            Fault(
                mode, delay, interval, after_bytes, after_client_bytes, garbage, after_match, rate
            )
        )

    def apply(self, fault: Fault) -> None:
        """Like ``set_mode`` with a ready ``Fault``."""
        if not self.is_open:
            return
        self.fault = fault
        self._passed = {True: 0, False: 0}
        self._triggered = fault.immediate
        self._match_carry = b""
        if self._triggered and fault.mode is Mode.RESET:
            self._finish("reset by test", graceful=False)
        elif self._triggered and fault.mode is Mode.CLOSE:
            self._finish("closed by test", graceful=True)
        self._notify()

    def stall(self) -> None:
        self.apply(Fault(Mode.STALL))

    def resume(self) -> None:
        self.apply(Fault(Mode.PASS))

    def reset(self) -> None:
        self.apply(Fault(Mode.RESET))

    def close(self) -> None:
        self.apply(Fault(Mode.CLOSE))

    # -- events from the sides -------------------------------------------------------

    def _notify(self) -> None:
        # Swap-and-set: every waiter holds the event it saw, so no wake-up is lost.
        wake, self._wake = self._wake, asyncio.Event()
        wake.set()

    def _count(self, is_client: bool, n: int) -> None:
        if is_client:
            self.bytes_up += n
            self.proxy._bytes_up += n
        else:
            self.bytes_down += n
            self.proxy._bytes_down += n

    def _client_made(self, side: _Side) -> None:
        assert side.transport is not None
        peer = side.transport.get_extra_info("peername")
        self.client_addr = (str(peer[0]), int(peer[1])) if peer else None
        self.proxy._client_opened(self)
        if self.proxy._stopped:  # accepted in the same loop iteration as stop()
            self._finish("proxy stopped", graceful=False)
            self.proxy._connection_closed(self)
            return
        self._task = asyncio.get_running_loop().create_task(self._run())
        self.proxy._tasks.add(self._task)
        self._task.add_done_callback(self.proxy._tasks.discard)

    def _side_ended(self, side: _Side) -> None:
        if side.is_client and not self._client_gone:
            self._client_gone = True
            self.proxy._client_closed()
        self._notify()

    def _side_lost(self, side: _Side) -> None:
        if not side.is_client and self._upstream_counted:
            self._upstream_counted = False
            self.proxy._upstream_closed()

    def _finish(self, reason: str, *, graceful: bool) -> None:
        """Request the end of this connection; RST happens at once, FIN in ``_run``."""
        if self._done.is_set():
            return
        self.close_reason = reason
        self._graceful = graceful
        if not graceful:
            for side in (self.client, self.upstream):
                if side is not None:
                    side.reset()
        self._done.set()
        self._notify()

    # -- the connection's life -------------------------------------------------------

    async def _run(self) -> None:
        forwarders: list[asyncio.Task[None]] = []
        try:
            fault = self.fault
            if fault.immediate and fault.mode in (Mode.RESET, Mode.CLOSE):
                self.apply(fault)
                return
            if not (fault.immediate and fault.mode is Mode.NEVER_GREET):
                await self._connect_upstream()
            if self._done.is_set():
                return
            loop = asyncio.get_running_loop()
            assert self.client is not None
            forwarders.append(loop.create_task(self._forward(self.client, self.upstream)))
            if self.upstream is not None:
                forwarders.append(loop.create_task(self._forward(self.upstream, self.client)))
            await self._done.wait()
        except (OSError, TimeoutError) as exc:
            self._finish(f"upstream connect failed: {exc!r}", graceful=False)
        finally:
            forwarders += self._pipe_tasks.values()
            for task in forwarders:
                task.cancel()
            if forwarders:
                await asyncio.wait(forwarders, timeout=1.0)
            await self._close_sides()
            self.closed_at = time.monotonic()
            self.proxy._connection_closed(self)

    async def _connect_upstream(self) -> None:
        loop = asyncio.get_running_loop()
        proxy = self.proxy
        _, side = await asyncio.wait_for(
            loop.create_connection(
                lambda: _Side(self, is_client=False), proxy.upstream_host, proxy.upstream_port
            ),
            timeout=proxy.connect_timeout,
        )
        self.upstream = side
        assert side.transport is not None
        local = side.transport.get_extra_info("sockname")
        self.upstream_local = (str(local[0]), int(local[1])) if local else None
        if not side.lost:
            self._upstream_counted = True
            proxy._upstream_opened()

    async def _close_sides(self) -> None:
        sides = [s for s in (self.client, self.upstream) if s is not None and not s.lost]
        if self.close_reason is None:
            self.close_reason = "proxy task ended"
        if not self._graceful:
            for side in sides:
                side.reset()
        else:
            for side in sides:
                side.close()
        # A peer that never reads would keep a FIN-pending transport open: bound it.
        waits = [asyncio.ensure_future(s.gone.wait()) for s in sides]
        if waits:
            _, pending = await asyncio.wait(waits, timeout=1.0)
            for w in pending:
                w.cancel()
        for side in sides:
            if not side.lost and side.transport is not None:
                side.transport.abort()
        if any(not s.lost for s in sides):
            await asyncio.sleep(0)  # let abort's connection_lost callbacks run

    async def _forward(self, src: _Side, dst: _Side | None) -> None:
        """Move bytes from ``src`` to ``dst`` under the current fault until an end."""
        try:
            while not self._done.is_set():
                wake = self._wake
                if src.buffer:
                    await self._deliver(src, dst, src.take())
                elif src.eof:
                    await self._pipe_drained(src.is_client)
                    self._source_ended(src)
                    return
                else:
                    await wake.wait()
        except Exception as exc:  # a proxy bug must end the connection, not hang it
            self._finish(f"proxy error: {exc!r}", graceful=False)
            raise

    def _source_ended(self, src: _Side) -> None:
        reset = isinstance(src.error, ConnectionResetError)
        if src.is_client:
            self._finish("client reset" if reset else "client closed", graceful=not reset)
        elif self._triggered and self.fault.mode in _HOLDING:
            # A vanished server: drop our upstream socket, keep the client hanging.
            if self.upstream is not None:
                self.upstream.close()
        else:
            self._finish("server reset" if reset else "server closed", graceful=not reset)

    async def _deliver(self, src: _Side, dst: _Side | None, data: bytes) -> None:
        up = src.is_client
        while data and not self._done.is_set():
            fault = self.fault
            if not self._triggered and fault.after_match is not None:
                if up:  # the match is looked for in server data only
                    await self._send(dst, data)
                    return
                data = await self._pass_until_match(dst, data, fault)
                continue
            if not self._triggered:
                limit = fault.after_client_bytes if up else fault.after_bytes
                room = len(data) if limit is None else limit - self._passed[up]
                if room <= 0:
                    self._triggered = True
                    continue
                part, data = data[:room], data[room:]
                self._passed[up] += len(part)
                await self._send(dst, part)
                continue
            mode = fault.mode
            if mode is Mode.PASS:
                await self._send(dst, data)
                data = b""
            elif mode is Mode.LATENCY:
                await asyncio.sleep(fault.delay)
                await self._send(dst, data)
                data = b""
            elif mode is Mode.SLOW:
                await self._send(dst, data[:1])
                data = data[1:]
                await asyncio.sleep(fault.interval)
            elif mode in (Mode.STALL, Mode.NEVER_GREET):
                wake = self._wake
                if self.client is not None and self.client.eof:
                    self._finish("client closed while stalled", graceful=True)
                    return
                await wake.wait()
            elif mode is Mode.BLACKHOLE:
                data = b""
            elif mode is Mode.SHAPE:
                await self._shape(up, dst, data, fault)
                data = b""
            elif mode is Mode.INJECT:
                await self._send(dst, data)  # injected already, at the trigger
                data = b""
            elif mode is Mode.GARBAGE:
                if not up:
                    garbage = fault.garbage if fault.garbage is not None else os.urandom(len(data))
                    await self._send(dst, garbage)
                else:
                    await self._send(dst, data)
                data = b""
            elif mode is Mode.RESET:
                self._finish("reset by fault", graceful=False)
                return
            else:  # Mode.CLOSE
                self._finish("closed by fault", graceful=True)
                return

    async def _shape(self, up: bool, dst: _Side | None, data: bytes, fault: Fault) -> None:
        """Queue ``data`` on the shaped link: sent whole once transmitted and delayed."""
        loop = asyncio.get_running_loop()
        link = self.proxy._link_free
        start = max(loop.time(), link[up])
        sent = start + (len(data) / fault.rate if fault.rate else 0.0)
        link[up] = sent
        self._pipes[up].append((sent + fault.delay, data))
        self._pipe_bytes[up] += len(data)
        task = self._pipe_tasks.get(up)
        if task is None or task.done():
            self._pipe_tasks[up] = loop.create_task(self._drain_pipe(up, dst))
        # The router buffer: past it, stop reading (TCP back-pressure does the rest).
        while self._pipe_bytes[up] > _HOLD_CAP and not self._done.is_set():
            wake = self._wake
            await wake.wait()  # _drain_pipe notifies after each delivery

    async def _drain_pipe(self, up: bool, dst: _Side | None) -> None:
        loop = asyncio.get_running_loop()
        pipe = self._pipes[up]
        while pipe and not self._done.is_set():
            due, data = pipe[0]
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            pipe.popleft()
            self._pipe_bytes[up] -= len(data)
            await self._send(dst, data)
            self._notify()

    async def _pipe_drained(self, up: bool) -> None:
        """Wait (bounded by the connection's end) until what is in flight was delivered."""
        task = self._pipe_tasks.get(up)
        if task is not None and not task.done():
            done = asyncio.ensure_future(self._done.wait())
            try:
                await asyncio.wait({task, done}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                done.cancel()

    async def _pass_until_match(self, dst: _Side | None, data: bytes, fault: Fault) -> bytes:
        """Forward server data up to the end of the line holding ``after_match``; trigger
        there (INJECT: its bytes in the same write). Returns what is left of ``data``."""
        assert fault.after_match is not None
        carry = self._match_carry + data
        found = carry.find(fault.after_match)
        if found < 0:
            self._match_carry = carry[-len(fault.after_match) :]
            await self._send(dst, data)
            return b""
        end = carry.find(b"\n", found)
        end = len(carry) if end < 0 else end + 1
        offset = len(carry) - len(data)  # bytes of carry already sent earlier
        head, rest = data[: end - offset], data[end - offset :]
        self._triggered = True
        self._match_carry = b""
        if fault.mode is Mode.INJECT:
            assert fault.garbage is not None
            head += fault.garbage
        await self._send(dst, head)
        return rest

    async def _send(self, dst: _Side | None, data: bytes) -> None:
        if dst is not None and not await dst.send(data) and dst.is_client:
            self._finish("client gone", graceful=False)


class FaultProxy:
    """A TCP proxy on a free 127.0.0.1 port in front of ``upstream_host:upstream_port``.

    Args:
        upstream_host: where to forward; must be a loopback address.
        upstream_port: the server's port.
        connect_timeout: seconds allowed to connect upstream; default 5. A failed connect
            resets the client, as a refused connection would.

    Use ``async with FaultProxy(...) as proxy`` or ``await start()`` / ``await stop()``;
    clients connect to ``proxy.host``, ``proxy.port``.
    """

    host = "127.0.0.1"

    def __init__(
        self, upstream_host: str, upstream_port: int, *, connect_timeout: float = 5.0
    ) -> None:
        if not upstream_host.startswith("127.") and upstream_host not in ("localhost", "::1"):
            raise ValueError(f"upstream_host must be loopback, got {upstream_host!r}")
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.connect_timeout = connect_timeout
        self.port = 0
        self.fault = Fault()
        self.connections: list[ProxyConnection] = []  # every accepted one, oldest first
        self._ids = itertools.count(1)
        self._server: asyncio.Server | None = None
        self._stopped = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._live: set[ProxyConnection] = set()
        self._accepted = 0
        self._clients = self._peak_clients = 0
        self._upstream = self._peak_upstream = self._upstream_opened_total = 0
        self._bytes_up = self._bytes_down = 0
        # SHAPE: when the shared link is next free, per direction (is_client).
        self._link_free = {True: 0.0, False: 0.0}

    def __repr__(self) -> str:
        return (
            f"<FaultProxy 127.0.0.1:{self.port} -> {self.upstream_host}:{self.upstream_port} "
            f"{self.fault.mode.name}>"
        )

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> FaultProxy:
        """Listen on a free 127.0.0.1 port (``self.port``)."""
        loop = asyncio.get_running_loop()
        self._stopped = False
        self._server = await loop.create_server(self._protocol, self.host, 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def stop(self, timeout: float = 3.0) -> None:
        """Stop listening and abort every connection (RST); bounded by ``timeout``."""
        server, self._server = self._server, None
        self._stopped = True
        if server is not None:
            server.close()
        for conn in list(self._live):
            conn._finish("proxy stopped", graceful=False)
        tasks = list(self._tasks)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        if server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), timeout=1.0)

    async def __aenter__(self) -> FaultProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _protocol(self) -> _Side:
        conn = ProxyConnection(self, next(self._ids), self.fault)
        side = _Side(conn, is_client=True)
        conn.client = side
        return side

    # -- control ---------------------------------------------------------------------

    def set_mode(
        self,
        mode: Mode,
        *,
        delay: float = 0.0,
        interval: float = 0.05,
        after_bytes: int | None = None,
        after_client_bytes: int | None = None,
        garbage: bytes | None = None,
        after_match: bytes | None = None,
        rate: float = 0.0,
    ) -> None:
        """Set the fault for connections accepted from now on (live ones keep theirs)."""
        self.fault = Fault(
            mode, delay, interval, after_bytes, after_client_bytes, garbage, after_match, rate
        )

    def set_mode_all(self, mode: Mode, **params: Any) -> None:
        """Apply a fault to every live connection (new ones keep ``set_mode``'s)."""
        fault = replace(Fault(mode), **params)
        for conn in self.live():
            conn.apply(fault)

    def stall_all(self) -> None:
        self.set_mode_all(Mode.STALL)

    def resume_all(self) -> None:
        self.set_mode_all(Mode.PASS)

    def reset_all(self) -> None:
        self.set_mode_all(Mode.RESET)

    def close_all(self) -> None:
        self.set_mode_all(Mode.CLOSE)

    def live(self) -> list[ProxyConnection]:
        """Open connections, oldest first."""
        return sorted(self._live, key=lambda c: c.id)

    # -- stats -----------------------------------------------------------------------

    @property
    def accepted(self) -> int:
        return self._accepted

    @property
    def current_clients(self) -> int:
        return self._clients

    @property
    def peak_clients(self) -> int:
        return self._peak_clients

    @property
    def current_upstream(self) -> int:
        return self._upstream

    @property
    def peak_upstream(self) -> int:
        return self._peak_upstream

    def stats(self) -> ProxyStats:
        return ProxyStats(
            accepted=self._accepted,
            current_clients=self._clients,
            peak_clients=self._peak_clients,
            current_upstream=self._upstream,
            peak_upstream=self._peak_upstream,
            upstream_opened=self._upstream_opened_total,
            bytes_up=self._bytes_up,
            bytes_down=self._bytes_down,
        )

    def reset_peaks(self) -> None:
        """Start a new measurement window: peaks drop to the current values."""
        self._peak_clients = self._clients
        self._peak_upstream = self._upstream

    async def wait_until(
        self, predicate: Callable[[], bool], timeout: float = 5.0, what: str = "condition"
    ) -> None:
        """:func:`harness.waiting.wait_for`, with the proxy's stats in the TimeoutError."""
        try:
            await wait_for(predicate, timeout, what=what)
        except TimeoutError:
            raise TimeoutError(f"{what} not reached within {timeout}s: {self.stats()}") from None

    async def wait_accepted(self, n: int = 1, timeout: float = 5.0) -> ProxyConnection:
        """Wait until ``n`` connections were accepted; return the n-th (1-based)."""
        await self.wait_until(lambda: self._accepted >= n, timeout, f"{n} accepted")
        return self.connections[n - 1]

    # -- bookkeeping (called by connections) -----------------------------------------

    def _client_opened(self, conn: ProxyConnection) -> None:
        self._accepted += 1
        self._clients += 1
        self._peak_clients = max(self._peak_clients, self._clients)
        self._live.add(conn)
        self.connections.append(conn)
        if len(self.connections) > _HISTORY_CAP:
            del self.connections[0]

    def _client_closed(self) -> None:
        self._clients -= 1

    def _upstream_opened(self) -> None:
        self._upstream += 1
        self._upstream_opened_total += 1
        self._peak_upstream = max(self._peak_upstream, self._upstream)

    def _upstream_closed(self) -> None:
        self._upstream -= 1

    def _connection_closed(self, conn: ProxyConnection) -> None:
        self._live.discard(conn)
        if not conn._client_gone:
            conn._client_gone = True
            self._client_closed()


class ProxyFactory(Protocol):
    """The ``fault_proxy`` fixture: ``await fault_proxy(tls=True, mode=Mode.STALL)``.

    Returns a started proxy in front of the session Dovecot's plain (default) or TLS port,
    or in front of ``upstream=(host, port)``; it is stopped at the end of the test.
    """

    async def __call__(
        self,
        *,
        tls: bool = False,
        upstream: tuple[str, int] | None = None,
        mode: Mode = Mode.PASS,
        **params: Any,
    ) -> FaultProxy: ...
