"""What the pool knows about each connection: the bookkeeping the auditor holds against the OS.

A :class:`ConnectionRecord` lives from the moment a connect is permitted until well after
the socket is closed (in the graveyard), so an audit can still ask "is the socket this
record owned really gone?". Records are plain data; only the pool mutates them, and always
without an ``await`` between a decision and its recording -- except for one fact the
auditor adds: a force-close's verdict (``os_closed`` and a ``verified`` history event).
"""

from __future__ import annotations

import enum
import itertools
import os
from dataclasses import dataclass, field
from types import CodeType
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


class Borrow:
    """Who holds a connection: a view of a record's ``borrowed_*`` facts.

    The acquire hot path only stores raw facts on the record (task, time, code object and
    instruction offset of the acquire site); this view is built, and ``stack`` formatted,
    only when someone reads it: a report of a leak suspect, a log line. ``frames`` holds
    ``(code, line)`` pairs or preformatted ``"file:line in function"`` strings. Frames of
    guardedpool itself and of asyncio are left out of the formatted stack.
    """

    __slots__ = ("_frames", "_task", "since")

    def __init__(
        self,
        task: object,
        since: float,
        frames: tuple[tuple[CodeType, int | None] | str, ...] = (),
    ) -> None:
        self._task = task
        self.since = since
        self._frames = frames

    @property
    def task(self) -> str:
        """The borrowing task's name (``asyncio.Task.get_name()``), or its str()."""
        get_name = getattr(self._task, "get_name", None)
        return str(get_name()) if callable(get_name) else str(self._task)

    @property
    def stack(self) -> tuple[str, ...]:
        """``file:line in function``: where it was acquired, then where the borrowing task
        is now (outermost first), outside guardedpool and asyncio."""
        out = [f if isinstance(f, str) else _where(*f) for f in self._frames]
        get_stack = getattr(self._task, "get_stack", None)
        done = getattr(self._task, "done", None)
        if callable(get_stack) and callable(done) and not done():
            for frame in get_stack(limit=_LIVE_DEPTH):
                out.append(_where(frame.f_code, frame.f_lineno))
        return tuple(s for s in out if s)

    def __repr__(self) -> str:
        return f"Borrow(task={self.task!r}, since={self.since!r})"

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "since": self.since, "stack": list(self.stack)}


_PKG_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_LIVE_DEPTH = 8


def _where(code: CodeType, line: int | None) -> str:
    name = code.co_filename
    if name.startswith(_PKG_DIR) or f"{os.sep}asyncio{os.sep}" in name:
        return ""
    return f"{name}:{line} in {code.co_qualname}"


def _line_at(code: CodeType, lasti: int) -> int | None:
    """The source line of the instruction at byte offset ``lasti`` (what ``f_lineno`` says)."""
    if lasti < 0:
        return code.co_firstlineno
    for start, end, line in code.co_lines():
        if start <= lasti < end:
            return line
    return None


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
    # The borrower, as raw facts taken on the acquire hot path (see ``borrower``):
    borrowed_by: object = None  # the borrowing task; None while not lent out
    borrowed_at: float = 0.0
    # The acquire site: a code object plus the frame's ``f_lasti`` (turned into a line
    # only when read), or a preformatted ``"file:line in function"``.
    borrowed_site: CodeType | str | None = None
    borrowed_lasti: int = -1
    socket: SocketIdentity | None = None
    close_reason: CloseReason | None = None
    retired_at: float | None = None
    closed_at: float | None = None
    # None: not verified yet; False: still open after a force-close (the pool's or the
    # audit's); True: verified gone. The audit's verdict may come in the background.
    os_closed: bool | None = None
    history: list[LifecycleEvent] = field(default_factory=list)  # a deque costs 760 B

    def __post_init__(self) -> None:
        if not self.last_used_at:
            self.last_used_at = self.created_at
        if not self.last_checked_at:
            self.last_checked_at = self.created_at
        self.history.append(LifecycleEvent(self.created_at, "opening"))

    @property
    def borrower(self) -> Borrow | None:
        """Who holds the connection (None unless it is lent out), built when asked."""
        task = self.borrowed_by
        if task is None:
            return None
        site = self.borrowed_site
        if site is None:
            return Borrow(task, self.borrowed_at)
        if isinstance(site, str):
            return Borrow(task, self.borrowed_at, (site,))
        return Borrow(task, self.borrowed_at, ((site, _line_at(site, self.borrowed_lasti)),))

    def note(self, at: float, event: str, detail: str = "") -> None:
        history = self.history
        history.append(LifecycleEvent(at, event, detail))
        if len(history) > HISTORY_LENGTH:
            del history[0]

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
