"""sync.toml -> a validated :class:`SyncConfig`, or one line saying which key is wrong.

A worker that starts with a typo in its config fails an hour later, on the first account
that needs the bad value; so everything is checked up front and every error names the
file, the TOML key (``accounts.bob.port``, ``pool.acquire_timeout``) and what is wrong
with it. msgspec does the typing (the shape below, as :class:`msgspec.Struct` types);
this module words its errors and checks what types cannot say (files, environment,
cross-field rules). Secrets come from
the environment (``password_env``) or a separate secrets file, never from sync.toml
itself, and no error message ever contains one: a secret-bearing value is named, not
shown. Relative paths are relative to the config file, so a config works from any cwd.

Example (every option; only ``[[accounts]]`` with host, username and a password source
is required)::

    store = "mail.sqlite3"             # or "postgresql://user@host/db" (guardedpool[postgres])
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

    # [fleet]                          # optional: several workers share the accounts;
    # redis = "redis://127.0.0.1:6379/0"  # needs guardedpool[redis], store = "postgresql://..."
    # max_connections_per_account = 2  # fleet-wide cap per account (Dovecot: 10 per user+IP)
    # ttl = 30.0                       # seconds a lease lives without renewal
    # worker_id = "worker-a"           # default: "<hostname>-<pid>-<random>"
    # prefix = "imap_sync"             # namespace of the Redis keys

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
    mailboxes = ["INBOX", "Archive"]   # default ["INBOX"]; human names, or patterns:
                                       # ["*", "!Trash", "!\\Junk"] (see folders.py)
"""

from __future__ import annotations

import ipaddress
import os
import re
import ssl
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Annotated, Any, TypeVar

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from guardedpool import AuditPolicy, PoolConfig, RetryPolicy
from guardedpool.imap.account import IMAPAccount

from .config_errors import describe, kind, show, toml_key
from .folders import parse_pattern
from .stores import is_postgres_url

__all__ = [
    "AccountConfig",
    "ConfigError",
    "FleetConfig",
    "SyncConfig",
    "load_config",
    "parse_config",
]

DEFAULT_HEALTH_PORT = 8025
MODES = ("poll", "idle")
# RFC 2177: a server may drop a client idle for 30 minutes; 29 leaves a margin.
MAX_IDLE_RENEW = 1740.0
_T = TypeVar("_T")
_SECRET_NAMES = frozenset({"password", "oauth2_token", "token", "secret"})
_VALID_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}")

