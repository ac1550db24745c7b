"""Operating the pool (issue 12): a failed hand-out check, stats that tell the truth, and
log lines that say what happened without a secret in them. Against Dovecot, through the
fault proxy."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import time
from typing import Any

import pytest
from harness import DovecotServer, Mode, ProxyFactory
from harness.configs import DEFAULTS, FAST_RETRY, QUIET, config

from guardedpool import (
    ConnectionLost,
    GuardedPool,
    PoolTimeout,
)
from guardedpool.audit.classify import STRAGGLER_GRACE
from guardedpool.imap import IMAPAccount, IMAPConnector


def account(host: str, port: int, user: str, password: str) -> IMAPAccount:
    return IMAPAccount(host=host, port=port, username=user, password=password, tls=False)


async def test_a_silent_peer_fails_its_hand_out_check_and_a_replacement_is_opened(
    dovecot: DovecotServer, fault_proxy: ProxyFactory
) -> None:
    # op_timeout == acquire_timeout, as reproduced: the check must not take the whole budget.
    proxy = await fault_proxy()
    connector = IMAPConnector({"a": account(proxy.host, proxy.port, "bob", dovecot.users["bob"])})
    cfg = config(
        DEFAULTS,
        acquire_timeout=4.0,
        op_timeout=4.0,
        check_timeout=0.3,
        check_after=0.0,  # every hand-out is checked
        heartbeat_interval=None,
        retry=FAST_RETRY,
    )
    async with GuardedPool(connector, cfg) as pool:
        async with pool.acquire("a") as first:
            await first.noop()
        proxy.set_mode_all(Mode.BLACKHOLE)  # the pooled connection's peer goes silent
        async with pool.acquire("a") as second:
            assert second is not first
            await second.noop()
        stats = pool.stats()["keys"]["a"]
        assert (stats["opened"], stats["closed"]["error"]) == (2, 1)
        history = [e.detail for r in pool.audit_target.graveyard() for e in r.history]
        assert any("hand-out check failed: TimeoutError" in d for d in history), history


async def test_pool_timeout_names_the_failed_check(
    dovecot: DovecotServer, fault_proxy: ProxyFactory
) -> None:
    proxy = await fault_proxy()
    connector = IMAPConnector({"a": account(proxy.host, proxy.port, "bob", dovecot.users["bob"])})
    cfg = config(
        DEFAULTS,
        acquire_timeout=1.0,
        connect_timeout=0.3,
        check_timeout=0.2,
        check_after=0.0,
        heartbeat_interval=None,
        retry=FAST_RETRY,
    )
    async with GuardedPool(connector, cfg) as pool:
        async with pool.acquire("a"):
            pass
        proxy.set_mode_all(Mode.BLACKHOLE)
        proxy.set_mode(Mode.NEVER_GREET)  # and no replacement can connect
        with pytest.raises(PoolTimeout, match="failed its hand-out check") as info:
            await pool.acquire("a")
        assert info.value.failed_check is not None
        assert info.value.failed_check.startswith("TimeoutError")


async def test_an_imap_logout_by_the_borrower_is_closed_as_logged_out(
    dovecot: DovecotServer,
) -> None:
    connector = IMAPConnector(
        {"a": account(dovecot.host, dovecot.port, "bob", dovecot.users["bob"])}
    )
    async with GuardedPool(connector, config(DEFAULTS, check_after=3600.0)) as pool:
        async with pool.acquire("a") as conn:
            await conn.logout()
        closed = pool.stats()["keys"]["a"]["closed"]
        assert (closed["logged_out"], closed["poisoned"]) == (1, 0)


# -- one scripted life, logged at DEBUG -----------------------------------------------

# Facts a log record carries in extra= that its message must say too.
_SAID = ("key", "conn_id", "fd", "error", "kind", "action", "task", "acquired_at")
_OURS = ("guardedpool.pool", "guardedpool.reconnect", "guardedpool.audit")


@pytest.mark.timeout(60)
async def test_one_life_logged_at_debug_says_everything_and_no_secret(
    dovecot: DovecotServer,
    fault_proxy: ProxyFactory,
    fresh_user: tuple[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    user, password = fresh_user
    proxies = {k: await fault_proxy() for k in ("flaky", "leak", "idle", "half", "strag")}
    connector = IMAPConnector(
        {k: account(p.host, p.port, user, password) for k, p in proxies.items()}
    )
    offset = [0.0]  # the pool's clock jumps on demand: overdue and leak without waiting

    def clock() -> float:
        return time.monotonic() + offset[0]

    cfg = config(
        QUIET,  # no round, check or heartbeat during the test: the audit finds it all
        acquire_timeout=5.0,
        connect_timeout=2.0,
        close_timeout=0.5,
        idle_timeout=60.0,
        leak_threshold=30.0,
        retry=FAST_RETRY,
    )
    caplog.set_level(logging.DEBUG, logger="guardedpool")
    orphan = dup = None
    pool = GuardedPool(connector, cfg, clock=clock)
    try:
        async with pool:
            # connect, failure, reconnect
            proxies["flaky"].set_mode(Mode.RESET)
            attempt = asyncio.ensure_future(pool.acquire("flaky"))
            await asyncio.sleep(0.3)
            proxies["flaky"].set_mode(Mode.PASS)
            pool.release(await asyncio.wait_for(attempt, 5.0))
            # a straggler: a dup of the socket outlives the connection's close
            async with pool.acquire("strag") as strag:
                ident = pool.record_of(strag).socket
                assert ident is not None
                dup = os.dup(ident.fd)
            with pytest.raises(ConnectionLost):
                async with pool.acquire("strag"):
                    raise ConnectionLost("the server went away (scripted)")
            # an idle connection (overdue once the clock jumps), a held one (leak suspect),
            # a held one whose server closes (half-open), a socket nobody owns (orphan)
            async with pool.acquire("idle"):
                pass
            held = await pool.acquire("leak")
            half = await pool.acquire("half")
            proxies["half"].close_all()
            host, port = proxies["leak"].host, proxies["leak"].port
            orphan = socket.create_connection((host, port))
            for _ in range(200):  # the straggler's close has given up, and its grace passed
                if pool.stats()["total"]["closing"] == 0:
                    break
                await asyncio.sleep(0.02)
            await asyncio.sleep(STRAGGLER_GRACE + 0.1)
            offset[0] = 10_000.0
            report = await pool.audit()
            kinds = {f.kind.value for f in report.findings}
            assert kinds == {"straggler", "half_open", "orphan", "leak_suspect", "overdue"}
            pool.release(half)
            pool.release(held)
    finally:
        for sock in (orphan,):
            if sock is not None:
                sock.close()
        if dup is not None:
            os.close(dup)

    records = [r for r in caplog.records if r.name.startswith("guardedpool")]
    text = "\n".join(r.getMessage() for r in records)
    for r in records:
        facts = " ".join(repr(v) for k, v in vars(r).items() if k not in ("args", "msg"))
        assert password not in r.getMessage() and password not in facts, r.getMessage()
        if not r.name.startswith(_OURS):
            continue
        message = r.getMessage()
        for name in _SAID:
            value: Any = getattr(r, name, None)
            if value is None:
                continue
            shown = repr(value) if name in ("key", "task") else str(value)
            assert shown in message, f"{name}={value!r} not in {message!r}"
        assert r.levelno < logging.ERROR or "straggler" in message, message
    for expected in (
        "connect for key 'flaky' failed (1 in a row): ",
        "key 'flaky' connected again after",
        "opened connection",
        "retiring connection",
        "audit finding orphan on a socket no record owns",
        "audit finding leak_suspect on key 'leak'",
        "pool closed",
    ):
        assert expected in text, expected
    # What the audit did is said once, where it was done (guardedpool.audit.enforce).
    for kind, key in (("straggler", "strag"), ("half_open", "half"), ("overdue", "idle")):
        assert re.search(rf"guardedpool audit: {kind} conn \d+ key '{key}'", text), kind
    leak = next(r for r in records if "audit finding leak_suspect" in r.getMessage())
    assert "test_one_life_logged_at_debug" in leak.getMessage()  # the acquire site
