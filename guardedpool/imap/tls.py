"""TLS of our own over the plain TCP transport: ``ssl.SSLObject`` on two ``MemoryBIO``.

Why not ``loop.start_tls``: asyncio's TLS transport keeps a 256 KiB read buffer per
connection for as long as the connection lives (``SSLProtocol.max_size``), ~262 kB of the
~295 kB an IDLE connection costs; 10,000 IDLE accounts would hold ~2.6 GB of buffers that
hold nothing. Here the plain transport reads as asyncio reads any socket (one ``recv``,
sized by asyncio, of what is there), the ``SSLObject`` decrypts record by record, and
nothing is kept between reads but OpenSSL's own state (a few kB).

* The plain transport reads into one receive buffer per thread (``recv_into``, as a
  :class:`asyncio.BufferedProtocol`), shared by every connection: each read goes to
  OpenSSL at once, before the loop can make another. asyncio's ``recv`` path instead
  allocates a 256 KiB object per read and frees it (above glibc's mmap threshold, so a
  map and an unmap of fresh pages each time: ~35 µs a read, most of what a TLS read
  costs; five reads open a connection).
* The socket is the plain transport's: :class:`TLSTransport` answers
  ``get_extra_info("socket")`` (the audit's identity: same fd, same inode) and every
  other non-TLS name from it; ``abort()`` aborts it (RST, at once); ``close()`` queues a
  ``close_notify`` and closes it once the write buffer is flushed, without waiting for
  the peer's (as a browser does; the bound stays the caller's).
* Certificate and host-name verification are the ``SSLContext``'s, exactly as with
  ``loop.start_tls`` (``check_hostname``, ``verify_mode``, SNI from ``server_hostname``).
* The handshake is bounded by the caller's timeout (the connector's ``connect_timeout``).
  It fails with ``ssl.SSLCertVerificationError`` / ``ssl.SSLError`` as OpenSSL reports,
  ``ConnectionResetError`` when the peer closes during it, or ``TimeoutError``; the plain
  transport is aborted then.
* Plaintext reaches the application protocol only after the handshake, and only after
  ``attach`` made :class:`TLSTransport` the protocol's transport, so a reply is never
  written in the clear.
* After STARTTLS (``after_starttls=True``), the server's first bytes must open a TLS
  record (a handshake or an alert, RFC 8446 section 5.1). Anything else is plaintext sent
  after the tagged OK (the STARTTLS command-injection hole, arrived too late for the
  protocol to see it): :class:`~guardedpool.errors.ProtocolError`, transport aborted.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from collections.abc import Callable
from typing import Any

from ..errors import ProtocolError
from ..waits import first_done

__all__ = ["TLSLayer", "TLSTransport", "open_tls"]

# One SSL record carries at most 16 KiB of plaintext (RFC 8446 section 5.1); reading more
# per call only makes OpenSSL's output buffer bigger, not the reads fewer.
_RECORD = 16 * 1024
# The content types a server's first TLS record can have: handshake (22), alert (21).
_FIRST_RECORD_TYPES = frozenset({22, 21})
# What one read of the plain socket may take: asyncio's own maximum for a socket read.
_RECEIVE = 256 * 1024


class _ReceiveBuffer(threading.local):
    """The receive buffer of this thread's event loop, made on its first read."""

    view: memoryview | None = None


_receive_buffer = _ReceiveBuffer()


def _receive_view() -> memoryview:
    view = _receive_buffer.view
    if view is None:
        view = _receive_buffer.view = memoryview(bytearray(_RECEIVE))
    return view


