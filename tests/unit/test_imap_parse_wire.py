"""Literals anywhere, literal8 included, from wire bytes through the real framing.

Each example is a FETCH response as a server would write it: values in ENVELOPE- and
BODYSTRUCTURE-like nested lists, several literals per line, ``{0}``, literal8 (``~{n}``,
RFC 3516) holding NUL, CRLF, parentheses and braces. The bytes go through
``GuardedProtocol.data_received`` (aioimaplib's framing, our feeding), cut at arbitrary
points as TCP would, and then through ``parse_fetch``. What comes out must be exactly the
values that went in. No socket, no server: the protocol gets a transport that drops
writes.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from aioimaplib.aioimaplib import FetchCommand
from harness.transports import RecordingTransport
from hypothesis import given, settings
from hypothesis import strategies as st

from guardedpool.imap import parse_fetch
from guardedpool.imap.parse import Value
from guardedpool.imap.protocol import GuardedProtocol


def framed(chunks: list[bytes]) -> list[bytes]:
    """Response.lines of a FETCH whose server data arrives as ``chunks``."""
    loop = asyncio.new_event_loop()
    try:
        protocol = GuardedProtocol(loop)
        protocol.connection_made(RecordingTransport())
        protocol.state = "SELECTED"
        command = FetchCommand("T1", "1:*", "(ALL)", loop=loop)
        protocol.pending_async_commands["FETCH"] = command
        for chunk in chunks:
            protocol.data_received(chunk)
        assert not protocol.fault.done(), protocol.fault.result()
        assert command.response.result == "OK"
        return [bytes(line) for line in command.response.lines]
    finally:
        loop.close()


ATOM = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLM0123456789$\\.-", min_size=1, max_size=8
).filter(lambda a: a.upper() != "NIL")
QUOTED = st.binary(max_size=12).map(lambda b: bytes(c for c in b if 0x20 <= c < 0x7F))


def _wire(kind: str, data: Any) -> tuple[bytes, Value]:
    if kind == "atom":
        return data.encode(), data.encode()
    if kind == "nil":
        return b"NIL", None
    if kind == "quoted":
        return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"', data
    if kind == "literal":
        return b"{%d}\r\n" % len(data) + data, data
    assert kind == "literal8"
    return b"~{%d}\r\n" % len(data) + data, data


scalars = st.one_of(
    st.tuples(st.just("atom"), ATOM),
    st.tuples(st.just("nil"), st.none()),
    st.tuples(st.just("quoted"), QUOTED),
    st.tuples(st.just("literal"), st.binary(max_size=40)),
    st.tuples(st.just("literal8"), st.binary(max_size=40)),
).map(lambda t: _wire(*t))


def _listed(items: list[tuple[bytes, Value]]) -> tuple[bytes, Value]:
    return b"(" + b" ".join(w for w, _ in items) + b")", [v for _, v in items]


values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4).map(_listed), max_leaves=12
)
literal_body = st.one_of(
    st.tuples(st.just("literal"), st.binary(max_size=200)),
    st.tuples(st.just("literal8"), st.binary(max_size=200)),
).map(lambda t: _wire(*t))


@settings(max_examples=150, deadline=None)
@given(
    messages=st.lists(st.tuples(st.integers(1, 2**31), values, values, literal_body), max_size=4),
    cuts=st.lists(st.integers(0, 10_000), max_size=6),
)
def test_literals_anywhere_round_trip(
    messages: list[tuple[int, tuple[bytes, Value], tuple[bytes, Value], tuple[bytes, Value]]],
    cuts: list[int],
) -> None:
    wire = b""
    for seq, (uid, (env_w, _), (bs_w, _), (body_w, _)) in enumerate(messages, 1):
        wire += (
            b"* %d FETCH (UID %d ENVELOPE %s BODYSTRUCTURE %s BINARY[1] %s FLAGS (\\Seen))\r\n"
            % (seq, uid, env_w, bs_w, body_w)
        )
    wire += b"T1 OK Fetch completed.\r\n"
    points = sorted({c % (len(wire) + 1) for c in cuts} | {0, len(wire)})
    chunks = [wire[a:b] for a, b in itertools.pairwise(points) if b > a]
    items = parse_fetch(framed(chunks))
    assert [(i.uid, i.extra.get("ENVELOPE"), i.extra.get("BODYSTRUCTURE")) for i in items] == [
        (uid, env, bs) for uid, (_, env), (_, bs), _ in messages
    ]
    assert [i.sections["BINARY[1]"] for i in items] == [body for *_, (_, body) in messages]
    assert all(i.flags == ("\\Seen",) for i in items)


def test_literal8_from_the_issue() -> None:
    lines = framed([b"* 1 FETCH (UID 5 BINARY[] ~{12}\r\nhello\x00world!)\r\nT1 OK done\r\n"])
    (item,) = parse_fetch(lines)
    assert item.uid == 5 and item.sections == {"BINARY[]": b"hello\x00world!"}
    assert item.body == b"hello\x00world!"


def test_empty_literals_and_several_per_line() -> None:
    wire = (
        b'* 2 FETCH (UID 7 ENVELOPE ("d" {0}\r\n NIL (({3}\r\nA B NIL "x" "y")) NIL)'
        b" BODY[HEADER] {0}\r\n BODY[TEXT] ~{2}\r\n\r\n)\r\nT1 OK done\r\n"
    )
    (item,) = parse_fetch(framed([wire]))
    assert item.extra["ENVELOPE"] == [b"d", b"", None, [[b"A B", None, b"x", b"y"]], None]
    assert item.sections == {"BODY[HEADER]": b"", "BODY[TEXT]": b"\r\n"}
