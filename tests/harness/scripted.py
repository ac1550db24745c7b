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

from .loopback import LoopbackServer

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


class ScriptedIMAP(LoopbackServer):
    """``async with ScriptedIMAP(script) as srv``: clients connect to ``srv.port``; each
    connection runs ``script``."""

    def __init__(self, script: Script) -> None:
        super().__init__()
        self.script = script
        self.received: list[bytes] = []

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self.script(ScriptConn(reader, writer, self))
