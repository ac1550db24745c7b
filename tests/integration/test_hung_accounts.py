"""Accounts whose server hangs do not hold up everyone else's connects (issue 15).

Each connect to a hung server holds one of the pool's ``max_connecting`` permits until
``connect_timeout``, and the account retries after its backoff. Keys in a failure streak
connect in a lane of their own within the cap
(``guardedpool.reconnect.failing_key_permits``), so a few of them cannot take every
permit; found by a new user's review, where 40 hung accounts in ``idle()`` made every
other acquire of the pool fail. Real parts: Dovecot for the healthy accounts, the
fault proxy accepting and never greeting for the hung ones.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from harness import DovecotServer, Mode, ProxyFactory
from harness.configs import FAST_RETRY, QUIET, config
from harness.waiting import wait_for

from guardedpool import GuardedPool, PoolTimeout
from guardedpool.imap import IMAPAccount, IMAPConnector
from guardedpool.reconnect import failing_key_permits

HUNG = [f"hung{i}" for i in range(16)]
MAX_CONNECTING = 4


def plain(host: str, port: int, user: str, password: str) -> IMAPAccount:
    return IMAPAccount(host=host, port=port, username=user, password=password, tls=False)


@pytest.mark.timeout(90)
async def test_hung_accounts_leave_a_permit_to_the_others(
    dovecot: DovecotServer, fault_proxy: ProxyFactory
) -> None:
    hung = await fault_proxy(mode=Mode.NEVER_GREET)
    accounts = {k: plain(hung.host, hung.port, "bob", "x") for k in HUNG}
    accounts["ok"] = plain("127.0.0.1", dovecot.port, "bob", dovecot.users["bob"])
    cfg = config(
        QUIET,
        max_per_key=1,
        max_total=len(accounts),
        max_connecting=MAX_CONNECTING,
        connect_timeout=0.5,
        acquire_timeout=60.0,  # the hung keys' callers keep waiting, so they keep retrying
        retry=FAST_RETRY,
    )
    assert failing_key_permits(MAX_CONNECTING) == MAX_CONNECTING - 1
    async with GuardedPool(IMAPConnector(accounts), cfg) as pool:

        def failures(key: str) -> int:
            return int(pool.stats()["keys"].get(key, {}).get("connect_failures", 0))

        async def wait_hung(key: str) -> None:
            with contextlib.suppress(PoolTimeout):
                await pool.acquire(key)

        waiting = [asyncio.ensure_future(wait_hung(k)) for k in HUNG]
        try:
            await wait_for(lambda: all(failures(k) >= 1 for k in HUNG), 30, what="failures")

            # With every hung key retrying, a healthy key's connect takes the permit kept
            # for the others: it is made before any more hung attempt has to give up its
            # permit. Without the lane it queues behind a dozen hung attempts, at least
            # MAX_CONNECTING of which must time out first.
            before = sum(failures(k) for k in HUNG)
            healthy = await pool.acquire("ok")
            meanwhile = sum(failures(k) for k in HUNG) - before
            pool.release(healthy)
            assert meanwhile < MAX_CONNECTING, meanwhile
            assert pool.stats()["total"]["peak_connecting"] <= MAX_CONNECTING
        finally:
            for task in waiting:
                task.cancel()
            await asyncio.gather(*waiting, return_exceptions=True)
