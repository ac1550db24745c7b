"""Bad input gets a clear, typed error in bounded time and loses nothing (issue 7, part 3).

Three tables:

* configuration: every ``PoolConfig`` / ``RetryPolicy`` / ``AuditPolicy`` option has an
  entry (a test fails when an option is added without one); values that
  ``tests/unit/test_config.py`` does not already try are tried here;
* servers and networks that are wrong: each open ends with a typed error within
  ``connect_timeout`` (or ``op_timeout`` for a fault after login) + 1 s, the connection is
  poisoned, and no socket is left behind (inodes compared with a baseline);
* the example worker's CLI with a broken config, a missing secret or an unusable store:
  exit code 2, one line naming the problem, the store untouched
  (``tests/integration/test_sync_cli.py`` covers other config keys).

Rows that Dovecot or the fault proxy already produce in ``test_imap_connector.py`` (never
greeting, stalled TLS handshake, stalled LOGIN, refused port, BYE greeting, BYE or a
stray tagged reply after login) are not repeated.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import math
import os
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from harness import DovecotServer, Mode, ProxyFactory, socket_fds
from harness.configs import DEFAULTS, FAST_RETRY, config
from harness.scripted import ScriptConn, ScriptedIMAP

from guardedpool import (
    AuditPolicy,
    AuthenticationError,
    CertificateError,
    ConfigurationError,
    ConnectError,
    ConnectionLost,
    ConnectionPoisoned,
    ConnectTimeout,
    GuardedPool,
    OperationTimeout,
    PoolConfig,
    PoolTimeout,
    ProtocolError,
    RetryPolicy,
    ServerBusy,
    UnknownKey,
)
from guardedpool.imap import IMAPAccount, IMAPClient, IMAPConnector
from guardedpool.sockets import identify, is_open
from guardedpool.testing import MemoryConnector

ROOT = Path(__file__).resolve().parents[2]

# -- 1. configuration ---------------------------------------------------------------------

HUGE = 10**400  # an int no float can hold: "finite" to isinstance, infinite in practice

# Values tests/unit/test_config.py does not try, for every option of the three classes.
GAPS: dict[tuple[type, str], list[object]] = {
    (PoolConfig, "max_per_key"): [2.0, -(10**6), [1]],
    (PoolConfig, "max_total"): [100.0, "100", {}],
    (PoolConfig, "max_connecting"): [8.5, -3, b"8"],
    (PoolConfig, "acquire_timeout"): [-1e-9, 1j, [30.0]],
    (PoolConfig, "connect_timeout"): [-0.0, "15", math.nan],
    (PoolConfig, "op_timeout"): [-1e300, b"30", False],
    (PoolConfig, "close_timeout"): [-math.inf, (), "5"],
    (PoolConfig, "shutdown_timeout"): [0.0, -1.0, math.nan, math.inf, None, "1"],
    (PoolConfig, "queue_timeout"): [0.0, -1.0, math.nan, math.inf, None, "300"],
    (PoolConfig, "idle_timeout"): [-300, None, "300"],
    (PoolConfig, "max_lifetime"): [-1.0, False, "3600"],
    (PoolConfig, "lifetime_jitter"): [math.nan, math.inf, None, True, "0.05", 0.51],
    (PoolConfig, "check_after"): [math.inf, None, True, "30"],
    (PoolConfig, "check_timeout"): [0.0, -1.0, math.nan, math.inf, None, True, "5"],
    (PoolConfig, "heartbeat_interval"): [-1.0, math.nan, "60", True, -math.inf],
    (PoolConfig, "leak_threshold"): [-1.0, None, "300"],
    (PoolConfig, "reclaim_after"): [0.0, -1.0, math.nan, math.inf, "600", True],
    (PoolConfig, "housekeeping_interval"): [-1.0, None, math.inf],
    (PoolConfig, "forget_keys_after"): [0.0, -1.0, math.nan, math.inf, None, False, "300"],
    (PoolConfig, "keepalive_idle"): [60.0, -60, True],
    (PoolConfig, "keepalive_interval"): [10.0, "10", None],
    (PoolConfig, "keepalive_count"): [3.0, -3, "3"],
    (PoolConfig, "retry"): [None, {"initial": 0.1}, AuditPolicy()],
    (PoolConfig, "audit"): [None, "procfs", RetryPolicy()],
    (RetryPolicy, "initial"): [math.nan, math.inf, "0.1", None, True],
    (RetryPolicy, "multiplier"): [0.0, -2.0, math.inf, "2", None],
    (RetryPolicy, "max_delay"): [-1.0, math.nan, math.inf, None, True],
    (RetryPolicy, "jitter"): [-0.1, math.inf, "0.5", None],
    (RetryPolicy, "reconnect_deadline"): [0.0, -1.0, math.nan, None, "120"],
    (RetryPolicy, "max_throttle_delay"): [0.0, -1.0, math.nan, math.inf, None, "300"],
    (RetryPolicy, "reset_after"): [-1.0, math.nan, math.inf, None, "60"],
    (RetryPolicy, "max_logins_per_minute"): [0, -6, 6.0, True, None, "6", 10**7],
    (RetryPolicy, "capacity_cooldown"): [0.0, -1.0, math.nan, math.inf, None, "300"],
    (AuditPolicy, "backend"): [None, "", "PROCFS", 1],
    (AuditPolicy, "interval"): [-1.0, math.nan, math.inf, "60", True],
    (AuditPolicy, "force_close_stragglers"): [0, "yes", None],
    (AuditPolicy, "close_orphans"): [1, None, "false"],
    (AuditPolicy, "fd_usage_unhealthy"): [0.0, -0.5, math.nan, math.inf, "0.9", True],
    (AuditPolicy, "graveyard_size"): [1.5, -1, None, True, "4096"],
    (AuditPolicy, "graveyard_ttl"): [0.0, math.nan, math.inf, None, "600"],
}


def test_every_option_has_a_bad_value_row() -> None:
    """A new option without a row here fails: "every option is validated" stays true."""
    options = {
        (cls, f.name)
        for cls in (PoolConfig, RetryPolicy, AuditPolicy)
        for f in dataclasses.fields(cls)
    }
    assert options == set(GAPS), options ^ set(GAPS)


@pytest.mark.parametrize(
    ("cls", "name", "value"),
    [(cls, name, v) for (cls, name), values in GAPS.items() for v in values],
    ids=lambda x: x.__name__ if isinstance(x, type) else repr(x)[:20],
)
def test_bad_option_value_is_a_value_error_naming_it(cls: type, name: str, value: object) -> None:
    with pytest.raises(ValueError, match=rf"{cls.__name__}\.{name}\b"):
        cls(**{name: value})


@pytest.mark.parametrize(
    ("cls", "name"),
    [
        (PoolConfig, "acquire_timeout"),
        (PoolConfig, "connect_timeout"),
        (PoolConfig, "op_timeout"),
        (PoolConfig, "close_timeout"),
        (PoolConfig, "max_lifetime"),
        (RetryPolicy, "max_delay"),
        (RetryPolicy, "jitter"),
    ],
)
def test_int_too_large_for_a_float_is_rejected(cls: type, name: str) -> None:
    """``acquire_timeout=10**400`` would pass as finite, then every acquire would raise
    ``OverflowError: int too large to convert to float`` (not even a PoolError)."""
    with pytest.raises(ValueError, match=rf"{cls.__name__}\.{name}"):
        cls(**{name: HUGE})


@pytest.mark.parametrize(
    ("name", "value"),
    [("keepalive_idle", 32768), ("keepalive_interval", 60_000), ("keepalive_count", 128)],
)
def test_keepalive_beyond_the_kernel_limit_is_rejected(name: str, value: int) -> None:
    """``keepalive_idle=60000`` (milliseconds by mistake) must fail at construction, not
    as an endless series of "connect failed: OSError: Invalid argument"."""
    with pytest.raises(ValueError, match=rf"PoolConfig\.{name}"):
        PoolConfig(**{name: value})  # type: ignore[arg-type]


def test_pool_rejects_a_config_that_is_not_a_pool_config() -> None:
    with pytest.raises(ValueError, match="config must be a PoolConfig"):
        GuardedPool(MemoryConnector(), {"max_total": 5})  # type: ignore[arg-type]


# -- 2. unknown keys --------------------------------------------------------------------------

CFG = config(
    DEFAULTS,
    acquire_timeout=3.0,
    connect_timeout=1.0,
    op_timeout=0.5,
    close_timeout=0.3,
    check_after=3600.0,
    retry=config(FAST_RETRY, max_delay=0.1, jitter=0.01),
)


@pytest.mark.parametrize("source", ["mapping", "callable"])
async def test_unknown_key_is_a_typed_error_at_once(dovecot: DovecotServer, source: str) -> None:
    """Not a PoolTimeout after 3 s, not a retry loop: UnknownKey, immediately, no slot."""
    account = IMAPAccount(
        host=dovecot.host, port=dovecot.port, username="alice", password="alice-pw", tls=False
    )
    known = {"alice": account}
    connector = IMAPConnector(known if source == "mapping" else (lambda k: known[k]))
    pool: GuardedPool[IMAPClient] = GuardedPool(connector, CFG)
    async with pool:
        start = time.monotonic()
        with pytest.raises(UnknownKey, match="bob") as info:
            await pool.acquire("bob")
        assert time.monotonic() - start < 0.5
        assert isinstance(info.value, KeyError)  # also catchable as a KeyError
        # No state left behind, and not a connect failure (issue 12): there is no such key.
        stats = pool.stats()
        assert "bob" not in stats["keys"]
        total = stats["total"]
        assert total["waiting"] == total["opening"] == total["open"] == 0
        assert total["connect_failures"] == 0
        async with pool.acquire("alice") as imap:  # the pool is fine
            await imap.noop()


# -- 3. wrong servers and networks -------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def sockets_back_to(baseline: set[int], within: float = 1.0) -> None:
    deadline = time.monotonic() + within
    while True:  # closes happen in loop callbacks: give them turns, bounded
        now = set(socket_fds().values())
        if now == baseline or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.01)
    assert now == baseline, f"sockets +{now - baseline} -{baseline - now}"


async def expect_open_error(
    account: IMAPAccount, error: type[BaseException], bound: float, transient: bool | None
) -> BaseException:
    """Open once: ``error`` (exactly that class) within ``bound`` + 1 s."""
    connector = IMAPConnector({"k": account})
    start = time.monotonic()
    with pytest.raises(ConnectError) as info:
        async with asyncio.timeout(bound + 5):  # a hang fails here, not in the CI timeout
            await connector.open("k", CFG)
    elapsed = time.monotonic() - start
    assert type(info.value) is error, repr(info.value)
    assert elapsed <= bound + 1.0, f"{elapsed:.2f} s > {bound} + 1 s"
    if transient is not None:
        assert info.value.transient is transient
    assert "key 'k'" in str(info.value)  # says which account
    return info.value


def plain(host: str, port: int, **kw: Any) -> IMAPAccount:
    kw.setdefault("username", "alice")
    kw.setdefault("password", "alice-pw")
    return IMAPAccount(host=host, port=port, tls=False, **kw)


def tls(dovecot: DovecotServer, port: int, **kw: Any) -> IMAPAccount:
    kw.setdefault("ssl_context", dovecot.client_ssl_context())
    return IMAPAccount(host="127.0.0.1", port=port, username="alice", password="alice-pw", **kw)


NETWORK_ROWS: dict[str, tuple[Callable[[DovecotServer], IMAPAccount], type[ConnectError], bool]] = {
    # name: (account, error class, transient)
    # Settings no retry can fix fail at once, naming the mistake (issue 13).
    "unresolvable host": (lambda d: plain("no-such-host.invalid", 143), ConfigurationError, False),
    "refused port": (lambda d: plain("127.0.0.1", free_port()), ConnectError, True),
    "TLS to the plain port": (lambda d: tls(d, d.port), ConfigurationError, False),
    "plain to the TLS port": (lambda d: plain("127.0.0.1", d.tls_port), ConfigurationError, False),
    "untrusted certificate": (
        lambda d: tls(d, d.tls_port, ssl_context=None),
        CertificateError,
        False,
    ),
    "certificate for another name": (
        lambda d: tls(d, d.tls_port, server_hostname="imap.example.org"),
        CertificateError,
        False,
    ),
}


@pytest.mark.parametrize("row", sorted(NETWORK_ROWS))
async def test_wrong_network_or_tls_is_a_typed_error(dovecot: DovecotServer, row: str) -> None:
    make, error, transient = NETWORK_ROWS[row]
    baseline = set(socket_fds().values())
    await expect_open_error(make(dovecot), error, CFG.connect_timeout, transient)
    await sockets_back_to(baseline)


async def test_permanent_errors_are_not_retried_by_the_pool(
    dovecot: DovecotServer, fault_proxy: ProxyFactory
) -> None:
    """An untrusted certificate fails each acquire at once, with one connection each."""
    proxy = await fault_proxy(tls=True)
    account = IMAPAccount(host=proxy.host, port=proxy.port, username="alice", password="alice-pw")
    pool: GuardedPool[IMAPClient] = GuardedPool(IMAPConnector({"k": account}), CFG)
    async with pool:
        for attempt in (1, 2):
            start = time.monotonic()
            with pytest.raises(CertificateError):
                await pool.acquire("k")
            assert time.monotonic() - start < CFG.connect_timeout + 1
            assert proxy.stats().accepted == attempt
        assert pool.stats()["total"]["waiting"] == 0


async def test_transient_errors_end_in_a_pool_timeout_naming_the_cause(
    dovecot: DovecotServer,
) -> None:
    """A refused port is retried with backoff, then acquire_timeout ends it with a
    PoolTimeout that carries the last connect error: bounded, and it says why."""
    pool: GuardedPool[IMAPClient] = GuardedPool(
        IMAPConnector({"k": plain("127.0.0.1", free_port())}),
        config(CFG, acquire_timeout=0.5),
    )
    async with pool:
        start = time.monotonic()
        with pytest.raises(PoolTimeout) as info:
            await pool.acquire("k")
        assert time.monotonic() - start < 0.5 + 1
        assert isinstance(info.value.last_error, ConnectError)
        assert "refused" in str(info.value).lower()


async def test_garbage_greeting_through_the_proxy(fault_proxy: ProxyFactory) -> None:
    baseline = set(socket_fds().values())
    proxy = await fault_proxy(mode=Mode.GARBAGE, garbage=b"\x16\x03\x01garbage\xff\xfe\r\n")
    await expect_open_error(plain(proxy.host, proxy.port), ConnectError, CFG.connect_timeout, True)
    await proxy.stop()
    await sockets_back_to(baseline)


# Scripted servers: what happens before and during login ----------------------------------


async def greet_then_close(c: ScriptConn) -> None:
    await c.greet()


async def not_ok_greeting(c: ScriptConn) -> None:
    await c.send(b"* NO not today\r\n")
    await c.drain()


async def not_imap4rev1(c: ScriptConn) -> None:
    await c.send(b"* OK [CAPABILITY IMAP3] hello from the past\r\n")
    await c.serve(caps="IMAP3")


async def bye_to_login(c: ScriptConn) -> None:
    await c.greet()
    await c.serve(until=b"LOGIN")
    await c.send(b"* BYE shutting down\r\n")


async def continuation_to_login(c: ScriptConn) -> None:
    await c.greet()
    await c.serve(until=b"LOGIN")
    await c.send(b"+ more please\r\n")
    await c.drain()


async def login_unavailable(c: ScriptConn) -> None:
    await c.greet()
    line = await c.serve(until=b"LOGIN")
    await c.send(line.split(b" ")[0] + b" NO [UNAVAILABLE] try later\r\n")
    await c.drain()


async def login_rejected(c: ScriptConn) -> None:
    await c.greet()
    line = await c.serve(until=b"LOGIN")
    await c.send(line.split(b" ")[0] + b" NO [AUTHENTICATIONFAILED] nope\r\n")
    await c.drain()


async def greeting_never_ends(c: ScriptConn) -> None:
    for _ in range(100):  # a greeting line that never gets its CRLF
        await c.send(b"* OK " + b"x" * 1000)
        await asyncio.sleep(0.02)


LOGIN_ROWS: dict[str, tuple[Callable[[ScriptConn], Awaitable[None]], type[ConnectError], bool]] = {
    "greeting then close": (greet_then_close, ConnectError, True),
    "NO greeting": (not_ok_greeting, ConnectError, True),
    "not IMAP4rev1": (not_imap4rev1, ConnectError, True),
    "BYE answering LOGIN": (bye_to_login, ConnectError, True),
    "continuation answering LOGIN": (continuation_to_login, ConnectError, True),
    "LOGIN NO [UNAVAILABLE]": (login_unavailable, ServerBusy, True),  # issue 13
    "LOGIN NO [AUTHENTICATIONFAILED]": (login_rejected, AuthenticationError, False),
    "greeting that never ends": (greeting_never_ends, ConnectTimeout, True),
}


@pytest.mark.parametrize("row", sorted(LOGIN_ROWS))
async def test_server_misbehaving_before_login_is_a_typed_error(row: str) -> None:
    script, error, transient = LOGIN_ROWS[row]
    baseline = set(socket_fds().values())
    async with ScriptedIMAP(script) as srv:
        await expect_open_error(plain(srv.host, srv.port), error, CFG.connect_timeout, transient)
        assert srv.accepted == 1
    await sockets_back_to(baseline)


# After login: the fault poisons the connection within op_timeout --------------------------


async def endless_line(c: ScriptConn) -> None:
    await c.greet()
    await c.serve(until=b"NOOP")
    for _ in range(200):  # data keeps coming, never a line end: no inactivity timeout fires
        await c.send(b"* OK " + b"y" * 500)
        await asyncio.sleep(0.01)


async def endless_literal(c: ScriptConn) -> None:
    await c.greet()
    line = await c.serve(until=b"FETCH")
    await c.send(b"* 1 FETCH (BODY[] {10000000}\r\n")
    for _ in range(200):  # the literal trickles and never completes
        await c.send(b"z" * 200)
        await asyncio.sleep(0.01)
    del line


async def untagged_flood(c: ScriptConn) -> None:
    await c.greet()
    await c.serve(until=b"FETCH")
    for i in range(1, 400):  # well-formed responses, but never the tagged one
        await c.send(f"* {i} FETCH (FLAGS (\\Seen))\r\n".encode())
        await asyncio.sleep(0.005)


async def close_mid_literal(c: ScriptConn) -> None:
    await c.greet()
    await c.serve(until=b"FETCH")
    await c.send(b"* 1 FETCH (BODY[] {1000}\r\nonly a part")
    await asyncio.sleep(0.05)
    c.writer.transport.abort()


async def bye_during_idle(c: ScriptConn) -> None:
    await c.greet()
    await c.serve(until=b"IDLE")
    await c.send(b"+ idling\r\n")
    await asyncio.sleep(0.1)
    await c.send(b"* BYE idle timeout\r\n")
    await c.drain()


SESSION_ROWS: dict[
    str,
    tuple[
        Callable[[ScriptConn], Awaitable[None]],
        Callable[[IMAPClient], Awaitable[Any]],
        type[ConnectionPoisoned],
    ],
] = {
    "a line that never ends": (endless_line, lambda c: c.noop(), OperationTimeout),
    "a literal that never completes": (
        endless_literal,
        lambda c: c.fetch("1", "(BODY[])"),
        OperationTimeout,
    ),
    "untagged data forever": (
        untagged_flood,
        lambda c: c.uid_fetch("1:*", "(FLAGS)"),
        OperationTimeout,
    ),
    "closed mid-literal": (close_mid_literal, lambda c: c.fetch("1", "(BODY[])"), ConnectionLost),
    "BYE during IDLE": (bye_during_idle, lambda c: idle_then_wait(c), ProtocolError),
}


async def idle_then_wait(client: IMAPClient) -> None:
    await client.idle_start()
    await client.wait_server_push(timeout=5.0)


@pytest.mark.parametrize("row", sorted(SESSION_ROWS))
async def test_server_misbehaving_after_login_poisons_within_op_timeout(row: str) -> None:
    script, command, error = SESSION_ROWS[row]
    baseline = set(socket_fds().values())
    async with ScriptedIMAP(script) as srv:
        client = await IMAPConnector({"k": plain(srv.host, srv.port)}).open("k", CFG)
        ident = identify(client.socket)  # type: ignore[arg-type]
        await client.select("INBOX")
        start = time.monotonic()
        with pytest.raises(ConnectionPoisoned) as info:
            async with asyncio.timeout(CFG.op_timeout + 5):
                await command(client)
        elapsed = time.monotonic() - start
        assert isinstance(info.value, error), repr(info.value)
        assert elapsed <= CFG.op_timeout + 1.0, f"{elapsed:.2f} s"
        assert client.poisoned
        with pytest.raises(ConnectionPoisoned):
            await client.noop()  # never used again
        await asyncio.sleep(0)
        assert not is_open(ident), "the poisoned connection's socket is still open"
    await sockets_back_to(baseline)


# -- 4. the example worker's CLI ---------------------------------------------------------------

SECRET = "Cli-Secret-" + hashlib.sha256(b"bad input").hexdigest()[:12]


def run_cli(tmp: Path, config_text: str, **env: str) -> subprocess.CompletedProcess[str]:
    config = tmp / "sync.toml"
    config.write_text(config_text)
    base = {k: v for k, v in os.environ.items() if k != "SYNC_BAD_PW"}
    return subprocess.run(
        [sys.executable, "-m", "examples.imap_sync", "run", "--config", str(config), "--once"],
        cwd=tmp,
        env={**base, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=20,
    )


def config_text(
    store: str, account_extra: str = 'password_env = "SYNC_BAD_PW"', top: str = ""
) -> str:
    return f"""
