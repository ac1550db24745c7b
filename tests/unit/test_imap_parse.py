"""The pure response parsers, on lines laid out the way aioimaplib delivers them.

That layout: untagged lines without ``* `` (async commands also without their keyword),
each literal as its own element right after the line ending in ``{N}``, the tagged status
text last. The samples below are taken from Dovecot 2.3 sessions.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from guardedpool.imap import (
    ParseError,
    Response,
    parse_appenduid,
    parse_capabilities,
    parse_copyuid,
    parse_fetch,
    parse_idle_push,
    parse_list,
    parse_search,
    parse_select,
    parse_status,
    response_code,
)

DONE = b"Fetch completed (0.001 + 0.000 secs)."


def test_select() -> None:
    info = parse_select(
        [
            b"FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)",
            b"OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] Flags.",
            b"3 EXISTS",
            b"1 RECENT",
            b"OK [UNSEEN 2] First unseen.",
            b"OK [UIDVALIDITY 1795792790] UIDs valid",
            b"OK [UIDNEXT 4] Predicted next UID",
            b"OK [HIGHESTMODSEQ 7] Highest",
            b"[READ-WRITE] Select completed (0.015 + 0.000 + 0.014 secs).",
        ]
    )
    assert (info.exists, info.recent, info.unseen) == (3, 1, 2)
    assert (info.uidvalidity, info.uidnext, info.highestmodseq) == (1795792790, 4, 7)
    assert info.flags[0] == "\\Answered" and "\\*" in info.permanent_flags
    assert not info.read_only
    assert parse_select([b"0 EXISTS", b"[READ-ONLY] Examine completed."]).read_only
    empty = parse_select([b"Select completed."])
    assert empty.exists is None and empty.uidvalidity is None


def test_search() -> None:
    assert parse_search([b"1 2 30", b"Search completed."]) == [1, 2, 30]
    assert parse_search([b"", b"Search completed."]) == []
    assert parse_search([b"SEARCH 4 5", b"done"]) == [4, 5]
    assert parse_search([b"2 5 (MODSEQ 917162500)", b"done"]) == [2, 5]
    assert parse_search([b"Search completed (0.001 secs)."]) == []


def test_status() -> None:
    lines = [b"INBOX (MESSAGES 2 UIDNEXT 3 UIDVALIDITY 17 UNSEEN 0)", b"Status completed."]
    assert parse_status(lines) == {"MESSAGES": 2, "UIDNEXT": 3, "UIDVALIDITY": 17, "UNSEEN": 0}
    assert parse_status([b'"My (odd) box" (MESSAGES 5)', b"ok"]) == {"MESSAGES": 5}


def test_list() -> None:
    entries = parse_list(
        [
            b'(\\HasNoChildren) "." INBOX',
            b'(\\HasNoChildren \\Trash) "." "Deleted Items"',
            b"(\\Noselect) NIL {9}",
            b"odd)name{",
            b'LIST () "/" Sent',
            b"List completed.",
        ]
    )
    assert [e.name for e in entries] == ["INBOX", "Deleted Items", "odd)name{", "Sent"]
    assert entries[1].flags == ("\\HasNoChildren", "\\Trash")
    assert entries[2].delimiter is None and entries[3].delimiter == "/"


def test_fetch_with_literal_and_trailing_items() -> None:
    body = b"Subject: x\r\n\r\n(unbalanced { braces\r\n"
    items = parse_fetch(
        [
            b"1 FETCH (UID 5 FLAGS (\\Seen \\Recent) RFC822.SIZE %d BODY[] {%d}"
            % (len(body), len(body)),
            body,
            b' INTERNALDATE "27-Nov-2026 15:19:50 +0000" MODSEQ (12))',
            b"2 FETCH (FLAGS ())",  # unsolicited: no UID
            DONE,
        ]
    )
    first, second = items
    assert (first.seq, first.uid, first.size, first.modseq) == (1, 5, len(body), 12)
    assert first.flags == ("\\Seen", "\\Recent") and first.body == body
    assert first.internaldate == "27-Nov-2026 15:19:50 +0000"
    assert second.uid is None and second.flags == () and second.body is None


def test_fetch_sections() -> None:
    head, text = b"From: a\r\n\r\n", b"hello"
    items = parse_fetch(
        [
            b"3 FETCH (UID 9 BODY[HEADER.FIELDS (FROM SUBJECT)] {%d}" % len(head),
            head,
            b" BODY[TEXT]<0> {%d}" % len(text),
            text,
            b" BODY[1] NIL RFC822 {0}",
            b"",
            b")",
            DONE,
        ]
    )
    (item,) = items
    assert item.sections == {
        "BODY[HEADER.FIELDS (FROM SUBJECT)]": head,
        "BODY[TEXT]<0>": text,
        "BODY[1]": None,
        "RFC822": b"",
    }
    assert item.body == b""


def test_fetch_quoted_and_store_layout() -> None:
    items = parse_fetch([b'1 FETCH (UID 1 BODY[] "a \\"q\\" b" FLAGS (\\Flagged))', b"done"])
    assert items[0].body == b'a "q" b' and items[0].flags == ("\\Flagged",)


def test_fetch_malformed_raises() -> None:
    with pytest.raises(ParseError):
        parse_fetch([b"1 FETCH (UID 1 FLAGS (\\Seen)", DONE])
    with pytest.raises(ParseError):
        parse_fetch([b"1 FETCH (UID 1 BODY[] {10}", b"short", b")", DONE])


def test_capabilities_and_codes() -> None:
    caps = parse_capabilities([b"[CAPABILITY IMAP4rev1 IDLE move] Logged in"])
    assert caps == frozenset({"IMAP4REV1", "IDLE", "MOVE"})
    caps = parse_capabilities([b"CAPABILITY IMAP4rev1 SASL-IR", b"ok"])
    assert caps == frozenset({"IMAP4REV1", "SASL-IR"})
    assert parse_capabilities([b"Logged in"]) is None
    assert response_code("[AUTHENTICATIONFAILED] Authentication failed.") == "AUTHENTICATIONFAILED"
    assert response_code(b"[UIDNEXT 5] x") == "UIDNEXT"
    assert response_code("no code") is None and response_code("[] x") is None


def test_uidplus_codes() -> None:
    assert parse_appenduid([b"1 EXISTS", b"[APPENDUID 17 5] Append completed."]) == (17, 5)
    assert parse_appenduid([b"Append completed."]) is None
    assert parse_copyuid([b"[COPYUID 17 1:2 7:8] Copy completed."]) == (17, "1:2", "7:8")


def test_idle_push() -> None:
    pushes = parse_idle_push(
        [b"4 EXISTS", b"2 EXPUNGE", b"1 FETCH (FLAGS (\\Seen))", b"OK Still here"]
    )
    assert [(p.kind, p.number) for p in pushes] == [
        ("EXISTS", 4),
        ("EXPUNGE", 2),
        ("FETCH", 1),
        ("OK", None),
    ]
    assert parse_idle_push([b"BYE going", b"XYZ"])[0].kind == "BYE"


def test_response_text() -> None:
    assert Response("OK", [b"a", b"[READ-WRITE] done"]).text == "[READ-WRITE] done"
    assert Response("OK", []).text == ""


flag = st.sampled_from(["\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "$Label1", "custom"])


@given(
    messages=st.lists(
        st.tuples(st.integers(1, 2**32 - 1), st.lists(flag, unique=True), st.binary(max_size=300)),
        max_size=5,
    )
)
def test_fetch_round_trip(messages: list[tuple[int, list[str], bytes]]) -> None:
    """Whatever the body holds (CRLF, parens, braces, '* '), each message comes back whole."""
    lines: list[bytes] = []
    for seq, (uid, flags, body) in enumerate(messages, 1):
        flag_list = " ".join(flags).encode()
        lines += [
            b"%d FETCH (UID %d FLAGS (%s) BODY[] {%d}" % (seq, uid, flag_list, len(body)),
            body,
            b")",
        ]
    lines.append(DONE)
    items = parse_fetch(lines)
    assert [(i.uid, list(i.flags or ()), i.body) for i in items] == messages


@given(
    st.text(
        alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\r\n\x00"),
        max_size=40,
    )
)
def test_quoted_mailbox_round_trip(name: str) -> None:
    quoted = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    entries = parse_list([b'() "/" ' + quoted.encode(), b"done"])
    assert [e.name for e in entries] == [name]


@given(st.lists(st.binary(min_size=1, max_size=30), max_size=4))
def test_literal_mailbox_names(names: list[bytes]) -> None:
    lines: list[bytes] = []
    for name in names:
        lines += [b'(\\HasNoChildren) "/" {%d}' % len(name), name]
    lines.append(b"List completed.")
    entries = parse_list(lines)
    assert [e.name for e in entries] == [n.decode("utf-8", "replace") for n in names]


def test_truncated_fetch_is_an_error() -> None:
    with pytest.raises(ParseError):
        parse_fetch([b"1 FETCH (UID 1 BODY[] {5}"])
