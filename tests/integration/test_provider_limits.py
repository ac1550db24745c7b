"""Provider refusals end to end: each wording at login, at SELECT, mid-FETCH, during IDLE.

The scripted provider (:mod:`harness.provider`) writes each refusal of
:mod:`harness.wordings` the way the provider sends it; these tests check the error type the
IMAP layer raises for it, that the suggested delay reaches the exception, that a capacity
limit is never an ``AuthenticationError``, that ``idle()`` outlives server limits, and that
no socket is left behind. Settings no retry can fix are checked against the real Dovecot.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from typing import Any

import pytest
from harness import DovecotServer, socket_fds
from harness.configs import DEFAULTS, FAST_RETRY, config
from harness.provider import Point, ProviderIMAP
from harness.scripted import ScriptConn, ScriptedIMAP
from harness.wordings import WORDINGS, Wording

from guardedpool import (
    AuthenticationError,
    CommandThrottled,
    ConfigurationError,
    ConnectError,
    ConnectionPoisoned,
    GuardedPool,
    IMAPCommandError,
    PoolTimeout,
    ProtocolError,
    ServerBusy,
    ServerBusyClosed,
    ServerLimit,
)
from guardedpool.imap import IMAPAccount, IMAPClient, IMAPConnector
from guardedpool.imap.idle import idle
from guardedpool.imap.refusals import Refusal, classify_refusal

CFG = config(
    DEFAULTS,
    acquire_timeout=3.0,
    connect_timeout=2.0,
    op_timeout=2.0,
    close_timeout=0.5,
    check_after=3600.0,
    retry=config(FAST_RETRY, max_delay=0.1, jitter=0.01, max_throttle_delay=0.2),
)
PASSWORD = "pr0vider-s3cret"


def account(port: int, **kw: Any) -> IMAPAccount:
    kw.setdefault("host", "127.0.0.1")
    return IMAPAccount(port=port, username="u", password=PASSWORD, tls=False, **kw)


async def sockets_back_to(baseline: set[int], within: float = 2.0) -> None:
    deadline = time.monotonic() + within
    while True:  # closes happen in loop callbacks: give them turns, bounded
        now = set(socket_fds().values())
        if now == baseline or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.01)
    assert now == baseline, f"sockets +{now - baseline} -{baseline - now}"


def expected(row: Wording, phase: str) -> Refusal:
    """The table's verdict where the row was reported; the classifier's elsewhere (the
    unit table pins the classifier, these tests pin the wiring)."""
    got = classify_refusal(row.text, status=row.status, phase=phase)  # type: ignore[arg-type]
    if row.phase == phase:
        assert got.kind == row.kind
    return got


def assert_limit(exc: BaseException, refusal: Refusal) -> None:
    assert isinstance(exc, ServerLimit), repr(exc)
    assert exc.kind == refusal.kind
    assert exc.code == refusal.code
    if refusal.delay is None:
        assert exc.delay is None
    else:
        assert exc.delay == pytest.approx(refusal.delay)
    assert PASSWORD not in str(exc) and PASSWORD not in exc.server_text


# -- at the greeting and at login ---------------------------------------------------------


@pytest.mark.parametrize("row", WORDINGS, ids=lambda w: w.id)
async def test_login_refusal(row: Wording) -> None:
    refusal = expected(row, "login")
    baseline = set(socket_fds().values())
    async with ProviderIMAP(row.status, row.text, at="login") as srv:
        with pytest.raises(ConnectError) as info:
            await IMAPConnector({"k": account(srv.port)}).open("k", CFG)
    exc = info.value
    if refusal.limited:
        assert type(exc) is ServerBusy and exc.transient
        assert_limit(exc, refusal)
    elif refusal.kind == "auth" and row.status != "BYE":
        assert type(exc) is AuthenticationError and not exc.transient
    else:
        assert type(exc) is ConnectError and exc.transient
    # A capacity limit is never a credentials problem, whatever the wording.
    assert not (refusal.kind == "capacity" and isinstance(exc, AuthenticationError))
    assert PASSWORD not in str(exc)
    await sockets_back_to(baseline)


@pytest.mark.parametrize("row", [w for w in WORDINGS if w.status == "BYE"], ids=lambda w: w.id)
async def test_greeting_refusal(row: Wording) -> None:
    refusal = expected(row, "login")
    baseline = set(socket_fds().values())
    async with ProviderIMAP("BYE", row.text, at="greeting") as srv:
        with pytest.raises(ConnectError) as info:
            await IMAPConnector({"k": account(srv.port)}).open("k", CFG)
    if refusal.limited:
        assert type(info.value) is ServerBusy
        assert_limit(info.value, refusal)
    else:
        assert type(info.value) is ConnectError and info.value.transient
    await sockets_back_to(baseline)


# -- mid-session: SELECT, FETCH, IDLE -----------------------------------------------------


async def run_until_refused(client: IMAPClient, at: Point) -> BaseException:
    with pytest.raises(Exception) as info:
        if at == "select":
            await client.select("INBOX")
        elif at == "fetch":
            await client.select("INBOX")
            await client.uid_fetch("1:*", "(FLAGS)")
        else:
            await client.select("INBOX")
            await client.idle_start()
            for _ in range(100):  # bounded: the refusal comes within ~0.1 s
                await client.wait_server_push(timeout=1.0)
    return info.value


@pytest.mark.parametrize("at", ["select", "fetch", "idle"])
@pytest.mark.parametrize("row", WORDINGS, ids=lambda w: w.id)
async def test_command_refusal(row: Wording, at: Point) -> None:
    refusal = expected(row, "command")
    baseline = set(socket_fds().values())
    async with ProviderIMAP(row.status, row.text, at=at) as srv:
        client = await IMAPConnector({"k": account(srv.port)}).open("k", CFG)
        try:
            exc = await run_until_refused(client, at)
            if row.status == "BYE":
                assert client.poisoned
                if refusal.limited:
                    assert type(exc) is ServerBusyClosed
                    assert_limit(exc, refusal)
                else:
                    assert type(exc) is ProtocolError
            elif at == "idle":  # the server ended IDLE itself: never reused
                assert client.poisoned
                if refusal.limited:
                    assert type(exc) is CommandThrottled
                    assert_limit(exc, refusal)
                else:
                    assert type(exc) is ProtocolError
            else:
                assert not client.poisoned  # NO/BAD: the connection stays usable
                if refusal.limited:
                    assert type(exc) is CommandThrottled
                    assert_limit(exc, refusal)
                else:
                    assert type(exc) is IMAPCommandError
                await client.noop()
        finally:
            client.abort("test over")
    await sockets_back_to(baseline)


async def test_throttled_then_bye_keeps_the_delay_and_poisons() -> None:
    """Office 365: ``BAD Request is throttled...`` then ``* BYE``: the command error has
    the delay, the connection is dead for the next one."""
    text = "Request is throttled. Suggested Backoff Time: 299961 milliseconds"
    baseline = set(socket_fds().values())
    async with ProviderIMAP("BAD", text, at="fetch", then_bye=True) as srv:
        client = await IMAPConnector({"k": account(srv.port)}).open("k", CFG)
        try:
            exc = await run_until_refused(client, "fetch")
            assert type(exc) is CommandThrottled
            assert exc.delay == pytest.approx(299.961)
            with pytest.raises(ConnectionPoisoned):
                for _ in range(50):  # bounded: the BYE is already on its way
                    await client.noop()
                    await asyncio.sleep(0.01)
        finally:
            client.abort("test over")
    await sockets_back_to(baseline)


# -- the pool and idle() ------------------------------------------------------------------


async def test_gmail_capacity_refusal_is_retried_not_an_authentication_error() -> None:
    """The issue's reproduction: acquire used to raise AuthenticationError in 2 ms."""
    text = "[ALERT] Too many simultaneous connections. (Failure)"
    baseline = set(socket_fds().values())
    async with ProviderIMAP("NO", text, at="login") as srv:
        cfg = config(
            DEFAULTS,
            acquire_timeout=0.5,
            connect_timeout=1.0,
            retry=config(DEFAULTS.retry, initial=0.02, jitter=0.01),
        )
        pool: GuardedPool[IMAPClient] = GuardedPool(IMAPConnector({"k": account(srv.port)}), cfg)
        async with pool:
            with pytest.raises(PoolTimeout) as info:
                await pool.acquire("k")
        last = info.value.last_error
        assert isinstance(last, ServerBusy) and last.kind == "capacity"
        assert srv.accepted >= 2  # transient: retried with backoff, within the bound
        assert "Too many simultaneous connections" in str(info.value)
    await sockets_back_to(baseline)


