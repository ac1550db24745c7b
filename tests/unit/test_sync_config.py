"""sync.toml parsing: good configs become SyncConfig, bad ones one line naming the key.

Every failure case also checks the message is a single line and carries no secret.
"""

from __future__ import annotations

import ssl
import tomllib
from pathlib import Path
from typing import Any

import pytest
import trustme

from examples.imap_sync.config import ConfigError, load_config, parse_bind, parse_config
from guardedpool import PoolConfig

SECRET = "s3cr3t-value-never-shown"


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALICE_PW", SECRET)
    monkeypatch.delenv("MISSING_PW", raising=False)


def minimal(**account: Any) -> dict[str, Any]:
    acc = {"key": "alice", "host": "127.0.0.1", "username": "alice", "password_env": "ALICE_PW"}
    acc.update(account)
    return {"accounts": [acc]}


def test_minimal_config_gets_defaults(tmp_path: Path) -> None:
    cfg = parse_config(minimal(), base=tmp_path)
    (acc,) = cfg.accounts
    assert acc.key == "alice"
    assert acc.mailboxes == ("INBOX",)
    assert acc.account.password == SECRET
    assert acc.account.port == 993 and acc.account.tls
    assert cfg.pool == PoolConfig()
    assert cfg.store_path == tmp_path / "imap_sync.sqlite3" and cfg.store_fsync
    assert not parse_config(minimal() | {"store_fsync": False}, base=tmp_path).store_fsync
    assert cfg.health_bind == ("127.0.0.1", 8025)
    assert (cfg.concurrency, cfg.poll_interval, cfg.batch_size) == (8, 60.0, 100)
    assert SECRET not in repr(cfg)


def test_plaintext_port_defaults_to_143(tmp_path: Path) -> None:
    (acc,) = parse_config(minimal(tls=False), base=tmp_path).accounts
    assert acc.account.port == 143 and not acc.account.tls


def test_full_config_file(tmp_path: Path) -> None:
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    (tmp_path / "secrets.toml").write_text(f'bob = "{SECRET}-bob"\n')
    (tmp_path / "sync.toml").write_text(
        """
store = "data/mail.sqlite3"
secrets_file = "secrets.toml"
[sync]
concurrency = 3
poll_interval = 5
batch_size = 20
[health]
bind = "127.0.0.1:0"
[pool]
max_per_key = 3
op_timeout = 12.5
[pool.retry]
max_delay = 4.0
[pool.audit]
backend = "psutil"
[[accounts]]
key = "alice"
host = "localhost"
port = 10993
username = "alice@example.org"
password_env = "ALICE_PW"
cafile = "ca.pem"
mailboxes = ["inbox", "Archive"]
[[accounts]]
key = "bob"
host = "127.0.0.1"
username = "bob"
tls = false
"""
    )
    cfg = load_config(tmp_path / "sync.toml")
    alice, bob = cfg.accounts
    assert alice.mailboxes == ("INBOX", "Archive")
    assert isinstance(alice.account.ssl_context, ssl.SSLContext)
    assert alice.account.port == 10993
    assert bob.account.password == f"{SECRET}-bob"
    assert cfg.store_path == tmp_path.resolve() / "data" / "mail.sqlite3"
    assert cfg.pool.max_per_key == 3 and cfg.pool.op_timeout == 12.5
    assert cfg.pool.retry.max_delay == 4.0 and cfg.pool.audit.backend == "psutil"
    assert (cfg.concurrency, cfg.poll_interval, cfg.batch_size) == (3, 5.0, 20)
    assert cfg.health_bind == ("127.0.0.1", 0)
    assert set(cfg.accounts_by_key()) == {"alice", "bob"}


def test_health_can_be_disabled(tmp_path: Path) -> None:
    data = minimal() | {"health": {"enabled": False}}
    assert parse_config(data, base=tmp_path).health_bind is None


