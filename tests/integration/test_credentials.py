"""Security (issue 7, part 4): TLS verified by default, credentials nowhere, hands off.

The credential test is a sweep, not a spot check: every logger (aioimaplib's included) is
captured at DEBUG for a whole run of real work -- LOGIN over plain and TLS, a wrong
password, XOAUTH2 accepted and refused, a server that echoes the password back, a server
whose stray reply makes aioimaplib quote the LOGIN command in an exception, faults in the
middle of LOGIN and of commands, audits, an IDLE session, a worker pass and the health
endpoint -- and then every formatted record (message, extras, traceback), every exception
seen (with its causes), the stats, the audit reports, the health responses and the reprs
of everything a user can print are searched for every form a secret takes: as typed,
quoted for IMAP, base64-encoded in the SASL string, and the random core of each (which
survives any escaping).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import socket
import ssl
import traceback
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from harness import DovecotServer, Mode, ProxyFactory, make_message
from harness.configs import DEFAULTS, FAST_RETRY, IMAP, config
from harness.scripted import CAPS, ScriptConn, ScriptedIMAP

from examples.imap_sync.config import AccountConfig, parse_config
from examples.imap_sync.health import HealthServer, make_app
from examples.imap_sync.metrics import SyncCollector, make_registry
from examples.imap_sync.store import Store
from examples.imap_sync.worker import SyncWorker
from guardedpool import (
    CertificateError,
    GuardedPool,
    PoolError,
)
from guardedpool.imap import IMAPAccount, IMAPClient, IMAPConnector
from guardedpool.imap.idle import IdleSession
from guardedpool.imap.protocol import quoted

CFG = config(
    IMAP,
    acquire_timeout=3.0,
    connect_timeout=1.0,
    op_timeout=0.5,
    leak_threshold=0.2,  # so the audit report carries a borrower's stack too
    retry=config(FAST_RETRY, max_delay=0.1, jitter=0.01),
)


# -- TLS verification ------------------------------------------------------------------------


def test_tls_is_the_default_and_verifies() -> None:
    account = IMAPAccount(host="imap.example.org", username="u", password="p")
    assert account.tls and account.port == 993
    ctx = IMAPConnector({"k": account})._ssl_context(account)
    assert ctx is not None
    assert ctx.verify_mode is ssl.CERT_REQUIRED and ctx.check_hostname


async def test_self_signed_server_is_rejected_unless_the_caller_trusts_it(
    dovecot: DovecotServer,
) -> None:
    """Same server, same certificate: refused by default, accepted with the caller's CA."""
    user, password = "alice", dovecot.users["alice"]
    default = IMAPAccount(host="127.0.0.1", port=dovecot.tls_port, username=user, password=password)
    trusted = IMAPAccount(
        host="127.0.0.1",
        port=dovecot.tls_port,
        username=user,
        password=password,
        ssl_context=dovecot.client_ssl_context(),
    )
    pool: GuardedPool[IMAPClient] = GuardedPool(
        IMAPConnector({"default": default, "trusted": trusted}), CFG
    )
    async with pool:
        with pytest.raises(CertificateError, match="not trusted") as info:
            await pool.acquire("default")
        assert not info.value.transient  # never retried
        async with pool.acquire("trusted") as imap:
            await imap.noop()
            sock = imap.socket
            assert sock is not None


# -- credentials nowhere ---------------------------------------------------------------------


class Capture(logging.Handler):
    """Every record of every logger, formatted as a handler would, plus its extras."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        self.texts: list[str] = []
        self.names: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        self.names.add(record.name)
        self.texts.append(self.format(record))  # message, args and exc_info/stack_info
        self.texts.append(repr(sorted(record.__dict__.items(), key=lambda kv: kv[0])))


@pytest.fixture
def everything_logged() -> Iterator[Capture]:
    capture = Capture()
    root = logging.getLogger()
    saved = root.level
    root.setLevel(logging.DEBUG)
    root.addHandler(capture)
    # Loggers configured elsewhere (pytest, earlier tests) must not filter anything out.
    touched = []
    for name in ("aioimaplib", "aioimaplib.aioimaplib", "guardedpool", "imap_sync"):
        log = logging.getLogger(name)
        touched.append((log, log.level, log.disabled, log.propagate))
        log.setLevel(logging.DEBUG)
        log.disabled = False
        log.propagate = True
    try:
        yield capture
    finally:
        root.removeHandler(capture)
        root.setLevel(saved)
        for log, level, disabled, propagate in touched:
            log.setLevel(level)
            log.disabled = disabled
            log.propagate = propagate


class Evidence:
    """Everything the run produced that a person or a log shipper could ever read."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def add(self, *items: object) -> None:
        for item in items:
            self.texts.append(item if isinstance(item, str) else repr(item))
            if not isinstance(item, str):
                self.texts.append(str(item))

    def error(self, exc: BaseException) -> None:
        """The exception as printed, with every cause and context."""
        self.texts.extend(traceback.format_exception(exc))
        seen: set[int] = set()
        stack: list[BaseException | None] = [exc]
        while stack:
            e = stack.pop()
            if e is None or id(e) in seen:
                continue
            seen.add(id(e))
            self.add(e, e.args)
            stack += [e.__cause__, e.__context__]

    def json(self, data: Any) -> None:
        self.texts.append(json.dumps(data, default=repr))


