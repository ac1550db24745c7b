"""Pure parsers for the responses a sync worker needs: no I/O, no aioimaplib import.

Input is ``Response.lines`` as :class:`~guardedpool.imap.IMAPClient` returns them, which
follows aioimaplib's layout: untagged lines without their ``* `` prefix (and, for
LIST/SEARCH/STATUS, usually without the keyword either), each literal as a separate
element right after the line that announced it with ``{N}``, and the tagged status text
as the last element. Every parser here accepts the keyword with or without its prefix,
and skips lines it does not understand (servers send unsolicited data at any time) rather
than failing on them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, TypeAlias

from .mutf7 import WireName, display

__all__ = [
    "FetchItem",
    "Value",
    "IdlePush",
    "ListEntry",
    "ParseError",
    "Response",
    "SPECIAL_USE",
    "SelectInfo",
    "parse_appenduid",
    "parse_capabilities",
    "parse_copyuid",
    "parse_enabled",
    "parse_fetch",
    "parse_idle_push",
    "parse_list",
    "parse_search",
    "parse_select",
    "parse_status",
    "response_code",
]


class Response(NamedTuple):
    """A completed command: ``result`` is ``"OK"``; ``lines`` as described in the module doc."""

    result: str
    lines: list[bytes]

    @property
    def text(self) -> str:
        """The tagged status text (e.g. ``"[READ-WRITE] Select completed."``)."""
        return self.lines[-1].decode("utf-8", "replace") if self.lines else ""


class ParseError(ValueError):
    """A response could not be parsed (malformed or truncated data)."""


Value: TypeAlias = "bytes | list[Value] | None"
"""An IMAP data item: atom/string/literal as bytes, NIL as None, a parenthesized list."""

# A literal ``{n}``, or a literal8 ``~{n}`` (RFC 3516 section 4.2, RFC 9051 section 4.3):
# n octets follow the CRLF, NUL included for literal8.
_LITERAL_START = re.compile(rb"~?\{(\d+)\+?\}\r\n")
_LITERAL_END = re.compile(rb"~?\{(\d+)\+?\}$")
_CODE = re.compile(r"^\s*\[([^\]]*)\]")
# What _tokenize reads in one step: a quoted string without escapes, an atom's bytes up to
# its end or its first bracket.
_PLAIN_QUOTED = re.compile(rb'"([^"\\]*)"')
_PLAIN_ATOM = re.compile(rb"[^ ()\[\]]*")


def _tokenize(
    buf: bytes, pos: int = 0, literals: dict[int, bytes] | None = None
) -> tuple[Value, int]:
    """Read one data item from ``buf`` at ``pos``; return it and the position after it.

    ``literals``: the literals cut out of ``buf`` (see :func:`_split_responses`), by the
    position in ``buf`` where each one's bytes stood; a literal taken from there is popped.
    """
    n = len(buf)
    while pos < n and buf[pos] == 0x20:
        pos += 1
    if pos >= n:
        raise ParseError("unexpected end of data")
    c = buf[pos]
    if c == 0x28:  # (
        items: list[Value] = []
        pos += 1
        while True:
            while pos < n and buf[pos] == 0x20:
                pos += 1
            if pos >= n:
                raise ParseError("unterminated list")
            if buf[pos] == 0x29:  # )
                return items, pos + 1
            item, pos = _tokenize(buf, pos, literals)
            items.append(item)
    if c == 0x22:  # "
        plain = _PLAIN_QUOTED.match(buf, pos)
        if plain is not None:  # no escape in it: the common case, read in one step
            return plain.group(1), plain.end()
        out = bytearray()
        pos += 1
        while pos < n:
            ch = buf[pos]
            if ch == 0x5C and pos + 1 < n:  # backslash escape
                out.append(buf[pos + 1])
                pos += 2
            elif ch == 0x22:
                return bytes(out), pos + 1
            else:
                out.append(ch)
                pos += 1
        raise ParseError("unterminated quoted string")
    if c == 0x7B or (c == 0x7E and buf[pos + 1 : pos + 2] == b"{"):  # { or ~{
        m = _LITERAL_START.match(buf, pos)
        if m is None:
            raise ParseError("malformed literal")
        start = m.end()
        if literals is not None and start in literals:
            literal = literals.pop(start)
            if len(literal) != int(m.group(1)):
                raise ParseError("literal of the wrong size")
            return literal, start
        end = start + int(m.group(1))
        if end > n:
            raise ParseError("truncated literal")
        return buf[start:end], end
    if c == 0x29:
        raise ParseError("unexpected ')'")
    # An atom; a section spec such as BODY[HEADER.FIELDS (FROM)]<0> belongs to it.
    # Up to its first bracket, if any, in one step; from there byte by byte.
    start, depth = pos, 0
    plain = _PLAIN_ATOM.match(buf, pos)
    pos = plain.end() if plain is not None else pos
    while pos < n:
        ch = buf[pos]
        if ch == 0x5B:  # [
            depth += 1
        elif ch == 0x5D:  # ]
            depth = max(0, depth - 1)
        elif depth == 0 and ch in (0x20, 0x28, 0x29):
            break
        pos += 1
    atom = buf[start:pos]
    return (None if atom.upper() == b"NIL" else atom), pos


def _split_responses(
    lines: Sequence[bytes], start: re.Pattern[bytes]
) -> Iterator[tuple[bytes, dict[int, bytes]]]:
    """Each untagged response matching ``start``, as its text and its literals.

    The wire form of a response is its text with each literal's bytes put back at the
    position it is keyed by (:func:`_wire`). The literals are the elements of ``lines``
    themselves, never copied: a message body is not copied again to be parsed.

    A line ending in ``{N}`` is followed by its literal; what follows a literal belongs to
    the same response only if it starts with a space or ``)`` (aioimaplib drops the empty
    rest of a line that ends right after a literal, as in LIST). A line that does not end
    in ``{N}`` ends the response.
    """
    # The text of a response is joined once at its end, literals left out.
    text: list[bytes] = []
    size = 0  # bytes in ``text`` so far
    literals: dict[int, bytes] = {}
    # "none": between responses; "literal": the next item is a literal; "after": one was
    # just read
    state = "none"
    for item in lines:
        if state == "literal":
            text.append(b"\r\n")
            size += 2
            # bytes as they are (aioimaplib's own framing gave bytearray: copy those)
            literals[size] = item if type(item) is bytes else bytes(item)
            state = "after"
            continue
        if state == "after":
            if item[:1] in (b" ", b")"):
                text.append(item)
                size += len(item)
                if _LITERAL_END.search(item):
                    state = "literal"
                    continue
                yield b"".join(text), literals
                text, size, literals, state = [], 0, {}, "none"
                continue
            yield b"".join(text), literals
            text, size, literals, state = [], 0, {}, "none"
        if item[:2] == b"* ":
            # aioimaplib counts parentheses across a FETCH, quoted strings and literals
            # included, so a "(" in a subject makes it file the next untagged lines
            # under the open FETCH with their "* " still on.
            item = item[2:]
        if not start.match(item):
            continue
        if _LITERAL_END.search(item):
            text, size, state = [item], len(item), "literal"
            continue
        yield bytes(item), {}
    if state != "none":  # a missing literal then fails in the tokenizer, not silently
        yield b"".join(text), literals


def _wire(text: bytes, literals: dict[int, bytes]) -> bytes:
    """A response's wire form: ``text`` with its ``literals`` back in place."""
    if not literals:
        return text
    parts: list[bytes] = []
    at = 0
    for pos, literal in sorted(literals.items()):
        parts += (text[at:pos], literal)
        at = pos
    parts.append(text[at:])
    return b"".join(parts)


