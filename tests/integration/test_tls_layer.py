"""guardedpool.imap.tls: our TLS over the plain transport, against Dovecot's TLS port.

What loop.start_tls guaranteed and the pool relies on: the same socket (fd and inode)
before and after, verification by the context, a bounded handshake that leaves no socket
behind when it fails, EOF and close_notify seen as the end of the connection. A scripted
TLS peer stands in only where Dovecot cannot show it: whether our close() sent a
close_notify, and a handshake that never gets an answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
from collections.abc import Iterator

import pytest
import trustme
from harness import DovecotServer, socket_fds
from harness.tlsctx import tls_contexts

from guardedpool.imap.tls import TLSTransport, open_tls
from guardedpool.sockets import identify, is_open


@contextlib.contextmanager
def no_new_sockets() -> Iterator[None]:
    before = set(socket_fds().values())
    yield
    leaked = set(socket_fds().values()) - before
    assert not leaked, f"sockets left open: {leaked}"


class Recorder(asyncio.Protocol):
    """Collects plaintext; ``lost`` resolves with connection_lost's argument."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.transport: asyncio.BaseTransport | None = None
        self.lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()
        self.arrived = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.data += data
        self.arrived.set()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)

    async def until(self, needle: bytes, timeout: float = 5.0, size: int = 0) -> None:
        async with asyncio.timeout(timeout):
            while needle not in self.data or len(self.data) < size:
                self.arrived.clear()
                await self.arrived.wait()


async def plain(port: int) -> tuple[asyncio.Transport, Recorder]:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_connection(Recorder, "127.0.0.1", port)
    return transport, protocol


async def secure(
    port: int, ctx: ssl.SSLContext, hostname: str = "localhost", timeout: float = 5.0
) -> tuple[asyncio.Transport, Recorder, TLSTransport]:
    transport, app = await plain(port)

    def attach(secured: TLSTransport) -> None:
        app.transport = secured

    try:
        secured = await open_tls(transport, app, ctx, hostname, attach, timeout)
    finally:
        await asyncio.sleep(0)  # an aborted socket closes on the next loop turn
    return transport, app, secured


async def test_same_socket_verified_and_usable(dovecot: DovecotServer) -> None:
    with no_new_sockets():
        transport, app, secured = await secure(dovecot.tls_port, dovecot.client_ssl_context())
        sock = transport.get_extra_info("socket")
        before = identify(sock)
        assert app.transport is secured
        assert secured.get_extra_info("socket") is sock
        assert identify(secured.get_extra_info("socket")) == before
        assert secured.get_extra_info("ssl_object").version().startswith("TLS")
        assert secured.get_extra_info("peercert") is not None
        await app.until(b"* OK")
        secured.write(b"a1 CAPABILITY\r\n")
        await app.until(b"a1 OK")
        assert b"IMAP4rev1" in app.data
        # LOGOUT: the server's BYE, its close_notify and EOF end the connection cleanly.
        secured.write(b"a2 LOGOUT\r\n")
        async with asyncio.timeout(5):
            assert await app.lost is None
        assert b"a2 OK" in app.data
        await asyncio.sleep(0)
        assert not is_open(before)


async def test_wrong_host_name_refused_and_socket_closed(dovecot: DovecotServer) -> None:
    with no_new_sockets(), pytest.raises(ssl.SSLCertVerificationError):
        await secure(dovecot.tls_port, dovecot.client_ssl_context(), hostname="imap.example.org")


async def test_untrusted_certificate_refused(dovecot: DovecotServer) -> None:
    other = trustme.CA()
    ctx = ssl.create_default_context()
    other.configure_trust(ctx)
    with no_new_sockets(), pytest.raises(ssl.SSLCertVerificationError):
        await secure(dovecot.tls_port, ctx)


async def test_handshake_without_answer_is_bounded() -> None:
    # A listener that never accepts: the kernel completes TCP, nobody answers ClientHello.
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        with no_new_sockets(), pytest.raises(TimeoutError):
            await secure(port, ssl.create_default_context(), timeout=0.3)


async def test_peer_closing_during_handshake_is_a_connection_error() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        with no_new_sockets(), pytest.raises(ConnectionError):
            await secure(port, ssl.create_default_context())
    finally:
        server.close()
        await server.wait_closed()


