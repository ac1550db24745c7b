"""``pool.audit()`` on a real pool: every finding produced for real, and sibling pools."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable

import aioimaplib
import pytest
from harness import DovecotServer, ProxyFactory
from harness.configs import DEFAULTS, FAST_RETRY, QUIET, config
from harness.scripted import ScriptConn, ScriptedIMAP
from harness.waiting import wait_for

from guardedpool import GuardedPool, PoolConfig, PoolError
from guardedpool.audit import Action, Kind
from guardedpool.imap import IMAPAccount, IMAPClient, IMAPConnector
from guardedpool.testing import LineConnector, LineServer

LEAKY = config(DEFAULTS, leak_threshold=0.1, housekeeping_interval=0.02, check_after=3600.0)
"""Leak suspects after 0.1 s, found by a housekeeping round every 0.02 s; no NOOP checks."""


async def test_two_pools_to_one_server_do_not_report_each_other() -> None:
    async with LineServer() as server:
        first = GuardedPool(LineConnector({"a": server.address}), DEFAULTS)
        second = GuardedPool(LineConnector({"b": server.address}), DEFAULTS)
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
        pool = GuardedPool(LineConnector({"a": server.address}), DEFAULTS)
        async with pool:
            async with pool.acquire("a") as conn:
                await conn.ping()
            report = await pool.audit()
            assert report.healthy and not report.findings
            data = report.to_dict()
            assert data["fds_used"] > 0 and data["backend"] == "procfs"


# -- each finding produced for real by a real pool -------------------------------------



def imap_pool(
    host: str, port: int, user: str, password: str, config: PoolConfig = QUIET
) -> GuardedPool[IMAPClient]:
    account = IMAPAccount(host=host, port=port, username=user, password=password, tls=False)
    return GuardedPool(IMAPConnector({"k": account}), config)


async def test_orphan_from_a_plain_aioimaplib_client_is_reported_and_left_open(
    dovecot: DovecotServer,
) -> None:
    pool = imap_pool(dovecot.host, dovecot.port, "alice", dovecot.users["alice"])
    async with pool:
        async with pool.acquire("k") as imap:
            await imap.noop()
        outsider = aioimaplib.IMAP4(host=dovecot.host, port=dovecot.port, timeout=5)
        await outsider.wait_hello_from_server()
        try:
            report = await pool.audit()
            orphans = [f for f in report.findings if f.kind is Kind.ORPHAN]
            assert len(orphans) == 1 and orphans[0].action is Action.REPORTED
            assert not report.healthy
            assert (await outsider.noop()).result == "OK"  # untouched
        finally:
            await outsider.logout()
            outsider.protocol.transport.close()


async def never_greet(conn: ScriptConn) -> None:
    """A server that accepts TCP and never says a word: every connect to it hangs until
    connect_timeout."""
    await conn.drain()


async def wait_for_hung(pool: GuardedPool[IMAPClient]) -> None:
    await pool.acquire("hung")  # never served: cancelled by the test


HUNG = config(
    QUIET,
    connect_timeout=1.0,
    acquire_timeout=60.0,  # one waiter keeps the hung key connecting for the whole test
    retry=config(FAST_RETRY, max_logins_per_minute=10_000),
)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("close_orphans", [False, True])
async def test_a_hung_account_does_not_hide_an_orphan(
    dovecot: DovecotServer, close_orphans: bool
) -> None:
    """R4's defect 3: one account whose connects hang (in an attempt, or in backoff between
    attempts) deferred every orphan for as long as it kept connecting."""
    cfg = config(HUNG, audit=config(HUNG.audit, close_orphans=close_orphans))
    async with ScriptedIMAP(never_greet) as hung_server:
        accounts = {
            "hung": IMAPAccount(
                host="127.0.0.1", port=hung_server.port, username="carol", password="pw", tls=False
            ),
            "good": IMAPAccount(
                host=dovecot.host,
                port=dovecot.port,
                username="alice",
                password=dovecot.users["alice"],
                tls=False,
            ),
        }
        pool = GuardedPool(IMAPConnector(accounts), cfg)
        async with pool:
            async with pool.acquire("good") as imap:
                await imap.noop()
            waiter = asyncio.create_task(wait_for_hung(pool))
            await wait_for(lambda: hung_server.accepted >= 1, what="a connect to the hung server")
            # A driver's connection to the pooled Dovecot that no record owns; a plain
            # protocol closes its transport when the auditor shuts the socket down.
            transport, _ = await asyncio.get_running_loop().create_connection(
                asyncio.Protocol, dovecot.host, dovecot.port
            )
            orphan_fd = transport.get_extra_info("socket").fileno()
            orphan_inode = os.fstat(orphan_fd).st_ino
            try:
                reports = []
                for _ in range(200):  # ~20 s at most; the connect bound here is 4 s
                    report = await pool.audit()
                    reports.append(report)
                    if report.counts[Kind.ORPHAN.value]:
                        break
                    await asyncio.sleep(0.1)
                (finding,) = [f for f in reports[-1].findings if f.kind is Kind.ORPHAN]
                assert finding.fds == (orphan_fd,) and finding.key is None
                # still deferred, if any: the hung attempt's own socket, never reported
                assert not reports[-1].healthy and reports[-1].orphans_deferred <= 1
                assert finding.action is (
                    Action.FORCE_CLOSED if close_orphans else Action.REPORTED
                )
                assert transport.is_closing() is close_orphans
                for _ in range(30):  # a few more hung attempts: never their sockets
                    await asyncio.sleep(0.1)
                    report = await pool.audit()
                    found = [f.inode for f in report.findings if f.kind is Kind.ORPHAN]
                    assert found == ([] if close_orphans else [orphan_inode])
                assert not waiter.done()  # the hung key was connecting all along
                assert hung_server.accepted >= 1
            finally:
                transport.close()
                waiter.cancel()
                await asyncio.gather(waiter, return_exceptions=True)


async def test_half_open_after_rst_is_poisoned_and_replaced(
    dovecot: DovecotServer, fault_proxy: ProxyFactory
) -> None:
    proxy = await fault_proxy()
    pool = imap_pool(proxy.host, proxy.port, "bob", dovecot.users["bob"])
    async with pool:
        async with pool.acquire("k") as imap:
            await imap.noop()
        proxy.reset_all()
        await asyncio.sleep(0.05)
        report = await pool.audit()
        (finding,) = [f for f in report.findings if f.kind is Kind.HALF_OPEN]
        assert finding.action is Action.POISONED and finding.key == "k"
        async with pool.acquire("k") as imap:  # a replacement, not the dead one
            await imap.noop()
        assert pool.stats()["keys"]["k"]["closed"]["audit"] == 1


async def test_a_pooled_fd_closed_behind_the_pools_back_and_reused_is_not_closed_again(
    dovecot: DovecotServer, caplog: pytest.LogCaptureFixture
) -> None:
    """User code closes a pooled connection's fd and a new socket gets the same number: the
    audit finds the record half-open (no fd holds its inode) and retires it, and retiring
    it must not close that number again. It did: asyncio closed the transport's fd, which
    was the unrelated socket by then."""
    pool = imap_pool(dovecot.host, dovecot.port, "dave", dovecot.users["dave"])
    async with pool:
        async with pool.acquire("k") as imap:
            await imap.noop()
            fd = imap.socket.fileno()  # type: ignore[union-attr]
        os.close(fd)  # behind the pool's back
        spare: list[socket.socket] = []
        try:
            for _ in range(64):  # the lowest free number is taken first: bounded, soon
                other = socket.create_connection((dovecot.host, dovecot.port), timeout=5)
                if other.fileno() == fd:
                    break
                spare.append(other)
            else:
                raise AssertionError(f"no new socket got fd {fd}")
            inode = os.fstat(fd).st_ino
            with caplog.at_level(logging.WARNING, logger="guardedpool"):
                report = await pool.audit()
                kinds = [(f.kind, f.action) for f in report.findings]
                assert (Kind.HALF_OPEN, Action.POISONED) in kinds, kinds
                for _ in range(250):  # bounded: the retirement's close runs on the loop
                    if pool.stats()["keys"]["k"]["closed"].get("audit") == 1:
                        break
                    await asyncio.sleep(0.02)
                await asyncio.sleep(0.05)  # asyncio closes a transport a turn later
            assert os.fstat(fd).st_ino == inode  # still the other socket's
            other.getpeername()  # and still connected
            assert any("letting go of the fd number" in r.getMessage() for r in caplog.records)
            assert pool.stats()["keys"]["k"]["closed"]["audit"] == 1
            async with pool.acquire("k") as imap:  # a replacement
                await imap.noop()
        finally:
            for sock in (*spare, other):
                sock.close()


async def test_half_open_after_the_server_stopped(
    dovecot_factory: Callable[..., DovecotServer],
) -> None:
    server = dovecot_factory()
    pool = imap_pool(server.host, server.port, "carol", server.users["carol"])
    async with pool:
        async with pool.acquire("k") as imap:
            await imap.noop()
        await asyncio.to_thread(server.pause)
        report = await pool.audit()
        kinds = [(f.kind, f.action) for f in report.findings]
        assert (Kind.HALF_OPEN, Action.POISONED) in kinds
        await asyncio.to_thread(server.resume)


async def test_leak_suspect_carries_the_borrowers_task_and_stack(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with LineServer() as server:
        pool = GuardedPool(LineConnector({"a": server.address}), LEAKY)
        async with pool:

            async def forgetful_worker() -> None:
                async with pool.acquire("a"):
                    await asyncio.sleep(0.4)

            caplog.set_level(logging.INFO, logger="guardedpool")
            task = asyncio.create_task(forgetful_worker(), name="sync-alice")
            await asyncio.sleep(0.2)
            report = await pool.audit()
            (finding,) = report.findings
            assert finding.kind is Kind.LEAK_SUSPECT and finding.task == "sync-alice"
            assert any("forgetful_worker" in frame for frame in finding.stack)
            assert not report.healthy
            await task
            messages = [r.getMessage() for r in caplog.records]
            assert any("leak suspect" in m and "returned" in m for m in messages)
            assert (await pool.audit()).healthy


async def test_each_borrow_is_its_own_leak_suspect(caplog: pytest.LogCaptureFixture) -> None:
    # The same connection held too long twice: warned twice, "returned" logged twice, and a
    # short borrow in between logs nothing.
    async with LineServer() as server:
        pool = GuardedPool(LineConnector({"a": server.address}), LEAKY)
        async with pool:
            caplog.set_level(logging.INFO, logger="guardedpool")

            def count(text: str) -> int:
                return sum(text in r.getMessage() for r in caplog.records)

            for held in (0.3, 0.0, 0.3):
                async with pool.acquire("a"):
                    await asyncio.sleep(held)
            assert pool.stats()["total"]["opened"] == 1  # one connection, three borrows
            assert count("leak suspect)") == 2
            assert count("leak suspect returned") == 2


async def test_reclaim_aborts_a_connection_held_too_long() -> None:
    async with LineServer() as server:
        cfg = config(DEFAULTS, leak_threshold=0.05, reclaim_after=0.1, housekeeping_interval=0.02)
        pool = GuardedPool(LineConnector({"a": server.address}), cfg)
        async with pool:
            conn = await pool.acquire("a")
            await asyncio.sleep(0.3)
            assert conn.poisoned  # aborted under the holder: its next command fails
            pool.release(conn)
            assert pool.stats()["keys"]["a"]["closed"]["poisoned"] == 1


async def test_periodic_audit_logs_findings(caplog: pytest.LogCaptureFixture) -> None:
    async with LineServer() as server:
        cfg = config(
            DEFAULTS,
            leak_threshold=0.05,
            housekeeping_interval=0.02,
            audit=config(DEFAULTS.audit, interval=0.05),
        )
        pool = GuardedPool(LineConnector({"a": server.address}), cfg)
        caplog.set_level(logging.WARNING, logger="guardedpool")
        async with pool, pool.acquire("a"):
            await asyncio.sleep(0.3)
        found = [
            r for r in caplog.records if r.getMessage().startswith("guardedpool: audit finding")
        ]
        assert found and found[0].finding["kind"] == "leak_suspect"  # type: ignore[attr-defined]


async def test_a_declared_long_hold_is_not_a_leak_suspect_until_released(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with LineServer() as server:
        pool = GuardedPool(LineConnector({"a": server.address, "b": server.address}), LEAKY)
        async with pool:
            caplog.set_level(logging.INFO, logger="guardedpool")
            declared = await pool.acquire("a")
            pool.declare_long_hold(declared)
            plain = await pool.acquire("b")
            await asyncio.sleep(0.3)
            report = await pool.audit()
            assert [f.key for f in report.findings if f.kind is Kind.LEAK_SUSPECT] == ["b"]
            warned = [r.getMessage() for r in caplog.records if "(leak suspect)" in r.getMessage()]
            assert warned and all("key 'b'" in m for m in warned)
            pool.release(declared)
            pool.release(plain)
            again = await pool.acquire("a")  # the declaration ended with the release
            assert again is declared
            await asyncio.sleep(0.3)
            report = await pool.audit()
            assert [f.key for f in report.findings if f.kind is Kind.LEAK_SUSPECT] == ["a"]
            pool.release(again)
            with pytest.raises(PoolError):
                pool.declare_long_hold(again)  # not checked out any more
