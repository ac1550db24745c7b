"""The store's checkpoint logic: a checkpoint never runs ahead of its messages.

The property test drives a store through random batches, flag updates, expunges and
UIDVALIDITY resets, failing transactions at random points (an insert that violates a
constraint halfway through a batch stands in for a crash), and checks after every step
that the stored UIDs are exactly the UIDs at or below the checkpoint that the "server"
still has: nothing lost, nothing duplicated, nothing ahead.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from examples.imap_sync.store import NewMessage, Store, StoreError, flags_text
from examples.imap_sync.uids import batches


def msg(uid: int, *flags: str) -> NewMessage:
    return NewMessage(uid, flags, f"Subject: {uid}\r\n\r\nbody {uid}\r\n".encode())


class Crash(Exception):
    """Stands in for the process dying in the middle of a batch."""


def crashing(messages: list[NewMessage], at: int) -> Iterator[NewMessage]:
    """Yield ``messages`` but die before the one at index ``at`` (never, if out of range)."""
    for i, m in enumerate(messages):
        if i == at:
            raise Crash(f"crash before message {i}")
        yield m


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store.open(tmp_path / "s.sqlite3")
    s.ensure_account("alice", "127.0.0.1", "alice")
    return s


def test_schema_and_wal(tmp_path: Path) -> None:
    with Store.open(tmp_path / "x.sqlite3") as s:
        mode = s._db.execute("PRAGMA journal_mode").fetchone()[0]
        assert mode == "wal"
        assert s._db.execute("PRAGMA page_size").fetchone()[0] == 32768
    with Store.open(tmp_path / "x.sqlite3"):  # reopening an existing store is fine
        pass


def test_fsync_off_is_sqlite_synchronous_off(tmp_path: Path) -> None:
    # WAL + NORMAL fsyncs at checkpoints; OFF never does (mbsync's "FSync no").
    with Store.open(tmp_path / "x.sqlite3") as s:
        assert s._db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    with Store.open(tmp_path / "x.sqlite3", fsync=False) as s:
        assert s._db.execute("PRAGMA synchronous").fetchone()[0] == 0  # OFF


def test_new_mailbox_starts_empty(store: Store) -> None:
    state = store.mailbox("alice", "INBOX")
    assert (state.uidvalidity, state.last_uid, state.uidnext, state.highestmodseq) == (
        None,
        0,
        None,
        None,
    )


def test_batch_and_checkpoint_commit_together(store: Store) -> None:
    store.reset_mailbox("alice", "INBOX", 7)
    assert store.store_batch("alice", "INBOX", 7, [msg(1), msg(3, "\\Seen")]) == 2
    # last_uid is the highest UID *stored* (issue 11: it was the highest asked for, 4).
    assert store.mailbox("alice", "INBOX").last_uid == 3
    assert store.uids("alice", "INBOX", 7) == [1, 3]
    # The same batch again (a restart after a crash after the commit): no duplicates.
    assert store.store_batch("alice", "INBOX", 7, [msg(1), msg(3)]) == 0
    assert store.uids("alice", "INBOX", 7) == [1, 3]
    # A checkpoint never moves backwards.
    store.store_batch("alice", "INBOX", 7, [msg(2)])
    assert store.mailbox("alice", "INBOX").last_uid == 3
    assert store.message("alice", "INBOX", 3) == ("\\Seen", msg(3).raw)


def test_failed_batch_leaves_nothing_behind(store: Store) -> None:
    store.reset_mailbox("alice", "INBOX", 7)
    store.store_batch("alice", "INBOX", 7, [msg(1)])
    with pytest.raises(Crash):
        store.store_batch("alice", "INBOX", 7, crashing([msg(2), msg(3), msg(4)], 1))
    assert store.uids("alice", "INBOX", 7) == [1]
    assert store.mailbox("alice", "INBOX").last_uid == 1


def test_writes_for_an_old_uidvalidity_are_refused(store: Store) -> None:
    store.reset_mailbox("alice", "INBOX", 7)
    store.store_batch("alice", "INBOX", 7, [msg(1), msg(2)])
    assert store.reset_mailbox("alice", "INBOX", 8) == 2
    state = store.mailbox("alice", "INBOX")
    assert (state.uidvalidity, state.last_uid, state.highestmodseq) == (8, 0, None)
    for write in (
        lambda: store.store_batch("alice", "INBOX", 7, [msg(3)]),
        lambda: store.update_flags("alice", "INBOX", 7, {1: ["\\Seen"]}),
        lambda: store.expunge("alice", "INBOX", 7, [1]),
        lambda: store.finish_pass("alice", "INBOX", 7, uidnext=3, highestmodseq=None),
    ):
        with pytest.raises(StoreError, match="UIDVALIDITY 7, mailbox is at 8"):
            write()
    assert store.uids("alice", "INBOX", 7) == []


def test_flags_and_expunge(store: Store) -> None:
    store.reset_mailbox("alice", "INBOX", 1)
    store.store_batch("alice", "INBOX", 1, [msg(1, "\\Seen"), msg(2), msg(3)])
    changed = store.update_flags(
        "alice", "INBOX", 1, {1: ["\\Seen", "\\Recent"], 2: ["\\Flagged", "\\Seen"], 9: ["x"]}
    )
    assert changed == 1  # 1 is unchanged once \Recent is dropped; 9 is not stored
    assert store.flags("alice", "INBOX", 1) == {1: "\\Seen", 2: "\\Flagged \\Seen", 3: ""}
    assert store.expunge("alice", "INBOX", 1, [2, 5]) == 1
    assert store.uids("alice", "INBOX", 1) == [1, 3]
    store.finish_pass("alice", "INBOX", 1, uidnext=4, highestmodseq=17)
    state = store.mailbox("alice", "INBOX")
    assert (state.uidnext, state.highestmodseq, state.last_uid) == (4, 17, 3)
    assert state.last_sync is not None


def test_totals_and_success(store: Store) -> None:
    store.ensure_account("bob", "127.0.0.1", "bob")
    store.reset_mailbox("alice", "INBOX", 1)
    store.store_batch("alice", "INBOX", 1, [msg(1), msg(2)])
    totals = store.totals()
    assert totals["alice"] == (2, len(msg(1).raw) + len(msg(2).raw))
    assert totals["bob"] == (0, 0)
    store.mark_success("alice", 123.0)
    row = store._db.execute("SELECT last_success FROM accounts WHERE key='alice'").fetchone()
    assert row[0] == 123.0


def test_flags_text() -> None:
    assert flags_text(["\\Seen", "\\Recent", "$Label", "\\Seen"]) == "$Label \\Seen"
    assert flags_text([]) == ""


# -- the property ------------------------------------------------------------------------

step = st.one_of(
    st.tuples(st.just("append"), st.integers(1, 6)),  # n new messages on the server
    st.tuples(st.just("expunge"), st.integers(0, 30)),  # expunge the message at index % len
    st.tuples(st.just("sync"), st.integers(1, 4), st.integers(-1, 8)),  # batch, fail at
    st.tuples(st.just("reset"), st.just(0)),  # the server's UIDVALIDITY changes
)


@settings(max_examples=150, deadline=None)
@given(steps=st.lists(step, min_size=1, max_size=25))
def test_checkpoint_never_outruns_messages(
    tmp_path_factory: pytest.TempPathFactory, steps: list[tuple[object, ...]]
) -> None:
    path = tmp_path_factory.mktemp("prop") / "p.sqlite3"
    server: list[int] = []
    next_uid, uidvalidity = 1, 1
    with Store.open(path) as s:
        s.ensure_account("a", "h", "u")
        s.reset_mailbox("a", "m", uidvalidity)
        for kind, *args in steps:
            if kind == "append":
                for _ in range(int(args[0])):  # type: ignore[call-overload]
                    server.append(next_uid)
                    next_uid += 1
            elif kind == "expunge" and server:
                server.pop(int(args[0]) % len(server))  # type: ignore[call-overload]
            elif kind == "reset":
                uidvalidity += 1
                server, next_uid = list(range(1, len(server) + 1)), len(server) + 1
            elif kind == "sync":
                batch_size, fail_at = int(args[0]), int(args[1])  # type: ignore[call-overload]
                _sync(s, server, uidvalidity, batch_size, fail_at)
            state = s.mailbox("a", "m")
            if state.uidvalidity == uidvalidity:
                stored = s.uids("a", "m", uidvalidity)
                expected = [u for u in server if u <= state.last_uid]
                # Expunges are only seen by a sync, so the store may still hold some.
                assert set(expected) <= set(stored)
                assert all(u <= state.last_uid for u in stored)
                assert len(stored) == len(set(stored))


def _sync(s: Store, server: list[int], uidvalidity: int, batch_size: int, fail_at: int) -> None:
    """The worker's algorithm against a list; message ``fail_at`` of the pass breaks it."""
    if s.mailbox("a", "m").uidvalidity != uidvalidity:
        s.reset_mailbox("a", "m", uidvalidity)
    gone = [u for u in s.uids("a", "m", uidvalidity) if u not in set(server)]
    s.expunge("a", "m", uidvalidity, gone)
    stored = set(s.uids("a", "m", uidvalidity))
    new = [u for u in sorted(server) if u not in stored]  # server minus stored
    seen = 0
    for batch in batches(new, batch_size):
        msgs = crashing([msg(uid) for uid in batch], fail_at - seen)
        seen += len(batch)
        try:
            s.store_batch("a", "m", uidvalidity, msgs)
        except Crash:
            return  # the rest of the pass never happens
    after = s.mailbox("a", "m")
    assert s.uids("a", "m", uidvalidity) == sorted(server)
    assert after.last_uid >= (server[-1] if server else 0)


