"""The README's main command, and the worker on the embedded pymap server it uses.

pymap offers no CONDSTORE, so the in-process test here covers the worker's full-flags path
(``UID FETCH 1:last (UID FLAGS)``) that Dovecot never takes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from harness.configs import DEFAULTS, config

from examples.imap_sync.config import AccountConfig
from examples.imap_sync.embedded import EmbeddedIMAPServer
from examples.imap_sync.seed import append_messages, expunge_first, flag_first
from examples.imap_sync.store import Store
from examples.imap_sync.worker import SyncWorker
from guardedpool import GuardedPool
from guardedpool.imap import IMAPAccount, IMAPClient, IMAPConnector

ROOT = Path(__file__).resolve().parents[2]


def test_demo_command_tells_the_story() -> None:
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "examples.imap_sync", "demo"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=25,
    )
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stderr == ""
    out = proc.stdout
    assert "Traceback" not in out
    assert "matches the server" in out
    assert "UNHEALTHY: 2 straggler(s) still open" in out
    assert out.count("straggler  close_failed  alice") == 2
    assert "server sessions now: 0" in out
    assert "/healthz -> 200 healthy=True" in out
    assert elapsed < 15, f"the demo took {elapsed:.1f} s"


async def test_worker_without_condstore(tmp_path: Path) -> None:
    cfg = config(DEFAULTS, connect_timeout=5.0, op_timeout=5.0, housekeeping_interval=0.1)
    async with EmbeddedIMAPServer() as server:
        accounts = []
        for key in ("ann", "ben"):
            await server.add_user(key, f"{key}-pw")
            acc = IMAPAccount(
                host=server.host, port=server.port, username=key, password=f"{key}-pw", tls=False
            )
            accounts.append(AccountConfig(key, acc, ("INBOX",)))
        pool: GuardedPool[IMAPClient] = GuardedPool(
            IMAPConnector({a.key: a.account for a in accounts}), cfg
        )
        with Store.open(tmp_path / "p.sqlite3") as store:
            async with pool:
                await append_messages(pool, "ann", 1, 8)
                await append_messages(pool, "ben", 1, 3)
                worker = SyncWorker(pool, store, accounts, batch_size=3)
                first = await worker.run_pass()
                assert first.ok and not any(r.condstore for r in first.results)
                assert sorted((r.account, r.new) for r in first.results) == [("ann", 8), ("ben", 3)]
                await flag_first(pool, "ann")
                await expunge_first(pool, "ben", 1)
                await append_messages(pool, "ben", 50, 2)
                second = {r.account: r for r in (await worker.run_pass()).results}
                assert (second["ann"].new, second["ann"].flags_changed) == (0, 1)
                assert (second["ben"].new, second["ben"].expunged) == (2, 1)
                assert {k: n for k, (n, _) in store.totals().items()} == {"ann": 8, "ben": 4}
                validity = store.mailbox("ann", "INBOX").uidvalidity
                assert validity is not None
                flagged = [
                    f for f in store.flags("ann", "INBOX", validity).values() if "\\Flagged" in f
                ]
                assert len(flagged) == 1
        assert server.sessions == 0  # the pool logged every session out on close
