"""The pool over real loopback sockets: close-before-open, force-close, dead peers, caps.

A light in-process line server stands in for IMAP here so that each test isolates one pool
behaviour at the socket level; the IMAP flows run against Dovecot in their own modules.
"""

from __future__ import annotations

import asyncio

from harness import wait_for
from harness.configs import DEFAULTS, config
from harness.sockets import socket_fds

from guardedpool import GuardedPool
from guardedpool.sockets import is_open
from guardedpool.testing import LineConnection, LineConnector, LineServer

CFG = config(
    DEFAULTS,
    max_total=50,
    acquire_timeout=2.0,
    connect_timeout=1.0,
    op_timeout=0.3,
    close_timeout=0.3,
    housekeeping_interval=0.02,
    check_after=0.0,
)


def socket_inodes() -> set[int]:
    return set(socket_fds().values())


async def test_close_returns_the_process_to_its_socket_baseline() -> None:
    async with LineServer() as server:
        baseline = socket_inodes()
        connector = LineConnector({f"k{i}": server.address for i in range(10)})
        pool = GuardedPool(connector, CFG)
        async with pool:
            conns = [await pool.acquire(f"k{i % 10}") for i in range(20)]
            for c in conns:
                await c.ping()
                pool.release(c)
            # Both ends live in this process: 20 client sockets and 20 server ones.
            assert len(socket_inodes() - baseline) == 40
        await wait_for(lambda: socket_inodes() == baseline, 2.0)
        s = pool.stats()["total"]
        assert s["opened"] == 20 and s["closed"]["shutdown"] == 20 and s["slots"] == 0


class LeakyConnector(LineConnector):
    """A driver whose close and abort forget the socket (the classic reconnect leak)."""

    async def close(self, conn: LineConnection, timeout: float) -> None:
        return None

    def abort(self, conn: LineConnection) -> None:
        conn.poisoned = True


async def test_close_path_force_closes_a_socket_the_driver_left_open() -> None:
    async with LineServer() as server:
        baseline = socket_inodes()
        pool = GuardedPool(LeakyConnector({"a": server.address}), CFG)
        async with pool:
            async with pool.acquire("a") as conn:
                await conn.ping()
            record = pool.audit_target.records()[0]
            ident = record.socket
            assert ident is not None and is_open(ident)
            await pool.close()
        assert not is_open(ident)
        assert record.os_closed is True
        assert any(e.event == "force_close" for e in record.history)
        await wait_for(lambda: socket_inodes() == baseline, 2.0)


async def test_replacement_waits_until_the_old_socket_is_gone() -> None:
    """max_per_key=1: the new connect starts only after the old socket left the process."""
    async with LineServer() as server:
        pool = GuardedPool(
            LeakyConnector({"a": server.address}),
            config(DEFAULTS, max_per_key=1, close_timeout=0.2, acquire_timeout=3.0),
        )
        async with pool:
            conn1 = await pool.acquire("a")
            ident1 = pool.audit_target.records()[0].socket
            assert ident1 is not None
            conn1.poisoned = True  # the driver noticed a fault...
            pool.release(conn1)  # ...and the pool retires it
            conn2 = await pool.acquire("a")  # the slot reopens only after force-close
            assert not is_open(ident1)
            history = next(r for r in pool.audit_target.graveyard() if r.socket == ident1).history
            closed_at = next(e.at for e in history if e.event == "closed")
            new_record = pool.audit_target.records()[0]
            assert new_record.created_at >= closed_at
            pool.release(conn2)


async def test_peer_closed_idle_connection_is_never_handed_out() -> None:
    async with LineServer() as server:
        pool = GuardedPool(
            LineConnector({"a": server.address}),
            config(DEFAULTS, check_after=3600.0, housekeeping_interval=3600.0),
        )
        async with pool:
            async with pool.acquire("a") as c1:
                await c1.ping()
            server.drop_all()  # FIN from the server: the client side goes to CLOSE_WAIT
            await asyncio.sleep(0.05)
            async with pool.acquire("a") as c2:
                assert c2 is not c1
                await c2.ping()
            assert pool.stats()["keys"]["a"]["closed"]["error"] == 1


async def test_silent_peer_fails_the_check_within_op_timeout() -> None:
    async with LineServer(silent=True) as server:
        pool = GuardedPool(
            LineConnector({"a": server.address}),
            # The silent peer never answers: an unbounded check would end this acquire in a
            # PoolTimeout (no timed assertion: the machine may be loaded).
            config(
                DEFAULTS, op_timeout=0.2, check_after=0.0, acquire_timeout=10.0, close_timeout=0.2
            ),
        )
        async with pool:
            async with pool.acquire("a"):  # fresh: no check needed
                pass
            async with pool.acquire("a"):  # the idle one fails its NOOP; a fresh one is opened
                pass
            assert pool.stats()["keys"]["a"]["closed"]["error"] == 1


async def test_heartbeat_retires_a_dead_idle_connection() -> None:
    async with LineServer() as server:
        pool = GuardedPool(
            LineConnector({"a": server.address}),
            config(
                DEFAULTS,
                heartbeat_interval=0.05,
                housekeeping_interval=0.02,
                op_timeout=0.2,
                close_timeout=0.2,
            ),
        )
        async with pool:
            async with pool.acquire("a"):
                pass
            server.silent = True  # keeps the socket, stops answering: a vanished peer
            await wait_for(lambda: pool.stats()["keys"]["a"]["closed"]["error"] == 1, 2.0)


async def test_max_connecting_bounds_a_burst() -> None:
    async with LineServer() as server:
        keys = {f"k{i}": server.address for i in range(60)}
        pool = GuardedPool(LineConnector(keys), config(DEFAULTS, max_connecting=4, max_total=100))
        async with pool:

            async def one(key: str) -> None:
                async with pool.acquire(key) as c:
                    await c.ping()

            await asyncio.wait_for(asyncio.gather(*(one(k) for k in keys)), 10)
            s = pool.stats()["total"]
            assert s["peak_connecting"] <= 4
            assert s["opened"] == 60
