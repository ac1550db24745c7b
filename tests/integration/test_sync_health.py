"""/healthz and /metrics with a real HTTP client, a real Dovecot and real (leaked) sockets."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
from harness import DovecotServer, wait_for
from harness.configs import SYNC, config
from prometheus_client.parser import text_string_to_metric_families

from examples.imap_sync.config import AccountConfig
from examples.imap_sync.health import HealthServer, make_app
from examples.imap_sync.leaky import LeakyIMAPConnector
from examples.imap_sync.metrics import SyncCollector, make_registry
from examples.imap_sync.store import Store
from examples.imap_sync.worker import SyncWorker
from guardedpool import GuardedPool, OperationTimeout
from guardedpool.imap import IMAPAccount, IMAPClient, IMAPConnector

CFG = config(SYNC, housekeeping_interval=0.05, leak_threshold=0.3)


def new_user(dovecot: DovecotServer, count: int) -> AccountConfig:
    name = f"h{uuid.uuid4().hex[:10]}"
    password = dovecot.add_user(name)
    dovecot.seed_messages(name, count)
    account = IMAPAccount(
        host=dovecot.host, port=dovecot.port, username=name, password=password, tls=False
    )
    return AccountConfig(name, account, ("INBOX",))


@asynccontextmanager
async def served(
    pool: GuardedPool[IMAPClient], worker: SyncWorker | None = None
) -> AsyncIterator[tuple[aiohttp.ClientSession, str]]:
    counters = (lambda: worker.counters) if worker is not None else dict
    registry = make_registry(SyncCollector(pool.stats, counters))
    async with HealthServer(make_app(pool, registry)) as health, aiohttp.ClientSession() as http:
        assert health.address is not None and health.address[0] == "127.0.0.1"
        yield http, health.url


async def get(http: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with http.get(url) as resp:
        if resp.content_type == "application/json":
            return resp.status, await resp.json()
        return resp.status, await resp.text()


async def test_healthz_200_then_503_for_a_leak_suspect(
    dovecot: DovecotServer, tmp_path: Path
) -> None:
    acc = new_user(dovecot, 5)
    pool: GuardedPool[IMAPClient] = GuardedPool(IMAPConnector({acc.key: acc.account}), CFG)
    with Store.open(tmp_path / "h.sqlite3") as store:
        async with pool:
            worker = SyncWorker(pool, store, [acc])
            assert (await worker.run_pass()).ok
            async with served(pool, worker) as (http, base):
                status, body = await get(http, f"{base}/healthz")
                assert status == 200, body
                assert body["healthy"] is True and body["findings"] == []

                held = asyncio.Event()
                done = asyncio.Event()

                async def forgetful_task() -> None:
                    async with pool.acquire(acc.key) as imap:
                        await imap.noop()
                        held.set()
                        await done.wait()

                task = asyncio.create_task(forgetful_task(), name="forgetful-task")
                await held.wait()
                await asyncio.sleep(CFG.leak_threshold + 0.1)
                status, body = await get(http, f"{base}/healthz")
                assert status == 503
                assert body["healthy"] is False
                assert body["counts"]["leak_suspect"] == 1
                (finding,) = body["findings"]
                assert (finding["kind"], finding["key"]) == ("leak_suspect", acc.key)
                assert finding["task"] == "forgetful-task"

                done.set()
                await task
                status, body = await get(http, f"{base}/healthz")
                assert status == 200, body


async def test_healthz_503_for_a_straggler_that_cannot_be_closed(
    dovecot: DovecotServer,
) -> None:
    acc = new_user(dovecot, 1)
    connector = LeakyIMAPConnector({acc.key: acc.account})
    pool: GuardedPool[IMAPClient] = GuardedPool(connector, CFG)
    try:
        async with pool, served(pool) as (http, base):
            try:
                async with pool.acquire(acc.key) as imap:
                    await imap.noop(timeout=1e-6)  # overruns: the connection is aborted
            except OperationTimeout:
                pass
            await asyncio.sleep(0.7)  # closed, and past the audit's grace period
            status, body = await get(http, f"{base}/healthz")
            assert status == 503, body
            (finding,) = body["findings"]
            assert (finding["kind"], finding["action"]) == ("straggler", "close_failed")
            assert "still holds it" in finding["detail"]

            assert connector.fix() == 1
            status, body = await get(http, f"{base}/healthz")
            assert status == 200, body
    finally:
        connector.fix()


async def test_metrics_parse_as_prometheus_text(dovecot: DovecotServer, tmp_path: Path) -> None:
    accounts = [new_user(dovecot, n) for n in (4, 2)]
    pool: GuardedPool[IMAPClient] = GuardedPool(
        IMAPConnector({a.key: a.account for a in accounts}), CFG
    )
    with Store.open(tmp_path / "m.sqlite3") as store:
        async with pool:
            worker = SyncWorker(pool, store, accounts)
            assert (await worker.run_pass()).ok
            async with (
                served(pool, worker) as (http, base),
                http.get(f"{base}/metrics") as resp,
            ):
                assert resp.status == 200
                assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
                text = await resp.text()
    values: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            label = s.labels.get("inbox") or s.labels.get("key") or ""
            if "state" in s.labels:
                label += "/" + s.labels["state"]
            values[(s.name, label)] = s.value
    a, b = (x.key for x in accounts)
    assert values[("imap_sync_messages_total", a)] == 4
    assert values[("imap_sync_messages_total", b)] == 2
    assert values[("imap_sync_errors_total", a)] == 0
    assert values[("imap_sync_bytes_total", a)] > 0
    assert values[("imap_sync_last_success_timestamp_seconds", a)] > 1e9
    assert values[("guardedpool_opened_total", a)] == 1
    assert values[("guardedpool_connections", f"{a}/idle")] == 1
    assert values[("guardedpool_acquires_total", b)] == 1


async def test_healthz_stays_200_in_idle_mode_past_leak_threshold(
    dovecot: DovecotServer, tmp_path: Path
) -> None:
    """Issue 11, section 5, scaled down: an idle-mode worker holds one connection per account
    in IDLE across rounds (renew_after=1 s); with leak_threshold=1.5 s, /healthz is still 200
    at 3.5 s, because a hold that renews its rounds is no leak suspect."""
    acc = new_user(dovecot, 2)
    cfg = config(CFG, leak_threshold=1.5)
    pool: GuardedPool[IMAPClient] = GuardedPool(IMAPConnector({acc.key: acc.account}), cfg)
    stop = asyncio.Event()
    with Store.open(tmp_path / "h.sqlite3") as store:
        async with pool:
            worker = SyncWorker(pool, store, [acc])
            run = asyncio.create_task(
                worker.run_forever(60.0, stop, mode="idle", idle_renew_after=1.0)
            )
            try:
                async with served(pool, worker) as (http, base):
                    await wait_for(  # IDLE is held from the first pass on
                        lambda: pool.stats()["keys"].get(acc.key, {}).get("in_use", 0) >= 1, 5.0
                    )
                    await asyncio.sleep(3.5)
                    assert pool.stats()["keys"][acc.key]["in_use"] >= 1  # still in IDLE
                    status, body = await get(http, f"{base}/healthz")
                    assert status == 200, body
                    assert body["healthy"] is True and body["findings"] == [], body
            finally:
                stop.set()
                async with asyncio.timeout(5.0):
                    await run
