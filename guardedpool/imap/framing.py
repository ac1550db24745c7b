"""Server data cut into lines and literals (RFC 3501 section 4.3, RFC 9051 section 4.3).

Sans-I/O: :class:`Framer` is fed the bytes as they arrive, in any cuts, and calls
``on_line(line, size)`` for each line (CRLF removed; ``size`` is the byte count of the
literal the line announces, or None) and ``on_literal(data)`` for each literal's bytes, in
stream order. A line ending in ``{N}`` (or ``~{N}``, a literal8 of RFC 3516
section 4.2) announces a literal of ``N`` bytes: the next ``N`` bytes are that literal,
counted and never searched, and the line resumes after them. That rule is syntactic, so
the framer needs no knowledge of commands; what each line means is the protocol's job.

Each byte is copied once on its way into a line or literal (a literal that arrives in one
read is one slice of it; one spread over reads is joined once), and each line is found
with one search of its own bytes: the cost is linear in the data, however it is cut.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["Framer", "literal_size"]

_CR = 0x0D


def literal_size(line: bytes) -> int | None:
    """N when ``line`` (CRLF removed) ends with ``{N}``, else None."""
    if not line.endswith(b"}"):
        return None
    start = line.rfind(b"{")
    digits = line[start + 1 : -1]
    if start < 0 or not digits.isdigit() or not digits.isascii():
        return None
    return int(digits)


class Framer:
    """Splits a byte stream into lines and literals; see the module doc.

    Args:
        on_line: called with each line, without its CRLF (a bare LF is part of a line), and
            the size of the literal it announces (None when it announces none).
        on_literal: called with each literal's bytes, right after the line announcing it.

    Attributes:
        pending: True while a partial line or literal is buffered.
    """

    def __init__(
        self,
        on_line: Callable[[bytes, int | None], None],
        on_literal: Callable[[bytes], None],
    ) -> None:
        self.on_line = on_line
        self.on_literal = on_literal
        self._partial = bytearray()  # a line cut by a read, without what is not here yet
        self._literal_left = 0
        self._literal_parts: list[bytes] = []

    @property
    def pending(self) -> bool:
        return bool(self._partial) or self._literal_left > 0

    def feed(self, data: bytes) -> None:
        """Consume ``data``; callbacks run before this returns. Exceptions from a callback
        propagate and leave the framer's position undefined (the connection is done)."""
        pos, size = 0, len(data)
        while pos < size:
            if self._literal_left:
                pos = self._literal(data, pos, size)
                continue
            end = self._line_end(data, pos, size)
            if end < 0:
                self._partial += data[pos:] if pos else data
                return
            if self._partial:
                self._partial += data[pos:end]
                line = bytes(self._partial[:-2])
                self._partial.clear()
            else:
                line = data[pos : end - 2]
            pos = end
            self._line(line)

    def _line_end(self, data: bytes, pos: int, size: int) -> int:
        """The index just after the next CRLF, or -1 when the line is not complete."""
        search = pos
        while True:
            nl = data.find(b"\n", search)
            if nl < 0:
                return -1
            if nl > pos:
                if data[nl - 1] == _CR:
                    return nl + 1
            elif self._partial and self._partial[-1] == _CR:
                return nl + 1
            search = nl + 1

    def _line(self, line: bytes) -> None:
        size = literal_size(line)
        self.on_line(line, size)
        if size is not None:
            if size == 0:
                self.on_literal(b"")
            else:
                self._literal_left = size

    def _literal(self, data: bytes, pos: int, size: int) -> int:
        take = min(self._literal_left, size - pos)
        piece = data if take == size else data[pos : pos + take]
        self._literal_left -= take
        if self._literal_left:
            self._literal_parts.append(piece)
            return pos + take
        parts, self._literal_parts = self._literal_parts, []
        self.on_literal(b"".join((*parts, piece)) if parts else piece)
        return pos + take