store = "{store}"
{top}
[health]
enabled = false
[[accounts]]
key = "alice"
host = "127.0.0.1"
port = 1
tls = false
username = "alice"
{account_extra}
"""


def one_line(proc: subprocess.CompletedProcess[str], prefix: str, *needles: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(prefix), lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert SECRET not in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr


CONFIG_ROWS: dict[str, tuple[str, dict[str, str], tuple[str, ...]]] = {
    # name: (sync.toml, environment, what the line must name)
    "malformed TOML": ('store = "x.sqlite3"\n[[accounts]\nkey = "a"\n', {}, ("not valid TOML",)),
    "secrets_file missing": (
        config_text("x.sqlite3", "", top='secrets_file = "nope.toml"'),
        {},
        ("secrets_file", "does not exist"),
    ),
    "secrets_file without the key": (
        config_text("x.sqlite3", "", top='secrets_file = "secrets.toml"'),
        {},
        ("accounts.alice", "no entry 'alice'"),
    ),
    "secrets_file malformed": (
        config_text("x.sqlite3", "", top='secrets_file = "broken.toml"'),
        {},
        ("secrets_file", "not valid TOML"),
    ),
    "password_env empty": (config_text("x.sqlite3"), {"SYNC_BAD_PW": ""}, ("SYNC_BAD_PW",)),
}


@pytest.mark.parametrize("row", sorted(CONFIG_ROWS))
def test_cli_bad_config_or_missing_secret(tmp_path: Path, row: str) -> None:
    text, environment, needles = CONFIG_ROWS[row]
    (tmp_path / "secrets.toml").write_text(f'bob = "{SECRET}"\n')
    (tmp_path / "broken.toml").write_text(f'alice = "{SECRET}\n')  # unterminated string
    proc = run_cli(tmp_path, text, **environment)
    one_line(proc, "config error: ", *needles)
    assert not (tmp_path / "x.sqlite3").exists()


def under_a_file(d: Path) -> str:
    (d / "afile").write_text("x")
    return str(d / "afile" / "s.sqlite3")


def a_directory(d: Path) -> str:
    (d / "adir").mkdir()
    return str(d / "adir")


def read_only_fs(d: Path) -> str:
    return "/proc/self/s.sqlite3"


def not_a_database(d: Path) -> str:
    (d / "notes.sqlite3").write_text("my notes, not a database\n")
    return str(d / "notes.sqlite3")


def foreign_schema(d: Path) -> str:
    path = d / "other.sqlite3"
    db = sqlite3.connect(path)
    with db:
        db.execute("PRAGMA user_version = 99")
        db.execute("CREATE TABLE someone_elses (x)")
    db.close()
    return str(path)


STORE_ROWS: dict[str, tuple[Callable[[Path], str], str]] = {
    # name: (make the store path, what the line must say)
    "parent is a file": (under_a_file, "unable to open"),
    "store is a directory": (a_directory, "unable to open"),
    "read-only filesystem": (read_only_fs, "unable to open"),
    "not a database": (not_a_database, "not a database"),
    "another program's database": (foreign_schema, "schema version 99"),
}


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()}


@pytest.mark.parametrize("row", sorted(STORE_ROWS))
def test_cli_unusable_store_exits_2_and_touches_nothing(tmp_path: Path, row: str) -> None:
    make, needle = STORE_ROWS[row]
    work = tmp_path / "work"
    work.mkdir()
    store = make(work)
    before = snapshot(work)
    proc = run_cli(tmp_path, config_text(store), SYNC_BAD_PW=SECRET)
    one_line(proc, "store error: ", needle)
    assert snapshot(work) == before  # not one byte changed, no -wal/-shm files created


# -- 5. a failed open leaves no socket, whichever connector -----------------------------------


def _server_side(server: Any) -> set[int]:
    """Inodes of the LineServer's accepted sockets (it closes them when the client goes)."""
    out: set[int] = set()
    for writer in list(server._writers):
        sock = writer.get_extra_info("socket")
        if sock is not None:
            out.add(os.fstat(sock.fileno()).st_ino)
    return out


