"""Refused logins against a per-user connection cap: does the pool knock politely?

Question (issue 13): a real Dovecot with ``mail_max_userip_connections = --server-cap``
(default 2) and a pool with ``max_per_key = --pool-cap`` (default 4) for that user: how many
logins does Dovecot refuse while ``--borrowers`` tasks (default 4) keep asking for a
connection for ``--seconds``? A pool that honours capacity refusals settles at the
server's cap with few refused logins (the effective cap drops to what the key holds, and
rises by one per ``retry.capacity_cooldown``); one that does not keeps knocking.

Counted from Dovecot's own log ("Maximum number of connections from user+IP exceeded")
and from the pool's stats (``opened``, ``connect_failures``), and the connections held at
the end. Each borrower loops: acquire (bounded by ``acquire_timeout``), NOOP, hold
``--hold`` seconds, release; a ``PoolTimeout`` is counted and the loop goes on.

    python benchmarks/login_storm.py            # 10 s
    python benchmarks/login_storm.py --quick    # 3 s
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import _bench

from guardedpool import GuardedPool, PoolConfig, PoolTimeout, RetryPolicy
from guardedpool.imap import IMAPAccount, IMAPClient, IMAPConnector
from tests.harness.dovecot import DovecotServer

REFUSED = "Maximum number of connections from user+IP exceeded"


async def run(args: argparse.Namespace, server: DovecotServer) -> dict[str, Any]:
    account = IMAPAccount(
        host=server.host, port=server.port, username="alice", password="alice-pw", tls=False
    )
    config = PoolConfig(
        max_per_key=args.pool_cap,
        acquire_timeout=2.0,
        connect_timeout=5.0,
        retry=RetryPolicy(),  # the defaults, as a user would have them
    )
    pool: GuardedPool[IMAPClient] = GuardedPool(IMAPConnector({"alice": account}), config)
    timeouts = 0
    served = 0
    before = server.log_path.read_text(errors="replace").count(REFUSED)

    async def borrower(deadline: float) -> None:
        nonlocal timeouts, served
        while time.monotonic() < deadline:
            try:
                async with pool.acquire("alice") as imap:
                    await imap.noop()
                    served += 1
                    await asyncio.sleep(args.hold)
            except PoolTimeout:
                timeouts += 1

    async with pool:
        deadline = time.monotonic() + args.seconds
        await asyncio.gather(*(borrower(deadline) for _ in range(args.borrowers)))
        stats = pool.stats()["keys"]["alice"]
        held = stats["open"]
    await asyncio.sleep(0.5)  # Dovecot writes its log lines asynchronously
    refused = server.log_path.read_text(errors="replace").count(REFUSED) - before
    return {
        "seconds": args.seconds,
        "server_cap": args.server_cap,
        "pool_cap": args.pool_cap,
        "borrowers": args.borrowers,
        "refused_logins_dovecot_log": refused,
        "refused_logins_per_second": refused / args.seconds,
        "pool_opened": stats["opened"],
        "pool_connect_failures": stats["connect_failures"],
        "acquire_timeouts": timeouts,
        "borrows_served": served,
        "open_at_end": held,
        # absent before issue 13's pool follow-up (the "before" runs)
        "effective_max_per_key": stats.get("effective_max_per_key"),
        "logins_last_minute": stats.get("logins_last_minute"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--server-cap", type=int, default=2)
    parser.add_argument("--pool-cap", type=int, default=4)
    parser.add_argument("--borrowers", type=int, default=4)
    parser.add_argument("--hold", type=float, default=0.2)
    args = parser.parse_args()
    if args.quick:
        args.seconds = 3.0
    server = DovecotServer(max_userip_connections=args.server_cap)
    server.start()
    try:
        result = asyncio.run(run(args, server))
    finally:
        server.stop()
    _bench.emit({"benchmark": "login_storm", "machine": _bench.machine(), "result": result})


if __name__ == "__main__":
    main()