async def test_close_sends_close_notify_and_data_both_ways() -> None:
    server_ctx, client_ctx = tls_contexts()
    big = bytes(range(256)) * 4096  # 1 MiB: many records, many reads
    outcome: list[object] = []

    def serve(listener: socket.socket) -> None:
        # A blocking TLS peer that tells a close_notify from a bare TCP EOF.
        conn, _ = listener.accept()
        conn.settimeout(10)
        with server_ctx.wrap_socket(
            conn, server_side=True, suppress_ragged_eofs=False
        ) as tls_conn:
            got = 0
            try:
                tls_conn.sendall(big)
                while chunk := tls_conn.recv(65536):
                    got += len(chunk)
                outcome.append(got)
            except (ssl.SSLError, OSError) as exc:
                outcome.append(exc)

    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        peer = threading.Thread(target=serve, args=(listener,), daemon=True)
        peer.start()
        with no_new_sockets():
            _transport, app, secured = await secure(port, client_ctx)
            await app.until(b"", timeout=10, size=len(big))
            assert bytes(app.data) == big
            secured.write(big)
            secured.close()
            await asyncio.to_thread(peer.join, 10)
            # Every byte, then a clean close_notify (not SSLEOFError: a truncation).
            assert outcome == [len(big)]
            async with asyncio.timeout(5):
                await app.lost
            await asyncio.sleep(0)


async def test_abort_closes_the_socket_at_once(dovecot: DovecotServer) -> None:
    with no_new_sockets():
        transport, app, secured = await secure(dovecot.tls_port, dovecot.client_ssl_context())
        before = identify(transport.get_extra_info("socket"))
        secured.abort()
        assert secured.is_closing()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert not is_open(before)
        async with asyncio.timeout(5):
            await app.lost


async def test_peer_close_notify_is_answered_and_ends_the_connection() -> None:
    # asyncio's TLS server closes by sending close_notify and waiting (up to 30 s) for
    # ours: an empty SSLObject.read is that close_notify, and it must be answered.
    server_ctx, client_ctx = tls_contexts()
    closed = asyncio.Event()

    async def say_bye(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"* BYE\r\n")
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
        closed.set()

    server = await asyncio.start_server(say_bye, "127.0.0.1", 0, ssl=server_ctx)
    try:
        port = server.sockets[0].getsockname()[1]
        with no_new_sockets():
            _transport, app, _secured = await secure(port, client_ctx)
            async with asyncio.timeout(5):
                assert await app.lost is None
                await closed.wait()
            assert bytes(app.data) == b"* BYE\r\n"
            await asyncio.sleep(0)
    finally:
        server.close()
        await server.wait_closed()


async def test_connections_reading_at_once_each_get_their_own_bytes() -> None:
    # Every TLS layer reads into one receive buffer per thread (recv_into), and the plain
    # transport holds none of its own: bytes of one connection must never show up in
    # another's, however their reads interleave.
    server_ctx, client_ctx = tls_contexts()
    size = 512 * 1024  # twice the receive buffer: several reads per connection
    served = 0
    finished = asyncio.Event()
    ended = 0

    async def stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served, ended
        served += 1
        pattern = bytes([served]) * 997 + b"\n"  # a different byte per connection
        payload = (pattern * (size // len(pattern) + 1))[:size]
        try:
            for start in range(0, size, 7_001):  # small, uneven writes: many records
                writer.write(payload[start : start + 7_001])
                await writer.drain()
                await asyncio.sleep(0)
            await reader.read()  # until the client is done with it
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()
            ended += 1
            if ended == 3:
                finished.set()

    server = await asyncio.start_server(stream, "127.0.0.1", 0, ssl=server_ctx)
    try:
        port = server.sockets[0].getsockname()[1]
        opened = [await secure(port, client_ctx) for _ in range(3)]
        for plain_transport, _app, _secured in opened:
            assert isinstance(plain_transport.get_protocol(), asyncio.BufferedProtocol)
        apps = [app for _transport, app, _secured in opened]
        await asyncio.gather(*(app.until(b"", timeout=20, size=size) for app in apps))
        contents = [set(bytes(app.data).replace(b"\n", b"")) for app in apps]
        assert [len(app.data) for app in apps] == [size] * 3
        assert all(len(content) == 1 for content in contents), contents
        assert len(set().union(*contents)) == 3  # three different connections' bytes
        for _transport, _app, secured in opened:
            secured.abort()
        async with asyncio.timeout(10):
            await finished.wait()
    finally:
        server.close()
        await server.wait_closed()
