"""``python -m examples.imap_sync run`` as users run it: a subprocess, a config file, TLS.

The kill test is the store's promise end to end: SIGKILL the worker in the middle of a
sync, run it again, and every message is there exactly once.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
import uuid
from email import message_from_bytes
from pathlib import Path

import pytest
from harness import DovecotServer, make_message

ROOT = Path(__file__).resolve().parents[2]
SECRET = "Pw-" + uuid.uuid4().hex


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **extra}


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "examples.imap_sync", *args]


def write_config(
    tmp: Path,
    dovecot: DovecotServer,
    user: str,
    extra: str = "",
    sync: str = "",
    health: str = "enabled = false",
    store_fsync: bool = True,
) -> Path:
    path = tmp / "sync.toml"
    path.write_text(
        f"""
store = "mirror.sqlite3"
store_fsync = {"true" if store_fsync else "false"}
[sync]
batch_size = 5
{sync}
[health]
{health}
[pool]
op_timeout = 10.0
[[accounts]]
key = "{user}"
host = "127.0.0.1"
port = {dovecot.tls_port}
username = "{user}"
password_env = "SYNC_TEST_PW"
cafile = "{dovecot.cafile}"
{extra}
"""
    )
    return path


def count(db_path: Path) -> int:
    try:
        with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as db:
            return int(db.execute("SELECT COUNT(*) FROM messages").fetchone()[0])
    except sqlite3.Error:
        return 0


def seed_big(dovecot: DovecotServer, user: str, n: int) -> set[str]:
    """n messages of ~6 KiB; returns their Message-IDs."""
    body = "x" * 70 + "\n"
    msgs = [make_message(i, body=body * 90) for i in range(n)]
    dovecot.seed_messages(user, messages=msgs)
    return {str(message_from_bytes(m)["Message-ID"]) for m in msgs}


def stored_ids(db_path: Path) -> list[str]:
    with sqlite3.connect(db_path) as db:
        rows = db.execute("SELECT raw FROM messages").fetchall()
    return [str(message_from_bytes(r[0])["Message-ID"]) for r in rows]


@pytest.mark.parametrize("store_fsync", [True, False], ids=["fsync", "no-fsync"])
def test_killed_mid_sync_and_restarted(
    dovecot: DovecotServer, tmp_path: Path, store_fsync: bool
) -> None:
    # Without fsync too: a killed process loses nothing (the OS still has every write).
    user = f"k{uuid.uuid4().hex[:10]}"
    dovecot.add_user(user, SECRET)
    ids = seed_big(dovecot, user, 400)
    config = write_config(tmp_path, dovecot, user, store_fsync=store_fsync)
    db = tmp_path / "mirror.sqlite3"
    proc = subprocess.Popen(
        cli("run", "--config", str(config), "--once"),
        cwd=tmp_path,
        env=env(SYNC_TEST_PW=SECRET),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        seen = 0
        while time.monotonic() < deadline and seen < 40 and proc.poll() is None:
            time.sleep(0.005)
            seen = count(db)
    finally:
        proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate(timeout=5)
    assert proc.returncode == -signal.SIGKILL, (out, err)
    at_kill = count(db)
    assert 0 < at_kill < 400, f"killed at {at_kill} of 400: not mid-sync"
    assert at_kill % 5 == 0  # whole batches only

    done = subprocess.run(
        cli("run", "--config", str(config), "--once"),
        cwd=tmp_path,
        env=env(SYNC_TEST_PW=SECRET),
        capture_output=True,
        text=True,
        timeout=25,
    )
    assert done.returncode == 0, done.stderr
    assert SECRET not in done.stdout + done.stderr
    stored = stored_ids(db)
    assert len(stored) == 400 and set(stored) == ids  # no loss, no duplicates
    with sqlite3.connect(db) as conn:
        uids = [r[0] for r in conn.execute("SELECT uid FROM messages ORDER BY uid")]
        last_uid = conn.execute("SELECT last_uid FROM mailboxes").fetchone()[0]
    assert uids == list(range(1, 401)) and last_uid == 400
    assert re.search(rf"{user}\s+{400 - at_kill}\s", done.stdout), done.stdout


@pytest.mark.parametrize(
    ("extra", "environment", "expected"),
    [
        ("tls = 1", {"SYNC_TEST_PW": SECRET}, "accounts.{user}.tls: must be true or false"),
        ("", {}, "accounts.{user}.password_env: environment variable SYNC_TEST_PW is not set"),
        (f'password = "{SECRET}"', {"SYNC_TEST_PW": SECRET}, "accounts.{user}.password: secrets"),
        ('mailboxes = "INBOX"', {"SYNC_TEST_PW": SECRET}, "accounts.{user}.mailboxes: must be"),
    ],
)
def test_bad_config_exits_2_with_one_line(
    dovecot: DovecotServer,
    tmp_path: Path,
    extra: str,
    environment: dict[str, str],
    expected: str,
) -> None:
    user = "alice"
    config = write_config(tmp_path, dovecot, user, extra=extra)
    base = env()
    base.pop("SYNC_TEST_PW", None)
    proc = subprocess.run(
        cli("run", "--config", str(config), "--once"),
        cwd=tmp_path,
        env={**base, **environment},
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"config error: {config}: ")
    assert expected.format(user=user) in lines[0]
    assert SECRET not in proc.stderr + proc.stdout
    assert not (tmp_path / "mirror.sqlite3").exists()  # the store is untouched


def test_missing_config_file_exits_2(tmp_path: Path) -> None:
    proc = subprocess.run(
        cli("run", "--config", str(tmp_path / "nope.toml")),
        cwd=tmp_path,
        env=env(),
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"config error: {tmp_path / 'nope.toml'}: no such file"


def test_continuous_mode_serves_health_and_stops_on_sigterm(
    dovecot: DovecotServer, tmp_path: Path
) -> None:
    user = f"c{uuid.uuid4().hex[:10]}"
    dovecot.add_user(user, SECRET)
    dovecot.seed_messages(user, 3)
    config = write_config(
        tmp_path, dovecot, user, sync="poll_interval = 0.2", health='bind = "127.0.0.1:0"'
    )
    proc = subprocess.Popen(
        cli("run", "--config", str(config)),
        cwd=tmp_path,
        env=env(SYNC_TEST_PW=SECRET),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = None
        deadline = time.monotonic() + 15
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            if m := re.search(r"health: (http://127\.0\.0\.1:\d+)/healthz", line):
                url = m.group(1)
        assert url is not None, proc.stderr.read() if proc.stderr else ""
        dovecot.seed_messages(user, 2)  # picked up by a later pass
        deadline = time.monotonic() + 10
        synced = 0.0
        while synced < 5 and time.monotonic() < deadline:
            with urllib.request.urlopen(f"{url}/metrics", timeout=5) as resp:
                text = resp.read().decode()
            m = re.search(rf'imap_sync_messages_total{{inbox="{user}"}} (\S+)', text)
            synced = float(m.group(1)) if m else 0.0
            time.sleep(0.1)
        assert synced == 5
        with urllib.request.urlopen(f"{url}/healthz", timeout=10) as resp:
            assert resp.status == 200
            assert json.loads(resp.read())["healthy"] is True
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "Traceback" not in out + err
