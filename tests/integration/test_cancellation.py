"""Cancellation at every await (issue 7, part 2).

Pools that leak under cancellation (asyncpg #467/#464, SQLAlchemy #12077, aiohttp #9670)
all leak at *one* await nobody thought about. So each operation here is cancelled
systematically at every point until it runs to completion uncancelled:

* ``by="suspension"``: at the caller's k-th suspension (k = 0, 1, 2...). The caller's
  coroutine is wrapped in a counter of its own awaits that actually suspended, so each k
  lands on a different await of the caller, whatever the network's timing.
* ``by="iteration"``: after k turns of the event loop. While the caller waits on a future
  (say, for the pool's connect task), this is what moves the cancellation across the
  stages of the work that happens elsewhere (TCP, greeting, LOGIN, CAPABILITY).

After every case: no waiter left behind (``waiting == 0``), the pool's records agree with
the OS (``await pool.audit()`` healthy, no findings), the next acquire works, and once the
pool is closed the process holds exactly the socket inodes (and, for the audit, the fds of
any kind) it held before the case.

IMAP cases use Dovecot's plain port and one pool per k; pool-only sweeps use the in-memory
and loopback connectors from :mod:`guardedpool.testing`, which are cheap enough to sweep
by iteration.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Generator
from dataclasses import dataclass
from typing import Any, Literal

import pytest
from harness import DovecotServer, socket_fds, wait_for
from harness.configs import DEFAULTS, FAST_RETRY, IMAP, IN_MEMORY, config

from guardedpool import (
    ConnectError,
    ConnectionLost,
    GuardedPool,
    PoolClosed,
    PoolConfig,
)
from guardedpool.imap import IMAPAccount, IMAPClient, IMAPConnector
from guardedpool.imap.idle import IdleSession
from guardedpool.testing import LineConnection, LineConnector, LineServer, MemoryConnector

By = Literal["suspension", "iteration"]

K_MAX = 5000
"""A sweep that needs more points than this is itself a bug (an operation that never ends)."""

IMAP_CFG = config(
    IMAP,
    connect_timeout=3.0,
    op_timeout=2.0,
    close_timeout=0.5,
    check_after=3600.0,
    # every cancelled command poisons a connection: a reconnect loop by design, which the
    # per-key login limit (issue 13) would otherwise stop
    retry=config(
        FAST_RETRY, initial=0.01, max_delay=0.05, jitter=0.01, max_logins_per_minute=100_000
    ),
)


# -- the machinery -------------------------------------------------------------------------


class Counted:
    """Awaits a coroutine and counts how often it suspended (yielded to the event loop).

    Exceptions thrown in (cancellation) are passed on to the coroutine unchanged, so the
    wrapped code sees exactly what it would see without the wrapper.
    """

    def __init__(self, coro: Coroutine[Any, Any, Any]) -> None:
        self._coro = coro
        self.suspensions = 0
        self.started = False

    def __await__(self) -> Generator[Any, Any, Any]:
        self.started = True
        it = self._coro.__await__()
        send: Callable[[Any], Any] = it.send
        arg: Any = None
        while True:
            try:
                yielded = send(arg)
            except StopIteration as stop:
                return stop.value
            self.suspensions += 1
            try:
                arg = yield yielded
                send = it.send
            except BaseException as exc:  # passed on to the coroutine as is
                arg, send = exc, it.throw


@dataclass
class Shot:
    """One attempt: whether the cancellation was requested, and the finished task."""

    cancel_requested: bool
    task: asyncio.Future[Any]

    @property
    def completed(self) -> bool:
        """The operation ran to its end (result or its own error), uncancelled."""
        return not self.task.cancelled()

    def result(self) -> Any:
        return self.task.result()


async def checkout(pool: GuardedPool[Any], key: str) -> Any:
    """``await pool.acquire(key)`` as a coroutine, for :func:`cancel_at` to step through."""
    return await pool.acquire(key)


async def cancel_at(coro: Coroutine[Any, Any, Any], k: int, by: By) -> Shot:
    """Run ``coro`` in a task and cancel it at point ``k`` (see the module docstring)."""
    counted = Counted(coro)
    task: asyncio.Future[Any] = asyncio.ensure_future(counted)
    if by == "suspension":
        await wait_for(lambda: counted.suspensions >= k or task.done(), 30.0, pause=0.0)
    else:
        for _ in range(k):
            if task.done():
                break
            await asyncio.sleep(0)
    requested = not task.done()
    if requested:
        task.cancel()
    await asyncio.wait([task], timeout=30)
    assert task.done(), "the cancelled operation did not end"
    if not counted.started:
        coro.close()  # cancelled before its first step: it never ran (and must not warn)
    return Shot(requested, task)


async def sweep(case: Callable[[int], Awaitable[bool]], *, limit: int = K_MAX) -> int:
    """``case(k)`` for k = 0, 1, ... until it says the operation finished uncancelled."""
    for k in range(limit):
        if await case(k):
            return k
    raise AssertionError(f"still not complete after {limit} cancellation points")


def fd_targets() -> Counter[str]:
    """What this process's fds point at, counted (the listing's own fd counts once, in
    every snapshot alike, so comparing two snapshots cancels it out)."""
    out: Counter[str] = Counter()
    for entry in os.scandir("/proc/self/fd"):
        try:
            out[os.readlink(entry.path)] += 1
        except OSError:
            continue
    return out


async def same_sockets(baseline: set[int], within: float = 1.0) -> None:
    """The process's socket inodes are back to ``baseline`` (bounded wait for closes)."""
    with contextlib.suppress(TimeoutError):
        await wait_for(lambda: set(socket_fds().values()) == baseline, within, pause=0.01)
    now = set(socket_fds().values())
    assert now == baseline, f"sockets +{now - baseline} -{baseline - now}"


