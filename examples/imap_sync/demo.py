"""``python -m examples.imap_sync demo``: the whole project in a few seconds, no setup.

The story: an in-process IMAP server with a few inboxes; the sync worker mirrors them into
a temporary SQLite store, then picks up new, re-flagged and expunged mail; the pool's
books show every connection opened and closed. Then the classic leak -- a driver that
keeps a duplicate of each socket -- and ``pool.audit()`` finding what the pool's own
books cannot: sockets the pool closed that the process still holds, server sessions
still open. The audit shuts them down, names the fds it may not close, and turns healthy
once the driver is fixed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
from rich.console import Console
from rich.markup import escape

from guardedpool import GuardedPool, OperationTimeout, PoolConfig
from guardedpool.imap import IMAPAccount, IMAPClient, IMAPConnector

from .config import AccountConfig
from .embedded import EmbeddedIMAPServer
from .health import HealthServer, make_app
from .leaky import LeakyIMAPConnector
from .metrics import SyncCollector, make_registry
from .progress import human_bytes, make_console, summary_table
from .seed import append_messages, expunge_first, flag_first
from .store import Store
from .worker import SyncWorker

__all__ = ["run_demo"]

INBOXES: Mapping[str, int] = {"alice": 14, "bob": 9, "carol": 6, "dave": 11}
"""Demo users and how many messages each starts with."""

# Fast housekeeping so retired connections close (and the story moves on) promptly.
DEMO_POOL = PoolConfig(
    max_per_key=2,
    connect_timeout=5.0,
    op_timeout=5.0,
    close_timeout=2.0,
    housekeeping_interval=0.1,
)


def _closed(stats: Mapping[str, Any]) -> str:
    total = stats["total"]
    reasons = ", ".join(f"{n} {r}" for r, n in total.get("closed", {}).items() if n)
    return f"{total.get('opened', 0)} opened, {total.get('closed_total', 0)} closed" + (
        f" ({reasons})" if reasons else ""
    )


class _Story:
    def __init__(self, console: Console) -> None:
        self.console = console
        self.step = 0

    def chapter(self, title: str) -> None:
        self.step += 1
        self.console.print(f"\n[bold]{self.step}. {escape(title)}[/bold]")

    def say(self, text: str) -> None:
        self.console.print(f"   {text}", highlight=False, soft_wrap=True)


async def _sync_act(
    story: _Story, server: EmbeddedIMAPServer, accounts: list[AccountConfig], store: Store
) -> None:
    pool: GuardedPool[IMAPClient] = GuardedPool(
        IMAPConnector({a.key: a.account for a in accounts}), DEMO_POOL
    )
    async with pool:
        story.chapter("Seeding the server (APPEND through the pool)")
        await asyncio.gather(*(append_messages(pool, k, 1, n) for k, n in INBOXES.items()))
        story.say(", ".join(f"{k}: {n} messages" for k, n in INBOXES.items()))

        worker = SyncWorker(pool, store, accounts, concurrency=4, batch_size=5)
        story.chapter(f"First sync into {store.path}")
        summary = await worker.run_pass()
        story.console.print(summary_table(summary, worker.counters, pool.stats()))

        story.chapter("Changes on the server, then a second pass")
        await append_messages(pool, "alice", 100, 3)
        await flag_first(pool, "bob")
        await expunge_first(pool, "carol", 2)
        story.say("alice gets 3 new messages, bob's first is flagged, carol's first 2 expunged")
        summary = await worker.run_pass()
        story.console.print(summary_table(summary, worker.counters, pool.stats()))
        totals = store.totals()
        expected = {k: n for k, n in INBOXES.items()} | {
            "alice": INBOXES["alice"] + 3,
            "carol": INBOXES["carol"] - 2,
        }
        same = all(totals[k][0] == n for k, n in expected.items())
        stored = sum(m for m, _ in totals.values())
        size = sum(b for _, b in totals.values())
        story.say(
            f"store: {stored} messages, {human_bytes(size)}; "
            f"{'matches the server' if same else 'DOES NOT match the server'}"
        )
    story.chapter("The pool's books after close")
    story.say(f"connections: {_closed(pool.stats())}; server sessions left: {server.sessions}")


async def _leak_act(story: _Story, server: EmbeddedIMAPServer, account: IMAPAccount) -> bool:
    connector = LeakyIMAPConnector({"alice": account})
    pool: GuardedPool[IMAPClient] = GuardedPool(connector, DEMO_POOL)
    async with pool:
        story.chapter("The classic leak: a driver that keeps a dup() of every socket")
        story.say("Two commands overrun their timeout; the client aborts both connections")
        story.say("(their state is unknown) and the pool retires them, as it must.")

        async def overrun() -> None:
            try:
                async with pool.acquire("alice") as imap:
                    await imap.select("INBOX")
                    await imap.noop(timeout=1e-6)
            except OperationTimeout:
                pass

        await asyncio.gather(overrun(), overrun())
        await asyncio.sleep(0.6)  # past the audit's grace for freshly closed sockets
        story.say(f"pool's books: {_closed(pool.stats())}; every fd it recorded is closed.")
        story.say(f"server's view: {server.sessions} sessions still open for alice.")

        story.chapter("await pool.audit()")
        report = await pool.audit()
        for line in str(report).splitlines():
            story.say(escape(line))
        await asyncio.sleep(0.05)
        story.say(
            f"server sessions now: {server.sessions}: the shutdown ended both TCP connections."
        )
        story.say("The auditor never close()s an fd it does not own (the number could be")
        story.say("reused under its owner's feet): the report names them for a human.")

        story.chapter("Fix the driver, ask /healthz")
        registry = make_registry(SyncCollector(pool.stats, dict))
        async with HealthServer(make_app(pool, registry)) as health:
            story.say(f"driver closed its {connector.fix()} kept sockets")
            async with aiohttp.ClientSession() as http, http.get(f"{health.url}/healthz") as resp:
                body = json.loads(await resp.text())
            story.say(
                f"GET {health.url}/healthz -> {resp.status} "
                f"healthy={body['healthy']} findings={len(body['findings'])}"
            )
    return resp.status == 200


async def run_demo(console: Console | None = None) -> int:
    """Run the story; returns the process exit code (0 when every step came out right)."""
    console = console or make_console()
    # The story is the output: library warnings (expected ones, during the leak) stay quiet.
    logging.getLogger("guardedpool").setLevel(logging.CRITICAL)
    logging.getLogger("imap_sync").setLevel(logging.ERROR)
    started = time.monotonic()
    story = _Story(console)
    async with EmbeddedIMAPServer() as server:
        accounts: list[AccountConfig] = []
        for key in INBOXES:
            password = secrets.token_urlsafe(12)
            await server.add_user(key, password)
            account = IMAPAccount(
                host=server.host, port=server.port, username=key, password=password, tls=False
            )
            accounts.append(AccountConfig(key, account, ("INBOX",)))
        console.print(
            f"[bold]guardedpool demo[/bold]: an in-process pymap IMAP server on "
            f"{server.host}:{server.port}, {len(accounts)} inboxes",
            highlight=False,
        )
        with (
            tempfile.TemporaryDirectory(prefix="imap-sync-demo-") as tmp,
            Store.open(Path(tmp) / "demo.sqlite3") as store,
        ):
            await _sync_act(story, server, accounts, store)
        healthy = await _leak_act(story, server, accounts[0].account)
    console.print(f"\ndone in {time.monotonic() - started:.1f} s", highlight=False)
    return 0 if healthy else 1
