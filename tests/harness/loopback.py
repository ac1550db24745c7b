"""A TCP server on 127.0.0.1 for the scripted and model IMAP servers: start on a free
port, one task per connection, and a bounded stop that leaves no socket behind."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Self

__all__ = ["LoopbackServer"]


class LoopbackServer:
    """``async with Sub(...) as srv``: clients connect to ``srv.host``, ``srv.port``.

    Subclasses implement :meth:`serve` (one connection; ``OSError``, ``TimeoutError`` and
    ``ConnectionError`` end it quietly, and so does any type in :attr:`quiet`).
    :meth:`stop` aborts every connection and waits at most 2 s for their tasks and 2 s for
    the listening socket.
    """

    host = "127.0.0.1"
    quiet: tuple[type[BaseException], ...] = ()

    def __init__(self) -> None:
        self.port = 0
        self.accepted = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
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
            with contextlib.suppress(OSError, TimeoutError, ConnectionError, *self.quiet):
                await self.serve(reader, writer)
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
