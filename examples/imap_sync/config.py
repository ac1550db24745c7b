"""sync.toml -> a validated :class:`SyncConfig`, or one line saying which key is wrong.

A worker that starts with a typo in its config fails an hour later, on the first account
that needs the bad value; so everything is checked up front and every error names the
file, the TOML key (``accounts.bob.port``) and what is wrong with it. Secrets come from
the environment (``password_env``) or a separate secrets file, never from sync.toml
itself, and no error message ever contains one: a secret-bearing value is named, not
shown. Relative paths are relative to the config file, so a config works from any cwd.

Example (every option; only ``[[accounts]]`` with host, username and a password source
is required)::

    store = "mail.sqlite3"
    store_fsync = true                 # false: like mbsync's "FSync no" (see SyncConfig)
    secrets_file = "secrets.toml"      # optional: account key = "password" lines

    [sync]
    concurrency = 8                    # mailboxes synced at once
    poll_interval = 60.0               # seconds between passes (run without --once)
    batch_size = 100                   # messages per UID FETCH and per transaction
    mode = "poll"                      # "idle": IDLE pushes for INBOX (needs max_per_key >= 2)
    idle_renew_after = 1740.0          # seconds per IDLE round (at most 29 minutes)

    [health]
    bind = "127.0.0.1:8025"            # /healthz and /metrics; enabled = false turns off

    [pool]                             # any guardedpool.PoolConfig option
    max_per_key = 2
    op_timeout = 60.0
    [pool.retry]                       # RetryPolicy options
    max_delay = 30.0
    [pool.audit]                       # AuditPolicy options
    backend = "auto"

    [[accounts]]
    key = "alice"                      # pool key, metric label, store key
    host = "imap.example.org"
    port = 993
    username = "alice@example.org"
    password_env = "ALICE_IMAP_PASSWORD"
    tls = true                         # implicit TLS; false = plaintext or STARTTLS
    starttls = false                   # true: port 143, STARTTLS before login (tls = false)
    compress = false                   # COMPRESS=DEFLATE (RFC 4978) where offered
    cafile = "ca.pem"                  # trust this CA instead of the system store
    mailboxes = ["INBOX", "Archive"]   # default ["INBOX"]
"""

from __future__ import annotations

import ipaddress
import os
import re
import ssl
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from guardedpool import AuditPolicy, PoolConfig, RetryPolicy
from guardedpool.imap.account import IMAPAccount

__all__ = ["AccountConfig", "ConfigError", "SyncConfig", "load_config", "parse_config"]

DEFAULT_HEALTH_PORT = 8025

_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}$")
_ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

_TOP = frozenset({"store", "store_fsync", "secrets_file", "sync", "health", "pool", "accounts"})
_SYNC = frozenset({"concurrency", "poll_interval", "batch_size", "mode", "idle_renew_after"})
MODES = ("poll", "idle")
# RFC 2177: a server may drop a client idle for 30 minutes; 29 leaves a margin.
MAX_IDLE_RENEW = 1740.0
_ACCOUNT = frozenset(
    {
        "key",
        "host",
        "port",
        "username",
        "password_env",
        "tls",
        "starttls",
        "compress",
        "cafile",
        "server_hostname",
        "mailboxes",
    }
)
_SECRET_NAMES = frozenset({"password", "oauth2_token", "token", "secret"})


class ConfigError(ValueError):
    """A bad config: ``str()`` is one line naming the file, the key and the problem."""