BAD: list[tuple[dict[str, Any], str]] = [
    ({}, "accounts: at least one"),
    ({"accounts": []}, "accounts: at least one"),
    ({"accounts": ["x"]}, "accounts[0]: must be a table"),
    ({"bogus": 1, **minimal()}, "bogus: unknown key"),
    (minimal(key="bad key!"), "accounts[0].key: must be"),
    (minimal(port="993"), "accounts.alice.port: must be an integer, got '993'"),
    (minimal(port=70000), "accounts.alice.port: must be in 1..65535"),
    (minimal(port=True), "accounts.alice.port: must be an integer"),
    (minimal(host=""), "accounts.alice.host: must be a non-empty string"),
    (minimal(username=None), "accounts.alice.username"),
    (minimal(tls="yes"), "accounts.alice.tls: must be true or false"),
    (minimal(tls=False, cafile="ca.pem"), "accounts.alice: cafile and server_hostname need tls"),
    (minimal(cafile="nope.pem"), "accounts.alice.cafile:"),
    (minimal(mailboxes=[]), "accounts.alice.mailboxes: must be a non-empty array"),
    (minimal(mailboxes=["INBOX", "inbox"]), "accounts.alice.mailboxes[1]: 'INBOX' is listed twice"),
    (minimal(mailboxes=["a\r\nb"]), "accounts.alice.mailboxes[0]"),
    (minimal(colour="blue"), "accounts.alice.colour: unknown key"),
    (minimal(password_env="MISSING_PW"), "environment variable MISSING_PW is not set"),
    (minimal(password_env="1 bad"), "accounts.alice.password_env: must be a variable name"),
    (minimal(password_env=None), "accounts.alice.password_env"),
    ({"accounts": [{"key": "alice", "host": "h", "username": "u"}]}, "needs password_env"),
    (
        {"accounts": minimal()["accounts"] * 2},
        "accounts[1].key: 'alice' is used twice",
    ),
    (minimal() | {"sync": {"concurrency": 0}}, "sync.concurrency: must be in 1..1024"),
    (minimal() | {"sync": {"poll_interval": -1}}, "sync.poll_interval: must be > 0"),
    (minimal() | {"sync": {"batch_size": 1.5}}, "sync.batch_size: must be an integer"),
    (minimal() | {"sync": {"speed": 1}}, "sync.speed: unknown key"),
    (minimal() | {"sync": 3}, "sync: must be a table"),
    (minimal() | {"health": {"bind": "8025"}}, "health.bind: must be HOST:PORT"),
    (minimal() | {"health": {"bind": "example.org:80"}}, "health.bind: host must be an IP"),
    (minimal() | {"pool": {"op_timeout": 0}}, "pool.op_timeout: must be > 0"),
    (minimal() | {"pool": {"max_per_key": 5, "max_total": 2}}, "pool.max_per_key: must be <="),
    (minimal() | {"pool": {"bogus": 1}}, "pool.bogus: unknown key"),
    (minimal() | {"pool": {"retry": {"max_delay": -1}}}, "pool.retry.max_delay: must be > 0"),
    (minimal() | {"pool": {"audit": {"backend": "x"}}}, "pool.audit.backend: must be one of"),
    (minimal() | {"pool": {"audit": {"nope": 1}}}, "pool.audit.nope: unknown key"),
    (minimal() | {"secrets_file": "missing.toml"}, "secrets_file:"),
    (minimal() | {"store": ""}, "store: must be a non-empty string"),
    (minimal() | {"store_fsync": "no"}, "store_fsync: must be true or false, got 'no'"),
    # Keys are named as in the TOML, the pool's options too (not "pool: PoolConfig...").
    (minimal() | {"pool": {"acquire_timeout": "5"}}, "pool.acquire_timeout: must be a number"),
    (minimal() | {"pool": {"acquire_timeout": 0}}, "pool.acquire_timeout: must be > 0"),
    (minimal() | {"pool": {"retry": 3}}, "pool.retry: must be a table"),
    (minimal() | {"sync": {"poll_interval": float("inf")}}, "sync.poll_interval: must be > 0"),
    (minimal() | {"accounts": 3}, "accounts: at least one"),
    (minimal(mailboxes="INBOX"), "accounts.alice.mailboxes: must be a non-empty array"),
    (minimal(mailboxes=["*", "!\\Spam"]), "accounts.alice.mailboxes[1]: \\Spam is not a"),
    (minimal(mailboxes=["!"]), "accounts.alice.mailboxes[0]: '!' must be followed"),
    ({"accounts": [{"key": "ab", "password_env": "ALICE_PW"}]}, "accounts.ab.host: is required"),
]