async def books_and_os_agree(pool: GuardedPool[Any], key: str) -> None:
    """No waiter left, books balanced, the audit finds nothing, the next acquire works."""
    total = pool.stats()["total"]
    assert total["waiting"] == 0, total
    assert total["opened"] - total["closed_total"] == total["open"], total
    report = await pool.audit()
    assert report.healthy and not report.findings, str(report)
    async with asyncio.timeout(5):
        async with pool.acquire(key) as conn:
            if isinstance(conn, IMAPClient):
                await conn.noop()
            elif isinstance(conn, LineConnection):
                await conn.ping()
    assert pool.stats()["total"]["in_use"] == 0


# -- IMAP against Dovecot --------------------------------------------------------------------


@pytest.fixture
def account(dovecot: DovecotServer, fresh_user: tuple[str, str]) -> IMAPAccount:
    name, password = fresh_user
    return IMAPAccount(
        host=dovecot.host, port=dovecot.port, username=name, password=password, tls=False
    )


def imap_pool(account: IMAPAccount, **changes: Any) -> GuardedPool[IMAPClient]:
    return GuardedPool(IMAPConnector({"k": account}), config(IMAP_CFG, **changes))


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
async def test_connector_open_cancelled_at_every_await(
    dovecot: DovecotServer, account: IMAPAccount, tls: bool
) -> None:
    """TCP, TLS, greeting, CAPABILITY, LOGIN: a cancelled open leaves no socket behind."""
    if tls:
        account = IMAPAccount(
            host=dovecot.host,
            port=dovecot.tls_port,
            username=account.username,
            password=account.password,
            ssl_context=dovecot.client_ssl_context(),
        )
    connector = IMAPConnector({"k": account})
    baseline = set(socket_fds().values())

    async def case(k: int) -> bool:
        shot = await cancel_at(connector.open("k", IMAP_CFG), k, "suspension")
        if shot.completed:
            client: IMAPClient = shot.result()
            await client.noop()
            await connector.close(client, 1.0)
        await same_sockets(baseline)
        return not shot.cancel_requested

    points = await sweep(case)
    assert points >= 4  # connect, greeting, CAPABILITY, LOGIN at least


