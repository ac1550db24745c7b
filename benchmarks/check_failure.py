"""A pooled connection whose peer went silent: what does the next acquire cost?

Question (issue 12 §4): a connection sits idle past ``check_after`` while its peer goes
silent (no FIN, no RST: the fault proxy black-holes it), then it is acquired. The
hand-out NOOP check is bounded by ``check_timeout``, and a replacement is opened within
what is left of ``acquire_timeout``. Before ``check_timeout`` existed the check waited
``op_timeout``, and with ``op_timeout == acquire_timeout`` the caller got ``PoolTimeout``
although the server was healthy.

Each case is run ``--rounds`` times against a real Dovecot behind the fault proxy; the
acquire's wall time is reported (median and spread), with the case's bounds beside it:

- ``defaults``: ``PoolConfig()``'s ``acquire_timeout`` / ``op_timeout`` (30 s each) and
  ``check_timeout`` (5 s);
- ``reproduced``: 2 s / 2 s as the issue reproduced it, with ``check_timeout=0.5``.

    python benchmarks/check_failure.py            # 3 rounds
    python benchmarks/check_failure.py --quick    # 1 round
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import _bench

from guardedpool import GuardedPool, PoolConfig, PoolTimeout
from guardedpool.imap import IMAPAccount, IMAPClient, IMAPConnector
from tests.harness.dovecot import DovecotServer
from tests.harness.proxy import FaultProxy, Mode

CASES: dict[str, dict[str, float]] = {
    "defaults": {},
    "reproduced": {"acquire_timeout": 2.0, "op_timeout": 2.0, "check_timeout": 0.5},
}


async def one(server: DovecotServer, changes: dict[str, float]) -> dict[str, Any]:
    proxy = FaultProxy(server.host, server.port)
    await proxy.start()
    try:
        account = IMAPAccount(
            host=proxy.host, port=proxy.port, username="bob", password="bob-pw", tls=False
        )
        config = PoolConfig(check_after=0.0, heartbeat_interval=None, **changes)
        pool: GuardedPool[IMAPClient] = GuardedPool(IMAPConnector({"bob": account}), config)
        async with pool:
            async with pool.acquire("bob") as imap:
                await imap.noop()
            proxy.set_mode_all(Mode.BLACKHOLE)  # the pooled connection's peer goes silent
            started = time.perf_counter()
            try:
                async with pool.acquire("bob") as imap:
                    await imap.noop()
                outcome = "served by a replacement"
            except PoolTimeout as exc:
                outcome = f"PoolTimeout: {exc}"
            took = time.perf_counter() - started
        return {
            "seconds": took,
            "outcome": outcome,
            "acquire_timeout": config.acquire_timeout,
            "op_timeout": config.op_timeout,
            "check_timeout": config.check_timeout,
        }
    finally:
        await proxy.stop()


async def run(args: argparse.Namespace, server: DovecotServer) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name, changes in CASES.items():
        runs = [await one(server, changes) for _ in range(args.rounds)]
        result[name] = {
            "acquire_seconds": _bench.spread([r["seconds"] for r in runs]),
            "outcomes": sorted({r["outcome"] for r in runs}),
            "bounds": {k: runs[0][k] for k in ("acquire_timeout", "op_timeout", "check_timeout")},
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.quick:
        args.rounds = 1
    server = DovecotServer()
    server.start()
    try:
        result = asyncio.run(run(args, server))
    finally:
        server.stop()
    _bench.emit({"benchmark": "check_failure", "machine": _bench.machine(), "result": result})


if __name__ == "__main__":
    main()
