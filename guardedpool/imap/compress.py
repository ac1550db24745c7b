"""COMPRESS=DEFLATE (RFC 4978): raw deflate both ways after the tagged OK.

The compressed stream runs on the same transport and the same socket: :class:`Deflate`
wraps the transport the protocol writes to, and delegates everything but ``write`` to it,
so ``get_extra_info("socket")`` (the audit's identity), ``abort()`` and ``is_closing()``
(the close path) are the plain or TLS transport's own. Every bound stays what it was: a
compressed command is one more ``write`` on the same connection.

Each write is flushed with ``Z_SYNC_FLUSH`` (RFC 4978 section 4: the client must flush
after each command so the server can act on it). Inflating server data is the protocol's
job (:meth:`GuardedProtocol.start_inflate`), because the bytes that follow the tagged OK
in the same read are already compressed.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from typing import Any

from .protocol import GuardedProtocol

__all__ = ["Deflate", "start_compression"]

log = logging.getLogger("guardedpool.imap")

# RFC 4978 section 4: raw deflate (RFC 1951), no zlib header: wbits -15.
WBITS = -15


class Deflate(asyncio.Transport):
    """A write-side deflate over another transport; everything else is delegated.

    Attributes:
        raw_out: bytes handed to ``write`` before compression.
        wire_out: bytes written to the inner transport after compression.
    """

    def __init__(self, inner: asyncio.Transport, level: int = 6) -> None:
        super().__init__()
        self.inner = inner
        self._deflate = zlib.compressobj(level, zlib.DEFLATED, WBITS)
        self.raw_out = 0
        self.wire_out = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        packed = self._deflate.compress(bytes(data)) + self._deflate.flush(zlib.Z_SYNC_FLUSH)
        self.raw_out += len(data)
        self.wire_out += len(packed)
        self.inner.write(packed)

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        raise NotImplementedError("a deflate stream has no half-close")

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.inner.get_extra_info(name, default)

    def is_closing(self) -> bool:
        return self.inner.is_closing()

    def close(self) -> None:
        self.inner.close()

    def abort(self) -> None:
        self.inner.abort()

    def is_reading(self) -> bool:
        return self.inner.is_reading()

    def pause_reading(self) -> None:
        self.inner.pause_reading()

    def resume_reading(self) -> None:
        self.inner.resume_reading()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.inner.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self.inner.get_protocol()

    def get_write_buffer_size(self) -> int:
        return self.inner.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self.inner.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.inner.set_write_buffer_limits(high, low)


async def start_compression(protocol: GuardedProtocol) -> bool:
    """``COMPRESS DEFLATE`` when the server offers ``COMPRESS=DEFLATE``; True if it is on.

    A ``NO`` (e.g. compression already active at a proxy) leaves the connection
    uncompressed and usable. No bound of its own: the connector's ``connect_timeout``
    covers it.
    """
    if "COMPRESS=DEFLATE" not in {str(c).upper() for c in protocol.capabilities}:
        log.debug("imap server does not offer COMPRESS=DEFLATE; staying uncompressed")
        return False
    result, text = await protocol.call(protocol.switch("COMPRESS DEFLATE"))
    # No await from here on: the bytes after the OK are compressed, and so is everything
    # read from now on.
    rest = protocol.end_switch()
    if result != "OK":
        log.info(
            "imap server answered COMPRESS with %s %s; staying uncompressed",
            result,
            text[:200],
            extra={"result": result},
        )
        if rest:
            protocol.data_received(rest)
        return False
    transport = protocol.transport
    assert isinstance(transport, asyncio.Transport)
    protocol.transport = Deflate(transport)
    protocol.start_inflate(rest)
    return True
