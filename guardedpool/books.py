"""The pool's books: every state change of a connection, in one place, against one table.

A :class:`Slot` is the unit of ``max_per_key`` / ``max_total``: it is taken when a connect
is permitted and given back when the socket is verified gone. Its record's state moves
along :data:`LEGAL` (in the spirit of h11's ``_state.py``), and :class:`Books` is the only
code that changes a state, a per-key count (``slots``, ``opening``, ``in_use``,
``closing``, the idle stack, ``acquires``), ``opened``/``closed`` or a pool total:
:meth:`Books.move` for every move, and for the two moves of every acquire and release,
:meth:`Books.lend` (IDLE -> IN_USE, with the borrow's facts) and :meth:`Books.give_back`
(IN_USE -> IDLE), which write that move out in place (see :mod:`guardedpool.fastpath`,
trick 3). An illegal move is a bug: it raises :class:`IllegalTransition` before anything
is changed.

::

    (taken) -> OPENING -> IDLE <-> IN_USE
                  |         \\      /
                  |          CLOSING -> CLOSED (slot given back)
                  +------------------------^   (the connect failed)

The books then hold by construction (see :meth:`Books.verify`, which tests call after
every step): per key ``slots == opening + idle + in_use + closing`` and
``opened - closed_total == idle + in_use``; the pool's ``slots`` is the sum over keys.
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

from .fastpath import IDLE, IN_USE
from .records import CloseReason, ConnectionRecord, ConnState

if TYPE_CHECKING:
    from .fleet.lease import Lease
    from .keystate import KeyState

__all__ = ["LEGAL", "Books", "IllegalTransition", "Slot"]

C = TypeVar("C")

LEGAL: dict[ConnState | None, frozenset[ConnState]] = {
    # None: the slot is not taken yet.
    None: frozenset({ConnState.OPENING}),
    # a connect succeeded (to the idle stack, or straight to a waiter), was retired as it
    # finished (the pool shut down meanwhile), or failed (the slot is given back at once)
    ConnState.OPENING: frozenset(
        {ConnState.IDLE, ConnState.IN_USE, ConnState.CLOSING, ConnState.CLOSED}
    ),
    ConnState.IDLE: frozenset({ConnState.IN_USE, ConnState.CLOSING}),
    ConnState.IN_USE: frozenset({ConnState.IDLE, ConnState.CLOSING}),
    ConnState.CLOSING: frozenset({ConnState.CLOSED}),
    ConnState.CLOSED: frozenset(),
}
"""Where a connection may go from each state. IN_USE means out of the idle stack: with a
borrower, handed to a waiter, or NOOP-checked by the pool itself."""

# Replacing a connection closed for one of these reasons is not a "reconnect" in the stats.
_NOT_REPLACED = frozenset({CloseReason.SHUTDOWN, CloseReason.EVICTED})


class IllegalTransition(AssertionError):
    """A state change the table does not allow: a bug in the pool, never a user error."""


@dataclass(slots=True, eq=False)
class Slot(Generic[C]):
    """A taken slot: a record and the live connection it describes (``None`` while opening
    and once closed)."""

    record: ConnectionRecord
    keystate: KeyState[C]
    conn: C | None = None
    fresh: bool = True  # straight from the connector: login just proved it works
    lease: Lease | None = None  # the fleet budget's lease, from before the connect to CLOSED


class Books(Generic[C]):
    """The pool's live slots and totals, and the one function that changes them.

    Attributes:
        live: record id -> slot, from OPENING until CLOSED.
        slots: slots taken pool-wide (the ``max_total`` count).
        evicting: CLOSING slots retired to make room for another key.
        graveyard: records whose close finished, newest last (bounded by the caller).
    """

    __slots__ = ("evicting", "graveyard", "live", "slots")

    def __init__(self, graveyard_size: int) -> None:
        self.live: dict[int, Slot[C]] = {}
        self.slots = 0
        self.evicting = 0
        self.graveyard: deque[ConnectionRecord] = deque(maxlen=graveyard_size)

    def take(self, slot: Slot[C]) -> None:
        """The slot is taken for a connect: (not taken) -> OPENING."""
        record = slot.record
        if record.id in self.live or record.state is not ConnState.OPENING:
            raise IllegalTransition(f"record {record.id} taken twice ({record.state.value})")
        ks = slot.keystate
        ks.slots += 1
        ks.opening += 1
        self.slots += 1
        self.live[record.id] = slot

    def move(self, slot: Slot[C], to: ConnState, reason: CloseReason | None = None) -> None:
        """Move ``slot`` to state ``to``, updating the record, the key's counts and the totals.

        Moving to CLOSING takes the close ``reason`` (stored on the record and counted);
        moving to CLOSED gives the slot back and, for a connection that was open, files the
        record in the graveyard. Raises :class:`IllegalTransition` (changing nothing) for a
        move :data:`LEGAL` does not list.
        """
        record = slot.record
        frm = record.state
        if reason is None:
            # The two moves of every acquire and release first: legal by the table, and
            # cheap (a few attribute edits); every other move takes the general path.
            if frm is IDLE:
                if to is IN_USE:
                    ks = slot.keystate
                    idle = ks.idle
                    if idle[-1] is slot:  # LIFO: nearly always the top
                        idle.pop()
                    else:
                        idle.remove(slot)
                    ks.in_use += 1
                    record.state = to
                    return
            elif frm is IN_USE and to is IDLE:
                ks = slot.keystate
                ks.in_use -= 1
                ks.idle.append(slot)
                record.state = to
                return
        self._move(slot, record, frm, to, reason)

    def lend(self, slot: Slot[C], borrower: object, now: float, started: float) -> C:
        """Hand ``slot``'s connection to ``borrower`` (a task) and return it: the state move
        IDLE -> IN_USE (skipped when the pool already holds it IN_USE, for its hand-out
        check), the borrow's facts on the record, and the key's acquire counts. ``started``:
        when the acquire began (its wait is ``now - started`` seconds)."""
        record = slot.record
        ks = slot.keystate
        if record.state is IDLE:  # move(slot, IN_USE), written out: the acquire fast path
            idle = ks.idle
            if idle[-1] is slot:
                idle.pop()
            else:
                idle.remove(slot)
            ks.in_use += 1
            record.state = IN_USE
        elif record.state is not IN_USE:
            raise IllegalTransition(f"record {record.id} lent out while {record.state.value}")
        conn = slot.conn
        assert conn is not None
        # The borrower as raw facts, formatted only when read (``record.borrower``).
        record.borrowed_by = borrower
        record.borrowed_at = record.last_used_at = now
        try:
            # whoever called acquire: past here, the pool's _take_ready or _acquire_slow,
            # then Acquisition.__await__
            frame = sys._getframe(3)
        except ValueError:
            record.borrowed_site = None
        else:
            record.borrowed_site, record.borrowed_lasti = frame.f_code, frame.f_lasti
        ks.acquires += 1
        if now != started:
            waited = now - started
            ks.acquire_wait_total += waited
            if waited > ks.acquire_wait_max:
                ks.acquire_wait_max = waited
        return conn

    def give_back(self, slot: Slot[C], now: float) -> None:
        """The borrower gave ``slot``'s connection back at ``now``: IN_USE -> IDLE (on top
        of the idle stack), the borrow's facts cleared. A connection to be retired goes
        from there (IDLE -> CLOSING) before anything else can take it. Raises
        :class:`IllegalTransition` if the slot is not IN_USE."""
        record = slot.record
        if record.state is not IN_USE:
            raise IllegalTransition(f"record {record.id} given back while {record.state.value}")
        # move(slot, IDLE), written out: the release fast path
        ks = slot.keystate
        ks.in_use -= 1
        record.state = IDLE
        ks.idle.append(slot)
        record.borrowed_by = None
        record.long_hold = False
        record.last_used_at = now

    def _move(
        self,
        slot: Slot[C],
        record: ConnectionRecord,
        frm: ConnState,
        to: ConnState,
        reason: CloseReason | None,
    ) -> None:
        if (
            to not in LEGAL[frm]
            or record.id not in self.live
            or (reason is None) is (to is ConnState.CLOSING)
        ):
            raise IllegalTransition(
                f"record {record.id} of key {record.key!r}: {frm.value} -> {to.value}"
                + (f" ({reason.value})" if reason is not None else "")
            )
        ks = slot.keystate
        # leave
        if frm is IDLE:
            idle = ks.idle
            if idle[-1] is slot:
                idle.pop()
            else:
                idle.remove(slot)
        elif frm is IN_USE:
            ks.in_use -= 1
        elif frm is ConnState.OPENING:
            ks.opening -= 1
            if to is not ConnState.CLOSED:
                ks.opened += 1
        else:  # CLOSING
            ks.closing -= 1
            if record.close_reason is CloseReason.EVICTED:
                self.evicting -= 1
        # enter
        record.state = to
        if to is IN_USE:
            ks.in_use += 1
        elif to is IDLE:
            ks.idle.append(slot)
        elif to is ConnState.CLOSING:
            assert reason is not None  # checked above
            record.close_reason = reason
            ks.closing += 1
            if reason is CloseReason.EVICTED:
                self.evicting += 1
            ks.count_close(reason, replace=reason not in _NOT_REPLACED)
        else:  # CLOSED: the slot is given back
            ks.slots -= 1
            self.slots -= 1
            del self.live[record.id]
            if frm is ConnState.CLOSING:
                self.graveyard.append(record)

    def verify(self, keys: Iterable[KeyState[C]]) -> list[str]:
        """Recount everything from the live slots; return each disagreement (empty: the
        books hold). O(connections): for tests, not for the hot path."""
        out: list[str] = []
        by_key: dict[str, dict[ConnState, int]] = {}
        for rid, slot in self.live.items():
            record = slot.record
            if rid != record.id:
                out.append(f"live[{rid}] holds record {record.id}")
            if record.state is ConnState.CLOSED:
                out.append(f"record {record.id} is CLOSED but still live")
            counts = by_key.setdefault(record.key, {})
            counts[record.state] = counts.get(record.state, 0) + 1
        total = 0
        evicting = sum(
            1
            for s in self.live.values()
            if s.record.state is ConnState.CLOSING and s.record.close_reason is CloseReason.EVICTED
        )
        for ks in keys:
            counts = by_key.pop(ks.key, {})
            states = {
                "opening": (ks.opening, counts.get(ConnState.OPENING, 0)),
                "idle": (len(ks.idle), counts.get(ConnState.IDLE, 0)),
                "in_use": (ks.in_use, counts.get(ConnState.IN_USE, 0)),
                "closing": (ks.closing, counts.get(ConnState.CLOSING, 0)),
                "slots": (ks.slots, sum(counts.values())),
            }
            for name, (booked, counted) in states.items():
                if booked != counted:
                    out.append(f"key {ks.key!r}: {name} booked {booked}, counted {counted}")
            if any(s.record.state is not ConnState.IDLE or s.keystate is not ks for s in ks.idle):
                out.append(f"key {ks.key!r}: the idle stack holds a slot that is not idle")
            closed_total = sum(ks.closed.values()) if ks.closed else 0
            if ks.opened - closed_total != len(ks.idle) + ks.in_use:
                out.append(
                    f"key {ks.key!r}: opened {ks.opened} - closed {closed_total} != "
                    f"open {len(ks.idle) + ks.in_use}"
                )
            total += ks.slots
        for key in by_key:
            out.append(f"live slots of key {key!r}, which has no key state")
        if total != self.slots or self.slots != len(self.live):
            out.append(f"slots: pool {self.slots}, sum of keys {total}, live {len(self.live)}")
        if evicting != self.evicting:
            out.append(f"evicting: booked {self.evicting}, counted {evicting}")
        return out