def secret_forms(secret: str, core: str) -> set[str]:
    """A secret as typed, as IMAP quotes it, as repr escapes it, and its random core."""
    return {secret, quoted(secret), repr(secret)[1:-1], json.dumps(secret)[1:-1], core}


async def xoauth2_script(c: ScriptConn, *, accept: bool) -> None:
    caps = CAPS + " AUTH=XOAUTH2 SASL-IR"
    await c.greet(caps)
    line = await c.serve(until=b"AUTHENTICATE", caps=caps)
    tag = line.split(b" ")[0]
    if accept:
        await c.send(tag + f" OK [CAPABILITY {caps}] welcome\r\n".encode())
        await c.serve(caps=caps)
        return
    challenge = base64.b64encode(b'{"status":"401","schemes":"Bearer"}')
    await c.send(b"+ " + challenge + b"\r\n")
    await c.line()  # the client's empty answer
    await c.send(tag + b" NO [AUTHENTICATIONFAILED] invalid token\r\n")
    await c.drain()


async def echo_script(c: ScriptConn) -> None:
    """A server that quotes the whole LOGIN line back in its refusal."""
    await c.greet()
    line = await c.serve(until=b"LOGIN")
    tag = line.split(b" ")[0]
    await c.send(tag + b" NO [AUTHENTICATIONFAILED] you sent: " + line.strip() + b"\r\n")
    await c.drain()


async def echo_bye_script(c: ScriptConn) -> None:
    """A server that hangs up on LOGIN, quoting it in its BYE."""
    await c.greet()
    line = await c.serve(until=b"LOGIN")
    await c.send(b"* BYE bad command: " + line.strip() + b"\r\n")


async def stray_tag_script(c: ScriptConn) -> None:
    """Answers LOGIN with someone else's tag: aioimaplib's Abort message then quotes the
    pending command -- LOGIN with its password -- unless it is redacted."""
    await c.greet()
    await c.serve(until=b"LOGIN")
    await c.send(b"ZZZZ1 OK not yours\r\n")
    await c.drain()


