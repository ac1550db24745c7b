"""The OS view as plain rows: what every scan backend returns and classification reads.

Kept apart from the backends so that :mod:`.classify` (pure) depends on data shapes only,
never on code that lists file descriptors or runs ``lsof``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Address", "OsSocket", "ScanResult", "normalize_address", "quiet_row"]

Address = tuple[str, int]

_MAPPED_V4 = "::ffff:"


def normalize_address(addr: Address) -> Address:
    """One spelling per address, so ``::ffff:10.0.0.1`` (a dual-stack socket) matches ``10.0.0.1``.

    Backends print addresses the way the kernel hands them out; only the IPv4-mapped IPv6
    form and letter case differ between a resolved endpoint and a socket's peer.
    """
    host = addr[0].lower()
    if host.startswith(_MAPPED_V4) and "." in host:
        host = host[len(_MAPPED_V4) :]
    return (host, addr[1])


def _fmt(addr: Address | None) -> str | None:
    if addr is None:
        return None
    host = f"[{addr[0]}]" if ":" in addr[0] else addr[0]
    return f"{host}:{addr[1]}"


@dataclass(frozen=True, slots=True)
class OsSocket:
    """One socket file descriptor (or, for psutil, one socket) as an OS view reports it.

    Fields a backend could not see are ``None``: psutil and lsof give no inode; procfs reads
    addresses only of the sockets it inspects; ``state`` is the kernel's TCP state name
    (``"ESTABLISHED"``, ``"CLOSE_WAIT"``, ``"CLOSE"``, ...), ``None`` when not read or not TCP.
    ``family`` is ``"inet"``, ``"inet6"`` or ``"unix"``; ``type`` is ``"stream"`` or
    ``"dgram"`` (so TCP is an inet/inet6 stream).
    """

    fd: int | None
    inode: int | None
    family: str | None
    type: str | None
    local: Address | None
    remote: Address | None
    state: str | None

    @property
    def is_tcp(self) -> bool:
        return self.type == "stream" and self.family in ("inet", "inet6")

    def to_dict(self) -> dict[str, Any]:
        return {
            "fd": self.fd,
            "inode": self.inode,
            "family": self.family,
            "type": self.type,
            "local": _fmt(self.local),
            "remote": _fmt(self.remote),
            "state": self.state,
        }


@dataclass(frozen=True, slots=True)
class ScanResult:
    """One backend's view of the process, plus the process's fd figures.

    ``full_view`` is True when every fd of the process was listed (procfs): then a socket
    absent from ``sockets`` is really gone. psutil and lsof skip sockets in state CLOSE and
    show a dup'd socket once, so absence there is only a hint (the scan probes the pool's
    own fds to fill that gap). ``notes`` says what the scan had to skip, in words.
    ``quiet`` (procfs) maps inode -> fd for the pool's sockets that are ESTABLISHED at a
    single fd with nothing to report: they are left out of ``sockets`` because a row each
    would cost as much as the rest of the scan (``inspect_all=True`` gives every row).
    ``fd_exhausted``: the backend could not start because no fd was left (``EMFILE`` /
    ``ENFILE``); the view is then the one that needs none (``fstat`` of each fd number),
    and ``notes`` says why.
    """

    backend: str
    sockets: tuple[OsSocket, ...]
    fds_used: int
    fd_limit: int | None
    full_view: bool
    notes: tuple[str, ...] = ()
    quiet: Mapping[int, int] = field(default_factory=dict)
    fd_exhausted: bool = False


def quiet_row(inode: int, fd: int, family: str) -> OsSocket:
    """The row a quiet socket stands for: one of the pool's, ESTABLISHED, at one fd."""
    return OsSocket(fd, inode, family, "stream", None, None, "ESTABLISHED")
