"""How long does an audit take when the process has no fd left, next to one just below?

Opens N pooled loopback connections (default 1,000; ``--quick``: 100) to a LineServer in
a child process, lowers the soft ``RLIMIT_NOFILE`` to ``--headroom`` fds above the highest
fd in use, and fills the rest with ``/dev/null``. Then, per backend and alternating so
drift hits both alike:

* ``at_limit``: an audit with every fd in use -- the backend cannot start (EMFILE) and the
  scan falls back to ``fstat`` of every fd number below the limit;
* ``below``: the same audit after closing 16 of the filler fds, so the backend can run.

Prints JSON: medians (min, max) in milliseconds, the ratio at_limit / below, the fd
figures and the notes of one at-limit report.

    python benchmarks/audit_fd_limit.py [--quick] [--n N] [--rounds R] [--headroom H]
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import os
import resource
import time
from typing import Any

import _bench

from guardedpool import GuardedPool, PoolConfig
from guardedpool.audit import AuditReport, run_audit
from guardedpool.audit.scan import Backend
from guardedpool.testing import LineConnector

BACKENDS: tuple[Backend, ...] = ("procfs", "psutil", "lsof")
SPARE = 16
"""Filler fds closed for the audit below the limit (lsof's pipes need several)."""


def fill() -> list[int]:
    """Open /dev/null until no fd is left; the fds taken."""
    held: list[int] = []
    while True:
        try:
            held.append(os.open(os.devnull, os.O_RDONLY))
        except OSError as exc:
            if exc.errno != errno.EMFILE:
                raise
            return held


async def timed(pool: GuardedPool[Any], backend: Backend) -> tuple[float, AuditReport]:
    started = time.perf_counter()
    report = await run_audit(pool, backend=backend)
    return (time.perf_counter() - started) * 1000, report


async def main(n: int, rounds: int, headroom: int) -> dict[str, Any]:
    with _bench.LineServerProcess() as server:
        config = PoolConfig(
            max_per_key=n,
            max_total=n,
            acquire_timeout=60.0,
            heartbeat_interval=None,
            housekeeping_interval=600.0,
        )
        pool = GuardedPool(LineConnector({"k": ("127.0.0.1", server.port)}), config)
        async with pool:
            conns = await asyncio.gather(*(pool.acquire("k") for _ in range(n)))
            for conn in conns:
                pool.release(conn)
            for backend in BACKENDS:  # warm: imports, psutil's caches, lsof on disk
                await timed(pool, backend)
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            limit = max(int(name) for name in os.listdir("/proc/self/fd")) + 1 + headroom
            resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
            held = fill()
            at: dict[str, list[float]] = {b: [] for b in BACKENDS}
            below: dict[str, list[float]] = {b: [] for b in BACKENDS}
            sample: dict[str, Any] = {}
            try:
                for _ in range(rounds):
                    for backend in BACKENDS:
                        ms, report = await timed(pool, backend)
                        assert report.fd_exhausted, report.notes
                        at[backend].append(ms)
                        sample.setdefault(backend, report)
                        for fd in held[-SPARE:]:
                            os.close(fd)
                        del held[-SPARE:]
                        ms, report = await timed(pool, backend)
                        assert not report.fd_exhausted, report.notes
                        below[backend].append(ms)
                        held += fill()
            finally:
                for fd in held:
                    os.close(fd)
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            await pool.close()
    out: dict[str, Any] = {"connections": n, "rounds": rounds, "fd_limit": limit}
    for backend in BACKENDS:
        report = sample[backend]
        out[backend] = {
            "at_limit_ms": _bench.spread(at[backend]),
            "below_ms": _bench.spread(below[backend]),
            "ratio": _bench.ratio(_bench.median(at[backend]), _bench.median(below[backend])),
            "fds_used": report.fds_used,
            "healthy": report.healthy,
            "findings": len(report.findings),
            "notes": list(report.notes),
        }
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--n", type=int, default=None, help="pooled connections")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--headroom", type=int, default=64)
    args = parser.parse_args()
    n = args.n or (100 if args.quick else 1000)
    rounds = args.rounds or (5 if args.quick else 20)
    _bench.log(f"{n} connections, {rounds} rounds per backend")
    result = asyncio.run(main(n, rounds, args.headroom))
    _bench.emit({"machine": _bench.machine(), "audit_fd_limit": result})
