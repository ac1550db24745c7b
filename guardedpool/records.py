"""What the pool knows about each connection: the bookkeeping the auditor holds against the OS.

A :class:`ConnectionRecord` lives from the moment a connect is permitted until well after
the socket is closed (in the graveyard), so an audit can still ask "is the socket this
record owned really gone?". Records are plain data; only the pool mutates them, and always
without an ``await`` between a decision and its recording.
"""

from __future__ import annotations

import enum
import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Borrow",
    "CloseReason",
    "ConnState",
    "ConnectionRecord",
    "LifecycleEvent",
    "SocketIdentity",
    "HISTORY_LENGTH",
]

HISTORY_LENGTH = 16
"""Lifecycle events kept per record; older ones are dropped (bounded memory per record)."""

Address = tuple[str, int]


class ConnState(enum.Enum):
    OPENING = "opening"
    IDLE = "idle"
    IN_USE = "in_use"
    CLOSING = "closing"
    CLOSED = "closed"


class CloseReason(enum.Enum):
    """Why a connection was retired. The values are the stable keys of ``stats()``."""

    IDLE = "idle"  # idle longer than idle_timeout
    LIFETIME = "lifetime"  # past its (jittered) max_lifetime
    ERROR = "error"  # failed its liveness check or NOOP, or died while idle
    POISONED = "poisoned"  # a fault while in use (timeout, protocol error, lost)
    SHUTDOWN = "shutdown"  # the pool closed
    AUDIT = "audit"  # the auditor found it half-open, overdue or reclaimed it
    EVICTED = "evicted"  # closed to make room for another key under max_total


@dataclass(frozen=True, slots=True)
class SocketIdentity:
    """A socket as the OS knows it, captured right after connect.

    ``inode`` is ``os.fstat(fd).st_ino``: unlike the fd number it is never reused while
    the socket exists, so it is how the auditor tells "the same socket" from "a new socket
    that got the old fd number".
    """

    fd: int
    inode: int
    local: Address
    remote: Address

    def to_dict(self) -> dict[str, Any]:
        return {
            "fd": self.fd,
            "inode": self.inode,
            "local": f"{self.local[0]}:{self.local[1]}",
            "remote": f"{self.remote[0]}:{self.remote[1]}",
        }


@dataclass(frozen=True, slots=True)
class LifecycleEvent:
    at: float
    event: str
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"at": self.at, "event": self.event, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class Borrow:
    """Who holds a connection: captured at acquire, cheap (a few frames, no source lines)."""

    task: str
    since: float
    stack: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "since": self.since, "stack": list(self.stack)}


_ids = itertools.count(1)


@dataclass(slots=True, eq=False)
class ConnectionRecord:
    """One connection's life. Mutable, owned by the pool; compared by identity."""

    key: str
    created_at: float
    expires_at: float
    id: int = field(default_factory=lambda: next(_ids))
    state: ConnState = ConnState.OPENING
    last_used_at: float = 0.0
    last_checked_at: float = 0.0
    borrower: Borrow | None = None
    socket: SocketIdentity | None = None
    close_reason: CloseReason | None = None
    retired_at: float | None = None
    closed_at: float | None = None
    os_closed: bool | None = None  # None: not verified yet; False: still open after force-close
    history: deque[LifecycleEvent] = field(default_factory=lambda: deque(maxlen=HISTORY_LENGTH))

    def __post_init__(self) -> None:
        if not self.last_used_at:
            self.last_used_at = self.created_at
        if not self.last_checked_at:
            self.last_checked_at = self.created_at
        self.history.append(LifecycleEvent(self.created_at, "opening"))

    def note(self, at: float, event: str, detail: str = "") -> None:
        self.history.append(LifecycleEvent(at, event, detail))

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "key": self.key,
            "state": self.state.value,
            "created_at": self.created_at,
            "last_used_at": self.last_used_at,
            "expires_at": self.expires_at,
            "borrower": self.borrower.to_dict() if self.borrower else None,
            "socket": self.socket.to_dict() if self.socket else None,
            "close_reason": self.close_reason.value if self.close_reason else None,
            "retired_at": self.retired_at,
            "closed_at": self.closed_at,
            "os_closed": self.os_closed,
            "history": [e.to_dict() for e in self.history],
        }