# A cold connect and LOGIN spans ~1,000 loop turns (the counting task spins the loop while
# Dovecot answers), one case each: ~8 s alone, 20-28 s late in a full run.
SWEEP_TIMEOUT = 120


@pytest.mark.timeout(SWEEP_TIMEOUT)
async def test_cold_acquire_cancelled_at_every_iteration(account: IMAPAccount) -> None:
    """The caller cancelled while the pool connects and logs in for it, at every turn."""
    baseline = set(socket_fds().values())

    async def case(k: int) -> bool:
        pool = imap_pool(account)
        async with pool:
            shot = await cancel_at(checkout(pool, "k"), k, "iteration")
            if shot.completed:
                pool.release(shot.result())
            await books_and_os_agree(pool, "k")
            assert pool.stats()["total"]["open"] <= 1  # the connect for the cancelled
            # caller was kept for the next one, not duplicated
        await same_sockets(baseline)
        return not shot.cancel_requested

    points = await sweep(case)
    assert points > 10


@pytest.mark.parametrize("by", ["suspension", "iteration"])
async def test_warm_acquire_with_noop_check_cancelled(account: IMAPAccount, by: By) -> None:
    """An idle connection checked with NOOP before hand-out; cancelled during the check
    it is retired (its state is unknown), never handed to anyone half-checked."""
    baseline = set(socket_fds().values())

    async def case(k: int) -> bool:
        pool = imap_pool(account, check_after=0.0)
        async with pool:
            async with pool.acquire("k") as conn:
                await conn.noop()
            shot = await cancel_at(checkout(pool, "k"), k, by)
            if shot.completed:
                assert shot.result() is conn
                pool.release(conn)
            stats = pool.stats()["total"]
            assert stats["idle"] + stats["closing"] + stats["closed_total"] >= 1
            await books_and_os_agree(pool, "k")
        await same_sockets(baseline)
        return not shot.cancel_requested

    await sweep(case)