class TLSLayer(asyncio.BufferedProtocol):
    """The plain transport's protocol while TLS is on: decrypts into ``app``.

    A buffered protocol: the transport reads into the thread's shared receive buffer
    (:meth:`get_buffer`) and :meth:`buffer_updated` hands those bytes to OpenSSL before it
    returns, so no connection keeps a buffer of its own (see the module doc).

    Args:
        plain: the connected TCP transport (its protocol becomes this layer).
        app: the protocol that receives plaintext (``data_received``, ``connection_lost``,
            ``pause_writing``, ``resume_writing``).
        context: verification and versions, used as is.
        server_hostname: for SNI and host-name checking; None skips both (as the context
            allows).
        attach: called with the :class:`TLSTransport` once the handshake is done, before
            any plaintext is delivered (the connector makes it the protocol's transport).
        after_starttls: the upgrade of a plaintext session (see the module doc): bytes
            from the server that do not open a TLS record are refused as injected.
    """

    def __init__(
        self,
        plain: asyncio.Transport,
        app: asyncio.Protocol,
        context: ssl.SSLContext,
        server_hostname: str | None,
        attach: Callable[[TLSTransport], None],
        *,
        after_starttls: bool = False,
    ) -> None:
        self.plain = plain
        self._check_first = after_starttls
        self.app = app
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self.ssl_object = context.wrap_bio(
            self._incoming, self._outgoing, server_side=False, server_hostname=server_hostname
        )
        self.transport = TLSTransport(self)
        self._attach: Callable[[TLSTransport], None] | None = attach
        self._handshake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._error: BaseException | None = None
        self._lost = False

    # -- the handshake -------------------------------------------------------------------

    async def handshake(self, timeout: float) -> TLSTransport:
        """Run the handshake (bounded by ``timeout`` seconds); return the secure transport.

        Raises as the module doc says; the plain transport is aborted on any failure,
        cancellation included.
        """
        self.plain.set_protocol(self)
        handshake = self._handshake
        try:
            deadline = asyncio.get_running_loop().time() + timeout
            self._step_handshake()
            # Never cancels the handshake's future (as a shield would not), one timer.
            await first_done((handshake,), deadline)
            if not handshake.done():
                raise TimeoutError(f"TLS handshake not done within {timeout:.3g} s")
            handshake.result()  # the handshake's own error, if it failed
        except BaseException:
            self.plain.abort()
            raise
        return self.transport

    def _step_handshake(self) -> None:
        try:
            self.ssl_object.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return
        except Exception as exc:
            self._flush()  # the alert, if OpenSSL made one
            self._fail_handshake(exc)
            return
        self._flush()
        attach, self._attach = self._attach, None  # called once; not kept for the session
        if attach is not None:
            attach(self.transport)
        if not self._handshake.done():
            self._handshake.set_result(None)
        self._read()  # application data that came with the last handshake flight

    def _fail_handshake(self, exc: BaseException) -> None:
        self._error = exc
        if not self._handshake.done():
            self._handshake.set_exception(exc)
            # Retrieved by handshake(); keeps a cancelled caller from an unretrieved warning.
            self._handshake.exception()

    # -- asyncio.Protocol for the plain transport ----------------------------------------

    def get_buffer(self, sizehint: int) -> memoryview:
        return _receive_view()

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(_receive_view()[:nbytes])

    def data_received(self, data: bytes | memoryview) -> None:
        """Ciphertext from the server (also what :meth:`buffer_updated` delivers): into
        OpenSSL, then the handshake's next step or the plaintext it decrypts."""
        if self._lost:
            return
        if self._check_first and data:
            self._check_first = False
            if data[0] not in _FIRST_RECORD_TYPES:
                self._fail_handshake(
                    ProtocolError(
                        "server sent bytes that are not TLS after STARTTLS's OK, during the "
                        "TLS handshake (possible command injection); connection aborted"
                    )
                )
                self.plain.abort()
                return
        self._incoming.write(data)
        if not self._handshake.done():
            self._step_handshake()
        elif self._error is None:
            self._read()

    def _read(self) -> None:
        pieces: list[bytes] = []
        try:
            while piece := self.ssl_object.read(_RECORD):
                pieces.append(piece)
        except ssl.SSLWantReadError:  # all of it read: wait for more
            self._flush()  # e.g. a key update answered
            self._deliver(pieces)
            return
        except ssl.SSLZeroReturnError:
            pass  # EOF, as below
        except ssl.SSLError as exc:
            self._deliver(pieces)
            self._error = exc
            self.plain.abort()
            return
        # An empty read (or SSLZeroReturnError) is the peer's
        # close_notify: EOF. Answer with ours, since a peer may wait for it (asyncio's TLS
        # server does, up to 30 s), and close.
        self._deliver(pieces)
        with contextlib.suppress(ssl.SSLError, ValueError):
            self.ssl_object.unwrap()
        self._flush()
        self.plain.close()

    def _deliver(self, pieces: list[bytes]) -> None:
        if pieces:
            self.app.data_received(pieces[0] if len(pieces) == 1 else b"".join(pieces))

    def _flush(self) -> None:
        if self._outgoing.pending and not self.plain.is_closing():
            self.plain.write(self._outgoing.read())

    def eof_received(self) -> bool | None:
        if not self._handshake.done():
            self._fail_handshake(ConnectionResetError("connection closed during TLS handshake"))
        return None  # close the transport: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        if not self._handshake.done():
            self._fail_handshake(
                exc or ConnectionResetError("connection lost during TLS handshake")
            )
            return
        error = exc if exc is not None else self._error
        self.app.connection_lost(error if isinstance(error, Exception) else None)

    def pause_writing(self) -> None:
        self.app.pause_writing()

    def resume_writing(self) -> None:
        self.app.resume_writing()

    # -- for TLSTransport ----------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._lost or self.plain.is_closing():
            return
        self.ssl_object.write(data)
        self._flush()

    def close(self) -> None:
        if not self._lost and not self.plain.is_closing() and self._handshake.done():
            # Queues our close_notify; the peer's is not awaited (SSLWantReadError).
            with contextlib.suppress(ssl.SSLError, ValueError):
                self.ssl_object.unwrap()
            self._flush()
        self.plain.close()


