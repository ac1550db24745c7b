"""The books: one transition function, checked against the table of legal moves."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from guardedpool.books import LEGAL, Books, IllegalTransition, Slot
from guardedpool.keystate import KeyState
from guardedpool.records import CloseReason, ConnectionRecord, ConnState

S = ConnState


def fresh() -> tuple[Books[Any], KeyState[Any], Slot[Any]]:
    books: Books[Any] = Books(graveyard_size=8)
    ks: KeyState[Any] = KeyState("k")
    slot: Slot[Any] = Slot(ConnectionRecord("k", created_at=0.0, expires_at=100.0), ks)
    books.take(slot)
    return books, ks, slot


def reach(books: Books[Any], slot: Slot[Any], state: ConnState) -> None:
    """Walk a legal path from OPENING to ``state``."""
    path = {
        S.OPENING: [],
        S.IDLE: [S.IDLE],
        S.IN_USE: [S.IN_USE],
        S.CLOSING: [S.IDLE, S.CLOSING],
        S.CLOSED: [S.IDLE, S.CLOSING, S.CLOSED],
    }[state]
    for to in path:
        books.move(slot, to, CloseReason.ERROR if to is S.CLOSING else None)


def test_a_whole_life_keeps_the_books() -> None:
    books, ks, slot = fresh()
    assert (ks.slots, ks.opening, books.slots) == (1, 1, 1)
    books.move(slot, S.IDLE)
    assert ks.idle == [slot] and ks.opened == 1 and ks.opening == 0
    books.move(slot, S.IN_USE)
    assert ks.idle == [] and ks.in_use == 1
    books.move(slot, S.IDLE)
    books.move(slot, S.CLOSING, CloseReason.EVICTED)
    assert ks.closing == 1 and books.evicting == 1 and ks.closed == {"evicted": 1}
    assert slot.record.close_reason is CloseReason.EVICTED
    assert books.verify([ks]) == []
    books.move(slot, S.CLOSED)
    assert (ks.slots, ks.closing, books.slots, books.evicting) == (0, 0, 0, 0)
    assert list(books.graveyard) == [slot.record] and not books.live
    assert books.verify([ks]) == []


def test_a_failed_connect_gives_the_slot_back_without_a_grave() -> None:
    books, ks, slot = fresh()
    books.move(slot, S.CLOSED)
    assert (ks.slots, ks.opening, ks.opened, books.slots) == (0, 0, 0, 0)
    assert not books.graveyard
    assert books.verify([ks]) == []


@pytest.mark.parametrize(
    ("frm", "to"),
    [(a, b) for a, b in itertools.product(ConnState, ConnState) if b not in LEGAL[a]],
)
def test_every_illegal_move_raises_and_changes_nothing(frm: ConnState, to: ConnState) -> None:
    books, ks, slot = fresh()
    reach(books, slot, frm)
    if frm is S.CLOSED:
        before: tuple[object, ...] = (ks.stats(), books.slots)
    else:
        before = (ks.stats(), books.slots, list(ks.idle))
    with pytest.raises(IllegalTransition):
        books.move(slot, to, CloseReason.ERROR if to is S.CLOSING else None)
    after = (ks.stats(), books.slots) if frm is S.CLOSED else (ks.stats(), books.slots, ks.idle)
    assert after == before and slot.record.state is frm


def test_closing_needs_a_reason_and_only_closing_takes_one() -> None:
    books, _, slot = fresh()
    books.move(slot, S.IDLE)
    with pytest.raises(IllegalTransition):
        books.move(slot, S.CLOSING)
    with pytest.raises(IllegalTransition):
        books.move(slot, S.IN_USE, CloseReason.ERROR)
    assert slot.record.state is S.IDLE


def test_a_slot_is_taken_once() -> None:
    books, _, slot = fresh()
    with pytest.raises(IllegalTransition):
        books.take(slot)


def test_verify_names_a_count_edited_behind_its_back() -> None:
    books, ks, slot = fresh()
    books.move(slot, S.IDLE)
    books.move(slot, S.IN_USE)
    ks.in_use += 1  # what no code may do: a count edited outside Books.move
    problems = books.verify([ks])
    assert any("in_use booked 2, counted 1" in p for p in problems), problems
