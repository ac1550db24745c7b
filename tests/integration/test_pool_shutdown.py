"""close() for a connector without ``farewell``: awaited goodbyes, cut at shutdown_timeout."""

from __future__ import annotations

import asyncio
import logging

import pytest
from harness.configs import DEFAULTS, config

from guardedpool import GuardedPool
from guardedpool.testing import LineConnection, LineConnector, LineServer


class SlowGoodbye(LineConnector):
    """A goodbye that waits for an answer a silent server never gives (bounded by the
    pool), like a LOGOUT to a server that stopped answering."""

    async def close(self, conn: LineConnection, timeout: float) -> None:
        await conn.ping(timeout)


@pytest.mark.timeout(30)
async def test_awaited_goodbyes_end_at_shutdown_timeout_not_close_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with LineServer(silent=True) as server:
        keys = {f"k{i}": server.address for i in range(20)}
        cfg = config(
            DEFAULTS, max_total=40, close_timeout=10.0, shutdown_timeout=0.3, check_after=3600.0
        )
        pool = GuardedPool(SlowGoodbye(keys), cfg)
        async with pool:
            conns = [await pool.acquire(k) for k in keys]
            for c in conns:
                pool.release(c)
            caplog.set_level(logging.INFO, logger="guardedpool")
            # Bounded by close_timeout (10 s) per goodbye before; now by shutdown_timeout.
            async with asyncio.timeout(cfg.close_timeout / 2):
                await pool.close()
        summary = [
            r for r in caplog.records if r.getMessage().startswith("guardedpool: pool closed")
        ]
        assert len(summary) == 1
        assert summary[0].goodbye_failed == len(keys)  # type: ignore[attr-defined]
        assert summary[0].not_verified == 0  # type: ignore[attr-defined]
        assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
        assert pool.stats()["total"]["slots"] == 0
