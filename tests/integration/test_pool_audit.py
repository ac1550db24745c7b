"""``pool.audit()`` on a real pool: sibling pools in one process are not each other's orphans."""

from __future__ import annotations

import asyncio

from guardedpool import GuardedPool, PoolConfig
from guardedpool.audit import Kind
from guardedpool.testing import LineConnector, LineServer


async def test_two_pools_to_one_server_do_not_report_each_other() -> None:
    async with LineServer() as server:
        first = GuardedPool(LineConnector({"a": server.address}), PoolConfig())
        second = GuardedPool(LineConnector({"b": server.address}), PoolConfig())
        async with first, second:
            held = [await first.acquire("a"), await second.acquire("b")]
            for pool in (first, second):
                report = await pool.audit()
                assert report.healthy, str(report)
                assert report.counts[Kind.ORPHAN.value] == 0
            # A socket to the same endpoint that no pool owns is still an orphan.
            _, writer = await asyncio.open_connection(*server.address)
            try:
                report = await first.audit()
                assert report.counts[Kind.ORPHAN.value] == 1
                assert not report.healthy
            finally:
                writer.close()
                await writer.wait_closed()
            first.release(held[0])
            second.release(held[1])


async def test_clean_pool_reports_healthy_with_process_figures() -> None:
    async with LineServer() as server:
        pool = GuardedPool(LineConnector({"a": server.address}), PoolConfig())
        async with pool:
            async with pool.acquire("a") as conn:
                await conn.ping()
            report = await pool.audit()
            assert report.healthy and not report.findings
            data = report.to_dict()
            assert data["fds_used"] > 0 and data["backend"] == "procfs"
