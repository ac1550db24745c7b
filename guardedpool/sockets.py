"""The few socket-level operations the pool needs, done safely.

The rule here: never ``os.close()`` a fd the pool does not exclusively own. A fd number is
reused the moment it is freed, and a stale transport that still holds the old number then
writes into an unrelated connection. To end a socket from the outside we ``dup`` the fd,
check that the dup is still the socket we mean (same inode), and ``shutdown(SHUT_RDWR)`` the
dup: the TCP connection ends, the owner sees EOF and closes its own fd, and no number is
freed under anyone's feet.
"""

from __future__ import annotations

import errno
import os
import socket
import sys
from typing import Any, Protocol

from .records import SocketIdentity

__all__ = [
    "SocketLike",
    "TCP_STATES",
    "identify",
    "is_open",
    "set_keepalive",
    "shutdown_socket",
    "socket_tcp_state",
    "tcp_state",
]


class SocketLike(Protocol):
    """What we need of a socket: ``socket.socket`` and ``asyncio.TransportSocket`` both fit."""

    def fileno(self) -> int: ...
    def getsockname(self) -> Any: ...
    def getpeername(self) -> Any: ...
    def setsockopt(self, level: int, optname: int, value: int, /) -> None: ...
    def getsockopt(self, level: int, optname: int, buflen: int, /) -> bytes: ...


# Linux TCP states (include/net/tcp_states.h), as TCP_INFO's first byte reports them.
TCP_STATES: dict[int, str] = {
    1: "ESTABLISHED",
    2: "SYN_SENT",
    3: "SYN_RECV",
    4: "FIN_WAIT1",
    5: "FIN_WAIT2",
    6: "TIME_WAIT",
    7: "CLOSE",
    8: "CLOSE_WAIT",
    9: "LAST_ACK",
    10: "LISTEN",
    11: "CLOSING",
}

_TCP_INFO = getattr(socket, "TCP_INFO", None)


def _address(raw: Any) -> tuple[str, int]:
    # AF_INET gives (host, port), AF_INET6 gives (host, port, flowinfo, scope_id).
    # Interned: thousands of sockets share a handful of host strings (memory per record).
    if isinstance(raw, tuple) and len(raw) >= 2:
        return (sys.intern(str(raw[0])), int(raw[1]))
    return (sys.intern(str(raw)), 0)


# Peers shared by many sockets (a pool talks to a handful of servers), one tuple each.
_PEERS: dict[tuple[str, int], tuple[str, int]] = {}
_PEERS_KEPT = 4096


def _peer(raw: Any) -> tuple[str, int]:
    address = _address(raw)
    shared = _PEERS.get(address)
    if shared is None:
        if len(_PEERS) >= _PEERS_KEPT:
            _PEERS.clear()  # bounded; a miss only costs the tuple it would have saved
        shared = _PEERS[address] = address
    return shared


def identify(sock: SocketLike) -> SocketIdentity:
    """The socket's fd, inode and both addresses, read right now."""
    fd = sock.fileno()
    return SocketIdentity(
        fd=fd,
        inode=os.fstat(fd).st_ino,
        local=_address(sock.getsockname()),
        remote=_peer(sock.getpeername()),
    )


def is_open(identity: SocketIdentity) -> bool:
    """Whether the fd recorded in ``identity`` still refers to that same socket."""
    try:
        return bool(os.fstat(identity.fd).st_ino == identity.inode)
    except OSError:
        return False


def set_keepalive(sock: SocketLike, idle: int, interval: int, count: int) -> None:
    """Turn on TCP keepalive so a peer that vanished without FIN/RST is noticed by the kernel."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    # The per-socket knobs are Linux (and recent macOS) names; elsewhere the system defaults apply.
    for name, value in (
        ("TCP_KEEPIDLE", idle),
        ("TCP_KEEPINTVL", interval),
        ("TCP_KEEPCNT", count),
    ):
        opt = getattr(socket, name, None)
        if opt is not None:
            sock.setsockopt(socket.IPPROTO_TCP, opt, value)


def tcp_state(fd: int) -> str | None:
    """The kernel's TCP state of the socket at ``fd`` (Linux ``TCP_INFO``), or None if unknown.

    Wraps the fd in a socket object that does not own it (``socket.socket`` with
    ``fileno=`` would close it on garbage collection, so we ``detach`` it).
    """
    if _TCP_INFO is None or not sys.platform.startswith("linux"):
        return None
    try:
        s = socket.socket(fileno=fd)
    except OSError:
        return None
    try:
        return socket_tcp_state(s)
    finally:
        s.detach()


def socket_tcp_state(sock: SocketLike) -> str | None:
    """Like :func:`tcp_state`, on a socket object we hold (the liveness hot path).

    Asking the transport's own socket is one ``getsockopt``; :func:`tcp_state` must wrap
    a bare fd in a socket object first, which costs several times more.
    """
    if _TCP_INFO is None or not sys.platform.startswith("linux"):
        return None
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, 8)
    except OSError:
        return None
    return TCP_STATES.get(raw[0], "UNKNOWN")


def shutdown_socket(fd: int, inode: int) -> bool:
    """End the TCP connection of the socket at ``fd`` if it is still the one with ``inode``.

    Returns True when a shutdown was issued. Works on a dup, so the fd number stays with
    its owner; checks the dup's inode first, so a reused fd number is never touched.

    When the process has no fd left for the dup (``EMFILE``/``ENFILE``: the very moment a
    leak matters most) it shuts the socket down at ``fd`` itself, right after checking the
    inode there, through a socket object that borrows the fd and is detached (never
    closed). Nothing in this thread can reuse the number in between; only another thread
    that closes ``fd`` and opens a socket at the same number within those microseconds
    could, which is why the dup stays the normal path.
    """
    try:
        dup = os.dup(fd)
    except OSError as exc:
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            return _shutdown_in_place(fd, inode)
        return False
    try:
        if os.fstat(dup).st_ino != inode:
            return False
        s = socket.socket(fileno=dup)
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            # ENOTCONN: already shut down or never connected; nothing left to end.
            return False
        finally:
            s.close()  # closes only our dup
            dup = -1
        return True
    finally:
        if dup >= 0:
            os.close(dup)


def _shutdown_in_place(fd: int, inode: int) -> bool:
    try:
        if os.fstat(fd).st_ino != inode:
            return False
        s = socket.socket(fileno=fd)
    except OSError:
        return False
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        return False
    finally:
        s.detach()
    return True
