"""The harness itself: Dovecot really serves, and each proxy fault really happens.

Raw asyncio sockets only (no guardedpool), so a harness bug cannot hide behind a library
bug or the other way round. Timing assertions are one-sided and generous.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable

import psutil
import pytest

from harness import DovecotServer, Fault, Mode, ProxyFactory, socket_fds

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]
SILENCE = 0.5  # how long "nothing arrives" is watched


@contextlib.asynccontextmanager
async def raw_client(
    host: str, port: int, ssl_ctx: ssl.SSLContext | None = None
) -> AsyncIterator[Stream]:
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(host, port, ssl=ssl_ctx, server_hostname=host if ssl_ctx else None),
        timeout=5,
    )
    try:
        yield reader, writer
    finally:
        writer.close()
        try:
            await asyncio.wait_for(writer.wait_closed(), timeout=1)
        except (OSError, ssl.SSLError, TimeoutError):
            writer.transport.abort()  # a stalled peer must not keep our socket open
            await asyncio.sleep(0)


async def read_line(reader: asyncio.StreamReader, timeout: float = 5) -> bytes:
    return await asyncio.wait_for(reader.readline(), timeout)


async def command(stream: Stream, tag: str, text: str, timeout: float = 5) -> list[bytes]:
    """Send one tagged command; return every line up to and including the tagged reply."""
    reader, writer = stream
    writer.write(f"{tag} {text}\r\n".encode())
    await writer.drain()
    lines = []
    while True:
        line = await read_line(reader, timeout)
        assert line, f"EOF while waiting for {tag}"
        lines.append(line)
        if line.startswith(tag.encode() + b" "):
            return lines


async def assert_silent(reader: asyncio.StreamReader, secs: float = SILENCE) -> None:
    with pytest.raises(TimeoutError):
        data = await asyncio.wait_for(reader.read(1), secs)
        pytest.fail(f"expected silence, got {data!r}")


# -- Dovecot -------------------------------------------------------------------------------


async def test_greets_on_both_ports(dovecot: DovecotServer) -> None:
    async with raw_client(dovecot.host, dovecot.port) as (reader, _):
        assert (await read_line(reader)).startswith(b"* OK")
    async with raw_client(dovecot.host, dovecot.tls_port, dovecot.client_ssl_context()) as (
        reader,
        _,
    ):
        assert (await read_line(reader)).startswith(b"* OK")


@pytest.mark.parametrize("tls", [False, True])
async def test_login_with_password(dovecot: DovecotServer, tls: bool) -> None:
    port = dovecot.tls_port if tls else dovecot.port
    ctx = dovecot.client_ssl_context() if tls else None
    async with raw_client(dovecot.host, port, ctx) as stream:
        await read_line(stream[0])
        reply = await command(stream, "a1", f"LOGIN alice {dovecot.users['alice']}")
        assert reply[-1].startswith(b"a1 OK"), reply
        assert (await command(stream, "a2", "LOGOUT"))[-1].startswith(b"a2 OK")


async def test_wrong_password_is_rejected(dovecot: DovecotServer) -> None:
    async with raw_client(dovecot.host, dovecot.port) as stream:
        await read_line(stream[0])
        reply = await command(stream, "a1", "LOGIN bob not-bobs-password")
        assert reply[-1].startswith(b"a1 NO"), reply


async def test_default_ssl_context_rejects_the_test_cert(dovecot: DovecotServer) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        async with raw_client(dovecot.host, dovecot.tls_port, ssl.create_default_context()):
            pass


async def test_seeded_mail_and_runtime_user(
    dovecot: DovecotServer, fresh_user: tuple[str, str]
) -> None:
    user, password = fresh_user
    dovecot.seed_messages(user, 3)
    dovecot.seed_messages(user, 2, seen=True)
    dovecot.seed_messages(user, folder="Archive", messages=[b"Subject: x\r\n\r\nhi\r\n"])
    async with raw_client(dovecot.host, dovecot.port) as stream:
        await read_line(stream[0])
        assert (await command(stream, "a1", f"LOGIN {user} {password}"))[-1].startswith(b"a1 OK")
        assert b"* 5 EXISTS\r\n" in await command(stream, "a2", "SELECT INBOX")
        assert b"* SEARCH 1 2 3\r\n" in await command(stream, "a3", "SEARCH UNSEEN")
        assert b"* 1 EXISTS\r\n" in await command(stream, "a4", "SELECT Archive")


def test_restart_keeps_ports_and_mail_and_stop_leaves_no_process(
    dovecot_factory: Callable[..., DovecotServer],
) -> None:
    server = dovecot_factory(idle_notify_interval=1)
    server.seed_messages("carol", 2)
    with (
        socket.create_connection((server.host, server.port), timeout=5) as s,
        s.makefile("rwb", buffering=0) as f,
    ):
        f.readline()
        f.write(b"a1 LOGIN carol carol-pw\r\na2 SELECT INBOX\r\na3 IDLE\r\n")
        lines = [f.readline()]
        while lines[-1] and not lines[-1].startswith((b"+", b"a3 ")) and len(lines) < 50:
            lines.append(f.readline())
        assert lines[-1] == b"+ idling\r\n" and b"* 2 EXISTS\r\n" in lines, lines
        assert f.readline() == b"* OK Still here\r\n"  # idle_notify_interval applies
    ports = (server.port, server.tls_port)
    old_pid = server.pid
    assert old_pid is not None
    children = psutil.Process(old_pid).children(recursive=True)
    assert children, "dovecot should have forked its services"

    server.restart()
    assert (server.port, server.tls_port) == ports
    assert server.pid not in (None, old_pid)
    assert all(not c.is_running() or c.status() == psutil.STATUS_ZOMBIE for c in children)
    with socket.create_connection((server.host, server.port), timeout=5) as s:
        assert s.recv(100).startswith(b"* OK")
    maildir = server.maildir("carol")
    assert len([*(maildir / "new").iterdir(), *(maildir / "cur").iterdir()]) == 2

    pid = server.pid
    assert pid is not None
    children = psutil.Process(pid).children(recursive=True)
    server.stop()
    assert server.pid is None and server.stray_pids == []
    for proc in [psutil.Process(pid), *children] if psutil.pid_exists(pid) else children:
        assert not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE


# -- FaultProxy ----------------------------------------------------------------------------


async def test_pass_through_login_and_stats(
    dovecot: DovecotServer, fault_proxy: ProxyFactory
) -> None:
    proxy = await fault_proxy()
    async with raw_client(proxy.host, proxy.port) as stream:
        assert (await read_line(stream[0])).startswith(b"* OK")
        reply = await command(stream, "a1", f"LOGIN alice {dovecot.users['alice']}")
        assert reply[-1].startswith(b"a1 OK")
        conn = await proxy.wait_accepted(1)
        assert conn.is_open and conn.upstream_local is not None
        assert conn.client_addr == stream[1].get_extra_info("sockname")
        stats = proxy.stats()
        assert (stats.accepted, stats.current_clients, stats.current_upstream) == (1, 1, 1)
        assert stats.bytes_up > 0 and stats.bytes_down > 0
    await proxy.wait_until(lambda: proxy.current_upstream == 0 and not conn.is_open)
    assert proxy.current_clients == 0 and conn.close_reason == "client closed"


async def test_tls_through_proxy(dovecot: DovecotServer, fault_proxy: ProxyFactory) -> None:
    proxy = await fault_proxy(tls=True)
    async with raw_client(proxy.host, proxy.port, dovecot.client_ssl_context()) as stream:
        assert (await read_line(stream[0])).startswith(b"* OK")


async def test_latency_delays_the_greeting(fault_proxy: ProxyFactory) -> None:
    proxy = await fault_proxy(mode=Mode.LATENCY, delay=0.3)
    started = time.monotonic()
    async with raw_client(proxy.host, proxy.port) as (reader, _):
        assert (await read_line(reader)).startswith(b"* OK")
    assert time.monotonic() - started >= 0.25


async def test_stall_holds_everything_until_resumed(fault_proxy: ProxyFactory) -> None:
    proxy = await fault_proxy(mode=Mode.STALL)
    async with raw_client(proxy.host, proxy.port) as (reader, _):
        await assert_silent(reader)
        assert proxy.current_upstream == 1  # connected upstream, just not forwarding
        proxy.resume_all()
        assert (await read_line(reader)).startswith(b"* OK")


async def test_stall_after_first_client_byte_passes_greeting_only(
    dovecot: DovecotServer, fault_proxy: ProxyFactory
) -> None:
    proxy = await fault_proxy(mode=Mode.STALL, after_client_bytes=0)
    async with raw_client(proxy.host, proxy.port) as (reader, writer):
        assert (await read_line(reader)).startswith(b"* OK")
        writer.write(f"a1 LOGIN alice {dovecot.users['alice']}\r\n".encode())
        await assert_silent(reader)
    # The client closed while stalled: the proxy notices and lets go of both sockets.
    await proxy.wait_until(lambda: proxy.current_upstream == 0 and proxy.current_clients == 0)


async def test_stalled_tls_handshake_times_out(
    dovecot: DovecotServer, fault_proxy: ProxyFactory
) -> None:
    proxy = await fault_proxy(tls=True, mode=Mode.STALL)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(SILENCE):
            await asyncio.open_connection(
                proxy.host,
                proxy.port,
                ssl=dovecot.client_ssl_context(),
                server_hostname="localhost",
            )
    await proxy.wait_until(lambda: proxy.current_clients == 0, what="client closed")


async def test_slow_trickles_single_bytes(fault_proxy: ProxyFactory) -> None:
    proxy = await fault_proxy(mode=Mode.SLOW, interval=0.002)
    async with raw_client(proxy.host, proxy.port) as (reader, _):
        first = await asyncio.wait_for(reader.read(4096), 5)
        assert 1 <= len(first) < 10
        rest = await read_line(reader, timeout=15)
        assert (first + rest).startswith(b"* OK") and rest.endswith(b"\r\n")


async def test_blackhole_after_n_bytes_keeps_socket_open(fault_proxy: ProxyFactory) -> None:
    proxy = await fault_proxy(mode=Mode.BLACKHOLE, after_bytes=10)
    async with raw_client(proxy.host, proxy.port) as (reader, writer):
        assert await asyncio.wait_for(reader.readexactly(10), 5) == b"* OK [CAPA"
        await assert_silent(reader)
        writer.write(b"a1 NOOP\r\n")  # swallowed, but the socket is still open
        await writer.drain()
        await assert_silent(reader, 0.2)
        assert not reader.at_eof()


async def test_reset_new_and_live_connections(fault_proxy: ProxyFactory) -> None:
    proxy = await fault_proxy()
    async with raw_client(proxy.host, proxy.port) as (live_reader, _):
        await read_line(live_reader)
        proxy.set_mode(Mode.RESET)
        async with raw_client(proxy.host, proxy.port) as (reader, _):
            with pytest.raises(ConnectionResetError):
                await asyncio.wait_for(reader.read(100), 5)
        assert proxy.current_upstream == 1  # the new one never went upstream
        proxy.reset_all()
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(live_reader.read(100), 5)
    await proxy.wait_until(lambda: proxy.current_upstream == 0)


async def test_close_sends_fin(fault_proxy: ProxyFactory) -> None:
    proxy = await fault_proxy(mode=Mode.CLOSE)
    async with raw_client(proxy.host, proxy.port) as (reader, _):
        assert await asyncio.wait_for(reader.read(100), 5) == b""
    proxy.set_mode(Mode.CLOSE, after_bytes=5)  # delayed: greeting's first 5 bytes, then FIN
    async with raw_client(proxy.host, proxy.port) as (reader, _):
        assert await asyncio.wait_for(reader.read(), 5) == b"* OK "


async def test_never_greet_accepts_but_never_connects(fault_proxy: ProxyFactory) -> None:
    proxy = await fault_proxy(mode=Mode.NEVER_GREET)
    async with raw_client(proxy.host, proxy.port) as (reader, writer):
        writer.write(b"a1 NOOP\r\n")
        await assert_silent(reader)
        stats = proxy.stats()
        assert (stats.accepted, stats.current_clients, stats.upstream_opened) == (1, 1, 0)
    await proxy.wait_until(lambda: proxy.current_clients == 0)


async def test_garbage_replaces_server_data(fault_proxy: ProxyFactory) -> None:
    proxy = await fault_proxy(mode=Mode.GARBAGE, garbage=b"\x00\xffnot imap\r\n")
    async with raw_client(proxy.host, proxy.port) as (reader, _):
        assert await read_line(reader) == b"\x00\xffnot imap\r\n"
    proxy.set_mode(Mode.GARBAGE)  # random bytes, as many as the server sent
    async with raw_client(proxy.host, proxy.port) as (reader, _):
        data = await asyncio.wait_for(reader.read(4096), 5)
        assert data and not data.startswith(b"* OK")


async def test_inject_after_match_goes_in_the_same_write(fault_proxy: ProxyFactory) -> None:
    proxy = await fault_proxy(mode=Mode.INJECT, after_match=b"* OK", garbage=b"EVIL\r\n")
    async with raw_client(proxy.host, proxy.port) as (reader, _):
        data = await asyncio.wait_for(reader.read(4096), 5)
        assert data.startswith(b"* OK") and data.endswith(b"\r\nEVIL\r\n")


async def test_shape_delays_and_still_carries_a_session(fault_proxy: ProxyFactory) -> None:
    proxy = await fault_proxy(mode=Mode.SHAPE, delay=0.2, rate=20e6 / 8)
    started = time.monotonic()
    async with raw_client(proxy.host, proxy.port) as stream:
        assert (await read_line(stream[0])).startswith(b"* OK")
        assert time.monotonic() - started >= 0.2  # a lower bound: the link's delay
        lines = await command(stream, "a1", "CAPABILITY")
        assert lines[-1].startswith(b"a1 OK")
    with pytest.raises(ValueError):
        Fault(Mode.SHAPE, rate=-1.0)


async def test_per_connection_control(fault_proxy: ProxyFactory) -> None:
    proxy = await fault_proxy(mode=Mode.STALL)
    async with (
        raw_client(proxy.host, proxy.port) as (reader1, _),
        raw_client(proxy.host, proxy.port) as (reader2, _),
    ):
        await proxy.wait_accepted(2)
        proxy.live()[1].resume()
        assert (await read_line(reader2)).startswith(b"* OK")
        await assert_silent(reader1, 0.2)
        proxy.live()[0].set_mode(Mode.PASS)
        assert (await read_line(reader1)).startswith(b"* OK")


async def test_peak_concurrent_upstream(fault_proxy: ProxyFactory) -> None:
    proxy = await fault_proxy()
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(raw_client(proxy.host, proxy.port)) for _ in range(5)
        ]
        for reader, _ in clients:
            await read_line(reader)
        for _, writer in clients[:2]:
            writer.close()
        await proxy.wait_until(lambda: proxy.current_upstream == 3)
        stats = proxy.stats()
        assert (stats.peak_clients, stats.peak_upstream, stats.current_clients) == (5, 5, 3)
        assert len({c.upstream_local for c in proxy.connections}) == 5
        proxy.reset_peaks()
        assert proxy.peak_upstream == 3
    await proxy.wait_until(lambda: proxy.current_upstream == 0)


async def test_stop_closes_held_sockets(fault_proxy: ProxyFactory) -> None:
    proxy = await fault_proxy(mode=Mode.STALL)
    async with raw_client(proxy.host, proxy.port) as (reader, _):
        await proxy.wait_accepted(1)
        await asyncio.wait_for(proxy.stop(), 5)
        with contextlib.suppress(ConnectionResetError):
            assert await asyncio.wait_for(reader.read(100), 5) == b""
        assert proxy.current_upstream == 0 and not proxy.connections[0].is_open


async def test_refused_upstream_resets_the_client(fault_proxy: ProxyFactory) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, not listening: connects are refused
        proxy = await fault_proxy(upstream=("127.0.0.1", port))
        async with raw_client(proxy.host, proxy.port) as (reader, _):
            with pytest.raises(ConnectionResetError):
                await asyncio.wait_for(reader.read(100), 5)
        assert "upstream connect failed" in (proxy.connections[0].close_reason or "")


def test_fault_validation() -> None:
    with pytest.raises(ValueError, match="delay"):
        Fault(Mode.LATENCY, delay=-1)
    with pytest.raises(ValueError, match="after_bytes"):
        Fault(Mode.BLACKHOLE, after_bytes=-5)


def test_socket_fds_sees_a_new_socket() -> None:
    before = socket_fds()
    with socket.socket() as s:
        assert socket_fds()[s.fileno()] == os.fstat(s.fileno()).st_ino
        assert len(socket_fds()) == len(before) + 1
    assert len(socket_fds()) == len(before)