async def test_idle_session_outlives_a_capacity_refusal_at_reconnect() -> None:
    """The first connection is refused at login; idle() still reaches IDLE."""
    text = "[ALERT] Too many simultaneous connections. (Failure)"
    baseline = set(socket_fds().values())
    async with ProviderIMAP("NO", text, at="login", times=2) as srv:
        pool: GuardedPool[IMAPClient] = GuardedPool(IMAPConnector({"k": account(srv.port)}), CFG)
        async with pool, idle(pool, "k", renew_after=0.3) as pushes:
            event = await anext(aiter(pushes))
            assert (event.kind, event.resumed) == ("CONNECTED", False)
        assert srv.refused == 2 and srv.accepted >= 3
    await sockets_back_to(baseline)


@pytest.mark.parametrize(
    ("status", "text", "at"),
    [
        ("BYE", "[OVERQUOTA] Account exceeded command or bandwidth limits.", "idle"),
        ("BYE", "[UNAVAILABLE] Temporary System Error", "idle"),
        ("BAD", "Request is throttled. Suggested Backoff Time: 150 milliseconds", "select"),
        ("NO", "[LIMIT] CAPABILITY Rate limit hit.", "select"),
        ("BAD", "Request is throttled. Suggested Backoff Time: 150 milliseconds", "idle"),
    ],
)
async def test_idle_session_waits_out_a_server_limit_and_resumes(
    status: str, text: str, at: Point
) -> None:
    """A server limit mid-session never ends idle(): it waits, reconnects, resumes."""
    baseline = set(socket_fds().values())
    async with ProviderIMAP(status, text, at=at, times=1) as srv:
        pool: GuardedPool[IMAPClient] = GuardedPool(IMAPConnector({"k": account(srv.port)}), CFG)
        async with pool:
            session = idle(pool, "k", renew_after=0.3)
            async with session as pushes:
                events = aiter(pushes)
                seen = []
                for _ in range(10):  # bounded: CONNECTED (maybe EXISTS) then the resume
                    event = await anext(events)
                    seen.append((event.kind, event.resumed))
                    if event.kind == "CONNECTED" and (event.resumed or at == "select"):
                        break
                assert session.limited == 1
                assert ("CONNECTED", at != "select") == seen[-1], seen
    await sockets_back_to(baseline)


