"""guardedpool.imap.framing: lines and literals out of a byte stream cut anywhere.

Property tests: any sequence of lines and literals (literals holding CRLF, braces, bare
CR and LF, ``{0}``, literal8), written as a server would and cut at arbitrary points,
comes out as exactly the same events. And the protocol's running count of a FETCH's
parentheses agrees with aioimaplib's own ``FetchCommand.wait_data`` line by line.
"""

from __future__ import annotations

import asyncio
import itertools
import re

from aioimaplib.aioimaplib import FetchCommand
from hypothesis import given, settings
from hypothesis import strategies as st

from guardedpool.imap.framing import Framer, literal_size
from guardedpool.imap.protocol import GuardedProtocol

Event = tuple[str, bytes, int | None]

# A line's text: anything but CRLF itself (a bare CR or LF may appear, as servers send).
_text = st.binary(max_size=40).map(lambda b: b.replace(b"\r\n", b"\r."))
_literal = st.binary(max_size=300)


@st.composite
def streams(draw: st.DrawFn) -> tuple[bytes, list[Event]]:
    wire = bytearray()
    events: list[Event] = []
    for _ in range(draw(st.integers(0, 12))):
        text = draw(_text)
        if draw(st.booleans()):
            body = draw(_literal)
            marker = draw(st.sampled_from([b"{%d}", b"~{%d}"])) % len(body)
            line = text + b" " + marker
            wire += line + b"\r\n" + body
            events += [("line", line, len(body)), ("literal", body, None)]
            rest = draw(_text)
            # The rest of the line after a literal, possibly empty.
            wire += rest + b"\r\n"
            if literal_size(rest) is not None:
                rest += b"x"
                wire[-2:-2] = b"x"
            events.append(("line", rest, None))
        else:
            if literal_size(text) is not None:
                text += b"x"
            wire += text + b"\r\n"
            events.append(("line", text, None))
    return bytes(wire), events


def frame(wire: bytes, cuts: list[int]) -> list[Event]:
    got: list[Event] = []
    framer = Framer(
        lambda line, size: got.append(("line", line, size)),
        lambda data: got.append(("literal", data, None)),
    )
    points = sorted({c % (len(wire) + 1) for c in cuts} | {0, len(wire)})
    for a, b in itertools.pairwise(points):
        framer.feed(wire[a:b])
    assert not framer.pending
    return got


@settings(max_examples=300, deadline=None)
@given(streams(), st.lists(st.integers(0, 10_000), max_size=20))
def test_any_cuts_give_the_same_events(stream: tuple[bytes, list[Event]], cuts: list[int]) -> None:
    wire, events = stream
    assert frame(wire, cuts) == events


@settings(max_examples=100, deadline=None)
@given(streams())
def test_byte_by_byte(stream: tuple[bytes, list[Event]]) -> None:
    wire, events = stream
    assert frame(wire, list(range(len(wire)))) == events


def test_literal_size() -> None:
    assert literal_size(b"* 1 FETCH (BODY[] {12}") == 12
    assert literal_size(b"* 1 FETCH (BINARY[] ~{0}") == 0
    assert literal_size(b"a {12} b") is None
    assert literal_size(b"{}") is None
    assert literal_size(b"{-1}") is None
    assert literal_size(b"\xd9\xa3}") is None
    assert literal_size(b"{\xd9\xa3}") is None  # a non-ASCII digit is not a digit here


def test_cr_and_lf_split_across_reads() -> None:
    got: list[bytes] = []
    framer = Framer(lambda line, _size: got.append(line), lambda _data: None)
    for piece in (b"a1 OK\r", b"\n* 2\n3\r", b"\r", b"\n"):
        framer.feed(piece)
    assert got == [b"a1 OK", b"* 2\n3\r"]
    assert not framer.pending


# -- the FETCH continuation rule against aioimaplib's ------------------------------------

_fetch_line = st.one_of(
    st.builds(
        lambda n, extra: b"* %d FETCH (UID %d FLAGS (\\Seen)%s" % (n, n, extra),
        st.integers(1, 99),
        st.sampled_from([b")", b"", b' ENVELOPE ("a (b" NIL)', b" X (", b"))"]),
    ),
    st.sampled_from([b")", b" FLAGS ())", b"(", b"* 5 EXISTS", b"text ((", b"3 FETCH (X"]),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_fetch_line, max_size=15))
def test_fetch_continuation_matches_aioimaplib(lines: list[bytes]) -> None:
    async def run() -> None:
        loop = asyncio.get_running_loop()
        protocol = GuardedProtocol(loop)
        protocol.state = "SELECTED"
        ours = FetchCommand("a1", loop=loop)
        theirs = FetchCommand("a1", loop=loop)
        protocol.pending_async_commands["FETCH"] = ours
        cont = None
        for line in lines:
            cmd = protocol._route_line(line, cont)
            if cmd is None:
                cont = None
                continue
            filed = line[2:] if cont is None and line.startswith(b"* ") else line
            theirs.append_to_resp(filed)
            mine = protocol._fetch_open(cmd, line, cont)
            assert mine == theirs.wait_data(), (line, theirs.response.lines)
            cont = cmd if mine else None

    asyncio.run(run())


def test_fetch_start_pattern_is_aioimaplibs() -> None:
    from guardedpool.imap import protocol

    assert protocol._FETCH_START.pattern == FetchCommand.FETCH_MESSAGE_DATA_RE.pattern
    assert isinstance(FetchCommand.FETCH_MESSAGE_DATA_RE, re.Pattern)
