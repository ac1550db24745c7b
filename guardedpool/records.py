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
from dataclasses import dataclass, field
from types import CodeType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .leaks import Borrow

__all__ = [
    "CloseReason",
    "ConnState",
    "ConnectionRecord",
    "Event",
    "LifecycleEvent",
    "SocketIdentity",
    "HISTORY_LENGTH",
]

HISTORY_LENGTH = 16
"""Lifecycle events kept per record; older ones are dropped (bounded memory per record)."""

Address = tuple[str, int]


class ConnState(enum.Enum):
    """Where a connection is in its life; the legal moves are ``guardedpool.books.LEGAL``."""

    # Members are singletons compared by identity, so identity hashing is consistent; it
    # is C, where Enum.__hash__ is a Python function (~150 ns per dict or set lookup).
    __hash__ = object.__hash__

    OPENING = "opening"
    IDLE = "idle"
    IN_USE = "in_use"
    CLOSING = "closing"
    CLOSED = "closed"


class CloseReason(enum.Enum):
    """Why a connection was retired. The values are the stable keys of ``stats()``."""

    __hash__ = object.__hash__  # see ConnState

    IDLE = "idle"  # idle longer than idle_timeout
    LIFETIME = "lifetime"  # past its (jittered) max_lifetime
    ERROR = "error"  # failed its liveness check or NOOP, or died while idle
    POISONED = "poisoned"  # a fault while in use (timeout, protocol error, lost)
    SHUTDOWN = "shutdown"  # the pool closed
    AUDIT = "audit"  # the auditor found it half-open, overdue or reclaimed it
    EVICTED = "evicted"  # closed to make room for another key under max_total
    LOGGED_OUT = "logged_out"  # the borrower ended the session itself (IMAP LOGOUT)


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


class Event(enum.StrEnum):
    """What can happen in a connection's life: the ``event`` of a :class:`LifecycleEvent`.

    A ``StrEnum``: each member equals its value (``Event.OPEN == "open"``), which is what
    ``to_dict()`` and reports show. What varies (an error type, a reason) goes in ``detail``.
    """

    OPENING = "opening"  # a slot was taken for a connect
    RECONNECT = "reconnect"  # the connect replaces one closed for <detail>
    CONNECT_FAILED = "connect_failed"  # one attempt failed (<detail>: the error type)
    OPEN_FAILED = "open_failed"  # the connect gave up (<detail>: the error type)
    OPEN = "open"  # connected and logged in; the socket identity is in record.socket
    IDENTIFY_FAILED = "identify_failed"  # the socket could not be identified
    LONG_HOLD = "long_hold"  # the borrower declared a long hold (not a leak suspect)
    RECLAIMED = "reclaimed"  # held past reclaim_after: aborted under its borrower
    POISONED = "poisoned"  # found faulty while in use (<detail>: by whom, why)
    RETIRE = "retire"  # taken out of service (<detail>: the close reason, and why)
    CLOSE_FAILED = "close_failed"  # the goodbye failed (<detail>: the error type)
    FORCE_CLOSE = "force_close"  # still open after abort: shut down through a dup
    VERIFIED = "verified"  # the audit's background check of a force-close (<detail>: verdict)
    CLOSED = "closed"  # the slot was given back


@dataclass(frozen=True, slots=True)
class LifecycleEvent:
    at: float
    event: Event | str  # an Event; a plain str only in hand-made records (tests)
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"at": self.at, "event": str(self.event), "detail": self.detail}


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
    long_hold: bool = False  # the borrower declared this hold long on purpose (see leaks)
    socket: SocketIdentity | None = None
    # When the connect attempt under way started (after its max_connecting permit and its
    # admission, before the connector's ``open``); None while the record is in no attempt:
    # waiting for a permit or a fleet lease, sleeping in backoff between attempts, or done
    # connecting. Only an attempt can own a socket the pool has not recorded yet (audit).
    attempt_at: float | None = None
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
        self.history.append(LifecycleEvent(self.created_at, Event.OPENING))

    @property
    def borrower(self) -> Borrow | None:
        """Who holds the connection (None unless it is lent out), built when asked."""
        from .leaks import borrower_of  # leaks reads records: imported when first asked

        return borrower_of(self)

    def note(self, at: float, event: Event, detail: str = "") -> None:
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