# -- settings no retry can fix ------------------------------------------------------------


def tls_account(dovecot: DovecotServer, port: int, **kw: Any) -> IMAPAccount:
    kw.setdefault("ssl_context", dovecot.client_ssl_context())
    return IMAPAccount(host="127.0.0.1", port=port, username="alice", password="alice-pw", **kw)


def resolver_says_no_such_name(host: str) -> None:
    try:
        socket.getaddrinfo(host, 143)
    except socket.gaierror as exc:
        if exc.errno == getattr(socket, "EAI_AGAIN", None):
            pytest.skip("the resolver is unavailable here (EAI_AGAIN), a transient case")
        return
    pytest.skip(f"{host} resolves here")


MISTAKES: dict[str, tuple[Any, str]] = {
    "TLS to the plaintext port": (lambda d: tls_account(d, d.port), "tls=False or starttls=True"),
    "plaintext to the TLS port": (
        lambda d: IMAPAccount(
            host="127.0.0.1", port=d.tls_port, username="alice", password="alice-pw", tls=False
        ),
        "tls=True",
    ),
    "host name that does not exist": (
        lambda d: IMAPAccount(host="nonexistent.invalid", username="alice", password="x"),
        "does not exist",
    ),
    "server-side ssl_context": (
        lambda d: tls_account(d, d.tls_port, ssl_context=ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)),
        "ssl_context cannot make a client TLS connection",
    ),
    "ssl_context with no protocol left": (
        lambda d: tls_account(d, d.tls_port, ssl_context=no_protocol_context()),
        "NO_PROTOCOLS_AVAILABLE",
    ),
}


def no_protocol_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    return ctx


