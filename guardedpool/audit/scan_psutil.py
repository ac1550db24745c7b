"""The psutil view: portable (Linux, macOS, BSD), one row per socket.

``Process().net_connections("inet")`` reads the kernel's connection tables. On Linux it
skips sockets in state CLOSE and keeps one row per inode, so a dup'd fd is invisible; the
scan makes up for the first by probing the pool's own fds (see :mod:`.scan`).
"""

from __future__ import annotations

import socket

import psutil

from .rows import Address, OsSocket

__all__ = ["psutil_rows"]

_FAMILIES = {socket.AF_INET: "inet", socket.AF_INET6: "inet6"}
_TYPES = {socket.SOCK_STREAM: "stream", socket.SOCK_DGRAM: "dgram"}


def _address(raw: object) -> Address | None:
    if isinstance(raw, tuple) and len(raw) >= 2:
        return (str(raw[0]), int(raw[1]))
    return None


def psutil_rows() -> tuple[list[OsSocket], int]:
    """(rows, fds in use). Blocking: run it in a worker thread."""
    proc = psutil.Process()
    rows = [
        OsSocket(
            fd=c.fd if c.fd >= 0 else None,
            inode=None,
            family=_FAMILIES.get(c.family),
            type=_TYPES.get(c.type),
            local=_address(c.laddr),
            remote=_address(c.raddr),
            state=c.status if c.status != psutil.CONN_NONE else None,
        )
        for c in proc.net_connections(kind="inet")
    ]
    return rows, proc.num_fds()
