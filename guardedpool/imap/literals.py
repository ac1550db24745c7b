"""Command arguments as literals (RFC 3501 section 4.3, RFC 9051 section 4.3), pure.

An 8-bit string such as a UTF-8 search term may not go on the wire as an atom or a
quoted string (RFC 3501 section 9: they are 7-bit); it must be a literal, ``{n}`` CRLF
then n octets. A synchronising literal waits for the server's ``+`` continuation before
its octets are sent; a non-synchronising one, ``{n+}``, does not:

* ``LITERAL+`` (RFC 7888 section 3): any size may be non-synchronising.
* ``LITERAL-`` (RFC 7888 section 4; part of IMAP4rev2): up to 4096 octets.
* neither: every literal synchronises.

:func:`command_chunks` cuts a command into what is written at once and what waits for a
``+``; :func:`criteria_pieces` turns search criteria into text and literals. The wait for
each ``+`` is bounded by the command's own timeout (``op_timeout``).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Sequence, Set

__all__ = ["Piece", "command_chunks", "criteria_pieces", "nonsync_limit"]

Piece = str | bytes
"""A piece of a command line: ``str`` is sent as is (ASCII), ``bytes`` as a literal."""

LITERAL_MINUS_MAX = 4096

# A quoted string (with its escapes) or a bare word; what lies between (spaces,
# parentheses) is kept as it is.
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[^\s()"]+')


def nonsync_limit(capabilities: Set[str]) -> int:
    """The largest literal that may be sent without waiting for ``+`` (0: none)."""
    if "LITERAL+" in capabilities:
        return sys.maxsize
    if "LITERAL-" in capabilities:
        return LITERAL_MINUS_MAX
    return 0


def command_chunks(tag: str, pieces: Iterable[Piece], nonsync_max: int) -> list[bytes]:
    """The command's bytes, cut where a synchronising literal waits for ``+``.

    ``chunks[0]`` is written at once; each later chunk after one ``+`` from the server.
    The last chunk ends with CRLF.
    """
    chunks: list[bytes] = []
    current = bytearray(tag.encode("ascii"))
    for piece in pieces:
        if isinstance(piece, str):
            if not piece.isascii() or "\r" in piece or "\n" in piece or "\0" in piece:
                raise ValueError("command text must be ASCII without CR, LF or NUL")
            current += piece.encode("ascii")
        elif len(piece) <= nonsync_max:
            current += b"{%d+}\r\n" % len(piece) + piece
        else:
            current += b"{%d}\r\n" % len(piece)
            chunks.append(bytes(current))
            current = bytearray(piece)
    current += b"\r\n"
    chunks.append(bytes(current))
    return chunks


def _unquote(token: str) -> str:
    if len(token) >= 2 and token[0] == token[-1] == '"':
        return re.sub(r"\\(.)", r"\1", token[1:-1])
    return token


def criteria_pieces(criteria: Sequence[str], charset: str) -> list[Piece]:
    """Search criteria as pieces: every word or quoted string that is not ASCII becomes
    a literal in ``charset`` (its quotes dropped); the rest is kept byte for byte.

    Raises ValueError for text with CR, LF or NUL, or that ``charset`` cannot encode.
    """
    pieces: list[Piece] = []
    for criterion in criteria:
        if re.search(r"[\r\n\0]", criterion):
            raise ValueError("search criteria must not contain CR, LF or NUL")
        pieces.append(" ")
        last = 0
        for m in _TOKEN.finditer(criterion):
            token = m.group(0)
            if token.isascii():
                continue
            pieces.append(criterion[last : m.start()])
            try:
                pieces.append(_unquote(token).encode(charset))
            except (UnicodeEncodeError, LookupError) as exc:
                raise ValueError(f"search criterion cannot be sent in {charset}: {exc}") from None
            last = m.end()
        pieces.append(criterion[last:])
    return [p for p in pieces if p != ""]
