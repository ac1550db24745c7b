"""``run``: config -> pool, store, worker, health endpoint; one pass or passes until stopped.

Order matters for the promises the CLI makes: the config is fully validated, and the
health port bound, before the store is opened (a bad config or a port already in use
leaves the store untouched), and the pool is closed --
every connection logged out or aborted and verified closed -- before the store is.
SIGINT/SIGTERM end continuous mode after the pass in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING

from rich.console import Console

from guardedpool import GuardedPool
from guardedpool.fleet import Budget
from guardedpool.imap import IMAPClient, IMAPConnector

from .config import ConfigError, SyncConfig
from .progress import RichObserver, summary_table
from .stores import MailStore, open_store
from .worker import PassSummary, SyncWorker

if TYPE_CHECKING:
    from .health import HealthServer

__all__ = ["run_sync"]

# The health endpoint (aiohttp, prometheus_client) is imported only where it is served:
# a ``run --once`` never serves it, and the import costs a sizeable share of a short run.


async def run_sync(config: SyncConfig, *, once: bool, console: Console) -> int:
    """Exit code: 0 when the (last) pass had no failure, 1 otherwise.

    Raises ConfigError, before anything else is touched, when the health endpoint's
    ``[health] bind`` address cannot be listened on (in use, not a local address).
    """
    sock = None if once else _health_socket(config)
    try:
        store = open_store(config.store_url or str(config.store_path), fsync=config.store_fsync)
    except BaseException:
        if sock is not None:
            sock.close()
        raise
    try:
        if config.fleet is None:
            return await _run(config, store, once=once, console=console, sock=sock)
        from .fleet import join_fleet  # redis-py: the optional extra guardedpool[redis]

        async with join_fleet(config, store) as fleet:
            return await _run(
                config,
                fleet.store,
                once=once,
                console=console,
                sock=sock,
                budget=fleet.budget,
                owned=fleet.owns,
                attach=fleet.attached,
            )
    finally:
        if sock is not None:
            sock.close()  # after HealthServer.stop(), or never served: closing twice is a no-op
        store.close()


async def _run(
    config: SyncConfig,
    store: MailStore,
    *,
    once: bool,
    console: Console,
    sock: socket.socket | None,
    budget: Budget | None = None,
    owned: Callable[[str], bool] | None = None,
    attach: Callable[[GuardedPool[IMAPClient]], AbstractAsyncContextManager[None]] | None = None,
) -> int:
    """The pool and the worker over an open store (closed by the caller)."""
    pool: GuardedPool[IMAPClient] = GuardedPool(
        IMAPConnector(config.accounts_by_key()), config.pool, budget=budget
    )
    async with pool, (attach(pool) if attach is not None else contextlib.nullcontext()):
        with RichObserver(console) as observer:
            worker = SyncWorker(
                pool,
                store,
                config.accounts,
                concurrency=config.concurrency,
                batch_size=config.batch_size,
                observer=observer,
            )
            worker.owned = owned
            if once:
                summary = await worker.run_pass()
                console.print(summary_table(summary, worker.counters, pool.stats()))
                _print_failures(console, summary)
                return 0 if summary.ok else 1
            return await _continuous(config, pool, worker, console, sock)


def _health_socket(config: SyncConfig) -> socket.socket | None:
    if config.health_bind is None:
        return None
    from .health import listen_socket

    host, port = config.health_bind
    try:
        return listen_socket(host, port)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(
            f"{config.source}: health.bind: cannot listen on {host}:{port}: {reason} (set "
            "[health] bind to a free address, or enabled = false)"
        ) from None


async def _continuous(
    config: SyncConfig,
    pool: GuardedPool[IMAPClient],
    worker: SyncWorker,
    console: Console,
    sock: socket.socket | None,
) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    last: list[PassSummary] = []

    def report(summary: PassSummary) -> None:
        last[:] = [summary]
        changed = any(r.new or r.flags_changed or r.expunged or r.reset for r in summary.results)
        if changed or summary.failures or worker.passes == 1:
            console.print(summary_table(summary, worker.counters, pool.stats()))
            _print_failures(console, summary)
        else:
            console.print(f"pass {worker.passes}: no changes ({summary.duration:.2f} s)")

    health: HealthServer | None = None
    try:
        if config.health_bind is not None and sock is not None:
            from .health import HealthServer, make_app
            from .metrics import SyncCollector, make_registry

            registry = make_registry(
                SyncCollector(pool.stats, lambda: worker.counters, lambda: worker.mailbox_views)
            )
            health = HealthServer(make_app(pool, registry), *config.health_bind, sock=sock)
            await health.start()
            console.print(f"health: {health.url}/healthz  metrics: {health.url}/metrics")
        await worker.run_forever(
            config.poll_interval,
            stop,
            on_pass=report,
            mode=config.mode,
            idle_renew_after=config.idle_renew_after,
        )
    finally:
        if health is not None:
            await health.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
    return 0 if not last or last[0].ok else 1


def _print_failures(console: Console, summary: PassSummary) -> None:
    for f in summary.failures:
        console.print(f"[red]failed[/red] {f.account}/{f.mailbox}: {f.error}", highlight=False)
