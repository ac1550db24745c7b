"""Long-lived IDLE over the pool against Dovecot: pushes, renewal, lifetime, dead IDLE.

Rounds and lifetimes are shortened to fractions of a second so the behaviours that take
29 minutes and an hour in production happen within a test's bounds.
"""

from __future__ import annotations

import asyncio
import time

from harness import DovecotServer, FaultProxy, ProxyFactory, make_message
from harness.configs import FAST_RETRY, IMAP, config

from guardedpool import GuardedPool
from guardedpool.imap import IMAPAccount, IMAPClient, IMAPConnector
from guardedpool.imap.idle import IdleEvent, IdleSession, idle

CFG = config(IMAP, op_timeout=0.5, retry=config(FAST_RETRY, max_delay=0.1))


def make_pool(account: IMAPAccount, **changes: object) -> GuardedPool[IMAPClient]:
    return GuardedPool(IMAPConnector({"u": account}), config(CFG, **changes))


async def next_event(session: IdleSession, kinds: set[str], within: float) -> IdleEvent:
    """The next event of one of ``kinds`` (others skipped), within a bound."""
    async with asyncio.timeout(within):
        async for event in session:
            if event.kind in kinds:
                return event
    raise AssertionError(f"session ended before a {kinds} event")


def plain(host: str, port: int, user: tuple[str, str]) -> IMAPAccount:
    return IMAPAccount(host=host, port=port, username=user[0], password=user[1], tls=False)


async def test_pushes_arrive_while_idle(
    dovecot: DovecotServer, fresh_user: tuple[str, str]
) -> None:
    pool = make_pool(plain(dovecot.host, dovecot.port, fresh_user))
    async with pool, idle(pool, "u", "INBOX", renew_after=5.0) as pushes:
        first = await next_event(pushes, {"CONNECTED"}, 3.0)
        assert not first.resumed
        async with pool.acquire("u") as imap:  # a second connection of the same inbox
            await imap.append(make_message(1), mailbox="INBOX")
        event = await next_event(pushes, {"EXISTS"}, 3.0)
        assert event.number == 1


async def test_rounds_are_renewed_and_lifetime_replaces_the_connection(
    dovecot: DovecotServer, fresh_user: tuple[str, str]
) -> None:
    pool = make_pool(
        plain(dovecot.host, dovecot.port, fresh_user), max_lifetime=1.0, lifetime_jitter=0.0
    )
    async with pool, idle(pool, "u", renew_after=0.3) as pushes:
        await next_event(pushes, {"CONNECTED"}, 3.0)
        resumed = await next_event(pushes, {"CONNECTED"}, 3.0)  # after ~1 s: lifetime
        assert resumed.resumed
        assert pushes.rounds >= 3  # ~0.3 s rounds within the first connection's life
        # The connection held in IDLE was retired on time, not leaked or kept past it.
        assert pool.stats()["keys"]["u"]["closed"]["lifetime"] >= 1


async def test_reset_during_idle_reconnects_at_once(
    dovecot: DovecotServer, fault_proxy: ProxyFactory, fresh_user: tuple[str, str]
) -> None:
    proxy = await fault_proxy()
    pool = make_pool(plain(proxy.host, proxy.port, fresh_user))
    async with pool, idle(pool, "u", renew_after=30.0) as pushes:
        await next_event(pushes, {"CONNECTED"}, 3.0)
        proxy.reset_all()
        start = time.monotonic()
        event = await next_event(pushes, {"CONNECTED"}, 3.0)
        assert event.resumed
        assert time.monotonic() - start < 2.0  # not the 30 s round, not a hang (#110)
        assert pool.stats()["keys"]["u"]["closed"]["poisoned"] == 1


async def test_server_closing_during_idle_reconnects(
    dovecot: DovecotServer, fault_proxy: ProxyFactory, fresh_user: tuple[str, str]
) -> None:
    proxy = await fault_proxy()
    pool = make_pool(plain(proxy.host, proxy.port, fresh_user))
    async with pool, idle(pool, "u", renew_after=30.0) as pushes:
        await next_event(pushes, {"CONNECTED"}, 3.0)
        proxy.close_all()  # FIN, as a server going away does
        assert (await next_event(pushes, {"CONNECTED"}, 3.0)).resumed


async def test_stalled_idle_is_detected_within_round_plus_op_timeout(
    dovecot: DovecotServer, fault_proxy: ProxyFactory, fresh_user: tuple[str, str]
) -> None:
    proxy: FaultProxy = await fault_proxy()
    pool = make_pool(plain(proxy.host, proxy.port, fresh_user), op_timeout=0.4)
    async with pool, idle(pool, "u", renew_after=0.5) as pushes:
        await next_event(pushes, {"CONNECTED"}, 3.0)
        proxy.stall_all()  # the peer stops answering; the socket stays open
        start = time.monotonic()
        event = await next_event(pushes, {"CONNECTED"}, 4.0)
        assert event.resumed
        assert time.monotonic() - start <= 0.5 + 0.4 + 1.0
        assert pool.stats()["keys"]["u"]["closed"]["poisoned"] == 1


async def test_pool_close_ends_the_session_cleanly(
    dovecot: DovecotServer, fresh_user: tuple[str, str]
) -> None:
    pool = make_pool(plain(dovecot.host, dovecot.port, fresh_user))
    await pool.__aenter__()
    session = idle(pool, "u", renew_after=30.0)
    async with session as pushes:
        await next_event(pushes, {"CONNECTED"}, 3.0)
        async with asyncio.timeout(5.0):
            await pool.close()
    assert pool.stats()["total"]["open"] == 0
    assert pool.stats()["total"]["slots"] == 0


async def test_leaving_the_block_ends_idle_and_returns_a_usable_connection(
    dovecot: DovecotServer, fresh_user: tuple[str, str]
) -> None:
    pool = make_pool(plain(dovecot.host, dovecot.port, fresh_user), max_per_key=1)
    async with pool:
        async with idle(pool, "u", renew_after=30.0) as pushes:
            await next_event(pushes, {"CONNECTED"}, 3.0)
        async with pool.acquire("u") as imap:  # the same connection, out of IDLE
            await imap.noop()
        assert pool.stats()["keys"]["u"]["opened"] == 1
