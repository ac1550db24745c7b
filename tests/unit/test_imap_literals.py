"""Literals in commands, pure: where a command waits for '+', and what becomes a literal."""

from __future__ import annotations

import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from guardedpool.imap.literals import command_chunks, criteria_pieces, nonsync_limit


def test_nonsync_limit_follows_rfc7888() -> None:
    assert nonsync_limit({"LITERAL+"}) == sys.maxsize
    assert nonsync_limit({"LITERAL-"}) == 4096
    assert nonsync_limit({"IMAP4REV1"}) == 0


def test_chunks_cut_at_synchronising_literals_only() -> None:
    pieces = [" SEARCH CHARSET UTF-8 SUBJECT ", "Köln".encode(), " BODY ", b"x" * 5000]
    assert command_chunks("A1", pieces, 0) == [
        b"A1 SEARCH CHARSET UTF-8 SUBJECT {5}\r\n",
        "Köln".encode() + b" BODY {5000}\r\n",
        b"x" * 5000 + b"\r\n",
    ]
    # LITERAL-: the short one goes at once, the one over 4096 octets still waits.
    assert command_chunks("A1", pieces, 4096) == [
        b"A1 SEARCH CHARSET UTF-8 SUBJECT {5+}\r\n" + "Köln".encode() + b" BODY {5000}\r\n",
        b"x" * 5000 + b"\r\n",
    ]
    (single,) = command_chunks("A1", pieces, sys.maxsize)
    assert single.endswith(b"{5000+}\r\n" + b"x" * 5000 + b"\r\n")


def test_criteria_keep_ascii_and_layout() -> None:
    pieces = criteria_pieces(['(OR SUBJECT "Grüße" FROM bob)', "TEXT", "Köln"], "UTF-8")
    assert pieces == [
        " ",
        "(OR SUBJECT ",
        "Grüße".encode(),
        " FROM bob)",
        " ",
        "TEXT",
        " ",
        "Köln".encode(),
    ]
    assert criteria_pieces(["SUBJECT", '"a \\"ü\\" b"'], "UTF-8")[-1] == 'a "ü" b'.encode()


def test_criteria_refuse_line_breaks_and_unencodable() -> None:
    with pytest.raises(ValueError):
        criteria_pieces(["SUBJECT x\r\nA2 LOGOUT"], "UTF-8")
    with pytest.raises(ValueError):
        criteria_pieces(["€"], "ISO-8859-1")
    with pytest.raises(ValueError):
        command_chunks("A1", [" SEARCH ü"], 0)


@given(
    st.lists(
        st.one_of(
            st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=8),
            st.binary(max_size=40),
        ),
        max_size=6,
    ),
    st.sampled_from([0, 4096, sys.maxsize]),
)
def test_chunks_rejoin_to_the_wire_form(pieces: list[str | bytes], limit: int) -> None:
    """Whatever the split, the chunks together are the one wire form of the command."""
    expected = b"T"
    for piece in pieces:
        if isinstance(piece, str):
            expected += piece.encode()
        else:
            plus = b"+" if len(piece) <= limit else b""
            expected += b"{%d%s}\r\n" % (len(piece), plus) + piece
    expected += b"\r\n"
    chunks = command_chunks("T", pieces, limit)
    assert b"".join(chunks) == expected
    assert len(chunks) == 1 + sum(isinstance(p, bytes) and len(p) > limit for p in pieces)
