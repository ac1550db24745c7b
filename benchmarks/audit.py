"""How fast is an audit, per backend, against the classic lsof hunt? Does it stall the loop?

Opens N pooled loopback connections (N = 100, 1,000, 10,000; ``--quick``: 100, 1,000),
builds an idle record for each, and times in one run, round-robin so that drift hits all
alike:

* ``procfs`` / ``psutil`` / ``lsof``: a full ``run_audit`` with that backend;
* ``classic``: the hunt by hand -- ``lsof -F`` for the process, parse, match every record
  by its (local, remote) pair;
* ``stall``: the event loop's longest gap between turns during the procfs audit (a task
  that only yields measures it), and for comparison the same procfs scan run in a worker
  thread instead of in chunks on the loop.

The server runs in a child process: both ends of 10,000 connections in one process would
need 20,000+ fds, more than a typical hard limit. Prints JSON (milliseconds, medians).

    python benchmarks/audit.py [--quick] [--rounds R]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence, Set
from dataclasses import dataclass, field

import _bench

from guardedpool.audit import run_audit
from guardedpool.audit.classify import Connecting
from guardedpool.audit.scan import Backend
from guardedpool.audit.scan_lsof import lsof_command
from guardedpool.audit.scan_procfs import scan_procfs
from guardedpool.config import AuditPolicy, PoolConfig
from guardedpool.records import ConnectionRecord, ConnState, SocketIdentity
from guardedpool.sockets import identify

SERVER = """
import asyncio, resource, sys
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
class Sink(asyncio.Protocol):
    def connection_made(self, transport): self.transport = transport
    def data_received(self, data): pass
async def main():
    server = await asyncio.get_running_loop().create_server(Sink, "127.0.0.1", 0, backlog=4096)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
asyncio.run(main())
"""


@dataclass
class BenchTarget:
    """The AuditTarget a pool would be: idle records for real loopback sockets."""

    config: PoolConfig
    live: list[ConnectionRecord]
    addresses: Set[tuple[str, int]]
    retired: list[ConnectionRecord] = field(default_factory=list)

    def now(self) -> float:
        return time.monotonic()

    def records(self) -> Sequence[ConnectionRecord]:
        return self.live

    def graveyard(self) -> Sequence[ConnectionRecord]:
        return self.retired

    def endpoints(self) -> Set[tuple[str, int]]:
        return self.addresses

    def poison(self, record: ConnectionRecord) -> None:
        raise AssertionError(f"healthy benchmark connection poisoned: {record.id}")

    def retire(self, record: ConnectionRecord) -> None:
        raise AssertionError(f"healthy benchmark connection retired: {record.id}")

    def foreign(self) -> tuple[frozenset[int], tuple[Connecting, ...]]:
        return frozenset(), ()

    def connecting(self) -> Connecting | None:
        return None  # every benchmark connection is open

    def abort(self, record: ConnectionRecord) -> bool:
        return False


async def open_connections(port: int, n: int) -> list[asyncio.Transport]:
    loop = asyncio.get_running_loop()
    out: list[asyncio.Transport] = []
    for start in range(0, n, 256):
        batch = [
            loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
            for _ in range(min(256, n - start))
        ]
        out.extend(t for t, _ in await asyncio.gather(*batch))
    return out


async def classic(records: Sequence[ConnectionRecord]) -> int:
    """The hunt by hand: lsof -F for the process, parse, match each record by address pair."""
    proc = await asyncio.create_subprocess_exec(
        *lsof_command(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
    )
    out, _ = await proc.communicate()
    seen: set[tuple[str, str]] = set()
    for line in out.decode().splitlines():
        if line.startswith("n") and "->" in line:
            local, remote = line[1:].split("->", 1)
            seen.add((local, remote))
    matched = 0
    for r in records:
        ident = r.socket
        assert ident is not None
        pair = (f"{ident.local[0]}:{ident.local[1]}", f"{ident.remote[0]}:{ident.remote[1]}")
        matched += pair in seen
    return matched


async def longest_stall(work: Callable[[], Awaitable[object]]) -> float:
    """Longest gap (s) between two turns of a task that only yields, while ``work`` runs."""
    _, worst = await _bench.with_longest_stall(work)
    return worst


def _drain(steps: object) -> None:
    try:
        while True:
            next(steps)  # type: ignore[call-overload]
    except StopIteration:
        pass


async def bench(n: int, rounds: int, port: int) -> dict[str, object]:
    transports = await open_connections(port, n)
    now = time.monotonic()
    records = []
    for t in transports:
        r = ConnectionRecord(key="bench", created_at=now, expires_at=now + 3600)
        r.socket = identify(t.get_extra_info("socket"))
        r.state = ConnState.IDLE
        records.append(r)
    config = PoolConfig(max_total=max(n, 2), max_per_key=max(n, 2), audit=AuditPolicy())
    target = BenchTarget(config, records, frozenset({("127.0.0.1", port)}))
    times: dict[str, list[float]] = {k: [] for k in ("procfs", "psutil", "lsof", "classic")}
    stalls: list[float] = []
    thread_stalls: list[float] = []
    known: list[SocketIdentity] = [r.socket for r in records if r.socket is not None]
    inodes = {i.inode for i in known}
    try:
        for _ in range(rounds):
            for name in times:
                start = time.perf_counter()
                if name == "classic":
                    assert await classic(records) == n
                else:
                    backend: Backend = name  # type: ignore[assignment]
                    report = await run_audit(target, backend=backend)
                    assert report.healthy and not report.findings, str(report)
                times[name].append(time.perf_counter() - start)
            stalls.append(await longest_stall(lambda: run_audit(target, backend="procfs")))
            thread_stalls.append(
                await longest_stall(
                    lambda: asyncio.to_thread(_drain, scan_procfs(inodes, target.addresses))
                )
            )
    finally:
        for t in transports:
            t.abort()
        await asyncio.sleep(0.05)
    med = {k: statistics.median(v) * 1000 for k, v in times.items()}
    return {
        "n": n,
        "median_ms": {k: round(v, 2) for k, v in med.items()},
        "classic_over_procfs": round(med["classic"] / med["procfs"], 1),
        "lsof_over_procfs": round(med["lsof"] / med["procfs"], 1),
        "psutil_over_procfs": round(med["psutil"] / med["procfs"], 1),
        "procfs_audit_max_loop_stall_ms": round(max(stalls) * 1000, 2),
        "procfs_scan_in_thread_max_loop_stall_ms": round(max(thread_stalls) * 1000, 2),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="N = 100, 1,000; 3 rounds")
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args()
    sizes = (100, 1000) if args.quick else (100, 1000, 10000)
    rounds = args.rounds or (3 if args.quick else 5)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SERVER, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert server.stdin is not None and server.stdout is not None
    try:
        port = int(await server.stdout.readline())
        results = [await bench(n, rounds, port) for n in sizes]
    finally:
        server.stdin.close()
        async with asyncio.timeout(10):
            await server.wait()
    print(
        json.dumps(
            {
                "python": sys.version.split()[0],
                "cpus": os.cpu_count(),
                "fd_limit": hard,
                "rounds": rounds,
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
