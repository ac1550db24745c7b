"""STARTTLS against a real Dovecot, and its failure modes through the real fault proxy.

Dovecot's plain listener offers STARTTLS (TLS is configured globally). The proxy injects
bytes after STARTTLS's OK in the same write as the OK (the command-injection hole),
stalls the handshake, or resets it. A scripted server stands in where Dovecot cannot be
made to: a server without STARTTLS, and one whose LOGINDISABLED goes away over TLS.
Every case checks that no socket is left behind, by inode.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator

import pytest
from harness import DovecotServer, FaultProxy, Mode, ProxyFactory, socket_fds
from harness.configs import DEFAULTS, config
from harness.scripted import ScriptConn, ScriptedIMAP
from harness.tlsctx import tls_contexts

from guardedpool import GuardedPool
from guardedpool.errors import (
    AuthenticationError,
    ConnectError,
    ConnectTimeout,
    ProtocolError,
)
from guardedpool.imap import IMAPAccount, IMAPConnector, parse_fetch, parse_select
from guardedpool.sockets import identify, is_open

CFG = config(DEFAULTS, connect_timeout=1.5, op_timeout=1.0, close_timeout=1.0)


@contextlib.contextmanager
def no_new_sockets() -> Iterator[None]:
    before = set(socket_fds().values())
    yield
    leaked = set(socket_fds().values()) - before
    assert not leaked, f"sockets left open: {leaked}"


@contextlib.asynccontextmanager
async def no_new_sockets_via(proxy: FaultProxy) -> AsyncIterator[None]:
    """As no_new_sockets, once the proxy has closed both of its sockets for the client."""
    before = set(socket_fds().values())
    yield
    await proxy.wait_until(
        lambda: proxy.current_clients == 0 and proxy.current_upstream == 0, 2.0, "proxy idle"
    )
    await settle()
    leaked = set(socket_fds().values()) - before
    assert not leaked, f"sockets left open: {leaked}"


async def settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


def starttls_account(
    dovecot: DovecotServer, port: int, user: tuple[str, str], **kw: object
) -> IMAPAccount:
    name, password = user
    return IMAPAccount(
        host="127.0.0.1",
        port=port,
        username=name,
        password=password,
        starttls=True,
        ssl_context=dovecot.client_ssl_context(),
        **kw,  # type: ignore[arg-type]
    )


# -- Dovecot ----------------------------------------------------------------------------


async def test_login_select_fetch_idle_over_starttls(
    dovecot: DovecotServer, fresh_user: tuple[str, str]
) -> None:
    dovecot.seed_messages(fresh_user[0], 2)
    account = starttls_account(dovecot, dovecot.starttls_port, fresh_user)
    assert account.tls is False and account.starttls
    connector = IMAPConnector({"k": account})
    client = await connector.open("k", CFG)
    identity = identify(client.socket)  # type: ignore[arg-type]
    try:
        assert client.tls_version is not None and client.tls_version.startswith("TLS")
        # Read again over TLS: Dovecot drops STARTTLS from the list once it is in use.
        assert "STARTTLS" not in client.capabilities and "IDLE" in client.capabilities
        info = parse_select((await client.select()).lines)
        assert info.exists == 2
        items = parse_fetch((await client.uid_fetch("1:*", "(UID BODY.PEEK[])")).lines)
        assert [item.body is not None and b"Subject: Test message" in item.body for item in items]
        await client.idle_start()
        dovecot.seed_messages(fresh_user[0], 1)
        pushed: list[bytes] = []
        deadline = time.monotonic() + 5
        while not any(b"EXISTS" in line for line in pushed) and time.monotonic() < deadline:
            pushed += await client.wait_server_push(timeout=1.0)
        await client.idle_done()
        assert any(b"3 EXISTS" in line for line in pushed + client.pending_pushes())
        # Still the socket identified at connect: TLS runs on the same fd and inode.
        assert identify(client.socket) == identity  # type: ignore[arg-type]
    finally:
        await connector.close(client, 1.0)
    await settle()
    assert not is_open(identity)


async def test_pool_over_starttls_audits_clean(
    dovecot: DovecotServer, fresh_user: tuple[str, str]
) -> None:
    account = starttls_account(dovecot, dovecot.starttls_port, fresh_user)
    with no_new_sockets():
        pool = GuardedPool(IMAPConnector({"k": account}), CFG)
        async with pool:
            async with pool.acquire("k") as conn:
                await conn.noop()
                assert conn.tls_version is not None
            report = await pool.audit()
            assert report.healthy, str(report)
        await settle()


# -- through the fault proxy --------------------------------------------------------------


async def test_bytes_injected_after_ok_are_refused(
    dovecot: DovecotServer, fault_proxy: ProxyFactory, fresh_user: tuple[str, str]
) -> None:
    proxy = await fault_proxy(
        mode=Mode.INJECT, after_match=b"Begin TLS", garbage=b"A0001 CAPABILITY\r\n"
    )
    account = starttls_account(dovecot, proxy.port, fresh_user)
    async with no_new_sockets_via(proxy):
        with pytest.raises(ProtocolError) as err:
            await IMAPConnector({"k": account}).open("k", CFG)
    assert "after STARTTLS's OK" in str(err.value) and "injection" in str(err.value)
    assert not isinstance(err.value, ConnectError)  # never retried


async def test_stall_during_handshake_is_bounded(
    dovecot: DovecotServer, fault_proxy: ProxyFactory, fresh_user: tuple[str, str]
) -> None:
    proxy = await fault_proxy(mode=Mode.STALL, after_match=b"Begin TLS")
    account = starttls_account(dovecot, proxy.port, fresh_user)
    started = time.monotonic()
    async with no_new_sockets_via(proxy):
        with pytest.raises(ConnectTimeout) as err:
            await IMAPConnector({"k": account}).open("k", CFG)
    assert time.monotonic() - started < CFG.connect_timeout + 2
    assert "starttls" in str(err.value) and err.value.transient


async def test_reset_during_handshake(
    dovecot: DovecotServer, fault_proxy: ProxyFactory, fresh_user: tuple[str, str]
) -> None:
    proxy = await fault_proxy(mode=Mode.RESET, after_match=b"Begin TLS")
    account = starttls_account(dovecot, proxy.port, fresh_user)
    async with no_new_sockets_via(proxy):
        with pytest.raises(ConnectError) as err:
            await IMAPConnector({"k": account}).open("k", CFG)
    assert err.value.transient and "starttls" in str(err.value)


async def test_default_context_verifies_the_certificate(
    dovecot: DovecotServer, fresh_user: tuple[str, str]
) -> None:
    name, password = fresh_user
    account = IMAPAccount(
        host="127.0.0.1",
        port=dovecot.starttls_port,
        username=name,
        password=password,
        starttls=True,
    )
    with no_new_sockets(), pytest.raises(ConnectError) as err:
        await IMAPConnector({"k": account}).open("k", CFG)
    assert not err.value.transient and "certificate" in str(err.value)


# -- scripted: what Dovecot will not do -----------------------------------------------------


async def test_server_without_starttls_is_refused() -> None:
    async def script(conn: ScriptConn) -> None:
        await conn.greet("IMAP4rev1 IDLE")
        await conn.serve(caps="IMAP4rev1 IDLE")

    with no_new_sockets():
        async with ScriptedIMAP(script) as srv:
            account = IMAPAccount(
                host="127.0.0.1", port=srv.port, username="u", password="p", starttls=True
            )
            with pytest.raises(ProtocolError) as err:
                await IMAPConnector({"k": account}).open("k", CFG)
    assert "does not offer STARTTLS" in str(err.value)
    assert not any(b"LOGIN" in line for line in srv.received)


async def test_plaintext_injected_during_the_handshake_is_refused() -> None:
    """The injection arriving late: after the client read the OK and sent its ClientHello,
    the server answers with plaintext instead of a TLS record. That is refused as an
    injection (ProtocolError, never retried), not taken for a transient TLS failure."""
    caps = "IMAP4rev1 STARTTLS"

    async def script(conn: ScriptConn) -> None:
        await conn.greet(caps)
        line = await conn.serve(until=b"STARTTLS", caps=caps)
        tag = line.split(b" ", 1)[0]
        await conn.send(tag + b" OK Begin TLS negotiation now\r\n")
        async with asyncio.timeout(3.0):
            hello = await conn.reader.read(5)  # the ClientHello's record header
        assert hello[:1] == b"\x16"
        await conn.send(b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] injected\r\n")
        await conn.drain()

    with no_new_sockets():
        async with ScriptedIMAP(script) as srv:
            account = IMAPAccount(
                host="127.0.0.1", port=srv.port, username="u", password="p", starttls=True
            )
            with pytest.raises(ProtocolError) as err:
                await IMAPConnector({"k": account}).open("k", CFG)
            await settle()
    assert "not TLS" in str(err.value) and "injection" in str(err.value)
    assert not isinstance(err.value, ConnectError)  # never retried
    assert not any(b"LOGIN" in line for line in srv.received)


async def test_logindisabled_plaintext_never_sends_login() -> None:
    async def script(conn: ScriptConn) -> None:
        await conn.greet("IMAP4rev1 STARTTLS LOGINDISABLED")
        await conn.serve(caps="IMAP4rev1 STARTTLS LOGINDISABLED")

    with no_new_sockets():
        async with ScriptedIMAP(script) as srv:
            account = IMAPAccount(
                host="127.0.0.1", port=srv.port, username="u", password="p", tls=False
            )
            with pytest.raises(AuthenticationError) as err:
                await IMAPConnector({"k": account}).open("k", CFG)
    assert "LOGINDISABLED" in str(err.value) and "plaintext" in str(err.value)
    assert not any(b"LOGIN " in line for line in srv.received)


async def test_capabilities_are_read_again_after_the_handshake() -> None:
    server_ctx, client_ctx = tls_contexts("127.0.0.1")

    async def script(conn: ScriptConn) -> None:
        # Before TLS: LOGINDISABLED. Over TLS: LOGIN allowed.
        await conn.greet("IMAP4rev1 STARTTLS LOGINDISABLED")
        line = await conn.serve(until=b"STARTTLS", caps="IMAP4rev1 STARTTLS LOGINDISABLED")
        tag = line.split(b" ", 1)[0]
        await conn.send(tag + b" OK Begin TLS negotiation now\r\n")
        await conn.writer.start_tls(server_ctx)
        await conn.serve(caps="IMAP4rev1 IDLE")

    async with ScriptedIMAP(script) as srv:
        account = IMAPAccount(
            host="127.0.0.1",
            port=srv.port,
            username="u",
            password="p",
            starttls=True,
            ssl_context=client_ctx,
        )
        connector = IMAPConnector({"k": account})
        client = await connector.open("k", CFG)
        identity = identify(client.socket)  # type: ignore[arg-type]
        assert client.tls_version is not None
        assert "LOGINDISABLED" not in client.capabilities
        await connector.close(client, 1.0)
        await settle()
        assert not is_open(identity)
    assert any(b"LOGIN" in line for line in srv.received)


def test_tls_and_starttls_together_is_a_value_error() -> None:
    with pytest.raises(ValueError) as err:
        IMAPAccount(host="h", username="u", password="p", tls=True, starttls=True)
    assert "tls" in str(err.value) and "starttls" in str(err.value)
    assert IMAPAccount(host="h", username="u", password="p", port=143, starttls=True).tls is False
    assert IMAPAccount(host="h", username="u", password="p").tls is True
