"""Idle mode is never staler than a poll, even against a server that never pushes.

GNU Mailutils sends nothing inside an IDLE round; the model server (``harness/imap_model``)
behaves the same. With ``idle_renew_after`` far beyond the test, only the worker's own
``poll_interval`` bound can bring a new message into the store.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from harness.configs import SYNC
from harness.imap_model import ModelIMAP

from examples.imap_sync.config import AccountConfig
from examples.imap_sync.store import Store
from examples.imap_sync.worker import PassSummary, SyncWorker
from guardedpool import GuardedPool
from guardedpool.imap import IMAPAccount, IMAPConnector

CFG = SYNC


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    with Store.open(tmp_path / "mirror.sqlite3") as s:
        yield s


async def test_idle_mode_syncs_a_server_that_never_pushes(store: Store) -> None:
    async with ModelIMAP() as server:
        box = server.mailboxes["INBOX"]
        box.append(b"Subject: one\r\n\r\n1\r\n")
        acc = AccountConfig(
            "m",
            IMAPAccount(host=server.host, port=server.port, username="m", password="pw", tls=False),
            ("INBOX",),
        )
        passes: asyncio.Queue[PassSummary] = asyncio.Queue()
        stop = asyncio.Event()
        async with GuardedPool(IMAPConnector({acc.key: acc.account}), CFG) as pool:
            worker = SyncWorker(pool, store, [acc])
            run = worker.run_forever(
                0.3, stop, on_pass=passes.put_nowait, mode="idle", idle_renew_after=600.0
            )
            task = asyncio.create_task(run)
            try:
                async with asyncio.timeout(10.0):
                    while (await passes.get()).results[0].new != 1:  # the initial sync
                        pass
                    uidvalidity = store.mailbox("m", "INBOX").uidvalidity or 0
                    box.append(b"Subject: two\r\n\r\n2\r\n")  # the server says nothing
                    while store.uids("m", "INBOX", uidvalidity) != [1, 2]:
                        summary = await passes.get()
                        assert summary.ok, summary.failures
            finally:
                stop.set()
                async with asyncio.timeout(5.0):
                    await task
        idles = [c for c in server.commands if c.split(" ")[1:2] == ["IDLE"]]
        # One IDLE round, never renewed: the pass that stored message 2 was not an IDLE
        # renewal, nor a push (the server sends none); it was the poll_interval bound.
        assert len(idles) == 1, server.commands
        assert task.result() is None
        assert worker.counters["m"].errors == 0