@pytest.mark.parametrize("connector_kind", ["imap", "line"])
async def test_open_failing_after_connect_leaves_no_socket(
    dovecot: DovecotServer, monkeypatch: pytest.MonkeyPatch, connector_kind: str
) -> None:
    """Setting TCP keepalive fails (EINVAL: a value the kernel refuses) after the TCP
    connect succeeded: the connector must close the socket it just made, not drop it for
    the garbage collector to find."""

    def refuse(*args: object) -> None:
        raise OSError(22, "Invalid argument")

    baseline = set(socket_fds().values())
    if connector_kind == "imap":
        monkeypatch.setattr("guardedpool.imap.connector.set_keepalive", refuse)
        with pytest.raises(ConnectError, match="Invalid argument"):
            await IMAPConnector({"k": plain(dovecot.host, dovecot.port)}).open("k", CFG)
        await sockets_back_to(baseline)
        return
    from guardedpool.testing import LineConnector, LineServer

    monkeypatch.setattr("guardedpool.testing.set_keepalive", refuse)
    async with LineServer() as server:
        baseline = set(socket_fds().values())
        with pytest.raises(ConnectError, match="Invalid argument"):
            await LineConnector({"k": server.address}).open("k", CFG)
        assert set(socket_fds().values()) - baseline <= _server_side(server)
