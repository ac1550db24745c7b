"""An in-process pymap IMAP server on 127.0.0.1, for the demo: no config, no system package.

pymap's dict backend keeps everything in memory and runs in the caller's event loop: it
starts in about a third of a second, needs no subprocess to supervise, and lets the demo
count the sessions the server really has open -- which is how the demo shows a leaked
socket keeping a server session alive. It is plaintext only here (pymap's TLS is STARTTLS,
which aioimaplib lacks), and it does not offer CONDSTORE, so the demo exercises the
worker's full-flags path (the Dovecot tests cover CONDSTORE).

This leans on pymap internals (``DictBackend.init``, ``IMAPServer``, the dict ``Login``),
pinned by the ``example`` extra (pymap 0.36).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from typing import Any

from proxyprotocol.reader import ProxyProtocolReader
from pymap.backend.dict import DictBackend, Identity
from pymap.concurrent import Subsystem
from pymap.imap import IMAPServer
from pymap.user import Passwords, UserMetadata
from pysasl.hashing import BuiltinHash

__all__ = ["EmbeddedIMAPServer"]

STOP_TIMEOUT = 2.0
"""Seconds ``stop()`` gives open sessions to end after they are cancelled."""


def _args() -> argparse.Namespace:
    # What pymap's argparse would produce for `pymap --no-tls dict` (no demo data).
    return argparse.Namespace(
        host=None,
        port="0",
        debug=False,
        cert=None,
        key=None,
        tls=False,
        inherited_sockets=None,
        proxy_protocol=None,
        passlib_cfg=None,
        demo_data=False,
        demo_user="demouser",
        demo_password="demopass",
        skip_services=[],
    )


class EmbeddedIMAPServer:
    """``async with EmbeddedIMAPServer() as server:`` then ``add_user``; see ``port``.

    ``sessions`` is the number of client connections the server holds right now.
    """

    host = "127.0.0.1"

    def __init__(self) -> None:
        self.port = 0
        self.sessions = 0
        self._backend: DictBackend | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> EmbeddedIMAPServer:
        # Hash on the loop, not in pymap's default thread pool (nothing to shut down), and
        # cheaply: these are throwaway demo passwords, and 500,000 PBKDF2 rounds would cost
        # ~0.4 s per login with the loop blocked.
        backend, config = await DictBackend.init(
            _args(), cpu_subsystem=Subsystem.for_asyncio(), hash_context=BuiltinHash(rounds=1000)
        )
        config.apply_context()
        self._backend = backend
        imap = IMAPServer(backend.login, config)

        async def session(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter, info: Any
        ) -> None:
            task = asyncio.current_task()
            if task is not None:
                self._tasks.add(task)
            self.sessions += 1
            try:
                await imap(reader, writer, info)
            finally:
                self.sessions -= 1
                writer.close()
                if task is not None:
                    self._tasks.discard(task)

        callback = ProxyProtocolReader(config.proxy_protocol).get_callback(session)
        self._server = await asyncio.start_server(callback, self.host, 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def add_user(self, name: str, password: str) -> None:
        """Create a user (with an empty INBOX on first login)."""
        assert self._backend is not None, "start() first"
        login = self._backend.login
        config = self._backend.config
        hashed = await Passwords(config).hash_password(password)
        await Identity(name, login, None, frozenset()).set(
            UserMetadata(config, name, password=hashed)
        )

    async def stop(self) -> None:
        """Stop listening, end every session (bounded by ``STOP_TIMEOUT``)."""
        if self._server is None:
            return
        server, self._server = self._server, None
        server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=STOP_TIMEOUT)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STOP_TIMEOUT):
                await server.wait_closed()

    async def __aenter__(self) -> EmbeddedIMAPServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