@pytest.mark.parametrize(("data", "expected"), BAD)
def test_bad_config_names_the_key(tmp_path: Path, data: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(data, source="sync.toml", base=tmp_path)
    message = str(info.value)
    assert message.startswith("sync.toml: ")
    assert expected in message
    assert "\n" not in message
    assert SECRET not in message


@pytest.mark.parametrize("name", ["password", "oauth2_token", "Password"])
def test_inline_secret_is_refused_without_echo(tmp_path: Path, name: str) -> None:
    data = minimal(**{name: SECRET})
    with pytest.raises(ConfigError, match="secrets do not belong in the config") as info:
        parse_config(data, base=tmp_path)
    assert SECRET not in str(info.value)
    with pytest.raises(ConfigError, match=r"^sync.toml: password: secrets do not belong"):
        parse_config(minimal() | {"password": SECRET})


def test_secrets_file_problems_never_echo_values(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets.toml"
    data = minimal(password_env=None) | {"secrets_file": "secrets.toml"}
    del data["accounts"][0]["password_env"]
    secrets.write_text(f'carol = "{SECRET}"\n')
    with pytest.raises(ConfigError, match="secrets_file has no entry 'alice'") as info:
        parse_config(data, base=tmp_path)
    assert SECRET not in str(info.value)
    secrets.write_text(f'alice = "{SECRET}\n')  # unterminated string
    with pytest.raises(ConfigError, match="is not valid TOML") as info:
        parse_config(data, base=tmp_path)
    assert SECRET not in str(info.value)
    secrets.write_text("alice = 5\n")
    with pytest.raises(ConfigError, match="alice: must be a non-empty string"):
        parse_config(data, base=tmp_path)
    secrets.write_text(f'alice = "{SECRET}"\n')
    (acc,) = parse_config(data, base=tmp_path).accounts
    assert acc.account.password == SECRET


def test_account_validation_errors_are_wrapped(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"accounts\.alice: IMAPAccount\.host") as info:
        parse_config(minimal(host="two words"), base=tmp_path)
    assert SECRET not in str(info.value)


def test_load_config_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "absent.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text(f'[[accounts]]\nkey = "alice"\npassword = "{SECRET}\n')
    with pytest.raises(ConfigError, match="not valid TOML") as info:
        load_config(bad)
    assert SECRET not in str(info.value) and "\n" not in str(info.value)


def test_docstring_example_is_a_valid_config(tmp_path: Path) -> None:
    """The module docstring is the config reference: it must parse (given its files)."""
    from examples.imap_sync import config as module

    assert module.__doc__ is not None
    text = module.__doc__.split("Example", 1)[1].split("::", 1)[1]
    data = tomllib.loads("\n".join(line[4:] for line in text.splitlines()))
    trustme.CA().cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    (tmp_path / "secrets.toml").write_text("")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ALICE_IMAP_PASSWORD", SECRET)
        cfg = parse_config(data, base=tmp_path)
    assert cfg.accounts[0].mailboxes == ("INBOX", "Archive")


def test_mailbox_patterns_are_kept_as_written(tmp_path: Path) -> None:
    patterns = ["*", "!Trash", "!\\Junk", "Archive/%", "Entwürfe"]
    (acc,) = parse_config(minimal(mailboxes=patterns), base=tmp_path).accounts
    assert acc.mailboxes == tuple(patterns)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8025", ("127.0.0.1", 8025)),
        ("[::1]:0", ("::1", 0)),
        ("localhost:1", ("localhost", 1)),
    ],
)
def test_parse_bind(text: str, expected: tuple[str, int]) -> None:
    assert parse_bind(text) == expected