@dataclass(frozen=True, slots=True)
class AccountConfig:
    """One inbox to mirror: its pool key, how to log in, which mailboxes."""

    key: str
    account: IMAPAccount
    mailboxes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SyncConfig:
    """Everything ``run`` needs, validated.

    Attributes:
        accounts: in config order; keys unique.
        pool: limits and timeouts for the one pool all accounts share.
        store_path: the SQLite file (default ``imap_sync.sqlite3`` next to the config).
        store_fsync: whether the store fsyncs at its WAL checkpoints (default True: a
            power cut loses at most the last batches, which the next pass fetches again).
            False never fsyncs, like mbsync's ``FSync no``: a killed worker still loses
            nothing, but a power cut or kernel crash may lose or corrupt the store. On a
            full sync it is ~20% faster (benchmarks/README.md).
        concurrency: mailboxes synced at once (default 8).
        poll_interval: seconds between passes in continuous mode (default 60.0).
        batch_size: messages per ``UID FETCH`` and per store transaction (default 100);
            bounds memory, since aioimaplib holds each whole response.
        mode: continuous mode's trigger, ``"poll"`` (default: a pass every
            ``poll_interval``) or ``"idle"`` (IDLE pushes for each account's INBOX, or
            its first mailbox; the others are still polled). ``"idle"`` holds one
            connection per account, so it needs ``pool.max_per_key >= 2``.
        idle_renew_after: seconds per IDLE round before DONE and a new IDLE (default
            1740.0, 29 minutes, the most RFC 2177 allows).
        health_bind: (host, port) of the health endpoint, None when disabled
            (default 127.0.0.1:8025).
    """

    accounts: tuple[AccountConfig, ...]
    pool: PoolConfig
    store_path: Path
    store_fsync: bool = True
    concurrency: int = 8
    poll_interval: float = 60.0
    batch_size: int = 100
    mode: str = "poll"
    idle_renew_after: float = MAX_IDLE_RENEW
    health_bind: tuple[str, int] | None = ("127.0.0.1", DEFAULT_HEALTH_PORT)

    def accounts_by_key(self) -> dict[str, IMAPAccount]:
        return {a.key: a.account for a in self.accounts}


