"""The store used from two threads: batches written on the store's own thread
(``Store.executor``) while the event loop's thread reads and writes other mailboxes.

Every operation holds the store's lock for its whole transaction, so a read never sees
half a batch and two transactions never interleave on the one connection.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from examples.imap_sync.store import NewMessage, Store, StoreError


def msgs(first: int, n: int, size: int = 20_000) -> list[NewMessage]:
    return [
        NewMessage(uid, ("\\Seen",), bytes([uid % 251]) * size) for uid in range(first, first + n)
    ]


def test_batches_on_the_store_thread_interleave_with_reads_and_writes(tmp_path: Path) -> None:
    with Store.open(tmp_path / "s.sqlite3", fsync=False) as store:
        store.ensure_account("a", "127.0.0.1", "a")
        for box in ("A", "B"):
            store.mailbox("a", box)
            store.reset_mailbox("a", box, 1)

        async def main() -> list[int]:
            loop = asyncio.get_running_loop()
            seen: list[int] = []
            for i in range(20):
                pending = loop.run_in_executor(
                    store.executor, store.store_batch, "a", "A", 1, msgs(1 + 50 * i, 50)
                )
                # Meanwhile, on the loop's thread: reads, and writes to another mailbox.
                while not pending.done():
                    uids = store.uids("a", "A", 1)
                    assert len(uids) % 50 == 0, "a read saw half a batch"
                    seen.append(len(uids))
                    store.update_flags("a", "B", 1, {})
                    await asyncio.sleep(0)
                assert await pending == 50
            return seen

        seen = asyncio.run(main())
        assert store.uids("a", "A", 1) == list(range(1, 1001))
        assert seen == sorted(seen)
        assert store.mailbox("a", "A").last_uid == 1000


def test_close_waits_for_the_batches_submitted(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    store = Store.open(path, fsync=False)
    store.ensure_account("a", "127.0.0.1", "a")
    store.mailbox("a", "A")
    store.reset_mailbox("a", "A", 1)
    futures = [
        store.executor.submit(store.store_batch, "a", "A", 1, msgs(1 + 20 * i, 20))
        for i in range(10)
    ]
    store.close()
    assert [f.result(timeout=0) for f in futures] == [20] * 10
    with Store.open(path) as again:
        assert len(again.uids("a", "A", 1)) == 200


@contextmanager
def writer_busy(store: Store) -> Iterator[None]:
    """Another thread holds the store's writer lock for as long as the block runs."""
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with store._serial():
            held.set()
            release.wait(timeout=10)

    t = threading.Thread(target=hold)
    t.start()
    try:
        assert held.wait(timeout=10)
        yield
    finally:
        release.set()
        t.join(timeout=10)


def test_a_store_held_too_long_by_another_thread_raises(tmp_path: Path) -> None:
    with Store.open(tmp_path / "s.sqlite3") as store:
        store.lock_timeout = 0.05  # type: ignore[misc]
        with writer_busy(store), pytest.raises(StoreError, match="busy in another thread"):
            store.ensure_account("a", "h", "u")
        store.ensure_account("a", "h", "u")
        assert store.totals() == {"a": (0, 0)}


def test_a_query_does_not_wait_for_a_write_in_another_thread(tmp_path: Path) -> None:
    # The event loop asks for a pass's stored UIDs while the store's thread commits
    # another mailbox's batch: the query runs on the read-only connection and sees the
    # last commit, instead of stalling the loop (every session) behind the batch.
    with Store.open(tmp_path / "s.sqlite3") as store:
        store.lock_timeout = 0.05  # type: ignore[misc]
        store.ensure_account("a", "h", "u")
        store.reset_mailbox("a", "INBOX", 7)
        store.store_batch("a", "INBOX", 7, [NewMessage(1, (), b"Subject: 1\r\n\r\nx\r\n")])
        with writer_busy(store):  # a batch in flight: the writer's lock held
            assert store.uids("a", "INBOX", 7) == [1]
            assert store.totals() == {"a": (1, len(b"Subject: 1\r\n\r\nx\r\n"))}


def test_a_store_in_memory_reads_on_its_one_connection() -> None:
    # ":memory:" has no file for a second, read-only connection to open.
    with Store.open(":memory:") as store:
        store.ensure_account("a", "h", "u")
        store.reset_mailbox("a", "INBOX", 7)
        store.store_batch("a", "INBOX", 7, [NewMessage(1, (), b"Subject: 1\r\n\r\nx\r\n")])
        assert store.uids("a", "INBOX", 7) == [1]
