"""A healthy IDLE session is not a leak (issue 11, section 5), scaled down: with
``leak_threshold=1.5`` and ``renew_after=1``, an audit 3.5 s in finds no leak suspect for
the connection IDLE holds across its rounds, and still finds a plain acquire held as long."""

from __future__ import annotations

import asyncio

import pytest
from harness import DovecotServer
from harness.configs import IMAP, config

from guardedpool import GuardedPool
from guardedpool.audit import Kind
from guardedpool.imap import IMAPAccount, IMAPConnector
from guardedpool.imap.idle import idle


@pytest.mark.timeout(30)
async def test_an_idle_hold_is_no_leak_suspect_but_a_plain_hold_as_long_is(
    dovecot: DovecotServer, fresh_user: tuple[str, str]
) -> None:
    user, password = fresh_user
    account = IMAPAccount(
        host=dovecot.host, port=dovecot.port, username=user, password=password, tls=False
    )
    cfg = config(IMAP, leak_threshold=1.5)
    pool = GuardedPool(IMAPConnector({"idle": account, "plain": account}), cfg)
    async with pool, idle(pool, "idle", "INBOX", renew_after=1.0) as pushes:
        async with asyncio.timeout(3.0):
            async for event in pushes:
                if event.kind == "CONNECTED":
                    break
        async with pool.acquire("plain") as imap:
            await imap.noop()
            await asyncio.sleep(3.5)
            report = await pool.audit()
        assert pushes.rounds >= 2  # IDLE renewed its rounds on the one connection it holds
        suspects = [f.key for f in report.findings if f.kind is Kind.LEAK_SUSPECT]
        assert suspects == ["plain"]
        assert pool.stats()["keys"]["idle"]["in_use"] == 1