# -- a real kill -9 of a writer ----------------------------------------------------------

WRITER = """
import sys
from examples.imap_sync.store import NewMessage, Store
s = Store.open(sys.argv[1])
s.ensure_account("a", "h", "u")
s.reset_mailbox("a", "m", 1)
uid = 1
while True:
    batch = [NewMessage(u, (), b"x" * 2000) for u in range(uid, uid + 10)]
    s.store_batch("a", "m", 1, batch)
    uid += 10
"""


def test_kill_9_mid_write_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "k.sqlite3"
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    try:
        deadline = time.monotonic() + 10
        count = 0
        while time.monotonic() < deadline and count < 200:
            time.sleep(0.02)
            if path.exists():
                try:
                    with sqlite3.connect(path) as db:
                        count = db.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
                except sqlite3.OperationalError:
                    pass
        assert count >= 200, "the writer never got going"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(5)
    with Store.open(path) as s:
        state = s.mailbox("a", "m")
        uids = s.uids("a", "m", 1)
        assert uids == list(range(1, state.last_uid + 1))
        assert state.last_uid % 10 == 0


def test_version_1_store_is_migrated_to_a_full_next_pass(tmp_path: Path) -> None:
    """A store written by schema 1 may lack messages behind a "complete" checkpoint (issue
    11): opening it forgets every mailbox's UIDNEXT/HIGHESTMODSEQ, nothing else."""
    path = tmp_path / "v1.sqlite3"
    with Store.open(path) as s:
        s.ensure_account("a", "h", "u")
        s.reset_mailbox("a", "m", 7)
        s.store_batch("a", "m", 7, [msg(9)])
        s.finish_pass("a", "m", 7, uidnext=10, highestmodseq=55)
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version=1")
    with Store.open(path) as s:
        state = s.mailbox("a", "m")
        assert (state.uidvalidity, state.last_uid, state.uidnext, state.highestmodseq) == (
            7,
            9,
            None,
            None,
        )
        assert s.uids("a", "m", 7) == [9]
        assert s._db.execute("PRAGMA user_version").fetchone()[0] == 2
