"""A scripted IMAP server on 127.0.0.1, on the test's own event loop.

For server behaviour Dovecot will not produce on demand: a greeting followed by a close, a
BYE in answer to LOGIN, a line that never ends, a literal that never completes, a LOGIN
answered with a continuation, an XOAUTH2 exchange. Each accepted connection runs
``script(conn)``; :class:`ScriptConn` offers line reads (bounded, so a script whose client
went away ends by itself) and :meth:`ScriptConn.serve` answers the usual commands until a
line the script wants to handle itself.

Everything it opens is closed by ``stop()`` (or leaving ``async with``), so a test can
compare the process's sockets before and after.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

__all__ = ["CAPS", "ScriptConn", "ScriptedIMAP"]

CAPS = "IMAP4rev1 IDLE UIDPLUS"

Script = Callable[["ScriptConn"], Awaitable[None]]


class ScriptConn:
    """One client connection as a script sees it."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: ScriptedIMAP
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.server = server

    async def line(self, timeout: float = 3.0) -> bytes:
        """The next line from the client (ConnectionError when it went away)."""
        async with asyncio.timeout(timeout):
            data = await self.reader.readline()
        if not data:
            raise ConnectionError("client closed")
        self.server.received.append(data)
        return data

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def greet(self, caps: str = CAPS) -> None:
        await self.send(f"* OK [CAPABILITY {caps}] scripted ready\r\n".encode())

    async def serve(self, until: bytes = b"\x00", caps: str = CAPS) -> bytes:
        """Answer CAPABILITY, LOGIN, SELECT, NOOP, LOGOUT... until a line with ``until``
        (returned, unanswered) or LOGOUT."""
        while True:
            line = await self.line()
            tag, _, rest = line.partition(b" ")
            verb = rest.split(b" ", 1)[0].strip().upper()
            if until in line:
                return line
            if verb == b"CAPABILITY":
                await self.send(f"* CAPABILITY {caps}\r\n".encode() + tag + b" OK done\r\n")
            elif verb == b"LOGIN":
                await self.send(tag + f" OK [CAPABILITY {caps}] logged in\r\n".encode())
            elif verb == b"SELECT":
                await self.send(
                    b"* 1 EXISTS\r\n* OK [UIDVALIDITY 7] ok\r\n* OK [UIDNEXT 2] ok\r\n"
                    + tag
                    + b" OK [READ-WRITE] selected\r\n"
                )
            elif verb == b"LOGOUT":
                await self.send(b"* BYE bye\r\n" + tag + b" OK bye\r\n")
                return line
            else:
                await self.send(tag + b" OK done\r\n")

    async def drain(self) -> None:
        """Read and drop until the client goes away (or the server stops)."""
        with contextlib.suppress(OSError, TimeoutError, ConnectionError):
            while await self.reader.read(4096):
                pass


class ScriptedIMAP:
    """``async with ScriptedIMAP(script) as srv``: clients connect to ``srv.port``."""

    host = "127.0.0.1"

    def __init__(self, script: Script) -> None:
        self.script = script
        self.port = 0
        self.accepted = 0
        self.received: list[bytes] = []
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> ScriptedIMAP:
        self._server = await asyncio.start_server(self._handle, self.host, 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._writers.add(writer)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            with contextlib.suppress(OSError, TimeoutError, ConnectionError):
                await self.script(ScriptConn(reader, writer, self))
        finally:
            self._writers.discard(writer)
            writer.close()
            if task is not None:
                self._tasks.discard(task)

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2.0)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2.0):
                await server.wait_closed()
        await asyncio.sleep(0)  # let the aborted transports release their sockets
