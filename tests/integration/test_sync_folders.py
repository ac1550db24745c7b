"""Every folder of an account against Dovecot: patterns, human names, folders that go away.

Dovecot's Maildir++ layout uses ``.`` as the hierarchy delimiter, so ``Archive/2024`` in
a pattern or a label is ``Archive.2024`` on the wire; ``Entwürfe`` is ``Entw&APw-rfe``.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from harness import DovecotServer, make_message
from harness.configs import SYNC, config

from examples.imap_sync.config import AccountConfig
from examples.imap_sync.metrics import SyncCollector, make_registry, render
from examples.imap_sync.push import PushSync
from examples.imap_sync.store import Store
from examples.imap_sync.worker import PassSummary, SyncWorker
from guardedpool import GuardedPool
from guardedpool.imap import (
    IMAPAccount,
    IMAPClient,
    IMAPConnector,
    WireName,
    parse_list,
    parse_status,
)

CFG = config(SYNC, op_timeout=10.0, close_timeout=2.0)
ODD = 'Tom\'s "box" 2024'
# Human name -> messages appended to it.
FOLDERS = {
    "INBOX": 2,
    "Entwürfe": 3,
    "Archive.2024": 2,  # nested: its parent Archive is a name without a folder
    ODD: 1,
    "Junk": 1,  # role \Junk in the fixture: excluded by role
    "Trash": 1,  # role \Trash: excluded by name
    "Doomed": 2,  # deleted between passes
    "Old Name": 2,  # renamed between passes
}
WIRE = {
    "INBOX": "INBOX",
    "Entwürfe": "Entw&APw-rfe",
    "Archive.2024": "Archive.2024",
    ODD: ODD,
    "Doomed": "Doomed",
    "Old Name": "Old Name",
}


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    with Store.open(tmp_path / "mirror.sqlite3") as s:
        yield s


def make_pool(acc: AccountConfig) -> GuardedPool[IMAPClient]:
    return GuardedPool(IMAPConnector({acc.key: acc.account}), CFG)


@pytest.fixture
async def account(dovecot: DovecotServer) -> AccountConfig:
    name = f"f{uuid.uuid4().hex[:10]}"
    password = dovecot.add_user(name)
    account = IMAPAccount(
        host=dovecot.host, port=dovecot.port, username=name, password=password, tls=False
    )
    acc = AccountConfig(name, account, ("*", "!\\Junk", "!Trash"))
    async with make_pool(acc) as pool, pool.acquire(acc.key) as imap:
        n = 0
        for folder, count in FOLDERS.items():
            if folder != "INBOX":
                await imap.create(folder)
            for _ in range(count):
                n += 1
                await imap.append(make_message(n), folder)
    return acc


def stored(store: Store, key: str, name: str) -> int:
    uv = store.known_mailboxes(key).get(name)
    return len(store.uids(key, name, uv)) if uv is not None else -1


def metric_lines(worker: SyncWorker, pool: GuardedPool[IMAPClient]) -> set[str]:
    registry = make_registry(
        SyncCollector(pool.stats, lambda: worker.counters, lambda: worker.mailbox_views)
    )
    return {line for line in render(registry).decode().splitlines() if "mailbox=" in line}


async def test_star_syncs_every_folder_by_its_name_and_keeps_gone_ones(
    account: AccountConfig, store: Store
) -> None:
    key = account.key
    async with make_pool(account) as pool:
        async with pool.acquire(key) as imap:
            entries = {e.name: e for e in parse_list((await imap.list()).lines)}
        assert not entries["Archive"].selectable  # the \Noselect parent
        worker = SyncWorker(pool, store, [account], batch_size=2)
        summary = await worker.run_pass()
        assert summary.ok, summary.failures
        assert set(store.known_mailboxes(key)) == set(WIRE.values())
        for human, wire in WIRE.items():
            assert stored(store, key, wire) == FOLDERS[human], human
        assert {r.mailbox for r in summary.results} == set(WIRE.values())
        lines = metric_lines(worker, pool)
        state = 'imap_sync_mailbox_state{{inbox="{}",mailbox="{}",state="{}"}} 1.0'
        for label in ("INBOX", "Entwürfe", "Archive/2024", 'Tom\'s \\"box\\" 2024'):
            assert state.format(key, label, "synced") in lines
        messages = f'imap_sync_mailbox_messages_total{{inbox="{key}",mailbox="Entwürfe"}} 3.0'
        assert messages in lines
        assert not any("Entw&" in line or "Junk" in line or "Trash" in line for line in lines)
        before = store.known_mailboxes(key)

    # Between passes, through a connection of its own (Dovecot ends, with BYE, every
    # session that has a deleted or renamed mailbox selected).
    async with make_pool(account) as pool, pool.acquire(key) as imap:
        old_uv = parse_status((await imap.status("Old Name")).lines)["UIDVALIDITY"]
        await imap.delete("Doomed")
        await imap.rename("Old Name", "New Name")
        await imap.append(make_message(99), "Entwürfe")

    async with make_pool(account) as pool:
        worker = SyncWorker(pool, store, [account], batch_size=2)
        summary = await worker.run_pass()
        assert summary.ok, summary.failures
        retired = {orig: (k, state, to) for k, orig, state, to in store.retired(key)}
        assert retired == {
            "Doomed": ("Doomed\x1e1", "gone", None),
            "Old Name": ("Old Name\x1e1", "renamed", "New Name"),
        }
        # The local copies are kept, whole, under their new keys.
        for orig, (kept, _, _) in retired.items():
            assert kept not in store.known_mailboxes(key)  # retired: never synced into again
            validity = before[orig]
            assert validity is not None
            assert len(store.uids(key, kept, validity)) == FOLDERS[orig]
        # The rename target is a mailbox of its own, synced from scratch.
        assert stored(store, key, "New Name") == FOLDERS["Old Name"]
        assert store.known_mailboxes(key)["New Name"] == old_uv
        assert stored(store, key, "Entw&APw-rfe") == FOLDERS["Entwürfe"] + 1
        assert "Doomed" not in store.known_mailboxes(key)
        lines = metric_lines(worker, pool)
        assert state.format(key, "Doomed", "gone") in lines
        assert state.format(key, "Old Name", "renamed") in lines

        # A new folder under a retired name starts empty: never mixed with the old copy.
        async with pool.acquire(key) as imap:
            await imap.create("Doomed")
            await imap.append(make_message(100), "Doomed")
        summary = await worker.run_pass()
        assert summary.ok, summary.failures
        assert stored(store, key, "Doomed") == 1
        assert store.known_mailboxes(key)["Doomed"] != before["Doomed"]
        assert len(store.uids(key, "Doomed\x1e1", before["Doomed"] or 0)) == FOLDERS["Doomed"]


async def test_patterns_select_by_path_and_role(account: AccountConfig, store: Store) -> None:
    cases = {
        ("INBOX", "Archive/*"): {"INBOX", "Archive.2024"},
        ("Archive.%",): {"Archive.2024"},
        ("%", "!INBOX", "!Entwürfe"): {ODD, "Junk", "Trash", "Doomed", "Old Name"},
        ("\\Junk", "\\Trash"): {"Junk", "Trash"},
        ("!\\Junk", "!\\Trash", "!Archive/*", "!Old*"): {"INBOX", "Entw&APw-rfe", ODD, "Doomed"},
    }
    async with make_pool(account) as pool:
        for patterns, expected in cases.items():
            acc = AccountConfig(account.key, account.account, patterns)
            worker = SyncWorker(pool, store, [acc])
            assert not await worker.resolve(), patterns
            assert {name for _, name in worker.jobs()} == expected, patterns
            assert all(isinstance(name, WireName) for _, name in worker.jobs())


async def test_plain_names_with_slash_are_found_under_the_servers_delimiter(
    account: AccountConfig, store: Store
) -> None:
    """``"Archive/2024"`` names that mailbox whatever the delimiter, also in a config of
    plain names only: on Dovecot it is ``Archive.2024`` (SELECT "Archive/2024" is NO)."""
    acc = AccountConfig(account.key, account.account, ("Archive/2024", "Entwürfe"))
    async with make_pool(acc) as pool:
        worker = SyncWorker(pool, store, [acc])
        summary = await worker.run_pass()
        assert summary.ok, summary.failures
    assert stored(store, acc.key, "Archive.2024") == FOLDERS["Archive.2024"]
    assert stored(store, acc.key, "Entw&APw-rfe") == FOLDERS["Entwürfe"]


async def test_a_noselect_parent_named_in_the_config_is_skipped(
    account: AccountConfig, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """``Archive`` is a ``\\Noselect`` parent on the server: named explicitly, it is never
    synced (no SELECT that fails every pass) and not reported as missing."""
    acc = AccountConfig(account.key, account.account, ("INBOX", "Archive", "Archive/*"))
    async with make_pool(acc) as pool:
        worker = SyncWorker(pool, store, [acc])
        with caplog.at_level(logging.WARNING, logger="imap_sync"):
            summary = await worker.run_pass()
        assert summary.ok, summary.failures
        assert {name for _, name in worker.jobs()} == {"INBOX", "Archive.2024"}
    assert "not on the server" not in caplog.text
    assert "'Archive' cannot be selected" in caplog.text
    assert stored(store, acc.key, "Archive.2024") == FOLDERS["Archive.2024"]


async def test_a_wire_name_in_a_plain_config_gets_the_hint(
    account: AccountConfig, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """A config from before patterns spelt ``Entw&APw-rfe``: its SELECT fails, as a typo
    should, and the log names the human name to write instead."""
    acc = AccountConfig(account.key, account.account, ("INBOX", "Entw&APw-rfe"))
    async with make_pool(acc) as pool:
        worker = SyncWorker(pool, store, [acc])
        with caplog.at_level(logging.WARNING, logger="imap_sync"):
            summary = await worker.run_pass()
    assert [f.mailbox for f in summary.failures] == ["Entw&APw-rfe"]
    assert "did you mean 'Entwürfe'?" in caplog.text
    assert stored(store, acc.key, "INBOX") == FOLDERS["INBOX"]


async def test_a_continuous_worker_sees_the_rename_of_the_folder_it_has_selected(
    account: AccountConfig, store: Store
) -> None:
    """One pooled connection that still has ``Old Name`` selected from the last pass: the
    rename (by another session) is retired as renamed in the next pass, not missed then
    called gone a pass later (Dovecot answers STATUS of the selected mailbox from its view
    even after the rename)."""
    key = account.key
    acc = AccountConfig(key, account.account, ("Old*", "New*"))
    one = config(CFG, max_per_key=1)
    async with GuardedPool(IMAPConnector({key: acc.account}), one) as pool:
        worker = SyncWorker(pool, store, [acc])
        summary = await worker.run_pass()  # its one connection now has Old Name selected
        assert summary.ok, summary.failures
        async with make_pool(acc) as other, other.acquire(key) as imap:
            await imap.rename("Old Name", "New Name")
        summary = await worker.run_pass()
        assert summary.ok, summary.failures
    retired = {orig: (state, to) for _, orig, state, to in store.retired(key)}
    assert retired == {"Old Name": ("renamed", "New Name")}
    assert stored(store, key, "New Name") == FOLDERS["Old Name"]


@pytest.mark.timeout(40)
async def test_idle_mode_stops_syncing_a_watched_folder_once_it_is_retired(
    account: AccountConfig, store: Store
) -> None:
    """Idle mode watching ``Old Name`` (INBOX not synced): renamed on the server, it is
    retired by the next polling round, and no pass tries the old name after that (the
    IDLE session may live on; its timed passes used to fail every ``poll_interval``)."""
    key = account.key
    acc = AccountConfig(key, account.account, ("Old*", "New*"))
    passes: asyncio.Queue[PassSummary] = asyncio.Queue()
    stop = asyncio.Event()
    async with make_pool(acc) as pool:
        worker = SyncWorker(pool, store, [acc])
        assert not await worker.resolve()
        push = PushSync(worker, poll_interval=0.3, renew_after=5.0)
        assert push.watched == {key: "Old Name"}
        task = asyncio.create_task(push.run(stop, on_pass=passes.put_nowait))
        try:
            async with asyncio.timeout(10.0):
                while "Old Name" not in store.known_mailboxes(key):
                    await passes.get()
            async with make_pool(acc) as other, other.acquire(key) as imap:
                await imap.rename("Old Name", "New Name")
            async with asyncio.timeout(10.0):
                while not store.retired(key):
                    await passes.get()
            timed = push.timed[key]
            late: list[str] = []
            async with asyncio.timeout(15.0):
                while push.timed[key] < timed + 4:  # passes that began after the retirement
                    summary = await passes.get()
                    if push.timed[key] > timed + 1:
                        late += [f.mailbox for f in summary.failures]
        finally:
            stop.set()
            async with asyncio.timeout(5.0):
                await task
    assert late == []
    assert {orig for _, orig, _, _ in store.retired(key)} == {"Old Name"}
