"""Reading a UID FETCH answer per UID: any order, split responses, unsolicited extras."""

from __future__ import annotations

from examples.imap_sync.fetched import Delivered, delivered
from guardedpool.imap import parse_fetch


def lines(*parts: bytes) -> list[bytes]:
    """aioimaplib's layout: untagged lines without ``* ``, each literal on its own."""
    return [*parts, b"fetch done"]


def test_items_in_any_order_and_split_over_responses() -> None:
    resp = lines(
        b"2 FETCH (BODY[] {5}",
        b"hello",
        b" UID 7)",
        b"2 FETCH (FLAGS (\\Seen) UID 7)",
        b"1 FETCH (UID 3 FLAGS () RFC822.SIZE 2 BODY[] {2}",
        b"hi",
        b")",
    )
    assert delivered(parse_fetch(resp), {3, 7}) == {
        3: Delivered((), b"hi"),
        7: Delivered(("\\Seen",), b"hello"),
    }


def test_missing_items_and_strangers_are_not_delivered() -> None:
    resp = lines(
        b"1 FETCH (FLAGS (\\Seen) BODY[] {2}",  # no UID: cannot be attributed
        b"hi",
        b")",
        b"2 FETCH (UID 7 FLAGS ())",  # no body
        b"3 FETCH (UID 8 BODY[] {1}",  # no flags
        b"x",
        b")",
        b"4 FETCH (UID 99 FLAGS () BODY[] {1}",  # not asked for
        b"y",
        b")",
    )
    got = delivered(parse_fetch(resp), {3, 7, 8})
    assert got == {7: Delivered((), None), 8: Delivered(None, b"x")}


def test_a_later_value_wins() -> None:
    resp = lines(b"1 FETCH (UID 3 FLAGS ())", b"1 FETCH (UID 3 FLAGS (\\Flagged))")
    assert delivered(parse_fetch(resp), {3})[3].flags == ("\\Flagged",)