@pytest.mark.parametrize("row", sorted(MISTAKES))
async def test_a_mistake_fails_the_acquire_at_once_naming_it(
    dovecot: DovecotServer, row: str
) -> None:
    make, words = MISTAKES[row]
    if row == "host name that does not exist":
        resolver_says_no_such_name("nonexistent.invalid")
    baseline = set(socket_fds().values())
    cfg = config(DEFAULTS, acquire_timeout=20.0, connect_timeout=2.0)
    pool: GuardedPool[IMAPClient] = GuardedPool(IMAPConnector({"k": make(dovecot)}), cfg)
    async with pool:
        with pytest.raises(ConfigurationError) as info:
            await pool.acquire("k")
        stats = pool.stats()["keys"]["k"]
    assert info.value.transient is False
    assert words in str(info.value) and "key 'k'" in str(info.value)
    assert stats["connect_failures"] == 1  # one attempt, never retried
    await sockets_back_to(baseline)


async def test_bye_right_after_the_greeting_is_server_busy() -> None:
    """Some servers greet, then refuse at once with an untagged BYE before any command."""

    async def greet_then_bye(c: ScriptConn) -> None:
        await c.greet()
        await c.send(b"* BYE [UNAVAILABLE] Too many connections for this account\r\n")

    baseline = set(socket_fds().values())
    async with ScriptedIMAP(greet_then_bye) as srv:
        with pytest.raises(ConnectError) as info:
            await IMAPConnector({"k": account(srv.port)}).open("k", CFG)
    assert type(info.value) is ServerBusy and info.value.kind == "capacity"
    assert info.value.code == "UNAVAILABLE"
    await sockets_back_to(baseline)


@pytest.mark.parametrize("how", ["close", "reset"])
async def test_a_hang_up_before_the_greeting_stays_transient(how: str) -> None:
    """Courier's per-IP limit drops new connections before any greeting: that is load, not
    a TLS port (no probe was sent), so it is retried."""

    async def hang_up(c: ScriptConn) -> None:
        if how == "reset":
            c.writer.transport.abort()

    baseline = set(socket_fds().values())
    async with ScriptedIMAP(hang_up) as srv:
        with pytest.raises(ConnectError) as info:
            await IMAPConnector({"k": account(srv.port)}).open("k", CFG)
    assert type(info.value) is ConnectError and info.value.transient
    await sockets_back_to(baseline)


# -- the real thing: Dovecot's own connection limit ---------------------------------------


@pytest.mark.timeout(60)
async def test_dovecot_connection_limit_is_server_busy_not_bad_credentials(
    dovecot_factory: Any,
) -> None:
    """``mail_max_userip_connections = 2``: the third login is refused for capacity."""
    server: DovecotServer = dovecot_factory(max_userip_connections=2)
    user = IMAPAccount(
        host=server.host, port=server.port, username="alice", password="alice-pw", tls=False
    )
    connector = IMAPConnector({"k": user})
    baseline = set(socket_fds().values())
    held = [await connector.open("k", CFG) for _ in range(2)]
    try:
        with pytest.raises(ServerBusy) as info:
            await connector.open("k", CFG)
        assert info.value.kind == "capacity" and info.value.transient
        assert info.value.code in ("LIMIT", "UNAVAILABLE")
        assert "Maximum number of connections" in info.value.server_text
    finally:
        for client in held:
            await connector.close(client, 1.0)
    await sockets_back_to(baseline)


@pytest.mark.parametrize(
    ("greeting", "asks"),
    [
        (b"* OK [CAPABILITY IMAP4rev1 IDLE UIDPLUS] scripted ready\r\n", False),
        (b"* OK scripted ready\r\n", True),  # no list in the greeting: CAPABILITY, as before
    ],
)
async def test_capabilities_listed_in_the_greeting_save_the_capability_command(
    greeting: bytes, asks: bool
) -> None:
    """RFC 3501 section 7.1: a greeting's [CAPABILITY ...] code is the server's list; the
    connect then goes greeting -> LOGIN with no CAPABILITY round trip (issue 15)."""

    async def script(c: ScriptConn) -> None:
        await c.send(greeting)
        await c.serve()

    async with ScriptedIMAP(script) as srv:
        client = await IMAPConnector({"k": account(srv.port)}).open("k", CFG)
        try:
            assert client.has_capability("IDLE") and client.has_capability("IMAP4REV1")
            await client.noop()
        finally:
            await client.logout(timeout=1.0)
    verbs = [line.split(b" ")[1].strip().upper() for line in srv.received]
    assert (b"CAPABILITY" in verbs) is asks, verbs
    assert verbs[-2:] == [b"NOOP", b"LOGOUT"]
