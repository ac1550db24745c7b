"""OAuth 2 token providers against Dovecot's real oauth2 passdb.

Dovecot validates each token by POSTing it to a local RFC 7662 introspection server
(``harness.oauth.TokenServer``, aiohttp on 127.0.0.1) whose tokens expire after two
seconds, so expiry is real: a token that logged in a moment ago is refused with
``NO [AUTHENTICATIONFAILED]``, and the connector must ask its provider for a fresh one
and try once more. A scripted server covers the OAUTHBEARER error challenge.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Iterator

import pytest
from harness import DovecotServer, socket_fds
from harness.configs import DEFAULTS, config
from harness.oauth import TokenServer
from harness.scripted import ScriptConn, ScriptedIMAP

from guardedpool import GuardedPool
from guardedpool.errors import (
    AuthenticationError,
    ConnectError,
    ConnectTimeout,
    UnknownKey,
)
from guardedpool.imap import IMAPAccount, IMAPConnector

LIFETIME = 2.0
CFG = config(DEFAULTS, connect_timeout=3.0, op_timeout=2.0, close_timeout=1.0)


@pytest.fixture(scope="module")
def oauth() -> Iterator[tuple[DovecotServer, TokenServer]]:
    with TokenServer(lifetime=LIFETIME) as tokens:
        server = DovecotServer(oauth2_introspection_url=tokens.url)
        server.start()
        try:
            yield server, tokens
        finally:
            server.stop()


class Provider:
    """A provider that caches its token until asked to refresh, and records its calls."""

    def __init__(self, tokens: TokenServer, username: str = "alice") -> None:
        self.tokens = tokens
        self.username = username
        self.calls: list[bool] = []
        self.token: str | None = None
        self.handed: list[str] = []

    async def __call__(self, force_refresh: bool) -> str:
        self.calls.append(force_refresh)
        if self.token is None or force_refresh:
            self.token = self.tokens.issue(self.username)
        self.handed.append(self.token)
        return self.token


def account(server: DovecotServer, provider: object, **kw: object) -> IMAPAccount:
    return IMAPAccount(
        host=server.host,
        port=server.port,
        username="alice",
        token_provider=provider,  # type: ignore[arg-type]
        tls=False,
        **kw,  # type: ignore[arg-type]
    )


@contextlib.contextmanager
def no_new_sockets() -> Iterator[None]:
    before = set(socket_fds().values())
    yield
    leaked = set(socket_fds().values()) - before
    assert not leaked, f"sockets left open: {leaked}"


async def wait_expired(tokens: TokenServer, token: str) -> None:
    deadline = time.monotonic() + LIFETIME + 3
    while tokens.active(token):
        assert time.monotonic() < deadline, "token did not expire"
        await asyncio.sleep(0.1)


async def test_connect_asks_without_refresh_and_prefers_oauthbearer(
    oauth: tuple[DovecotServer, TokenServer],
) -> None:
    server, tokens = oauth
    provider = Provider(tokens)
    connector = IMAPConnector({"k": account(server, provider)})
    client = await connector.open("k", CFG)
    try:
        assert client.state == "AUTH" and provider.calls == [False]
        await client.select()
    finally:
        await connector.close(client, 1.0)
    assert "method=OAUTHBEARER" in server.log_tail(50)


async def test_reconnect_after_expiry_refreshes_once(
    oauth: tuple[DovecotServer, TokenServer],
) -> None:
    server, tokens = oauth
    provider = Provider(tokens)
    pool = GuardedPool(IMAPConnector({"k": account(server, provider)}), CFG)
    async with pool:
        async with pool.acquire("k") as conn:
            await conn.noop()
            first = provider.token
            conn.abort("test: drop the connection")  # the pool must open a new one
        assert first is not None
        await wait_expired(tokens, first)
        # The provider hands out its cached, now expired token first: Dovecot answers
        # NO [AUTHENTICATIONFAILED], the connector asks once more with force_refresh.
        async with pool.acquire("k") as conn:
            await conn.select()
        assert provider.calls == [False, False, True]
        assert provider.handed[1] == first and provider.handed[2] != first
        report = await pool.audit()
        assert report.healthy, str(report)


async def test_a_refreshed_token_that_is_refused_too_is_final(
    oauth: tuple[DovecotServer, TokenServer],
) -> None:
    server, tokens = oauth
    calls: list[bool] = []
    handed: list[str] = []

    async def revoked(force_refresh: bool) -> str:
        calls.append(force_refresh)
        token = tokens.issue("alice")
        tokens.revoke(token)
        handed.append(token)
        return token

    with no_new_sockets(), pytest.raises(AuthenticationError) as err:
        await IMAPConnector({"k": account(server, revoked)}).open("k", CFG)
    assert calls == [False, True]  # one refresh, one retry, then final
    assert not err.value.transient and "AUTHENTICATIONFAILED" in str(err.value)
    assert not any(token in str(err.value) for token in handed)


async def test_a_hanging_provider_is_bounded_by_connect_timeout(
    oauth: tuple[DovecotServer, TokenServer],
) -> None:
    server, _ = oauth
    never = asyncio.Event()

    async def hangs(force_refresh: bool) -> str:
        await never.wait()
        return "unreachable"

    cfg = config(DEFAULTS, connect_timeout=0.5)
    started = time.monotonic()
    with no_new_sockets(), pytest.raises(ConnectTimeout) as err:
        await IMAPConnector({"k": account(server, hangs)}).open("k", cfg)
    assert time.monotonic() - started < cfg.connect_timeout + 2
    assert "stuck at login" in str(err.value) and err.value.transient


async def test_a_provider_that_raises(oauth: tuple[DovecotServer, TokenServer]) -> None:
    server, _ = oauth
    secret = "refresh-token-SECRET-123"

    async def broken(force_refresh: bool) -> str:
        raise RuntimeError(f"token endpoint down, refresh token {secret}")

    async def revoked_grant(force_refresh: bool) -> str:
        raise AuthenticationError("grant revoked by the user")

    with no_new_sockets(), pytest.raises(ConnectError) as err:
        await IMAPConnector({"k": account(server, broken)}).open("k", CFG)
    assert type(err.value) is ConnectError and err.value.transient
    assert "RuntimeError" in str(err.value) and secret not in str(err.value)
    with no_new_sockets(), pytest.raises(AuthenticationError) as auth:
        await IMAPConnector({"k": account(server, revoked_grant)}).open("k", CFG)
    assert not auth.value.transient and "grant revoked" in str(auth.value)


async def test_tokens_never_reach_logs_reprs_errors_stats_or_reports(
    oauth: tuple[DovecotServer, TokenServer], caplog: pytest.LogCaptureFixture
) -> None:
    server, tokens = oauth
    caplog.set_level(logging.DEBUG)  # every logger, aioimaplib's and the wire log too
    provider = Provider(tokens)
    good = account(server, provider)
    seen: list[str] = [repr(good), str(good), json.dumps(good.to_dict())]
    pool = GuardedPool(IMAPConnector({"k": good}), CFG)
    async with pool:
        async with pool.acquire("k") as conn:
            await conn.select()
            seen += [repr(conn), repr(pool), json.dumps(pool.stats(), default=str)]
        seen.append(json.dumps((await pool.audit()).to_dict(), default=str))
    bad_tokens: list[str] = []

    async def refused(force_refresh: bool) -> str:
        token = tokens.issue("alice")
        tokens.revoke(token)
        bad_tokens.append(token)
        return token

    with pytest.raises(AuthenticationError) as err:
        await IMAPConnector({"k": account(server, refused)}).open("k", CFG)
    seen.append(str(err.value))
    seen += [r.getMessage() for r in caplog.records]
    seen += [str(vars(r)) for r in caplog.records]
    text = "\n".join(seen)
    assert provider.handed and bad_tokens
    for token in provider.handed + bad_tokens:
        assert token not in text
    assert "dXNlcj1" not in text and "bixhPW" not in text  # nor their base64 SASL forms


async def test_async_accounts_source(oauth: tuple[DovecotServer, TokenServer]) -> None:
    server, tokens = oauth
    provider = Provider(tokens)

    async def lookup(key: str) -> IMAPAccount:
        await asyncio.sleep(0)  # e.g. a database read
        if key != "alice":
            raise KeyError(key)
        return account(server, provider)

    connector = IMAPConnector(lookup)
    client = await connector.open("alice", CFG)
    await connector.close(client, 1.0)
    with pytest.raises(UnknownKey):
        await connector.open("nobody", CFG)
    with pytest.raises(TypeError):
        connector.account("alice")


async def test_an_accounts_source_that_fails_is_a_transient_connect_error_without_its_text(
    oauth: tuple[DovecotServer, TokenServer],
) -> None:
    """A source that raises (its database is down, say) may work next time: a transient
    ConnectError, retried by the pool; its text may quote a secret and is never shown."""
    server, tokens = oauth
    provider = Provider(tokens)
    back = asyncio.Event()

    async def lookup(key: str) -> IMAPAccount:
        if not back.is_set():
            raise RuntimeError("db down: dsn=postgresql://u:hunter2@db/accounts")
        return account(server, provider)

    connector = IMAPConnector(lookup)
    with pytest.raises(ConnectError) as caught:
        await connector.open("alice", CFG)
    assert caught.value.transient and "RuntimeError" in str(caught.value)
    assert "hunter2" not in str(caught.value) and caught.value.__cause__ is None
    pool = GuardedPool(connector, CFG)
    async with pool:
        asyncio.get_running_loop().call_later(0.3, back.set)  # the database comes back
        async with pool.acquire("alice") as imap:  # retried with the backoff meanwhile
            await imap.noop()
        assert pool.stats()["keys"]["alice"]["connect_failures"] >= 1


@pytest.mark.parametrize("sasl_ir", [True, False])
async def test_oauthbearer_error_challenge_is_answered_with_0x01(sasl_ir: bool) -> None:
    token = "ya29.SECRET-TOKEN"
    caps = "IMAP4rev1 AUTH=XOAUTH2 AUTH=OAUTHBEARER" + (" SASL-IR" if sasl_ir else "")
    answers: list[bytes] = []

    async def script(conn: ScriptConn) -> None:
        await conn.greet(caps)
        line = await conn.serve(until=b"AUTHENTICATE", caps=caps)
        tag = line.split(b" ", 1)[0]
        assert b"OAUTHBEARER" in line
        if not sasl_ir:
            await conn.send(b"+ \r\n")
            await conn.line()  # the initial response
        await conn.send(b"+ eyJzdGF0dXMiOiJpbnZhbGlkX3Rva2VuIn0=\r\n")
        answers.append(await conn.line())
        await conn.send(tag + b" NO [AUTHENTICATIONFAILED] Invalid credentials\r\n")
        await conn.drain()

    async with ScriptedIMAP(script) as srv:
        acc = IMAPAccount(
            host="127.0.0.1", port=srv.port, username="u@x", oauth2_token=token, tls=False
        )
        with pytest.raises(AuthenticationError) as err:
            await IMAPConnector({"k": acc}).open("k", CFG)
    assert answers == [b"AQ==\r\n"]  # RFC 7628 section 3.2.3: a lone 0x01
    assert "OAUTHBEARER answered NO" in str(err.value) and token not in str(err.value)