# -- the shape of sync.toml (msgspec checks it; config_errors words what it finds) -------
# Text: not blank, no control characters (a value is shown in errors and logs on one line).
Text = Annotated[str, Meta(pattern=r"^(?=[^\x00-\x1f\x7f]*$)\s*\S")]
Key = Annotated[str, Meta(pattern=f"^{_VALID_KEY.pattern}$")]
EnvName = Annotated[str, Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
# Seconds: > 0 and finite (TOML has inf and nan; both fail the bounds).
Seconds = Annotated[float, Meta(gt=0, le=1e9)]


class _Sync(Struct, forbid_unknown_fields=True, kw_only=True):
    concurrency: Annotated[int, Meta(ge=1, le=1024)] = 8
    poll_interval: Seconds = 60.0
    batch_size: Annotated[int, Meta(ge=1, le=10_000)] = 100
    mode: Text = "poll"
    idle_renew_after: Seconds = MAX_IDLE_RENEW


class _Health(Struct, forbid_unknown_fields=True, kw_only=True):
    bind: Text = f"127.0.0.1:{DEFAULT_HEALTH_PORT}"
    enabled: bool = True


class _Account(Struct, forbid_unknown_fields=True, kw_only=True):
    key: Key
    host: Text
    username: Text
    port: Annotated[int, Meta(ge=1, le=65535)] | UnsetType = UNSET
    password_env: EnvName | UnsetType = UNSET
    tls: bool | UnsetType = UNSET  # default: not starttls
    starttls: bool = False
    compress: bool = False
    cafile: Text | UnsetType = UNSET
    server_hostname: Text | UnsetType = UNSET
    mailboxes: Annotated[list[str], Meta(min_length=1)] = msgspec.field(
        default_factory=lambda: ["INBOX"]
    )


class _Fleet(Struct, forbid_unknown_fields=True, kw_only=True):
    redis: Text
    max_connections_per_account: Annotated[int, Meta(ge=1, le=10_000)] = 2
    ttl: Annotated[float, Meta(ge=0.5, le=3600)] = 30.0
    worker_id: Text | UnsetType = UNSET
    prefix: Text = "imap_sync"


class _File(Struct, forbid_unknown_fields=True, kw_only=True):
    accounts: Annotated[list[_Account], Meta(min_length=1)]
    store: Text = "imap_sync.sqlite3"
    store_fsync: bool = True
    secrets_file: Text | UnsetType = UNSET
    sync: _Sync = msgspec.field(default_factory=_Sync)
    health: _Health = msgspec.field(default_factory=_Health)
    pool: dict[str, Any] = msgspec.field(default_factory=dict)
    fleet: _Fleet | UnsetType = UNSET


# What a problem is called where the type alone would say it badly.
_PHRASES = {
    "accounts": "at least one [[accounts]] table is required",
    "mailboxes": "must be a non-empty array of names",
}


class ConfigError(ValueError):
    """A bad config: ``str()`` is one line naming the file, the key and the problem."""


@dataclass(frozen=True, slots=True)
class AccountConfig:
    """One inbox to mirror: its pool key, how to log in, which mailboxes (patterns over
    human names, see :mod:`.folders`)."""

    key: str
    account: IMAPAccount
    mailboxes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class FleetConfig:
    """``[fleet]``: the worker is one of several sharing the accounts (see :mod:`.fleet`).

    Attributes:
        redis: the Redis URL for the connection budget and account ownership.
        max_connections_per_account: fleet-wide cap on connections per account (>= 1,
            default 2); keep it at or below the server's own per-user cap.
        ttl: seconds a budget or owner lease lives without renewal (default 30.0); a
            killed worker's accounts are taken over about this long after it died.
        worker_id: this worker's id, unique in the fleet; None: generated.
        prefix: namespace of the Redis keys (default ``"imap_sync"``).
    """

    redis: str
    max_connections_per_account: int = 2
    ttl: float = 30.0
    worker_id: str | None = None
    prefix: str = "imap_sync"

    def __repr__(self) -> str:  # the URL may carry a password
        return (
            f"FleetConfig(max_connections_per_account={self.max_connections_per_account}, "
            f"ttl={self.ttl}, worker_id={self.worker_id!r}, prefix={self.prefix!r})"
        )


@dataclass(frozen=True, slots=True)
class SyncConfig:
    """Everything ``run`` needs, validated.

    Attributes:
        accounts: in config order; keys unique.
        pool: limits and timeouts for the one pool all accounts share.
        store_path: the SQLite file (default ``imap_sync.sqlite3`` next to the config).
        store_url: a ``postgresql://`` URL when ``store`` names PostgreSQL (then
            ``store_path`` is unused), else None.
        fleet: the ``[fleet]`` table, None without one (a single worker).
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
        source: the config file, for errors found later (a health port in use).
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
    source: str = "sync.toml"
    store_url: str | None = field(default=None, repr=False)  # may carry a password
    fleet: FleetConfig | None = None

    def accounts_by_key(self) -> dict[str, IMAPAccount]:
        return {a.key: a.account for a in self.accounts}


# -- what types cannot say ---------------------------------------------------------------


def _refuse_inline_secrets(data: Mapping[str, Any], source: str) -> None:
    tables: list[tuple[str, Mapping[str, Any]]] = [("", data)]
    accounts = data.get("accounts")
    if isinstance(accounts, list):
        for i, raw in enumerate(accounts):
            if isinstance(raw, dict):
                tables.append((toml_key(["accounts", i, "_"], data)[:-2], raw))
    for where, table in tables:
        for name in table:
            if isinstance(name, str) and name.lower() in _SECRET_NAMES:
                key = f"{where}.{name}" if where else name
                raise ConfigError(
                    f"{source}: {key}: secrets do not belong in the config: use "
                    "password_env or secrets_file"
                )


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


# PoolConfig and its policies name the option in their errors: "PoolConfig.op_timeout must
# be > 0.0, got 0.0" is the key pool.op_timeout.
_POLICY = re.compile(r"^(PoolConfig|RetryPolicy|AuditPolicy)\.(\w+)\s*(.*)$", re.DOTALL)
_POLICY_KEY = {"PoolConfig": "pool", "RetryPolicy": "pool.retry", "AuditPolicy": "pool.audit"}
_POLICY_NAME = re.compile(r"\b(PoolConfig|RetryPolicy|AuditPolicy)\.")


def _pool(raw: dict[str, Any], source: str) -> PoolConfig:
    tables: list[tuple[str, Any, type[Any]]] = [("pool", raw, PoolConfig)]
    for name, cls in (("retry", RetryPolicy), ("audit", AuditPolicy)):
        tables.append((f"pool.{name}", raw.get(name), cls))
    for where, table, cls in tables:
        if table is None:
            continue
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: {where}: must be a table, got {kind(table)}")
        allowed = sorted(f.name for f in fields(cls))
        for name in table:
            if name not in allowed:
                raise ConfigError(
                    f"{source}: {where}.{name}: unknown key (expected one of {', '.join(allowed)})"
                )
    try:
        return msgspec.convert(raw, PoolConfig, strict=True)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{source}: {describe(exc, PoolConfig, raw, prefix=('pool',))}") from None


def _secrets(name: str | UnsetType, base: Path, source: str) -> dict[str, str] | None:
    if isinstance(name, UnsetType):
        return None
    path = _resolve(base, name)
    fail = f"{source}: secrets_file:"
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{fail} {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"{fail} cannot read {path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        # The decoder's message names a line and column, never the content of a line.
        raise ConfigError(f"{fail} {path} is not valid TOML: {exc}") from None
    for key, value in raw.items():
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{fail} {path}: {key}: must be a non-empty string")
    return dict(raw)


def _password(acc: _Account, where: str, secrets: dict[str, str] | None, source: str) -> str:
    if not isinstance(acc.password_env, UnsetType):
        value = os.environ.get(acc.password_env)
        if not value:
            raise ConfigError(
                f"{source}: {where}.password_env: environment variable "
                f"{acc.password_env} is not set"
            )
        return value
    if secrets is None:
        raise ConfigError(
            f"{source}: {where}: needs password_env, or a secrets_file with an entry for this key"
        )
    if acc.key not in secrets:
        raise ConfigError(f"{source}: {where}: secrets_file has no entry {acc.key!r}")
    return secrets[acc.key]


def _mailboxes(names: list[str], where: str, source: str) -> tuple[str, ...]:
    seen: list[str] = []
    for i, name in enumerate(names):
        key = f"{source}: {where}.mailboxes[{i}]"
        if not isinstance(name, str):
            raise ConfigError(f"{key}: must be a mailbox name, got {show(name)}")
        try:
            parse_pattern(name)
        except ValueError as exc:
            raise ConfigError(f"{key}: {exc}, got {show(name)}") from None
        if name.upper() == "INBOX":
            name = "INBOX"  # INBOX is case-insensitive (RFC 3501); other names are not
        if name in seen:
            raise ConfigError(f"{key}: {name!r} is listed twice")
        seen.append(name)
    return tuple(seen)


def _given(value: _T | UnsetType) -> _T | None:
    return None if isinstance(value, UnsetType) else value


def _account(
    acc: _Account, index: int, base: Path, secrets: dict[str, str] | None, source: str
) -> AccountConfig:
    where = f"accounts.{acc.key}"
    fail = f"{source}: {where}"
    starttls = acc.starttls
    tls = not starttls if isinstance(acc.tls, UnsetType) else acc.tls
    cafile, server_hostname = _given(acc.cafile), _given(acc.server_hostname)
    if not (tls or starttls) and (cafile or server_hostname):
        raise ConfigError(f"{fail}: cafile and server_hostname need tls = true or starttls = true")
    context: ssl.SSLContext | None = None
    if cafile is not None:
        path = _resolve(base, cafile)
        try:
            context = ssl.create_default_context(cafile=str(path))
        except FileNotFoundError:
            raise ConfigError(f"{fail}.cafile: {path} does not exist") from None
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"{fail}.cafile: {path} is not a PEM CA file ({exc})") from None
    password = _password(acc, where, secrets, source)
    port = _given(acc.port)
    try:
        account = IMAPAccount(
            host=acc.host,
            port=port if port is not None else (993 if tls else 143),
            username=acc.username,
            password=password,
            tls=tls,
            starttls=starttls,
            compress=acc.compress,
            ssl_context=context,
            server_hostname=server_hostname,
        )
    except ValueError as exc:
        # IMAPAccount's messages name the field and never a secret's value.
        raise ConfigError(f"{fail}: {exc}") from None
    return AccountConfig(acc.key, account, _mailboxes(acc.mailboxes, where, source))


def _check_mode(sync: _Sync, pool: PoolConfig, accounts: int, source: str) -> None:
    """Idle mode holds a connection per account in IDLE: the pool must leave room to sync."""
    fail = f"{source}: sync.mode:"
    if sync.mode not in MODES:
        raise ConfigError(f'{fail} must be "poll" or "idle", got {show(sync.mode)}')
    if sync.idle_renew_after > MAX_IDLE_RENEW:
        raise ConfigError(
            f"{source}: sync.idle_renew_after: must be at most {MAX_IDLE_RENEW:g} s "
            f"(29 minutes, RFC 2177), got {sync.idle_renew_after:g}"
        )
    if sync.mode != "idle":
        return
    if pool.max_per_key < 2:
        raise ConfigError(
            f'{fail} "idle" needs pool.max_per_key >= 2 (one connection held in IDLE, one '
            f"to sync with), got {pool.max_per_key}"
        )
    if pool.max_total < accounts + 1:
        raise ConfigError(
            f'{fail} "idle" needs pool.max_total >= {accounts + 1} (one connection held in '
            f"IDLE per account, plus one to sync with), got {pool.max_total}"
        )


def parse_config(
    data: Mapping[str, Any], *, source: str = "sync.toml", base: Path | None = None
) -> SyncConfig:
    """Validate parsed TOML; ``base`` anchors relative paths (default: the cwd).

    Raises ConfigError, one line: ``"{source}: {key}: {problem}"``.
    """
    base = base if base is not None else Path.cwd()
    _refuse_inline_secrets(data, source)
    try:
        raw = msgspec.convert(dict(data), _File, strict=True)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{source}: {describe(exc, _File, data, phrases=_PHRASES)}") from None
    bind: tuple[str, int] | None = None
    if raw.health.enabled:
        try:
            bind = parse_bind(raw.health.bind)
        except ValueError as exc:
            raise ConfigError(f"{source}: health.bind: {exc}") from None
    pool = _pool(raw.pool, source)
    secrets = _secrets(raw.secrets_file, base, source)
    accounts: list[AccountConfig] = []
    for i, acc in enumerate(raw.accounts):
        if any(a.key == acc.key for a in accounts):
            raise ConfigError(f"{source}: accounts[{i}].key: {acc.key!r} is used twice")
        accounts.append(_account(acc, i, base, secrets, source))
    _check_mode(raw.sync, pool, len(accounts), source)
    store_url = raw.store if is_postgres_url(raw.store) else None
    return SyncConfig(
        accounts=tuple(accounts),
        pool=pool,
        store_url=store_url,
        fleet=_fleet(raw.fleet, store_url, source),
        store_path=Path("(postgresql)") if store_url else _resolve(base, raw.store),
        store_fsync=raw.store_fsync,
        concurrency=raw.sync.concurrency,
        poll_interval=raw.sync.poll_interval,
        batch_size=raw.sync.batch_size,
        mode=raw.sync.mode,
        idle_renew_after=raw.sync.idle_renew_after,
        health_bind=bind,
        source=source,
    )


def _fleet(fleet: _Fleet | UnsetType, store_url: str | None, source: str) -> FleetConfig | None:
    """``[fleet]`` needs a Redis URL and a store every worker reaches (PostgreSQL)."""
    if isinstance(fleet, UnsetType):
        return None
    if not fleet.redis.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(
            f"{source}: fleet.redis: must be a redis://, rediss:// or unix:// URL"
        )
    if store_url is None:
        raise ConfigError(
            f'{source}: fleet: a fleet needs store = "postgresql://..." (a store every '
            "worker can reach, which checks fencing tokens); a SQLite file is per worker"
        )
    return FleetConfig(
        redis=fleet.redis,
        max_connections_per_account=fleet.max_connections_per_account,
        ttl=fleet.ttl,
        worker_id=_given(fleet.worker_id),
        prefix=fleet.prefix,
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