async def test_credentials_appear_nowhere(
    dovecot: DovecotServer,
    fault_proxy: ProxyFactory,
    everything_logged: Capture,
    tmp_path: Path,
) -> None:
    core = uuid.uuid4().hex
    password = f'Pw"q\\{core}'  # a quote and a backslash: IMAP must escape it
    wrong = f"Wrong-{uuid.uuid4().hex}"
    token_core = uuid.uuid4().hex
    token = f"ya29.{token_core}"
    user = f"sec{core[:8]}"
    dovecot.add_user(user, password)
    dovecot.seed_messages(user, 3)
    sasl = base64.b64encode(f"user={user}\1auth=Bearer {token}\1\1".encode()).decode()
    secrets = (
        secret_forms(password, core)
        | secret_forms(wrong, wrong[6:])
        | secret_forms(token, token_core)
        | {sasl, sasl[8:40]}
    )
    evidence = Evidence()
    proxy = await fault_proxy()

    async with (
        ScriptedIMAP(lambda c: xoauth2_script(c, accept=True)) as oauth_ok,
        ScriptedIMAP(lambda c: xoauth2_script(c, accept=False)) as oauth_no,
        ScriptedIMAP(echo_script) as echo,
        ScriptedIMAP(echo_bye_script) as echo_bye,
        ScriptedIMAP(stray_tag_script) as stray,
    ):

        def plain(host: str, port: int, secret: str = password) -> IMAPAccount:
            return IMAPAccount(host=host, port=port, username=user, password=secret, tls=False)

        def oauth(port: int) -> IMAPAccount:
            return IMAPAccount(
                host="127.0.0.1", port=port, username=user, oauth2_token=token, tls=False
            )

        accounts = {
            "plain": plain(dovecot.host, dovecot.port),
            "tls": IMAPAccount(
                host="127.0.0.1",
                port=dovecot.tls_port,
                username=user,
                password=password,
                ssl_context=dovecot.client_ssl_context(),
            ),
            "proxied": plain(proxy.host, proxy.port),
            "wrong": plain(dovecot.host, dovecot.port, wrong),
            "oauth-ok": oauth(oauth_ok.port),
            "oauth-refused": oauth(oauth_no.port),
            "echo": plain(echo.host, echo.port),
            "echo-bye": plain(echo_bye.host, echo_bye.port),
            "stray": plain(stray.host, stray.port),
        }
        accounts["proxied-stall"] = accounts["proxied"]
        connector = IMAPConnector(accounts)
        # Real work gets generous bounds (a loaded CI box must not fail it); the servers
        # that are meant to fail get short ones, since transient failures retry until then.
        roomy = config(CFG, acquire_timeout=5.0, connect_timeout=2.0, op_timeout=3.0)
        pool: GuardedPool[IMAPClient] = GuardedPool(connector, roomy)
        fast = config(CFG, acquire_timeout=1.5, connect_timeout=1.0)  # NO: ~0.5 s
        bad: GuardedPool[IMAPClient] = GuardedPool(connector, fast)
        evidence.add(connector, roomy, fast, *accounts.values())

        async def attempt(key: str) -> None:
            try:
                async with bad.acquire(key) as imap:
                    evidence.add(imap)
                    await imap.noop()
            except PoolError as exc:
                evidence.error(exc)

        async with pool, bad:
            # Real work over plain and TLS.
            for key in ("plain", "tls"):
                async with pool.acquire(key) as imap:
                    evidence.add(imap, pool.record_of(imap).to_dict())
                    await imap.select("INBOX")
                    await imap.append(make_message(9, subject="secret-free"), mailbox="INBOX")
                    await imap.uid_fetch("1:*", "(UID FLAGS BODY.PEEK[])")
                    await imap.uid("STORE", "1", "+FLAGS", r"(\Seen)")
                    await imap.search("ALL")
            # Refused and misbehaving logins, XOAUTH2 both ways.
            for key in ("wrong", "oauth-ok", "oauth-refused", "echo", "echo-bye", "stray"):
                await attempt(key)
            # Faults: in the middle of LOGIN, and under a command.
            proxy.set_mode(Mode.STALL, after_client_bytes=30)
            await attempt("proxied-stall")
            proxy.set_mode(Mode.PASS)
            async with pool.acquire("proxied") as imap:
                await imap.select("INBOX")
                proxy.reset_all()
                try:
                    await imap.noop()
                except PoolError as exc:
                    evidence.error(exc)
            # IDLE, a leak suspect, and audits.
            async with IdleSession(pool, "plain", renew_after=0.2) as session:
                async with asyncio.timeout(3):
                    async for event in session:
                        if event.kind == "CONNECTED":
                            break
                held = await pool.acquire("tls")
                await asyncio.sleep(CFG.leak_threshold + 0.1)
                report = await pool.audit()
                evidence.add(report, report.to_dict())
                evidence.json(report.to_dict())
                pool.release(held)
            # A worker pass and the health endpoint.
            store = Store.open(tmp_path / "mirror.sqlite3")
            try:
                jobs = [AccountConfig(k, accounts[k], ("INBOX",)) for k in ("plain", "tls")]
                worker = SyncWorker(pool, store, jobs)
                summary = await worker.run_pass()
                evidence.add(summary)
                registry = make_registry(SyncCollector(pool.stats, lambda: worker.counters))
                async with (
                    HealthServer(make_app(pool, registry)) as health,
                    aiohttp.ClientSession() as http,
                ):
                    for path in ("/healthz", "/metrics"):
                        async with http.get(health.url + path) as resp:
                            evidence.add(await resp.text())
            finally:
                store.close()
            for each in (pool, bad):
                evidence.json(each.stats())
                for record in [*each.audit_target.records(), *each.audit_target.graveyard()]:
                    evidence.json(record.to_dict())
                final = await each.audit()
                evidence.add(final, final.to_dict())
        evidence.json(pool.stats())
        evidence.json(bad.stats())

    # The run did what it says: these paths were really taken.
    texts = everything_logged.texts + evidence.texts
    blob = "\n".join(texts)
    assert "aioimaplib.aioimaplib" in everything_logged.names  # its DEBUG lines were seen
    assert "guardedpool.imap.wire" in everything_logged.names
    assert "AuthenticationError" in blob and "XOAUTH2" in blob
    assert "<credentials redacted>" in blob
    assert all(s.accepted for s in (oauth_ok, oauth_no, echo, echo_bye, stray))
    assert any(b"AUTHENTICATE XOAUTH2" in line for line in oauth_ok.received)
    assert summary.ok, summary

    leaks = sorted({s for s in secrets if s and s in blob})
    where = [t[:300] for t in texts if any(s in t for s in leaks)][:5]
    assert not leaks, f"credential forms found: {leaks} in {where}"