COMMANDS: dict[str, Callable[[IMAPClient], Coroutine[Any, Any, Any]]] = {
    "noop": lambda c: c.noop(),
    "select": lambda c: c.select("INBOX"),
    "append": lambda c: c.append(b"Subject: x\r\n\r\nbody\r\n", mailbox="INBOX"),
    "uid_fetch": lambda c: c.uid_fetch("1:*", "(UID FLAGS BODY.PEEK[])"),
    "uid_store": lambda c: c.uid("STORE", "1:*", "+FLAGS", r"(\Seen)"),
    "idle_start": lambda c: c.idle_start(),
    "logout": lambda c: c.logout(),
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
async def test_command_on_held_connection_cancelled(account: IMAPAccount, command: str) -> None:
    """A command cancelled in flight poisons its connection; release retires it; the
    next acquire gets a fresh one. Cancelled before anything was sent, it stays usable."""
    baseline = set(socket_fds().values())
    run = COMMANDS[command]

    async def case(k: int) -> bool:
        pool = imap_pool(account)
        async with pool:
            conn = await pool.acquire("k")
            await conn.select("INBOX")
            shot = await cancel_at(run(conn), k, "suspension")
            if shot.completed and command == "idle_start":
                await conn.idle_done()
            if not conn.poisoned and command != "logout":
                await conn.noop()  # not poisoned means usable
            error = asyncio.CancelledError() if shot.task.cancelled() else shot.task.exception()
            pool.release(conn, error=error)
            await books_and_os_agree(pool, "k")
        await same_sockets(baseline)
        return not shot.cancel_requested

    await sweep(case)


async def test_async_with_block_cancelled_covers_acquire_command_and_release(
    account: IMAPAccount,
) -> None:
    """``async with pool.acquire(k) as c: await c.select(); await c.noop()`` cancelled
    at every turn: whatever was reached, the exit path gives the connection back."""
    baseline = set(socket_fds().values())
    pool = imap_pool(account)

    async def work() -> None:
        async with pool.acquire("k") as conn:
            await conn.select("INBOX")
            await conn.noop()

    async def case(k: int) -> bool:
        shot = await cancel_at(work(), k, "iteration")
        await books_and_os_agree(pool, "k")
        return not shot.cancel_requested

    async with pool:
        await sweep(case)
        stats = pool.stats()["total"]
        assert stats["in_use"] == 0 and stats["open"] <= IMAP_CFG.max_per_key
    await same_sockets(baseline)


@pytest.mark.parametrize("by", ["suspension", "iteration"])
async def test_idle_session_stop_cancelled(account: IMAPAccount, by: By) -> None:
    """Stopping an IDLE session (DONE, release) cancelled at each await; a second stop()
    finishes the job and the pool gets its connection back."""
    baseline = set(socket_fds().values())

    async def case(k: int) -> bool:
        pool = imap_pool(account)
        async with pool:
            session = IdleSession(pool, "k", "INBOX", renew_after=30.0)
            await session.__aenter__()
            async with asyncio.timeout(5):
                async for event in session:
                    if event.kind == "CONNECTED":
                        break
            shot = await cancel_at(session.stop(), k, by)
            async with asyncio.timeout(IMAP_CFG.op_timeout + 1):
                await session.stop()
            stats = pool.stats()["total"]
            assert stats["in_use"] == 0, stats
            await books_and_os_agree(pool, "k")
        await same_sockets(baseline)
        return not shot.cancel_requested

    await sweep(case)


@pytest.mark.timeout(SWEEP_TIMEOUT)
async def test_idle_session_stopped_at_every_point_of_its_start(account: IMAPAccount) -> None:
    """stop() after k loop turns of a session's life: while it acquires, connects, logs
    in, SELECTs, starts IDLE or waits for pushes. Each time the connection comes back to
    the pool (or was never taken) and nothing leaks."""
    baseline = set(socket_fds().values())

    async def case(k: int) -> bool:
        pool = imap_pool(account)
        async with pool:
            session = IdleSession(pool, "k", "INBOX", renew_after=30.0)
            await session.__aenter__()
            for _ in range(k):
                await asyncio.sleep(0)
            idling = session.connections > 0
            async with asyncio.timeout(IMAP_CFG.op_timeout + 1):
                await session.stop()
            stats = pool.stats()["total"]
            assert stats["in_use"] == 0 and stats["waiting"] == 0, stats
            await books_and_os_agree(pool, "k")
        await same_sockets(baseline)
        return idling

    points = await sweep(case)
    assert points > 10


async def test_pool_close_cancelled_then_closed_again(account: IMAPAccount) -> None:
    """close() cancelled at every turn keeps closing in the background; a second close()
    waits for it; nothing is left open and the pool stays closed."""
    baseline = set(socket_fds().values())

    async def case(k: int) -> bool:
        pool = imap_pool(account)
        pool.start()
        a = await pool.acquire("k")
        b = await pool.acquire("k")
        pool.release(a)
        await b.select("INBOX")
        pool.release(b)
        shot = await cancel_at(pool.close(), k, "iteration")
        async with asyncio.timeout(2 * IMAP_CFG.close_timeout + 2):
            await pool.close()
        assert pool.stats()["total"]["slots"] == 0
        with pytest.raises(PoolClosed):
            await pool.acquire("k")
        await same_sockets(baseline)
        return not shot.cancel_requested

    await sweep(case)


# -- pool-only sweeps: in memory and over loopback -------------------------------------------

MEM_CFG = config(
    IN_MEMORY,
    acquire_timeout=2.0,
    check_after=0.0,
    retry=config(
        IN_MEMORY.retry, initial=0.002, max_delay=0.01, jitter=0.001, max_logins_per_minute=100_000
    ),
)


@pytest.mark.parametrize("warm", [False, True], ids=["cold", "warm"])
async def test_memory_acquire_cancelled_at_every_iteration(warm: bool) -> None:
    async def case(k: int) -> bool:
        connector = MemoryConnector(open_delay=0.001)
        pool = GuardedPool(connector, MEM_CFG)
        async with pool:
            if warm:
                async with pool.acquire("a"):
                    pass
            shot = await cancel_at(checkout(pool, "a"), k, "iteration")
            if shot.completed:
                pool.release(shot.result())
            total = pool.stats()["total"]
            assert total["waiting"] == 0 and total["in_use"] == 0, total
            assert total["opened"] - total["closed_total"] == total["open"], total
            async with asyncio.timeout(1):
                async with pool.acquire("a"):
                    pass
        assert not connector.live
        return not shot.cancel_requested

    await sweep(case)


async def test_memory_acquire_cancelled_during_reconnect_backoff() -> None:
    """The caller gives up while its key's connects fail and back off: nobody wants the
    connection any more, so the retry loop stops and frees its slot; the key recovers."""

    async def case(k: int) -> bool:
        connector = MemoryConnector()
        connector.fail_keys["a"] = ConnectError("refused (transient)")
        pool = GuardedPool(connector, MEM_CFG)
        async with pool:
            shot = await cancel_at(checkout(pool, "a"), k, "iteration")
            assert not shot.completed or shot.task.exception() is not None
            await wait_for(lambda: not pool.stats()["total"]["opening"], 1.0, pause=0.001)
            total = pool.stats()["total"]
            assert total["waiting"] == 0 and total["slots"] == 0, total
            del connector.fail_keys["a"]
            async with asyncio.timeout(1):
                async with pool.acquire("a"):
                    pass
        return k >= 60  # the retry loop is the same after a few dozen turns

    await sweep(case)


async def test_memory_waiter_cancelled_while_connection_handed_over() -> None:
    """A waiter cancelled at every turn around the moment a busy connection comes back:
    the connection is either handed to it (and it has it) or back in the pool."""

    async def case(k: int) -> bool:
        pool = GuardedPool(MemoryConnector(), config(DEFAULTS, max_per_key=1, max_total=1))
        async with pool:
            held = await pool.acquire("a")

            async def wait_then_get() -> Any:
                return await pool.acquire("a")

            waiter = asyncio.ensure_future(cancel_at(wait_then_get(), k, "iteration"))
            await asyncio.sleep(0)
            pool.release(held)
            shot = await waiter
            if shot.completed:
                assert shot.result() is held
                pool.release(held)
            s = pool.stats()["keys"]["a"]
            assert (s["idle"], s["in_use"], s["waiting"], s["open"]) == (1, 0, 0, 1), s
        return not shot.cancel_requested

    await sweep(case)


@pytest.fixture
async def line_server() -> Any:
    async with LineServer() as server:
        yield server


@pytest.mark.parametrize("by", ["suspension", "iteration"])
async def test_loopback_acquire_and_check_cancelled(line_server: LineServer, by: By) -> None:
    """Real sockets, real PING check before hand-out: cancelled anywhere, no socket leaks."""
    baseline = set(socket_fds().values())

    async def case(k: int) -> bool:
        pool = GuardedPool(LineConnector({"a": line_server.address}), MEM_CFG)
        async with pool:
            async with pool.acquire("a") as conn:
                await conn.ping()
            shot = await cancel_at(checkout(pool, "a"), k, by)
            if shot.completed:
                pool.release(shot.result())
            await books_and_os_agree(pool, "a")
        await same_sockets(baseline)
        return not shot.cancel_requested

    await sweep(case)


async def test_loopback_close_cancelled(line_server: LineServer) -> None:
    baseline = set(socket_fds().values())

    async def case(k: int) -> bool:
        pool = GuardedPool(LineConnector({f"k{i}": line_server.address for i in range(4)}), MEM_CFG)
        pool.start()
        for i in range(4):
            async with pool.acquire(f"k{i}") as conn:
                await conn.ping()
        shot = await cancel_at(pool.close(), k, "iteration")
        async with asyncio.timeout(2):
            await pool.close()
        assert pool.stats()["total"]["slots"] == 0
        await same_sockets(baseline)
        return not shot.cancel_requested

    await sweep(case)


class _HalfOpenConnector:
    """Connections on asyncio streams whose close and abort do nothing.

    A stream transport stays half-open after the peer's EOF, so neither the pool's own
    force-close nor the audit's (a shutdown through a dup) can end it: every retired
    connection becomes a straggler the audit shuts down and reports ``close_failed``,
    which gives its force-close path awaits worth cancelling. :meth:`let_go` is the
    leaky owner finally closing its writers.
    """

    def __init__(self, address: tuple[str, int]) -> None:
        self.address = address
        self.writers: list[asyncio.StreamWriter] = []

    async def open(self, key: str, config: PoolConfig) -> asyncio.StreamWriter:
        _, writer = await asyncio.open_connection(*self.address)
        self.writers.append(writer)
        return writer

    def let_go(self) -> None:
        for writer in self.writers:
            writer.close()

    async def check(self, conn: asyncio.StreamWriter, timeout: float) -> None:
        pass

    async def close(self, conn: asyncio.StreamWriter, timeout: float) -> None:
        pass

    def abort(self, conn: asyncio.StreamWriter) -> None:
        pass

    def is_alive(self, conn: asyncio.StreamWriter) -> bool:
        return True

    def socket_of(self, conn: asyncio.StreamWriter) -> Any:
        return conn.get_extra_info("socket")

    def endpoints(self) -> frozenset[tuple[str, int]]:
        return frozenset({self.address})


async def test_audit_cancelled_holds_no_fd(
    line_server: LineServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An audit cancelled at any await leaves no fd of any kind open -- not even its
    ``/proc/self/fd`` listing -- while the cancelled task is still referenced (as
    ``gather(return_exceptions=True)`` or a task registry would keep it); the next audit
    shuts the straggler down and reports it, and once its owner lets go the next is clean.

    1,200 padding fds make the procfs scan yield between chunks several times; a
    straggler makes the force-close path await. The pool's and the classifier's grace
    periods are shortened so each point costs milliseconds, not a second.
    """
    monkeypatch.setattr("guardedpool.closing.VERIFY_WAIT", 0.01)
    monkeypatch.setattr("guardedpool.audit.classify.STRAGGLER_GRACE", 0.0)
    padding = [os.open(os.devnull, os.O_RDONLY) for _ in range(1200)]
    try:
        baseline = set(socket_fds().values())

        async def case(k: int) -> bool:
            leaky = _HalfOpenConnector(line_server.address)
            pool: GuardedPool[asyncio.StreamWriter] = GuardedPool(leaky, MEM_CFG)
            async with pool:
                conn = await pool.acquire("a")
                pool.release(conn, error=ConnectionLost("retire it"))
                await wait_for(lambda: bool(pool.audit_target.graveyard()), 2.0, pause=0.005)
                before = fd_targets()
                shot = await cancel_at(pool.audit(), k, "suspension")
                held = {t: n for t, n in (fd_targets() - before).items() if "socket:" not in t}
                assert not held, f"audit cancelled at point {k} still holds {held}"
                assert shot.task.done()  # and is still referenced, on purpose
                report = await pool.audit()
                assert {(f.kind.value, f.action.value) for f in report.findings} <= {
                    ("straggler", "close_failed")
                }, str(report)
                leaky.let_go()
                await wait_for(lambda: set(socket_fds().values()) == baseline, 2.0, pause=0.005)
                again = await pool.audit()
                assert again.healthy and not again.findings, str(again)
            await same_sockets(baseline)
            return not shot.cancel_requested

        points = await sweep(case)
        assert points >= 5  # scan chunks and force-close waits were all cancelled
    finally:
        for fd in padding:
            os.close(fd)