class _Reader:
    """Typed lookups that raise :class:`ConfigError` naming ``file: where.key``."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.source}: {where}: {problem}")

    def table(self, data: Mapping[str, Any], name: str, where: str) -> dict[str, Any]:
        value = data.get(name, {})
        if not isinstance(value, dict):
            raise self.fail(where, f"must be a table, got {_kind(value)}")
        return value

    def unknown(self, data: Mapping[str, Any], allowed: frozenset[str], where: str) -> None:
        for name in data:
            if name not in allowed:
                if name.lower() in _SECRET_NAMES:
                    raise self.fail(
                        _join(where, name),
                        "secrets do not belong in the config: use password_env or secrets_file",
                    )
                raise self.fail(
                    _join(where, name),
                    f"unknown key (expected one of {', '.join(sorted(allowed))})",
                )

    def string(
        self,
        data: Mapping[str, Any],
        name: str,
        where: str,
        default: str | None = None,
        *,
        required: bool = False,
    ) -> str | None:
        if name not in data:
            if required:
                raise self.fail(_join(where, name), "is required")
            return default
        value = data[name]
        if not isinstance(value, str) or not value.strip():
            raise self.fail(_join(where, name), f"must be a non-empty string, got {_show(value)}")
        if _CONTROL.search(value):
            raise self.fail(_join(where, name), "must not contain control characters")
        return value

    def integer(
        self,
        data: Mapping[str, Any],
        name: str,
        where: str,
        default: int,
        *,
        low: int,
        high: int | None = None,
    ) -> int:
        value = data.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(_join(where, name), f"must be an integer, got {_show(value)}")
        if value < low or (high is not None and value > high):
            span = f"{low}..{high}" if high is not None else f">= {low}"
            raise self.fail(_join(where, name), f"must be in {span}, got {value}")
        return value

    def number(self, data: Mapping[str, Any], name: str, where: str, default: float) -> float:
        value = data.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(_join(where, name), f"must be a number of seconds, got {_show(value)}")
        if not 0 < value < float("inf"):
            raise self.fail(_join(where, name), f"must be > 0 and finite, got {value}")
        return float(value)

    def boolean(self, data: Mapping[str, Any], name: str, where: str, default: bool) -> bool:
        value = data.get(name, default)
        if not isinstance(value, bool):
            raise self.fail(_join(where, name), f"must be true or false, got {_show(value)}")
        return value


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _kind(value: object) -> str:
    return {dict: "a table", list: "an array", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


def _show(value: object) -> str:
    """A value for an error message: short, and only ever a non-secret config value."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _resolve(base: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def parse_bind(text: str) -> tuple[str, int]:
    """``"127.0.0.1:8025"`` / ``"[::1]:8025"`` -> (host, port); ValueError if malformed."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"must be HOST:PORT, got {text!r}")
    host = host.strip("[]")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be in 0..65535, got {port}")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise ValueError(f"host must be an IP address or localhost, got {host!r}") from None
    return host, port


def _pool(r: _Reader, data: Mapping[str, Any]) -> PoolConfig:
    raw = r.table(data, "pool", "pool")
    known = {f.name for f in fields(PoolConfig)}
    r.unknown(raw, frozenset(known), "pool")
    options: dict[str, Any] = {k: v for k, v in raw.items() if k not in ("retry", "audit")}
    try:
        for name, cls in (("retry", RetryPolicy), ("audit", AuditPolicy)):
            if name in raw:
                sub = r.table(raw, name, f"pool.{name}")
                r.unknown(sub, frozenset(f.name for f in fields(cls)), f"pool.{name}")
                options[name] = cls(**sub)
        return PoolConfig(**options)
    except ValueError as exc:
        # PoolConfig and friends name the option and the value; none of them is a secret.
        raise r.fail("pool", str(exc)) from None


def _secrets(r: _Reader, data: Mapping[str, Any], base: Path) -> dict[str, str] | None:
    name = r.string(data, "secrets_file", "")
    if name is None:
        return None
    path = _resolve(base, name)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise r.fail("secrets_file", f"{path} does not exist") from None
    except OSError as exc:
        raise r.fail("secrets_file", f"cannot read {path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        # The decoder's message names a line and column, never the content of a line.
        raise r.fail("secrets_file", f"{path} is not valid TOML: {exc}") from None
    out: dict[str, str] = {}
    for key, value in raw.items():
        if not isinstance(value, str) or not value:
            raise r.fail("secrets_file", f"{path}: {key}: must be a non-empty string")
        out[key] = value
    return out


def _password(
    r: _Reader, raw: Mapping[str, Any], where: str, key: str, secrets: dict[str, str] | None
) -> str:
    env = r.string(raw, "password_env", where)
    if env is not None:
        if not _ENV.match(env):
            raise r.fail(f"{where}.password_env", f"must be a variable name, got {_show(env)}")
        value = os.environ.get(env)
        if not value:
            raise r.fail(f"{where}.password_env", f"environment variable {env} is not set")
        return value
    if secrets is None:
        raise r.fail(where, "needs password_env, or a secrets_file with an entry for this key")
    if key not in secrets:
        raise r.fail(where, f"secrets_file has no entry {key!r}")
    return secrets[key]


def _mailboxes(r: _Reader, raw: Mapping[str, Any], where: str) -> tuple[str, ...]:
    value = raw.get("mailboxes", ["INBOX"])
    if not isinstance(value, list) or not value:
        raise r.fail(
            f"{where}.mailboxes", f"must be a non-empty array of names, got {_show(value)}"
        )
    seen: list[str] = []
    for i, name in enumerate(value):
        if not isinstance(name, str) or not name.strip() or _CONTROL.search(name):
            raise r.fail(f"{where}.mailboxes[{i}]", f"must be a mailbox name, got {_show(name)}")
        if name.upper() == "INBOX":
            name = "INBOX"  # INBOX is case-insensitive (RFC 3501); other names are not
        if name in seen:
            raise r.fail(f"{where}.mailboxes[{i}]", f"{name!r} is listed twice")
        seen.append(name)
    return tuple(seen)


def _account(
    r: _Reader, raw: object, index: int, base: Path, secrets: dict[str, str] | None
) -> AccountConfig:
    where = f"accounts[{index}]"
    if not isinstance(raw, dict):
        raise r.fail(where, f"must be a table, got {_kind(raw)}")
    key = r.string(raw, "key", where, required=True)
    assert key is not None
    if not _KEY.match(key):
        raise r.fail(f"{where}.key", f"must be 1-64 of A-Z a-z 0-9 . _ @ + -, got {_show(key)}")
    where = f"accounts.{key}"
    r.unknown(raw, _ACCOUNT, where)
    host = r.string(raw, "host", where, required=True)
    username = r.string(raw, "username", where, required=True)
    starttls = r.boolean(raw, "starttls", where, False)
    tls = r.boolean(raw, "tls", where, not starttls)
    compress = r.boolean(raw, "compress", where, False)
    port = r.integer(raw, "port", where, 993 if tls else 143, low=1, high=65535)
    cafile = r.string(raw, "cafile", where)
    server_hostname = r.string(raw, "server_hostname", where)
    context: ssl.SSLContext | None = None
    if not (tls or starttls) and (cafile or server_hostname):
        raise r.fail(where, "cafile and server_hostname need tls = true or starttls = true")
    if cafile is not None:
        path = _resolve(base, cafile)
        try:
            context = ssl.create_default_context(cafile=str(path))
        except FileNotFoundError:
            raise r.fail(f"{where}.cafile", f"{path} does not exist") from None
        except (OSError, ssl.SSLError) as exc:
            raise r.fail(f"{where}.cafile", f"{path} is not a PEM CA file ({exc})") from None
    password = _password(r, raw, where, key, secrets)
    assert host is not None and username is not None
    try:
        account = IMAPAccount(
            host=host,
            port=port,
            username=username,
            password=password,
            tls=tls,
            starttls=starttls,
            compress=compress,
            ssl_context=context,
            server_hostname=server_hostname,
        )
    except ValueError as exc:
        # IMAPAccount's messages name the field and never a secret's value.
        raise r.fail(where, str(exc)) from None
    return AccountConfig(key, account, _mailboxes(r, raw, where))


def _mode(r: _Reader, sync: Mapping[str, Any]) -> tuple[str, float]:
    mode = r.string(sync, "mode", "sync", "poll")
    if mode not in MODES:
        raise r.fail("sync.mode", f'must be "poll" or "idle", got {_show(mode)}')
    renew = r.number(sync, "idle_renew_after", "sync", MAX_IDLE_RENEW)
    if renew > MAX_IDLE_RENEW:
        raise r.fail(
            "sync.idle_renew_after",
            f"must be at most {MAX_IDLE_RENEW:g} s (29 minutes, RFC 2177), got {renew:g}",
        )
    return mode, renew


def _check_idle_pool(r: _Reader, mode: str, pool: PoolConfig, accounts: int) -> str:
    """Idle mode holds a connection per account in IDLE: the pool must leave room to sync."""
    if mode != "idle":
        return mode
    if pool.max_per_key < 2:
        raise r.fail(
            "sync.mode",
            '"idle" needs pool.max_per_key >= 2 (one connection held in IDLE, one to sync '
            f"with), got {pool.max_per_key}",
        )
    if pool.max_total < accounts + 1:
        raise r.fail(
            "sync.mode",
            f'"idle" needs pool.max_total >= {accounts + 1} (one connection held in IDLE '
            f"per account, plus one to sync with), got {pool.max_total}",
        )
    return mode


def parse_config(
    data: Mapping[str, Any], *, source: str = "sync.toml", base: Path | None = None
) -> SyncConfig:
    """Validate parsed TOML; ``base`` anchors relative paths (default: the cwd)."""
    r = _Reader(source)
    base = base if base is not None else Path.cwd()
    r.unknown(data, _TOP, "")
    sync = r.table(data, "sync", "sync")
    r.unknown(sync, _SYNC, "sync")
    mode, renew = _mode(r, sync)
    health = r.table(data, "health", "health")
    r.unknown(health, frozenset({"bind", "enabled"}), "health")
    bind: tuple[str, int] | None = None
    if r.boolean(health, "enabled", "health", True):
        text = r.string(health, "bind", "health", f"127.0.0.1:{DEFAULT_HEALTH_PORT}")
        assert text is not None
        try:
            bind = parse_bind(text)
        except ValueError as exc:
            raise r.fail("health.bind", str(exc)) from None
    pool = _pool(r, data)
    secrets = _secrets(r, data, base)
    accounts_raw = data.get("accounts")
    if not isinstance(accounts_raw, list) or not accounts_raw:
        raise r.fail("accounts", "at least one [[accounts]] table is required")
    accounts: list[AccountConfig] = []
    for i, raw in enumerate(accounts_raw):
        acc = _account(r, raw, i, base, secrets)
        if any(a.key == acc.key for a in accounts):
            raise r.fail(f"accounts[{i}].key", f"{acc.key!r} is used twice")
        accounts.append(acc)
    store = r.string(data, "store", "", "imap_sync.sqlite3")
    assert store is not None
    return SyncConfig(
        accounts=tuple(accounts),
        pool=pool,
        store_path=_resolve(base, store),
        store_fsync=r.boolean(data, "store_fsync", "", True),
        concurrency=r.integer(sync, "concurrency", "sync", 8, low=1, high=1024),
        poll_interval=r.number(sync, "poll_interval", "sync", 60.0),
        batch_size=r.integer(sync, "batch_size", "sync", 100, low=1, high=10_000),
        mode=_check_idle_pool(r, mode, pool, len(accounts)),
        idle_renew_after=renew,
        health_bind=bind,
    )


def load_config(path: str | os.PathLike[str]) -> SyncConfig:
    """Read and validate a config file; every failure is a one-line :class:`ConfigError`."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    return parse_config(data, source=str(p), base=p.resolve().parent)