def _responses(lines: Sequence[bytes], start: re.Pattern[bytes]) -> Iterator[bytes]:
    """Rejoin each untagged response matching ``start`` with its literals into wire form."""
    for text, literals in _split_responses(lines, start):
        yield _wire(text, literals)


def _strip_keyword(line: bytes, keyword: bytes) -> bytes:
    if line[: len(keyword)].upper() == keyword and line[len(keyword) : len(keyword) + 1] in (
        b" ",
        b"",
    ):
        return line[len(keyword) + 1 :]
    return line


def _int(value: Value) -> int | None:
    if isinstance(value, bytes) and value.isdigit():
        return int(value)
    return None


def _strings(value: Value) -> tuple[str, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(v.decode("utf-8", "replace") for v in value if isinstance(v, bytes))


def response_code(text: str | bytes) -> str | None:
    """The response code of a status text, upper-cased: ``"[ALERT] x"`` -> ``"ALERT"``.

    Only the code's name; ``"[UIDNEXT 5] ..."`` gives ``"UIDNEXT"``.
    """
    s = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    m = _CODE.match(s)
    if m is None or not m.group(1).strip():
        return None
    return m.group(1).split()[0].upper()


def parse_enabled(lines: Sequence[bytes]) -> frozenset[str]:
    """Capabilities an ENABLE turned on: the ``ENABLED ...`` lines (RFC 5161 §3.2),
    upper-cased; empty when the server enabled none."""
    out: set[str] = set()
    for line in lines[:-1]:
        words = bytes(line).split()
        if words and words[0].upper() == b"ENABLED":
            out.update(w.decode("ascii", "replace").upper() for w in words[1:])
    return frozenset(out)


def parse_capabilities(lines: Sequence[bytes]) -> frozenset[str] | None:
    """Capabilities from ``CAPABILITY ...`` lines or a ``[CAPABILITY ...]`` response code.

    Upper-cased. None when the response carries no capability data at all (the caller
    then asks with a CAPABILITY command). This replaces aioimaplib's post-LOGIN parsing,
    which adds words of the status text to the set.
    """
    found: set[str] = set()
    seen = False
    for line in lines:
        text = line.decode("utf-8", "replace")
        m = re.search(r"\[CAPABILITY ([^\]]*)\]", text, re.IGNORECASE)
        if m is not None:
            found.update(m.group(1).upper().split())
            seen = True
        elif text[:11].upper() == "CAPABILITY ":
            found.update(text[11:].upper().split())
            seen = True
    return frozenset(found) if seen else None


@dataclass(frozen=True, slots=True)
class SelectInfo:
    """What SELECT/EXAMINE says about a mailbox; None where the server did not say."""

    exists: int | None = None
    recent: int | None = None
    uidvalidity: int | None = None
    uidnext: int | None = None
    highestmodseq: int | None = None
    unseen: int | None = None
    flags: tuple[str, ...] = ()
    permanent_flags: tuple[str, ...] = ()
    read_only: bool = False


_SELECT_NUM = re.compile(rb"^(\d+) (EXISTS|RECENT)\s*$", re.IGNORECASE)
_SELECT_CODE = re.compile(rb"^OK \[(UIDVALIDITY|UIDNEXT|HIGHESTMODSEQ|UNSEEN) (\d+)\]", re.I)
_SELECT_FLAGS = re.compile(rb"^FLAGS \(([^)]*)\)", re.IGNORECASE)
_SELECT_PERMFLAGS = re.compile(rb"^OK \[PERMANENTFLAGS \(([^)]*)\)\]", re.IGNORECASE)


def parse_select(lines: Sequence[bytes]) -> SelectInfo:
    """Parse a SELECT or EXAMINE response (``Response.lines``)."""
    nums: dict[str, int] = {}
    flags: tuple[str, ...] = ()
    permanent: tuple[str, ...] = ()
    read_only = False
    for line in lines:
        if m := _SELECT_NUM.match(line):
            nums[m.group(2).decode().upper()] = int(m.group(1))
        elif m := _SELECT_CODE.match(line):
            nums[m.group(1).decode().upper()] = int(m.group(2))
        elif m := _SELECT_FLAGS.match(line):
            flags = tuple(m.group(1).decode("utf-8", "replace").split())
        elif m := _SELECT_PERMFLAGS.match(line):
            permanent = tuple(m.group(1).decode("utf-8", "replace").split())
        elif response_code(line) == "READ-ONLY":
            read_only = True
    return SelectInfo(
        exists=nums.get("EXISTS"),
        recent=nums.get("RECENT"),
        uidvalidity=nums.get("UIDVALIDITY"),
        uidnext=nums.get("UIDNEXT"),
        highestmodseq=nums.get("HIGHESTMODSEQ"),
        unseen=nums.get("UNSEEN"),
        flags=flags,
        permanent_flags=permanent,
        read_only=read_only,
    )


def parse_search(lines: Sequence[bytes]) -> list[int]:
    """Numbers (sequence numbers or UIDs) from a SEARCH / UID SEARCH response.

    A CONDSTORE ``(MODSEQ n)`` suffix is ignored; the tagged status text is skipped.
    """
    out: list[int] = []
    for line in lines[:-1]:
        body = _strip_keyword(line, b"SEARCH").split(b"(", 1)[0]
        tokens = body.split()
        if tokens and all(t.isdigit() for t in tokens):
            out.extend(int(t) for t in tokens)
    return out


_STATUS_ITEMS = re.compile(rb"\(([^()]*)\)\s*$")


def parse_status(lines: Sequence[bytes]) -> dict[str, int]:
    """``{"MESSAGES": 2, "UIDNEXT": 3, ...}`` from a STATUS response."""
    out: dict[str, int] = {}
    for line in lines[:-1]:
        m = _STATUS_ITEMS.search(line)
        if m is None:
            continue
        tokens = m.group(1).split()
        for name, value in zip(tokens[::2], tokens[1::2], strict=False):
            if value.isdigit():
                out[name.decode("ascii", "replace").upper()] = int(value)
    return out


SPECIAL_USE = frozenset(
    {"\\All", "\\Archive", "\\Drafts", "\\Flagged", "\\Junk", "\\Sent", "\\Trash"}
)
"""The mailbox roles of RFC 6154 §2, as LIST attributes."""

_NOT_SELECTABLE = frozenset({"\\NOSELECT", "\\NONEXISTENT"})


@dataclass(frozen=True, slots=True)
class ListEntry:
    """One mailbox of a LIST response.

    Attributes:
        name: as the server sent it (modified UTF-7, or UTF-8 where the session enabled
            UTF8=ACCEPT), a :class:`~guardedpool.imap.mutf7.WireName`: pass it back to
            SELECT unchanged. Equal to the plain ``str`` of the same text.
        delimiter: the hierarchy delimiter (``"/"``, ``"."``), None for a flat name (NIL).
        flags: the name attributes as sent, e.g. ``("\\HasNoChildren", "\\Trash")``.
        human: ``name`` decoded for display (``Entwürfe`` for ``Entw&APw-rfe``); the name
            as sent when it is not valid modified UTF-7.
    """

    name: WireName
    delimiter: str | None
    flags: tuple[str, ...]
    human: str

    @property
    def selectable(self) -> bool:
        """False for ``\\Noselect`` (RFC 3501 §7.2.2) and ``\\NonExistent`` (RFC 5258
        §3.4): a name in the hierarchy that SELECT would refuse."""
        return not any(f.upper() in _NOT_SELECTABLE for f in self.flags)

    @property
    def special_use(self) -> frozenset[str]:
        """The mailbox's roles (RFC 6154 §2), e.g. ``{"\\Junk"}``; empty when the server
        announces none (no SPECIAL-USE, or an ordinary mailbox)."""
        roles = {r.upper(): r for r in SPECIAL_USE}
        return frozenset(roles[f.upper()] for f in self.flags if f.upper() in roles)


_LIST_START = re.compile(rb"^(LIST |LSUB )?\(", re.IGNORECASE)


def parse_list(lines: Sequence[bytes], *, utf8: bool = False) -> list[ListEntry]:
    """Mailboxes from a LIST (or LSUB) response (RFC 3501 §7.2.2).

    ``utf8``: the session enabled UTF8=ACCEPT (RFC 6855), so names are UTF-8 rather than
    modified UTF-7 (``IMAPClient.utf8_enabled``); it only changes ``human``.
    """
    out: list[ListEntry] = []
    for raw in _responses(lines, _LIST_START):
        data = _strip_keyword(_strip_keyword(raw, b"LIST"), b"LSUB")
        try:
            flags, pos = _tokenize(data)
            delim, pos = _tokenize(data, pos)
            name, _ = _tokenize(data, pos)
        except ParseError:
            continue
        if name is None:  # the name is an astring (RFC 3501 9): an atom NIL is "NIL"
            name = b"NIL"
        if not isinstance(name, bytes):
            continue
        wire = name.decode("utf-8", "replace")
        out.append(
            ListEntry(
                name=WireName(wire),
                delimiter=delim.decode("utf-8", "replace") if isinstance(delim, bytes) else None,
                flags=_strings(flags),
                human=wire if utf8 else display(wire),
            )
        )
    return out


@dataclass(frozen=True, slots=True)
class FetchItem:
    """One message of a FETCH / UID FETCH / STORE response.

    ``sections`` maps each body item the server returned (``"BODY[]"``,
    ``"BODY[HEADER]"``, ``"RFC822"``, ``"BINARY[1]"``, partial ``"BODY[]<0>"``...) to its
    bytes (None for NIL); a literal8 (``~{n}``, RFC 3516) is read like a literal, so a
    ``BINARY[...]`` section holds exactly the decoded octets. ``extra`` keeps every other
    data item as a parsed :data:`Value` (``ENVELOPE``, ``BODYSTRUCTURE``,
    ``BINARY.SIZE[1]``, ``X-GM-LABELS``...). Unsolicited FETCH responses (a flag change
    from another session) show up as items too, usually without ``uid``.
    """

    seq: int
    uid: int | None = None
    flags: tuple[str, ...] | None = None
    size: int | None = None
    modseq: int | None = None
    internaldate: str | None = None
    sections: dict[str, bytes | None] = field(default_factory=dict)
    extra: dict[str, Value] = field(default_factory=dict)

    @property
    def body(self) -> bytes | None:
        """The whole message, whichever way it was asked for (BODY[], RFC822, BINARY[])."""
        for key in ("BODY[]", "RFC822", "BINARY[]"):
            value = self.sections.get(key)
            if value is not None:
                return value
        return None


_FETCH_START = re.compile(rb"^(\d+) FETCH \(", re.IGNORECASE)
_SECTION_KEYS = ("BODY[", "BINARY[", "RFC822")


def _fetch_values(text: bytes, literals: dict[int, bytes]) -> tuple[int, list[Value]]:
    """The sequence number and data items of one FETCH response (:func:`_split_responses`).

    Literals are taken as they are (not copied) when every one of them is read where it
    stands; any other case, malformed data included, is read from the rejoined wire form
    exactly as before, so both ways give the same items or the same error.
    """
    m = _FETCH_START.match(text)
    assert m is not None
    left = dict(literals)
    try:
        values, _ = _tokenize(text, m.end() - 1, left)
        if left:
            raise ParseError("a literal not read where it stands")
    except ParseError:
        values, _ = _tokenize(_wire(text, literals), m.end() - 1)
    if not isinstance(values, list):
        raise ParseError("FETCH data is not a list")
    return int(m.group(1)), values


# The answer to a sync worker's ``UID FETCH <set> (UID FLAGS [RFC822.SIZE] BODY.PEEK[])``
# as Dovecot and most servers write it, flags plain atoms: read with one match
# (_common_fetch_item).
_FLAG_ATOM = rb"[A-Za-z0-9\\$_.\-]+"
_COMMON_FETCH = re.compile(
    rb"([0-9]+) FETCH \(UID ([0-9]+) FLAGS \((%s(?: %s)*)?\)(?: RFC822\.SIZE ([0-9]+))? "
    rb"(BODY\[\]|BINARY\[\]|RFC822) \{([0-9]+)\}\r\n\)" % (_FLAG_ATOM, _FLAG_ATOM)
)


def _common_fetch_item(text: bytes, literals: dict[int, bytes]) -> FetchItem | None:
    """The item of a response of exactly the common shape (see ``_COMMON_FETCH``), with
    its one literal where it stands; None for any other (read by :func:`_fetch_item`)."""
    if len(literals) != 1:
        return None
    m = _COMMON_FETCH.fullmatch(text)
    if m is None:
        return None
    body = literals.get(len(text) - 1)
    if body is None or len(body) != int(m.group(6)):
        return None
    words = m.group(3).split() if m.group(3) else []
    if any(w.upper() == b"NIL" for w in words):  # NIL is no flag: the tokenizer drops it
        return None
    return FetchItem(
        seq=int(m.group(1)),
        uid=int(m.group(2)),
        flags=tuple(w.decode("ascii") for w in words),
        size=int(m.group(4)) if m.group(4) is not None else None,
        sections={m.group(5).decode("ascii"): body},
    )


def _fetch_item(text: bytes, literals: dict[int, bytes]) -> FetchItem:
    common = _common_fetch_item(text, literals)
    if common is not None:
        return common
    seq, values = _fetch_values(text, literals)
    uid = size = modseq = None
    flags: tuple[str, ...] | None = None
    internaldate: str | None = None
    sections: dict[str, bytes | None] = {}
    extra: dict[str, Value] = {}
    for key_v, value in zip(values[::2], values[1::2], strict=False):
        if not isinstance(key_v, bytes):
            continue
        key = key_v.decode("ascii", "replace")
        upper = key.upper()
        if upper == "UID":
            uid = _int(value)
        elif upper == "FLAGS":
            flags = _strings(value)
        elif upper == "RFC822.SIZE":
            size = _int(value)
        elif upper == "MODSEQ":
            modseq = _int(value[0]) if isinstance(value, list) and value else _int(value)
        elif upper == "INTERNALDATE":
            internaldate = value.decode("ascii", "replace") if isinstance(value, bytes) else None
        elif upper.startswith(_SECTION_KEYS) and not isinstance(value, list):
            sections[upper] = value
        else:
            extra[upper] = value
    return FetchItem(
        seq=seq,
        uid=uid,
        flags=flags,
        size=size,
        modseq=modseq,
        internaldate=internaldate,
        sections=sections,
        extra=extra,
    )


def parse_fetch(lines: Sequence[bytes]) -> list[FetchItem]:
    """Messages from a FETCH / UID FETCH / STORE response, in the server's order.

    Raises :class:`ParseError` for a FETCH response that is malformed (rather than
    silently dropping a message a sync worker would then never see).
    """
    return [_fetch_item(*response) for response in _split_responses(lines, _FETCH_START)]


@dataclass(frozen=True, slots=True)
class IdlePush:
    """One line the server pushed during IDLE.

    ``kind`` is ``"EXISTS"``, ``"EXPUNGE"``, ``"RECENT"``, ``"FETCH"``, ``"OK"`` (keepalive
    such as Dovecot's "Still here"), ``"BYE"`` or ``"OTHER"``; ``number`` is the message
    count or sequence number where there is one.
    """

    kind: str
    number: int | None
    raw: bytes


_PUSH_NUM = re.compile(rb"^(\d+) (EXISTS|EXPUNGE|RECENT|FETCH)\b", re.IGNORECASE)


def parse_idle_push(lines: Sequence[bytes]) -> list[IdlePush]:
    """Classify the lines of one ``wait_server_push()`` batch."""
    out: list[IdlePush] = []
    for line in lines:
        if m := _PUSH_NUM.match(line):
            out.append(IdlePush(m.group(2).decode().upper(), int(m.group(1)), line))
        elif line[:3].upper() in (b"OK", b"OK "):
            out.append(IdlePush("OK", None, line))
        elif line[:3].upper() == b"BYE":
            out.append(IdlePush("BYE", None, line))
        else:
            out.append(IdlePush("OTHER", None, line))
    return out


_APPENDUID = re.compile(r"\[APPENDUID (\d+) (\d+)\]", re.IGNORECASE)
_COPYUID = re.compile(r"\[COPYUID (\d+) ([0-9:,*]+) ([0-9:,*]+)\]", re.IGNORECASE)


def _search_text(lines: Sequence[bytes], pattern: re.Pattern[str]) -> re.Match[str] | None:
    for line in reversed(lines):
        m = pattern.search(line.decode("utf-8", "replace"))
        if m is not None:
            return m
    return None


def parse_appenduid(lines: Sequence[bytes]) -> tuple[int, int] | None:
    """``(uidvalidity, uid)`` of an APPEND on a UIDPLUS server, else None."""
    m = _search_text(lines, _APPENDUID)
    return (int(m.group(1)), int(m.group(2))) if m else None


def parse_copyuid(lines: Sequence[bytes]) -> tuple[int, str, str] | None:
    """``(uidvalidity, source uid set, destination uid set)`` of a COPY/MOVE, else None."""
    m = _search_text(lines, _COPYUID)
    return (int(m.group(1)), m.group(2), m.group(3)) if m else None