# -- the audit keeps its hands off -----------------------------------------------------------


@pytest.mark.parametrize("close_orphans", [False, True])
async def test_audit_touches_only_what_the_pool_owns(
    dovecot: DovecotServer, close_orphans: bool
) -> None:
    """A connection to the pooled server that no record owns (an orphan: here another
    part of the app talking IMAP on its own stream) is reported and left working, unless
    ``close_orphans=True``; sockets to anything else -- the same server's other port, a
    UNIX pair, a listener -- are never touched either way."""
    account = IMAPAccount(
        host=dovecot.host, port=dovecot.port, username="bob", password="bob-pw", tls=False
    )
    cfg = config(CFG, audit=config(DEFAULTS.audit, close_orphans=close_orphans))
    pool: GuardedPool[IMAPClient] = GuardedPool(IMAPConnector({"k": account}), cfg)
    reader, writer = await asyncio.open_connection(dovecot.host, dovecot.port)
    other_port = socket.create_connection((dovecot.host, dovecot.tls_port))
    pair = socket.socketpair()
    listener = socket.create_server(("127.0.0.1", 0))
    bystanders = [other_port, *pair, listener]
    inodes = [os.fstat(s.fileno()).st_ino for s in bystanders]
    try:
        async with asyncio.timeout(5):
            assert (await reader.readline()).startswith(b"* OK")
        async with pool:
            async with pool.acquire("k") as imap:
                await imap.noop()
            report = await pool.audit()
            kinds = [(f.kind.value, f.action.value) for f in report.findings]
            # Closing an orphan shuts its socket down; the fd stays with its stream's owner
            # (asyncio has no public way to reach a transport by fd): close_failed, truthfully.
            expected = "close_failed" if close_orphans else "reported"
            assert kinds == [("orphan", expected)], str(report)
            if close_orphans:  # the owner's stream reads EOF: nothing crosses it any more
                async with asyncio.timeout(5):
                    await reader.read()
                assert reader.at_eof()
            if not close_orphans:  # untouched, and still working
                writer.write(b"a1 NOOP\r\n")
                async with asyncio.timeout(5):
                    while not (line := await reader.readline()).startswith(b"a1 "):
                        assert line
                assert line.startswith(b"a1 OK")
            assert [os.fstat(s.fileno()).st_ino for s in bystanders] == inodes
            pair[0].sendall(b"x")
            assert pair[1].recv(1) == b"x"  # still working
            other_port.getpeername()  # still connected
            async with pool.acquire("k") as imap:  # the pool's own are fine too
                await imap.noop()
    finally:
        writer.close()
        for sock in bystanders:
            sock.close()


# -- the health endpoint stays on loopback -----------------------------------------------------


async def test_health_endpoint_binds_loopback_by_default(tmp_path: Path) -> None:
    # No [health] table at all; password_env names a variable that is always set.
    config = parse_config(
        {"accounts": [{"key": "a", "host": "h", "username": "u", "password_env": "PATH"}]},
        base=tmp_path,
    )
    assert config.health_bind == ("127.0.0.1", 8025)
    pool: GuardedPool[IMAPClient] = GuardedPool(IMAPConnector({}), CFG)
    registry = make_registry(SyncCollector(pool.stats, dict))
    async with HealthServer(make_app(pool, registry)) as health:  # host not given
        assert health.address is not None and health.address[0] == "127.0.0.1"
        host = socket.gethostbyname(socket.gethostname())
        if not host.startswith("127."):  # a non-loopback address of this machine
            with pytest.raises(OSError):
                socket.create_connection((host, health.address[1]), timeout=1).close()
    await pool.close()