class TLSTransport(asyncio.Transport):
    """The application's view of a TLS connection made by :class:`TLSLayer`.

    ``ssl_object``, ``peercert``, ``cipher``, ``compression`` and ``sslcontext`` come from
    the ``SSLObject``; every other ``get_extra_info`` name (``socket``, ``peername``...)
    and every other call from the plain transport.
    """

    def __init__(self, layer: TLSLayer) -> None:
        super().__init__()
        self._layer = layer

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if data:
            self._layer.write(data)

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        raise NotImplementedError("TLS has no half-close")

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        obj = self._layer.ssl_object
        if name == "ssl_object":
            return obj
        if name == "peercert":
            return obj.getpeercert()
        if name == "cipher":
            return obj.cipher()
        if name == "compression":
            return obj.compression()
        if name == "sslcontext":
            return obj.context
        return self._layer.plain.get_extra_info(name, default)

    def is_closing(self) -> bool:
        return self._layer.plain.is_closing()

    def close(self) -> None:
        self._layer.close()

    def abort(self) -> None:
        self._layer.plain.abort()

    def is_reading(self) -> bool:
        return self._layer.plain.is_reading()

    def pause_reading(self) -> None:
        self._layer.plain.pause_reading()

    def resume_reading(self) -> None:
        self._layer.plain.resume_reading()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        assert isinstance(protocol, asyncio.Protocol)
        self._layer.app = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._layer.app

    def get_write_buffer_size(self) -> int:
        return self._layer.plain.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._layer.plain.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._layer.plain.set_write_buffer_limits(high, low)


async def open_tls(
    plain: asyncio.Transport,
    app: asyncio.Protocol,
    context: ssl.SSLContext,
    server_hostname: str | None,
    attach: Callable[[TLSTransport], None],
    timeout: float,
    *,
    after_starttls: bool = False,
) -> TLSTransport:
    """TLS on ``plain`` for ``app``, handshake bounded by ``timeout``: see :class:`TLSLayer`."""
    layer = TLSLayer(plain, app, context, server_hostname, attach, after_starttls=after_starttls)
    return await layer.handshake(timeout)
