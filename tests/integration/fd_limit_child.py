"""Run by test_audit_fd_limit.py in a subprocess: a pool audited with every fd in use.

``python fd_limit_child.py BACKEND HEADROOM`` opens a pool with one connection in use, a
retired one whose fd a "driver" dup'd (a straggler) and a socket to the same server that
no record owns (an orphan); lowers the soft ``RLIMIT_NOFILE`` to HEADROOM above the
highest fd in use (so no fd lies at or above the limit); fills every remaining fd; audits
twice (the second after the first audit's background force-close check has finished);
and prints one JSON object. Nothing is imported or resolved between filling the table and
the audits, so the first ``pool.audit()`` of the process runs at the limit, as a health
probe would.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import resource
import socket
import sys
import time
from typing import Any

from guardedpool import ConnectionLost, ConnState, GuardedPool, PoolConfig
from guardedpool.audit.classify import STRAGGLER_GRACE
from guardedpool.config import AuditPolicy
from guardedpool.testing import LineConnector, LineServer


def fill() -> list[int]:
    """Open /dev/null until the process has no fd left; the fds taken."""
    held: list[int] = []
    while True:
        try:
            held.append(os.open(os.devnull, os.O_RDONLY))
        except OSError as exc:
            assert exc.errno == errno.EMFILE, exc
            return held


async def main(backend: str, headroom: int) -> dict[str, Any]:
    server = await LineServer().start()
    config = PoolConfig(audit=AuditPolicy(backend=backend))  # type: ignore[arg-type]
    pool = GuardedPool(LineConnector({"inbox-1": server.address}), config)
    async with pool:
        in_use = await pool.acquire("inbox-1")
        leaky = await pool.acquire("inbox-1")
        retired = pool.record_of(leaky)
        assert retired.socket is not None
        dup = os.dup(retired.socket.fd)  # a driver kept the socket: the pool cannot close it
        pool.release(leaky, error=ConnectionLost("gone"))
        async with asyncio.timeout(10):  # the pool's close waits, shuts down, gives up
            while retired.state is not ConnState.CLOSED:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        await asyncio.sleep(STRAGGLER_GRACE + 0.1)
        orphan = socket.create_connection(server.address, timeout=5)
        async with asyncio.timeout(5):  # the server (in this process) accepts before the limit
            while server.accepted < 3:  # noqa: ASYNC110
                await asyncio.sleep(0.01)

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        limit = max(int(n) for n in os.listdir("/proc/self/fd")) + 1 + headroom
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
        held = fill()
        try:
            started = time.perf_counter()
            first = await pool.audit()
            first_s = time.perf_counter() - started
            async with asyncio.timeout(10):  # the background check ends within 0.5 s
                while retired.os_closed is None or retired.history[-1].event != "verified":  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
            # The first audit's shutdown made the in-process server close its end of the
            # straggler, which freed an fd: take it again, so the second audit is at the
            # limit too.
            held += fill()
            second = await pool.audit()
        finally:
            for fd in held:
                os.close(fd)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        out = {
            "first": first.to_dict(),
            "first_seconds": first_s,
            "second": second.to_dict(),
            "limit": limit,
            "dup": dup,
            "in_use_id": pool.record_of(in_use).id,
            "retired_id": retired.id,
            "orphan_fd": orphan.fileno(),
            "history": [e.to_dict() for e in retired.history],
        }
        orphan.close()
        os.close(dup)
        pool.release(in_use)
    await server.stop()
    return out


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    print(json.dumps(asyncio.run(main(sys.argv[1], int(sys.argv[2])))))
