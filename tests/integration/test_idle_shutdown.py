"""pool.close() with IDLE sessions running (issue 15): bounded, quiet, nothing left.

The sessions learn of the close at once (``pool.when_closing()``) and give their
connections back still in IDLE; the pool sends every DONE + LOGOUT at once, cuts them
short at ``shutdown_timeout``, verifies each socket gone and logs one summary line.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
from harness import DovecotServer, wait_for
from harness.configs import DEFAULTS, config
from harness.sockets import socket_fds

from guardedpool import GuardedPool
from guardedpool.imap import IMAPClient, IMAPConnector
from guardedpool.imap.idle import IdleSession, idle

N = 50


def socket_inodes() -> set[int]:
    return set(socket_fds().values())


@pytest.mark.timeout(60)
async def test_close_with_idle_sessions_is_bounded_quiet_and_leaves_no_socket(
    dovecot: DovecotServer, fresh_user: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    account = dovecot.plain_account(*fresh_user)
    cfg = config(
        DEFAULTS,
        max_per_key=1,
        max_total=N,
        acquire_timeout=20.0,
        connect_timeout=5.0,
        # close() would wait this long for sessions that did not notice it: the bound
        # below is this, so a session that keeps its connection fails the test.
        close_timeout=5.0,
        shutdown_timeout=1.0,
        retry=config(DEFAULTS.retry, initial=0.02, max_delay=0.1),
    )
    baseline = socket_inodes()
    pool: GuardedPool[IMAPClient] = GuardedPool(
        IMAPConnector({f"k{i}": account for i in range(N)}), cfg
    )
    sessions: list[IdleSession] = [idle(pool, f"k{i}") for i in range(N)]
    async with pool:
        for s in sessions:
            await s.__aenter__()

        async def connected(s: IdleSession) -> None:
            async for event in s:
                if event.kind == "CONNECTED":
                    return

        async with asyncio.timeout(30):
            await asyncio.gather(*(connected(s) for s in sessions))
        assert pool.stats()["total"]["in_use"] == N
        caplog.clear()
        caplog.set_level(logging.DEBUG, logger="guardedpool")
        async with asyncio.timeout(cfg.close_timeout):
            await pool.close()

    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) <= 1, [r.getMessage() for r in warnings]
    summaries = [r for r in caplog.records if r.getMessage().startswith("guardedpool: pool closed")]
    assert len(summaries) == 1
    summary = summaries[0]
    assert summary.closed == N  # type: ignore[attr-defined]
    assert summary.aborted_lent == 0 and summary.not_verified == 0  # type: ignore[attr-defined]
    assert summary.logout_sent == N  # type: ignore[attr-defined]
    assert summary.levelno == logging.INFO
    # the per-connection detail is there, at DEBUG
    retiring = [r for r in caplog.records if "retiring connection" in r.getMessage()]
    assert len(retiring) == N and all(r.levelno == logging.DEBUG for r in retiring)
    stats = pool.stats()["total"]
    assert stats["closed"]["shutdown"] == N and stats["slots"] == 0
    await wait_for(lambda: socket_inodes() <= baseline, 2.0, what="every socket gone")

    def logged_out() -> int:  # Dovecot got every LOGOUT (sent, not awaited)
        text = dovecot.log_path.read_text(errors="replace")
        user = f"imap({fresh_user[0]})"
        return sum(1 for line in text.splitlines() if user in line and "Logged out" in line)

    await wait_for(lambda: logged_out() == N, 5.0, what="Dovecot logs every LOGOUT")
    for s in sessions:  # each session ended on its own (the pool closed), without error
        async with asyncio.timeout(2):
            await s.stop()
        assert s._task is not None and s._task.done() and s._task.exception() is None
