"""The pool as the auditor sees it: :class:`PoolTarget`, the pool's :class:`AuditTarget`.

The auditor needs a handful of cheap, synchronous things from a pool (its records, its
clock, three remedies); they live in this small adapter, which the pool builds once and
hands to :func:`~guardedpool.audit.auditor.run_audit`, instead of as public methods of
:class:`~guardedpool.GuardedPool`. Every adapter of the process is registered, so an
audit can tell a sibling pool's socket from an orphan.
"""

from __future__ import annotations

import operator
import weakref
from collections.abc import Callable, Set
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ..config import PoolConfig
from ..records import CloseReason, ConnectionRecord, ConnState, Event
from .classify import Connecting, connect_bound

if TYPE_CHECKING:
    from ..books import Books, Slot
    from ..connector import Address, Connector

__all__ = ["PoolTarget"]

C = TypeVar("C")

_RECORD: Callable[[Slot[Any]], ConnectionRecord] = operator.attrgetter("record")

# Every pool's adapter in the process (weakly: a pool that is gone owns no socket).
_TARGETS: weakref.WeakSet[PoolTarget[Any]] = weakref.WeakSet()


class PoolTarget(Generic[C]):
    """One pool's books, clock and remedies, for the auditor (see ``AuditTarget``).

    Built by the pool; ``retire(slot, reason, detail)`` is the pool's own retirement,
    ``earliest_attempt()`` when its earliest connect attempt under way started (None: none
    is; :meth:`guardedpool.reconnect.Reconnector.earliest_attempt`).
    """

    __slots__ = (
        "__weakref__",
        "_books",
        "_clock",
        "_connector",
        "_earliest_attempt",
        "_retire",
        "config",
    )

    def __init__(
        self,
        config: PoolConfig,
        books: Books[C],
        connector: Connector[C],
        clock: Callable[[], float],
        retire: Callable[[Slot[C], CloseReason, str], None],
        earliest_attempt: Callable[[], float | None],
    ) -> None:
        self.config = config
        self._books = books
        self._connector = connector
        self._clock = clock
        self._retire = retire
        self._earliest_attempt = earliest_attempt
        _TARGETS.add(self)

    def now(self) -> float:
        """The pool's monotonic clock (records' times are in it)."""
        return self._clock()

    def records(self) -> list[ConnectionRecord]:
        """Live records: OPENING, IDLE, IN_USE and CLOSING."""
        return list(map(_RECORD, self._books.live.values()))

    def graveyard(self) -> list[ConnectionRecord]:
        """Records whose close finished (CLOSED), kept a while for audits, oldest first."""
        return list(self._books.graveyard)

    def endpoints(self) -> Set[Address]:
        return self._connector.endpoints()

    def connecting(self) -> Connecting | None:
        """This pool's connect attempts under way: when the earliest started and its
        ``connect_bound``; None when none is."""
        since = self._earliest_attempt()
        return None if since is None else Connecting(since, connect_bound(self.config))

    def poison(self, record: ConnectionRecord) -> None:
        """Half-open: retire an idle one now; abort one in use (retired when it returns)."""
        slot = self._books.live.get(record.id)
        if slot is None or slot.conn is None:
            return
        if record.state is ConnState.IDLE:
            self._retire(slot, CloseReason.AUDIT, "half-open")
        elif record.state is ConnState.IN_USE:
            record.note(self._clock(), Event.POISONED, "audit: half-open")
            self._connector.abort(slot.conn)

    def retire(self, record: ConnectionRecord) -> None:
        """Overdue: retire it now, if it is still idle."""
        slot = self._books.live.get(record.id)
        if slot is not None and record.state is ConnState.IDLE:
            self._retire(slot, CloseReason.AUDIT, "overdue")

    def abort(self, record: ConnectionRecord) -> bool:
        """Abort the record's transport; False if the pool no longer holds its connection."""
        slot = self._books.live.get(record.id)
        if slot is None or slot.conn is None:
            return False
        self._connector.abort(slot.conn)
        return True

    def foreign(self) -> tuple[frozenset[int], tuple[Connecting, ...]]:
        """Socket inodes other pools of the process own, and their connect attempts in
        flight (each pool's :meth:`connecting`, in this pool's clock)."""
        inodes: set[int] = set()
        connecting: list[Connecting] = []
        now = self._clock()
        for other in list(_TARGETS):
            if other is self:
                continue
            for slot in list(other._books.live.values()):
                if slot.record.socket is not None:
                    inodes.add(slot.record.socket.inode)
            inodes.update(r.socket.inode for r in other._books.graveyard if r.socket is not None)
            theirs = other.connecting()
            if theirs is not None:
                since = now - (other._clock() - theirs.since)  # its clock to ours
                connecting.append(Connecting(since, theirs.bound))
        return frozenset(inodes), tuple(connecting)
