"""The sync worker against a real Dovecot: the store must end up equal to the server.

"Equal" is checked against the server itself after every pass -- UIDs, flags and the raw
bytes of each message -- not against counts the worker reports. Dovecot offers CONDSTORE,
so these tests cover the CHANGEDSINCE path (the pymap tests cover the other one).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from harness import DovecotServer, make_message
from harness.configs import DEFAULTS, FAST_RETRY, SYNC, config

from examples.imap_sync.config import AccountConfig
from examples.imap_sync.mailbox import MailboxResult
from examples.imap_sync.store import Store, flags_text
from examples.imap_sync.worker import PassSummary, SyncWorker
from guardedpool import GuardedPool
from guardedpool.imap import (
    IMAPAccount,
    IMAPClient,
    IMAPConnector,
    WireName,
    parse_fetch,
    parse_search,
)

CFG = config(SYNC, op_timeout=10.0, close_timeout=2.0, housekeeping_interval=0.1)


def new_user(dovecot: DovecotServer, count: int = 0, **seed: object) -> AccountConfig:
    name = f"s{uuid.uuid4().hex[:10]}"
    password = dovecot.add_user(name)
    if count:
        dovecot.seed_messages(name, count, **seed)  # type: ignore[arg-type]
    account = IMAPAccount(
        host=dovecot.host, port=dovecot.port, username=name, password=password, tls=False
    )
    return AccountConfig(name, account, ("INBOX",))


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    with Store.open(tmp_path / "mirror.sqlite3") as s:
        yield s


def make_pool(accounts: list[AccountConfig]) -> GuardedPool[IMAPClient]:
    return GuardedPool(IMAPConnector({a.key: a.account for a in accounts}), CFG)


async def server_view(
    pool: GuardedPool[IMAPClient], key: str, mailbox: str = "INBOX"
) -> tuple[int, dict[int, tuple[str, bytes]]]:
    """(uidvalidity, uid -> (flags, raw)) straight from the server."""
    async with pool.acquire(key) as imap:
        resp = await imap.examine(mailbox)
        validity = next(
            int(line.split()[2].rstrip(b"]")) for line in resp.lines if b"[UIDVALIDITY" in line
        )
        uids = parse_search((await imap.uid_search("ALL")).lines)
        if not uids:
            return validity, {}
        items = parse_fetch((await imap.uid_fetch("1:*", "(UID FLAGS BODY.PEEK[])")).lines)
    return validity, {
        i.uid: (flags_text(i.flags or ()), bytes(i.body or b"")) for i in items if i.uid is not None
    }


async def assert_mirrored(
    pool: GuardedPool[IMAPClient], store: Store, key: str, mailbox: str = "INBOX"
) -> int:
    validity, server = await server_view(pool, key, mailbox)
    assert store.mailbox(key, mailbox).uidvalidity == validity
    assert store.uids(key, mailbox, validity) == sorted(server)
    assert store.flags(key, mailbox, validity) == {u: f for u, (f, _) in server.items()}
    for uid, (_, raw) in server.items():
        stored = store.message(key, mailbox, uid)
        assert stored is not None and stored[1] == raw
    return len(server)


def by_key(results: list[MailboxResult]) -> dict[str, MailboxResult]:
    return {r.account: r for r in results}


async def test_sync_several_inboxes_then_changes(dovecot: DovecotServer, store: Store) -> None:
    accounts = [new_user(dovecot, n) for n in (23, 9, 4)]
    accounts.append(new_user(dovecot))  # an empty inbox
    a, b, c, empty = (x.key for x in accounts)
    async with make_pool(accounts) as pool:
        worker = SyncWorker(pool, store, accounts, concurrency=3, batch_size=5)
        first = await worker.run_pass()
        assert first.ok, first.failures
        assert {k: r.new for k, r in by_key(first.results).items()} == {a: 23, b: 9, c: 4, empty: 0}
        assert all(r.condstore for r in first.results)
        for key in (a, b, c, empty):
            await assert_mirrored(pool, store, key)

        async with pool.acquire(a) as imap:  # two new messages, one with a flag
            await imap.append(make_message(100), "INBOX")
            await imap.append(make_message(101), "INBOX", flags="\\Flagged")
        async with pool.acquire(b) as imap:  # flag one, unflag... and expunge two
            await imap.select("INBOX")
            await imap.uid("STORE", "1", "+FLAGS.SILENT", "(\\Answered $Label1)")
            await imap.uid("STORE", "2:3", "+FLAGS.SILENT", "(\\Deleted)")
            await imap.expunge()
        async with pool.acquire(c) as imap:  # a flag removed
            await imap.select("INBOX")
            await imap.uid("STORE", "1:4", "+FLAGS.SILENT", "(\\Seen)")
        second = await worker.run_pass()
        assert second.ok, second.failures
        got = by_key(second.results)
        assert (got[a].new, got[a].flags_changed, got[a].expunged) == (2, 0, 0)
        assert (got[b].new, got[b].flags_changed, got[b].expunged) == (0, 1, 2)
        assert (got[c].new, got[c].flags_changed, got[c].expunged) == (0, 4, 0)
        assert got[empty].unchanged
        assert [await assert_mirrored(pool, store, k) for k in (a, b, c, empty)] == [25, 7, 4, 0]

        third = await worker.run_pass()  # nothing changed: one SELECT per mailbox
        assert all(r.unchanged for r in third.results)
        counters = worker.counters
        assert (counters[a].messages, counters[b].expunged, counters[c].flags_changed) == (25, 2, 4)
        assert all(c.errors == 0 and c.last_success is not None for c in counters.values())


async def test_uidvalidity_change_drops_and_resyncs(dovecot: DovecotServer, store: Store) -> None:
    acc = new_user(dovecot, 3)
    dovecot.seed_messages(acc.account.username, 6, folder="Archive")
    acc = AccountConfig(acc.key, acc.account, ("INBOX", "Archive"))
    async with make_pool([acc]) as pool:
        worker = SyncWorker(pool, store, [acc], batch_size=4)
        assert (await worker.run_pass()).ok
        old = store.mailbox(acc.key, "Archive").uidvalidity
        assert await assert_mirrored(pool, store, acc.key, "Archive") == 6
    # Delete and recreate the mailbox on the server, with different mail under the same
    # UIDs (1, 2). Dovecot gives a recreated mailbox a new UIDVALIDITY (a per-user
    # counter). A new pool: Dovecot ends (BYE) any session that has it selected.
    async with make_pool([acc]) as pool:
        async with pool.acquire(acc.key) as imap:
            await imap.delete("Archive")
            await imap.create("Archive")
            for n in (201, 202):
                await imap.append(make_message(n), "Archive")
        worker = SyncWorker(pool, store, [acc], batch_size=4)
        summary = await worker.run_pass()
        assert summary.ok, summary.failures
        archive = next(r for r in summary.results if r.mailbox == "Archive")
        assert (archive.reset, archive.dropped, archive.new) == (True, 6, 2)
        assert store.mailbox(acc.key, "Archive").uidvalidity != old
        assert await assert_mirrored(pool, store, acc.key, "Archive") == 2
        assert await assert_mirrored(pool, store, acc.key, "INBOX") == 3


async def test_cancelled_mid_sync_then_restarted(dovecot: DovecotServer, store: Store) -> None:
    acc = new_user(dovecot, 60)
    batches = 0
    cut = asyncio.Event()

    class CutAfterTwoBatches:
        def planned(self, account: str, mailbox: str, new: int) -> None:
            pass

        def advanced(self, account: str, mailbox: str, messages: int, size: int) -> None:
            nonlocal batches
            batches += 1
            if batches == 2:
                cut.set()

        def finished(self, account: str, mailbox: str, error: str | None) -> None:
            pass

    async with make_pool([acc]) as pool:
        worker = SyncWorker(pool, store, [acc], batch_size=7, observer=CutAfterTwoBatches())
        task = asyncio.create_task(worker.run_pass())
        async with asyncio.timeout(10):
            await cut.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        state = store.mailbox(acc.key, "INBOX")
        stored = store.uids(acc.key, "INBOX", state.uidvalidity or 0)
        assert 14 <= len(stored) < 60
        assert stored == list(range(1, state.last_uid + 1))  # only whole batches

        worker = SyncWorker(pool, store, [acc], batch_size=7)
        summary = await worker.run_pass()
        assert summary.ok
        assert summary.results[0].new == 60 - len(stored)
        assert await assert_mirrored(pool, store, acc.key) == 60


async def test_missing_mailbox_is_one_error_not_a_stop(
    dovecot: DovecotServer, store: Store
) -> None:
    good = new_user(dovecot, 2)
    bad = new_user(dovecot, 1)
    bad = AccountConfig(bad.key, bad.account, ("INBOX", "NoSuchFolder"))
    async with make_pool([good, bad]) as pool:
        worker = SyncWorker(pool, store, [good, bad])
        summary = await worker.run_pass()
        assert [(f.account, f.mailbox) for f in summary.failures] == [(bad.key, "NoSuchFolder")]
        assert "IMAPCommandError" in summary.failures[0].error
        assert worker.counters[bad.key].errors == 1
        assert worker.counters[bad.key].last_success is None
        assert worker.counters[good.key].last_success is not None
        assert await assert_mirrored(pool, store, bad.key) == 1  # INBOX still synced
        # A NO leaves the connection usable: nothing was retired for it.
        assert pool.stats()["keys"][bad.key]["closed_total"] == 0


async def next_pass_of(
    passes: asyncio.Queue[PassSummary], mailbox: str, within: float
) -> MailboxResult:
    """The result for ``mailbox`` in the next pass that synced it (others skipped)."""
    async with asyncio.timeout(within):
        while True:
            summary = await passes.get()
            assert summary.ok, summary.failures
            for result in summary.results:
                if result.mailbox == mailbox:
                    return result


async def test_idle_mode_syncs_on_push(
    dovecot: DovecotServer, fresh_user: tuple[str, str], store: Store
) -> None:
    name, password = fresh_user
    dovecot.seed_messages(name, 2)
    dovecot.seed_messages(name, 1, folder="Archive")
    account = IMAPAccount(
        host=dovecot.host, port=dovecot.port, username=name, password=password, tls=False
    )
    acc = AccountConfig(name, account, ("Archive", "INBOX"))  # INBOX is watched, not first
    passes: asyncio.Queue[PassSummary] = asyncio.Queue()
    stop = asyncio.Event()
    async with make_pool([acc]) as pool:
        worker = SyncWorker(pool, store, [acc])
        # A poll_interval far beyond the test: only a push can make INBOX sync again.
        run = worker.run_forever(
            60.0, stop, on_pass=passes.put_nowait, mode="idle", idle_renew_after=5.0
        )
        task = asyncio.create_task(run)
        try:
            # The first sync of INBOX runs once IDLE is live (on CONNECTED); Archive is
            # polled (its first pass starts at once).
            assert (await next_pass_of(passes, "INBOX", 5.0)).new == 2
            assert await assert_mirrored(pool, store, name, "Archive") == 1

            async with pool.acquire(name) as imap:  # not the IDLE connection: it is held
                await imap.append(make_message(3), "INBOX")
            assert (await next_pass_of(passes, "INBOX", 5.0)).new == 1
            assert await assert_mirrored(pool, store, name, "INBOX") == 3
        finally:
            stop.set()
            async with asyncio.timeout(5.0):  # DONE, release, passes in flight finish
                await task
        assert task.result() is None
        stats = pool.stats()["keys"][name]
        # The IDLE connection went back to the pool after DONE, not poisoned and closed.
        assert stats["in_use"] == 0 and stats["closed_total"] == 0, stats
        assert worker.counters[name].errors == 0


async def test_idle_mode_needs_two_connections_per_key(
    dovecot: DovecotServer, store: Store
) -> None:
    acc = new_user(dovecot)
    pool: GuardedPool[IMAPClient] = GuardedPool(
        IMAPConnector({acc.key: acc.account}), config(DEFAULTS, max_per_key=1)
    )
    async with pool:
        worker = SyncWorker(pool, store, [acc])
        with pytest.raises(ValueError, match=r"max_per_key >= 2 \(one connection held in IDLE"):
            await worker.run_forever(1.0, asyncio.Event(), mode="idle")
        with pytest.raises(ValueError, match="mode must be"):
            await worker.run_forever(1.0, asyncio.Event(), mode="push")


async def test_idle_mode_picks_up_a_folder_created_while_it_runs(
    dovecot: DovecotServer, store: Store
) -> None:
    """Idle mode resolves the account's patterns again before each polling round: a folder
    created on the server after the worker started is synced (its INBOX stays in IDLE)."""
    acc = new_user(dovecot, 1)
    acc = AccountConfig(acc.key, acc.account, ("*",))
    passes: asyncio.Queue[PassSummary] = asyncio.Queue()
    stop = asyncio.Event()
    async with make_pool([acc]) as pool:
        worker = SyncWorker(pool, store, [acc])
        run = worker.run_forever(0.2, stop, on_pass=passes.put_nowait, mode="idle")
        task = asyncio.create_task(run)
        try:
            assert (await next_pass_of(passes, "INBOX", 5.0)).new == 1
            async with pool.acquire(acc.key) as imap:
                await imap.create("Später")
                await imap.append(make_message(7), "Später")
            assert (await next_pass_of(passes, "Sp&AOQ-ter", 5.0)).new == 1
            assert await assert_mirrored(pool, store, acc.key, WireName("Sp&AOQ-ter")) == 1
        finally:
            stop.set()
            async with asyncio.timeout(5.0):
                await task
        assert worker.counters[acc.key].errors == 0


async def test_idle_mode_falls_back_to_polling(dovecot: DovecotServer, store: Store) -> None:
    """A watched mailbox whose IDLE fails for good (SELECT says NO) is polled instead."""
    acc = new_user(dovecot)
    acc = AccountConfig(acc.key, acc.account, ("Missing",))
    passes: asyncio.Queue[PassSummary] = asyncio.Queue()
    stop = asyncio.Event()
    async with make_pool([acc]) as pool:
        worker = SyncWorker(pool, store, [acc])
        run = worker.run_forever(0.2, stop, on_pass=passes.put_nowait, mode="idle")
        task = asyncio.create_task(run)
        try:
            async with asyncio.timeout(5.0):
                for _ in range(3):  # one right after the fallback, then polls
                    summary = await passes.get()
                    assert [(f.mailbox, f.error.split(":")[0]) for f in summary.failures] == [
                        ("Missing", "IMAPCommandError")
                    ]
        finally:
            stop.set()
            async with asyncio.timeout(5.0):
                await task
        counters = worker.counters[acc.key]
        assert counters.errors >= 4 and counters.last_error is not None  # IDLE + 3 passes
        assert pool.stats()["keys"][acc.key]["in_use"] == 0


@pytest.mark.timeout(40)
async def test_idle_mode_watches_inbox_when_its_first_list_fails(
    dovecot_factory: Callable[..., DovecotServer], store: Store
) -> None:
    """``["*"]`` in idle mode with the server down at start: the first LIST fails, and the
    IDLE session waits for INBOX (every server has one), never SELECTs the pattern ``*``
    as a mailbox name, and INBOX syncs by push once the server is back."""
    server = dovecot_factory()
    server.seed_messages("alice", 1)
    account = IMAPAccount(
        host=server.host,
        port=server.port,
        username="alice",
        password=server.users["alice"],
        tls=False,
    )
    acc = AccountConfig("alice", account, ("*",))
    cfg = config(
        SYNC,
        acquire_timeout=1.0,
        connect_timeout=1.0,
        housekeeping_interval=0.1,
        retry=config(FAST_RETRY, initial=0.05, jitter=0.05),
    )
    server.pause()
    passes: asyncio.Queue[PassSummary] = asyncio.Queue()
    stop = asyncio.Event()
    async with GuardedPool(IMAPConnector({acc.key: acc.account}), cfg) as pool:
        worker = SyncWorker(pool, store, [acc])
        # poll_interval far beyond the test: only the IDLE session can sync INBOX in time.
        run = worker.run_forever(60.0, stop, on_pass=passes.put_nowait, mode="idle")
        task = asyncio.create_task(run)
        failed: list[str] = []
        try:
            async with asyncio.timeout(10.0):
                first = await passes.get()  # the polling round whose LIST failed
            assert [f.mailbox for f in first.failures] == ["(LIST)"]
            server.resume()
            async with asyncio.timeout(15.0):
                while True:
                    summary = await passes.get()
                    failed += [f.mailbox for f in summary.failures]
                    if any(r.mailbox == "INBOX" for r in summary.results):
                        break
        finally:
            stop.set()
            async with asyncio.timeout(5.0):
                await task
        assert failed == []
        assert await assert_mirrored(pool, store, acc.key, "INBOX") == 1
