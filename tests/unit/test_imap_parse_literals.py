"""``parse_fetch`` takes literals as they are, and reads exactly what the wire form says.

The common answer (``UID n FLAGS (...) BODY[] {n}``) is read with one match: it must give
what the tokenizer gives. And the tokenizer, which now reads plain atoms and quoted
strings in one step, must read any bytes exactly as its byte-by-byte form did (the last
test).

``parse_fetch`` no longer rejoins a response with its literals to read it: each literal
(a message body) is taken from ``Response.lines`` as it is, where the data says a literal
of that size stands. On any other data it falls back to the rejoined wire form. Either way
the items (or the error) must be those of the rejoined form, read as before: the oracle
below is the rejoining code as it was, and the lines are made to hit the edges (braces in
quoted strings and atoms, literals of the wrong size, missing literals, text after a
list's end, unbalanced parentheses).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from guardedpool.imap import FetchItem, ParseError, parse_fetch
from guardedpool.imap.parse import Value, _fetch_item, _tokenize

_FETCH_START = re.compile(rb"^(\d+) FETCH \(", re.IGNORECASE)
_LITERAL_END = re.compile(rb"~?\{(\d+)\+?\}$")
_LITERAL_START = re.compile(rb"~?\{(\d+)\+?\}\r\n")


def rejoined(lines: Sequence[bytes]) -> Iterator[bytes]:
    """The wire form of each FETCH response: the rejoining code before literals were
    taken as they are (commit cbb2af6's ``parse._responses``), kept as the oracle."""
    current: list[bytes] | None = None
    state = "text"
    for item in lines:
        if state == "literal":
            assert current is not None
            current += (b"\r\n", item)
            state = "after"
            continue
        if state == "after":
            assert current is not None
            if item[:1] in (b" ", b")"):
                current.append(item)
                if _LITERAL_END.search(item):
                    state = "literal"
                    continue
                yield b"".join(current)
                current, state = None, "text"
                continue
            yield b"".join(current)
            current, state = None, "text"
        if item[:2] == b"* ":
            item = item[2:]
        if not _FETCH_START.match(item):
            continue
        if _LITERAL_END.search(item):
            current, state = [item], "literal"
            continue
        yield bytes(item)
    if current is not None:
        yield b"".join(current)


def oracle(lines: Sequence[bytes]) -> list[FetchItem] | str:
    try:
        return [_fetch_item(raw, {}) for raw in rejoined(lines)]
    except ParseError as exc:
        return f"ParseError: {exc}"


def ours(lines: Sequence[bytes]) -> list[FetchItem] | str:
    try:
        return parse_fetch(lines)
    except ParseError as exc:
        return f"ParseError: {exc}"


FRAGMENTS = [
    b" ",
    b"(",
    b")",
    b'"',
    b"\\",
    b"UID 7",
    b"FLAGS (\\Seen)",
    b"BODY[]",
    b"BODY[HEADER.FIELDS (FROM)]",
    b"NIL",
    b"{3}",
    b"{0}",
    b"~{2}",
    b"{12}\r\n",
    b"x{3}",
    b'"a{2}',
    b"\r\n",
    b"ab",
]
text = st.lists(st.sampled_from(FRAGMENTS), max_size=8).map(b"".join)
literal = st.one_of(st.binary(max_size=14), st.sampled_from([b"abc", b"", b"ab", b'a"b', b") (x"]))


@st.composite
def responses(draw: st.DrawFn) -> list[bytes]:
    """FETCH responses in ``Response.lines`` layout, each line that ends in ``{N}`` most
    often followed by a literal of N bytes, sometimes by one of another size or none."""
    lines: list[bytes] = []
    for seq in range(1, draw(st.integers(1, 3)) + 1):
        line = b"%d FETCH (" % seq + draw(text)
        for _ in range(draw(st.integers(0, 3))):
            body = draw(literal)
            size = draw(st.sampled_from([len(body), len(body), len(body), len(body) + 1, 0]))
            lines.append(line + draw(st.sampled_from([b"{%d}", b"~{%d}"])) % size)
            if draw(st.integers(0, 9)):
                lines.append(body)
            line = draw(st.sampled_from([b" ", b")", b""])) + draw(text)
        lines.append(line + draw(st.sampled_from([b")", b"", b") extra", b"))"])))
    lines.append(b"Fetch completed.")
    return lines


@settings(max_examples=600, deadline=None)
@given(responses())
def test_same_items_or_error_as_the_rejoined_wire_form(lines: list[bytes]) -> None:
    assert ours(lines) == oracle(lines)


FLAG_WORDS = [b"\\Seen", b"\\Flagged", b"$Label1", b"NIL", b"nil", b"\\*", b"a[b]", b'"q"', b"x{1}"]


@st.composite
def common_shaped(draw: st.DrawFn) -> list[bytes]:
    """Answers of the shape read in one match (``UID n FLAGS (...) [RFC822.SIZE n]
    BODY[] {n}``), and answers one detail away from it."""
    seq = draw(st.sampled_from([b"1", b"42", b"007"]))
    uid = draw(st.sampled_from([b"5", b"0", b"12345678901234567890", b"-1", b"u"]))
    flags = b" ".join(draw(st.lists(st.sampled_from(FLAG_WORDS), max_size=3)))
    section = draw(st.sampled_from([b"BODY[]", b"BINARY[]", b"RFC822", b"body[]", b"BODY[1]"]))
    body = draw(st.binary(max_size=20))
    size = draw(st.sampled_from([len(body), len(body), len(body) + 1]))
    keyword = draw(st.sampled_from([b"UID", b"UID", b"uid"]))
    rfc822_size = draw(st.sampled_from([b"", b" RFC822.SIZE %d" % len(body), b" RFC822.SIZE x"]))
    tail = draw(st.sampled_from([b")", b")", b" )", b") x", b" FLAGS (b))"]))
    line = b"%s FETCH (%s %s FLAGS (%s)%s %s {%d}" % (
        seq,
        keyword,
        uid,
        flags,
        rfc822_size,
        section,
        size,
    )
    return [line, body, tail, b"done"]


@settings(max_examples=400, deadline=None)
@given(common_shaped())
def test_the_common_shape_reads_as_the_tokenizer_reads_it(lines: list[bytes]) -> None:
    assert ours(lines) == oracle(lines)


def test_a_body_is_the_very_object_of_the_lines() -> None:
    body = b"Subject: x\r\n\r\n(unbalanced { 5}\r\n" * 100
    lines = [b"1 FETCH (UID 9 FLAGS (\\Seen) BODY[] {%d}" % len(body), body, b")", b"done"]
    (item,) = parse_fetch(lines)
    assert item.uid == 9 and item.flags == ("\\Seen",)
    assert item.body is body  # not copied


def test_brace_in_a_quoted_string_is_not_a_literal() -> None:
    lines = [b'1 FETCH (UID 1 X "a {3}', b"abc", b'" BODY[] {2}', b"hi", b")", b"done"]
    assert ours(lines) == oracle(lines)


def tokenize_as_before(buf: bytes, pos: int = 0) -> tuple[Value, int]:
    """``parse._tokenize`` byte by byte, as it was before its one-step atoms and quoted
    strings (commit cbb2af6), kept as the oracle."""
    n = len(buf)
    while pos < n and buf[pos] == 0x20:
        pos += 1
    if pos >= n:
        raise ParseError("unexpected end of data")
    c = buf[pos]
    if c == 0x28:
        items: list[Value] = []
        pos += 1
        while True:
            while pos < n and buf[pos] == 0x20:
                pos += 1
            if pos >= n:
                raise ParseError("unterminated list")
            if buf[pos] == 0x29:
                return items, pos + 1
            item, pos = tokenize_as_before(buf, pos)
            items.append(item)
    if c == 0x22:
        out = bytearray()
        pos += 1
        while pos < n:
            ch = buf[pos]
            if ch == 0x5C and pos + 1 < n:
                out.append(buf[pos + 1])
                pos += 2
            elif ch == 0x22:
                return bytes(out), pos + 1
            else:
                out.append(ch)
                pos += 1
        raise ParseError("unterminated quoted string")
    if c == 0x7B or (c == 0x7E and buf[pos + 1 : pos + 2] == b"{"):
        m = _LITERAL_START.match(buf, pos)
        if m is None:
            raise ParseError("malformed literal")
        start = m.end()
        end = start + int(m.group(1))
        if end > n:
            raise ParseError("truncated literal")
        return buf[start:end], end
    if c == 0x29:
        raise ParseError("unexpected ')'")
    start, depth = pos, 0
    while pos < n:
        ch = buf[pos]
        if ch == 0x5B:
            depth += 1
        elif ch == 0x5D:
            depth = max(0, depth - 1)
        elif depth == 0 and ch in (0x20, 0x28, 0x29):
            break
        pos += 1
    atom = buf[start:pos]
    return (None if atom.upper() == b"NIL" else atom), pos


def outcome(tokenize: Callable[[bytes], tuple[Value, int]], buf: bytes) -> object:
    try:
        return tokenize(buf)
    except ParseError as exc:
        return f"ParseError: {exc}"


TOKEN_BYTES = [b" ", b"(", b")", b"[", b"]", b'"', b"\\", b"a", b"NIL", b"{2}\r\n", b"\r\n", b"<0>"]


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(TOKEN_BYTES), st.binary(max_size=3)), max_size=14))
def test_tokenizer_reads_as_before(parts: list[bytes]) -> None:
    buf = b"".join(parts)
    assert outcome(_tokenize, buf) == outcome(tokenize_as_before, buf)
