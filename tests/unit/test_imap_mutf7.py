"""Modified UTF-7 mailbox names (RFC 3501 §5.1.3) and how the client puts names on the wire."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from guardedpool.imap import WireName, parse_enabled, parse_list
from guardedpool.imap.client import mailbox_arg
from guardedpool.imap.mutf7 import decode, display, encode

# Any Unicode text a name can hold: every code point but the lone surrogates.
names = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)


@pytest.mark.parametrize(
    ("human", "wire"),
    [
        ("INBOX", "INBOX"),
        ("Entwürfe", "Entw&APw-rfe"),
        ("A&B", "A&-B"),
        ("&", "&-"),
        ("~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"),  # RFC 3501 §5.1.3
        ("ä&ö", "&AOQ-&-&APY-"),
        ("😀", "&2D3eAA-"),  # outside the BMP: a UTF-16 surrogate pair
        ('Tom\'s "box" 2024', 'Tom\'s "box" 2024'),
        ("", ""),
    ],
)
def test_known_names(human: str, wire: str) -> None:
    assert encode(human) == wire
    assert decode(wire) == human


@given(names)
def test_round_trip(human: str) -> None:
    wire = encode(human)
    assert decode(wire) == human
    assert wire.isascii() and all(0x20 <= ord(c) <= 0x7E for c in wire)


@given(st.text(st.sampled_from("&-AB,+aZ09é "), max_size=16))
def test_decode_accepts_only_the_canonical_form(wire: str) -> None:
    try:
        human = decode(wire)
    except ValueError:
        return
    assert encode(human) == wire


@pytest.mark.parametrize(
    "wire",
    [
        "a&b",  # '&' not closed
        "&APx-",  # leftover bits set: a second spelling of &APw-
        "&AGE-",  # 'a' shifted: printable ASCII stands for itself
        "&AOQ-&APY-",  # two shifted runs in a row must be one
        "&AOQ",  # not closed
        "Entwürfe",  # 8-bit: not modified UTF-7
        "&2D0-",  # a lone high surrogate
        "&A-",  # not whole UTF-16 units
    ],
)
def test_decode_refuses(wire: str) -> None:
    with pytest.raises(ValueError):
        decode(wire)
    assert display(wire) == wire  # shown as sent rather than failing


def test_encode_refuses_a_lone_surrogate() -> None:
    with pytest.raises(ValueError):
        encode("a\udc00")


def test_mailbox_arg_encodes_human_names_and_keeps_wire_names() -> None:
    assert mailbox_arg("INBOX") == "INBOX"
    assert mailbox_arg("Entwürfe") == "Entw&APw-rfe"
    assert mailbox_arg("A&B") == "A&-B"
    assert mailbox_arg(WireName("Entw&APw-rfe")) == "Entw&APw-rfe"
    assert mailbox_arg(WireName("A&B")) == "A&B"  # sent as given: no guessing
    assert mailbox_arg('My "odd" box') == '"My \\"odd\\" box"'
    assert mailbox_arg("") == '""' and mailbox_arg('""') == '""'
    assert mailbox_arg("*") == '"*"'
    # UTF8=ACCEPT enabled (RFC 6855): UTF-8 in a quoted string.
    assert mailbox_arg("Entwürfe", utf8=True) == '"Entwürfe"'
    assert mailbox_arg("A&B", utf8=True) == "A&B"
    for bad in (WireName("a\r\nZ LOGOUT"), WireName("a\x00"), "a\nb", "a\x00b"):
        with pytest.raises(ValueError):
            mailbox_arg(bad)
    with pytest.raises(ValueError):
        mailbox_arg("a\nb", utf8=True)


@given(names)
def test_mailbox_arg_is_one_line_or_refused(human: str) -> None:
    try:
        arg = mailbox_arg(human)
    except ValueError:
        assert any(c in human for c in "\r\n\x00")
        return
    assert "\r" not in arg and "\n" not in arg and "\x00" not in arg


def test_list_entries_are_wire_names_with_a_human_form() -> None:
    entries = parse_list(
        [
            b'(\\HasNoChildren) "." "Entw&APw-rfe"',
            b'(\\Noselect \\HasChildren) "." Archive',
            b'(\\HasNoChildren \\Junk) "." Spam',
            b'(\\NonExistent) "/" Gone',
            b'(\\HasNoChildren) "." "A&B"',
            b"List completed.",
        ]
    )
    first = entries[0]
    assert isinstance(first.name, WireName) and first.name == "Entw&APw-rfe"
    assert first.human == "Entwürfe" and first.selectable and first.special_use == frozenset()
    assert not entries[1].selectable and not entries[3].selectable
    assert entries[2].special_use == {"\\Junk"}
    assert entries[4].human == "A&B"  # not modified UTF-7: shown as sent
    utf8 = parse_list([b'() "/" "Entw\xc3\xbcrfe"', b"ok"], utf8=True)
    assert utf8[0].name == "Entwürfe" and utf8[0].human == "Entwürfe"


def test_enabled() -> None:
    assert parse_enabled([b"ENABLED UTF8=ACCEPT", b"Enabled."]) == {"UTF8=ACCEPT"}
    assert parse_enabled([b"ENABLED", b"Enabled."]) == frozenset()
    assert parse_enabled([b"Enabled."]) == frozenset()


@example("NIL")
@example('a "b" \\ c')
# '""' is excluded: mailbox_arg documents it as the old spelling of the empty name.
@given(names.filter(lambda n: n != '""' and not any(c in n for c in "\r\n\x00")))
def test_a_name_sent_comes_back_from_list_as_itself(human: str) -> None:
    """What the client sends for a name is what LIST shows for it: the same wire form,
    and the same human name once decoded (quoting and escaping included). A mailbox
    really named ``""`` is reached as ``WireName('""')`` (sent quoted), not by that str."""
    for utf8 in (False, True):
        line = b'(\\HasNoChildren) "/" ' + mailbox_arg(human, utf8=utf8).encode()
        (entry,) = parse_list([line, b"List completed."], utf8=utf8)
        assert entry.name == (human if utf8 else encode(human))
        assert entry.human == human
