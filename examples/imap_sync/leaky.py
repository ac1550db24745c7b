"""The classic leak, on purpose: a driver that keeps a copy of every socket it touches.

Code like this is everywhere: ``socket.fromfd(fd, ...)`` to read ``TCP_INFO`` or set an
option, with the result stashed "for later". ``fromfd`` *duplicates* the descriptor, so
when the connection is closed -- properly, by its owner -- the kernel socket lives on in
the copy: still ESTABLISHED, no FIN sent, the server's session still open and counted
against its per-user limit. The pool's own bookkeeping cannot see it (the fd it recorded
is closed, as it should be); only the OS view of ``pool.audit()`` can.
"""

from __future__ import annotations

import socket

from guardedpool import PoolConfig
from guardedpool.imap import IMAPClient, IMAPConnector
from guardedpool.imap.connector import AccountSource

__all__ = ["LeakyIMAPConnector"]


class LeakyIMAPConnector(IMAPConnector):
    """An :class:`IMAPConnector` whose every connection leaves a dup'd socket behind."""

    def __init__(self, accounts: AccountSource) -> None:
        super().__init__(accounts)
        self.kept: list[socket.socket] = []

    async def open(self, key: str, config: PoolConfig) -> IMAPClient:
        conn = await super().open(key, config)
        sock = conn.socket
        if sock is not None:
            # The bug: a duplicate of the descriptor, kept and never closed.
            self.kept.append(socket.fromfd(sock.fileno(), socket.AF_INET, socket.SOCK_STREAM))
        return conn

    def fix(self) -> int:
        """What the fixed driver does: close its copies. Returns how many it closed."""
        closed = len(self.kept)
        for sock in self.kept:
            sock.close()
        self.kept.clear()
        return closed