@pytest.mark.parametrize("text", ["", ":80", "127.0.0.1", "127.0.0.1:x", "1.2.3.4:70000"])
def test_parse_bind_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_bind(text)


def test_sync_mode_defaults_and_idle(tmp_path: Path) -> None:
    cfg = parse_config(minimal(), base=tmp_path)
    assert (cfg.mode, cfg.idle_renew_after) == ("poll", 1740.0)
    data = minimal() | {"sync": {"mode": "idle", "idle_renew_after": 600}}
    cfg = parse_config(data, base=tmp_path)
    assert (cfg.mode, cfg.idle_renew_after) == ("idle", 600.0)
    assert cfg.pool.max_per_key >= 2  # the default leaves room for IDLE + a sync


BAD_MODE: list[tuple[dict[str, Any], str]] = [
    (minimal() | {"sync": {"mode": "push"}}, 'sync.mode: must be "poll" or "idle", got \'push\''),
    (minimal() | {"sync": {"mode": 1}}, "sync.mode: must be a non-empty string"),
    (minimal() | {"sync": {"idle_renew_after": 0}}, "sync.idle_renew_after: must be > 0"),
    (minimal() | {"sync": {"idle_renew_after": "5"}}, "sync.idle_renew_after: must be a number"),
    (minimal() | {"sync": {"idle_renew_after": 3600}}, "sync.idle_renew_after: must be at most"),
    (
        minimal() | {"sync": {"mode": "idle"}, "pool": {"max_per_key": 1}},
        'sync.mode: "idle" needs pool.max_per_key >= 2 (one connection held in IDLE',
    ),
    (
        {
            "accounts": [minimal(key=k)["accounts"][0] for k in ("a", "b", "c")],
            "sync": {"mode": "idle"},
            "pool": {"max_total": 3},
        },
        'sync.mode: "idle" needs pool.max_total >= 4',
    ),
]


@pytest.mark.parametrize(("data", "expected"), BAD_MODE)
def test_bad_sync_mode_names_the_key(tmp_path: Path, data: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(data, source="sync.toml", base=tmp_path)
    message = str(info.value)
    assert message.startswith("sync.toml: ") and "\n" not in message
    assert expected in message
    assert SECRET not in message
    # the same settings are fine in poll mode, or with room for IDLE
    if "mode" in data.get("sync", {}) and "pool" in data:
        ok = data | {"sync": {"mode": "poll"}}
        assert parse_config(ok, base=tmp_path).mode == "poll"


def test_starttls_and_compress(tmp_path: Path) -> None:
    (acc,) = parse_config(minimal(starttls=True, compress=True), base=tmp_path).accounts
    assert acc.account.starttls and not acc.account.tls and acc.account.compress
    assert acc.account.port == 143
    with pytest.raises(ConfigError, match="starttls"):
        parse_config(minimal(tls=True, starttls=True), base=tmp_path)


def test_fleet_table_needs_a_postgres_store_and_keeps_the_url_out_of_reprs() -> None:
    from examples.imap_sync.config import ConfigError, parse_config

    base = {
        "accounts": [
            {"key": "a", "host": "127.0.0.1", "username": "u", "password_env": "HOME"}
        ],
        "fleet": {"redis": "redis://:pw@127.0.0.1:6379/0", "max_connections_per_account": 2},
    }
    with pytest.raises(ConfigError, match="postgresql"):
        parse_config(base)
    cfg = parse_config({**base, "store": "postgresql://u:secret@127.0.0.1/db"})
    assert cfg.store_url == "postgresql://u:secret@127.0.0.1/db"
    assert cfg.fleet is not None and cfg.fleet.max_connections_per_account == 2
    assert cfg.fleet.ttl == 30.0 and cfg.fleet.worker_id is None
    assert "secret" not in repr(cfg) and "pw@" not in repr(cfg)
    with pytest.raises(ConfigError, match=r"fleet\.redis"):
        parse_config({**base, "store": "postgresql://x/db", "fleet": {"redis": "http://x"}})
