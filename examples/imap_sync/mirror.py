"""The store's logic once, over a small SQL dialect: :class:`.store.Store` (SQLite) and
:class:`.pgstore.PgStore` (PostgreSQL) are :class:`SqlMirror` plus their dialect.

Every statement here is written with ``?`` placeholders and portable SQL; a dialect
supplies how a statement runs (:meth:`SqlMirror._run`, which may rewrite the
placeholders), what a write transaction is (:meth:`SqlMirror._transaction`), the
fencing check each write transaction makes first (:meth:`SqlMirror._fence`, nothing by
default), and the few statements that differ (the ``MAX``/``GREATEST`` of two values,
deleting a set of UIDs, keeping the retired table, moving messages with their mailbox).
The invariants these methods keep are described in :mod:`.store`.

A store may be called from more than one thread: the worker writes each batch of new
messages on the store's own thread (:attr:`SqlMirror.executor`), so that the database's
work, which releases the GIL, runs on another core while the event loop reads the next
batch. Every operation therefore holds the store's lock (:meth:`SqlMirror._serial`) for
its whole transaction or query: one connection, one user at a time, whatever the thread.
A caller that finds the lock held waits at most :attr:`SqlMirror.lock_timeout` seconds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ClassVar, Protocol, Self

__all__ = ["MailboxState", "NewMessage", "SqlMirror", "StoreError", "flags_text"]


class StoreError(RuntimeError):
    """The store refused an operation that would break its invariants."""


@dataclass(frozen=True, slots=True)
class MailboxState:
    """A mailbox's checkpoints as stored (see the schema for each field)."""

    uidvalidity: int | None
    last_uid: int
    uidnext: int | None
    highestmodseq: int | None
    last_sync: float | None


@dataclass(frozen=True, slots=True)
class NewMessage:
    uid: int
    flags: tuple[str, ...]
    raw: bytes


def flags_text(flags: Iterable[str]) -> str:
    """The stored form of a flag list: sorted, no duplicates, without the session-only \\Recent."""
    return " ".join(sorted({f for f in flags if f.lower() != "\\recent"}))


class Cursor(Protocol):
    """What both drivers' cursors give: rows and the count of rows a write touched."""

    @property
    def rowcount(self) -> int: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...


class SqlMirror:
    """The store's operations; a subclass is a dialect (see the module docstring)."""

    #: The SQL function that returns the larger of two values.
    _GREATEST: ClassVar[str]

    #: Seconds an operation waits for another thread's operation on this store to end
    #: before it raises :class:`StoreError` (a batch of large messages takes seconds).
    lock_timeout: ClassVar[float] = 60.0

    #: What the store is, for messages (a file path, a scrubbed DSN).
    path: object

    def __init__(self) -> None:
        self._lock = threading.RLock()
        #: The store's own thread (one), for the writes the event loop should not wait
        #: on: ``loop.run_in_executor(store.executor, store.store_batch, ...)``. One
        #: thread, so they run in the order submitted; :meth:`close` waits for them.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")

    @contextmanager
    def _serial(self, lock: threading.RLock | None = None) -> Iterator[None]:
        """Hold the store (or the given ``lock`` of it) for one operation (see the module
        docstring); raises :class:`StoreError` after :attr:`lock_timeout` seconds of
        waiting."""
        held = self._lock if lock is None else lock
        if not held.acquire(timeout=self.lock_timeout):
            raise StoreError(
                f"{self.path}: busy in another thread for over {self.lock_timeout:g} s"
            )
        try:
            yield
        finally:
            held.release()

    # -- the dialect -------------------------------------------------------------------

    def _run(self, sql: str, args: tuple[Any, ...] = ()) -> Cursor:
        """Run one statement written with ``?`` placeholders."""
        raise NotImplementedError

    def _transaction(self) -> AbstractContextManager[object]:
        """One write transaction: all of it is committed, or none of it."""
        raise NotImplementedError

    def _fence(self, account: str) -> None:
        """Check (and record) the right to write ``account``, first thing in a write
        transaction; raise :class:`StoreError` to refuse it. Nothing by default."""

    def _select(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        """The rows of one query (called holding the lock)."""
        return list(self._run(sql, args).fetchall())

    def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        """The rows of one query, holding the lock."""
        with self._serial():
            return self._select(sql, args)

    def _delete_uids(self, account: str, name: str, uidvalidity: int, uids: Iterable[int]) -> int:
        """Delete the messages with ``uids``; returns how many were deleted."""
        deleted = 0
        for uid in uids:
            deleted += self._run(
                "DELETE FROM messages WHERE account=? AND mailbox=? AND uidvalidity=? AND uid=?",
                (account, name, uidvalidity, uid),
            ).rowcount
        return deleted

    def _ensure_retired_table(self) -> None:
        """Make sure ``retired_mailboxes`` exists. Nothing by default (in the schema)."""

    def _retired_table(self) -> None:
        with self._serial():
            self._ensure_retired_table()

    def _move_messages(self, account: str, name: str, key: str) -> None:
        """Inside :meth:`retire_mailbox`'s transaction, before the mailbox row is renamed
        to ``key``: make its messages follow. Nothing by default (``ON UPDATE CASCADE``)."""

    def close(self) -> None:
        """Close the connection, once the writes submitted to :attr:`executor` are done."""
        self.executor.shutdown(wait=True)
        with self._serial():
            self._close()

    def _close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @contextmanager
    def _tx(self, account: str | None = None) -> Iterator[None]:
        """One write transaction, fenced for ``account``: all of it commits, or none."""
        with self._serial(), self._transaction():
            if account is not None:
                self._fence(account)
            yield

    # -- accounts and mailboxes ---------------------------------------------------------

    def ensure_account(self, key: str, host: str, username: str) -> None:
        with self._tx():
            self._run(
                "INSERT INTO accounts(key, host, username) VALUES (?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET host=excluded.host, username=excluded.username",
                (key, host, username),
            )

    def mark_success(self, key: str, when: float | None = None) -> None:
        with self._tx(key):
            self._run(
                "UPDATE accounts SET last_success=? WHERE key=?",
                (time.time() if when is None else when, key),
            )

    def mailbox(self, account: str, name: str) -> MailboxState:
        """The mailbox's checkpoints; a mailbox seen for the first time starts empty."""
        with self._tx(account):
            self._run(
                "INSERT INTO mailboxes(account, name) VALUES (?, ?) ON CONFLICT DO NOTHING",
                (account, name),
            )
            row = self._run(
                "SELECT uidvalidity, last_uid, uidnext, highestmodseq, last_sync "
                "FROM mailboxes WHERE account=? AND name=?",
                (account, name),
            ).fetchone()
        assert row is not None
        return MailboxState(*row)

    def reset_mailbox(self, account: str, name: str, uidvalidity: int) -> int:
        """Start the mailbox over under a new UIDVALIDITY; returns messages dropped."""
        with self._tx(account):
            dropped = self._run(
                "DELETE FROM messages WHERE account=? AND mailbox=?", (account, name)
            ).rowcount
            self._run(
                "INSERT INTO mailboxes(account, name, uidvalidity) VALUES (?, ?, ?) "
                "ON CONFLICT (account, name) DO UPDATE SET uidvalidity=excluded.uidvalidity, "
                "last_uid=0, uidnext=NULL, highestmodseq=NULL",
                (account, name, uidvalidity),
            )
        return int(dropped)

    # -- messages ----------------------------------------------------------------------

    def store_batch(
        self, account: str, name: str, uidvalidity: int, messages: Iterable[NewMessage]
    ) -> int:
        """Insert ``messages`` and raise ``last_uid`` to the highest of them, atomically.

        ``last_uid`` comes from the messages stored here, never from the UIDs asked for.
        Returns how many messages were new (a re-fetched message inserts nothing).
        """
        now = time.time()
        with self._tx(account):
            self._guard(account, name, uidvalidity)
            inserted = 0
            highest = 0
            for m in messages:
                cur = self._run(
                    "INSERT INTO messages(account, mailbox, uidvalidity, uid, flags, size, raw, "
                    "stored_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    (
                        account,
                        name,
                        uidvalidity,
                        m.uid,
                        flags_text(m.flags),
                        len(m.raw),
                        m.raw,
                        now,
                    ),
                )
                inserted += cur.rowcount
                highest = max(highest, m.uid)
            self._run(
                f"UPDATE mailboxes SET last_uid={self._GREATEST}(last_uid, ?) "
                "WHERE account=? AND name=?",
                (highest, account, name),
            )
        return inserted

    def update_flags(
        self, account: str, name: str, uidvalidity: int, flags: Mapping[int, Iterable[str]]
    ) -> int:
        """Set the flags of stored messages; returns how many actually changed."""
        changed = 0
        with self._tx(account):
            self._guard(account, name, uidvalidity)
            for uid, value in flags.items():
                text = flags_text(value)
                changed += self._run(
                    "UPDATE messages SET flags=? WHERE account=? AND mailbox=? AND uidvalidity=? "
                    "AND uid=? AND flags<>?",
                    (text, account, name, uidvalidity, uid, text),
                ).rowcount
        return changed

    def expunge(self, account: str, name: str, uidvalidity: int, uids: Iterable[int]) -> int:
        """Delete messages the server no longer has; returns how many were deleted."""
        wanted = list(uids)
        with self._tx(account):
            self._guard(account, name, uidvalidity)
            deleted = self._delete_uids(account, name, uidvalidity, wanted)
        return int(deleted)

    def finish_pass(
        self,
        account: str,
        name: str,
        uidvalidity: int,
        *,
        uidnext: int | None,
        highestmodseq: int | None,
    ) -> None:
        """Record a verified pass (store == server as of its SELECT): the fast-path checkpoints."""
        with self._tx(account):
            self._guard(account, name, uidvalidity)
            self._run(
                "UPDATE mailboxes SET uidnext=?, highestmodseq=?, last_sync=? "
                "WHERE account=? AND name=?",
                (uidnext, highestmodseq, time.time(), account, name),
            )

    def _guard(self, account: str, name: str, uidvalidity: int) -> None:
        """Refuse writes for a UIDVALIDITY generation the mailbox is no longer at."""
        row = self._run(
            "SELECT uidvalidity FROM mailboxes WHERE account=? AND name=?", (account, name)
        ).fetchone()
        if row is None or row[0] != uidvalidity:
            raise StoreError(
                f"{account}/{name}: write for UIDVALIDITY {uidvalidity}, "
                f"mailbox is at {None if row is None else row[0]}"
            )

    # -- reads -------------------------------------------------------------------------

    def uids(self, account: str, name: str, uidvalidity: int) -> list[int]:
        rows = self._read(
            "SELECT uid FROM messages WHERE account=? AND mailbox=? AND uidvalidity=? ORDER BY uid",
            (account, name, uidvalidity),
        )
        return [int(r[0]) for r in rows]

    def flags(self, account: str, name: str, uidvalidity: int) -> dict[int, str]:
        rows = self._read(
            "SELECT uid, flags FROM messages WHERE account=? AND mailbox=? AND uidvalidity=?",
            (account, name, uidvalidity),
        )
        return {int(r[0]): r[1] for r in rows}

    def message(self, account: str, name: str, uid: int) -> tuple[str, bytes] | None:
        """(flags, raw) of the message with ``uid`` in the mailbox's current generation."""
        rows = self._read(
            "SELECT m.flags, m.raw FROM messages m JOIN mailboxes b "
            "ON b.account=m.account AND b.name=m.mailbox AND b.uidvalidity=m.uidvalidity "
            "WHERE m.account=? AND m.mailbox=? AND m.uid=?",
            (account, name, uid),
        )
        return None if not rows else (rows[0][0], bytes(rows[0][1]))

    def totals(self) -> dict[str, tuple[int, int]]:
        """account key -> (messages, bytes) currently stored."""
        rows = self._read(
            "SELECT a.key, COUNT(m.uid), COALESCE(SUM(m.size), 0) FROM accounts a "
            "LEFT JOIN messages m ON m.account=a.key GROUP BY a.key ORDER BY a.key"
        )
        return {r[0]: (int(r[1]), int(r[2])) for r in rows}

    # -- folders gone from the server (see folders.py) -----------------------------------

    def known_mailboxes(self, account: str) -> dict[str, int | None]:
        """Mailboxes of ``account`` the store syncs into (not retired): name -> UIDVALIDITY."""
        self._retired_table()
        rows = self._read(
            "SELECT name, uidvalidity FROM mailboxes WHERE account=? AND name NOT IN "
            "(SELECT name FROM retired_mailboxes WHERE account=?)",
            (account, account),
        )
        return {r[0]: r[1] for r in rows}

    def retire_mailbox(
        self, account: str, name: str, *, state: str, renamed_to: str | None = None
    ) -> str:
        """Keep the local copy of a mailbox the server no longer has, under a new key.

        The mailbox and its messages move, in one transaction, to the key
        ``name + "\\x1e" + n`` (the record separator never appears in a name this worker
        syncs, see folders.py), recorded in ``retired_mailboxes`` with ``state``
        ("gone" or "renamed") and ``renamed_to``. The old name is then free: a new
        mailbox created under it starts empty, never mixed with the old copy. Returns the
        new key.
        """
        if state not in ("gone", "renamed"):
            raise ValueError(f"state must be 'gone' or 'renamed', got {state!r}")
        self._retired_table()
        with self._tx(account):
            n = self._run(
                "SELECT COUNT(*) FROM retired_mailboxes WHERE account=? AND original=?",
                (account, name),
            ).fetchone()[0]
            key = f"{name}\x1e{n + 1}"
            uidvalidity = self._run(
                "SELECT uidvalidity FROM mailboxes WHERE account=? AND name=?", (account, name)
            ).fetchone()
            if uidvalidity is None:
                raise StoreError(f"{account}/{name}: no such mailbox in the store")
            self._move_messages(account, name, key)
            self._run(
                "UPDATE mailboxes SET name=? WHERE account=? AND name=?", (key, account, name)
            )
            self._run(
                "INSERT INTO retired_mailboxes(account, name, original, uidvalidity, state, "
                "renamed_to, retired_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (account, key, name, uidvalidity[0], state, renamed_to, time.time()),
            )
        return key

    def retired(self, account: str) -> list[tuple[str, str, str, str | None]]:
        """``account``'s retired copies: (key, original name, state, renamed_to)."""
        self._retired_table()
        rows = self._read(
            "SELECT name, original, state, renamed_to FROM retired_mailboxes "
            "WHERE account=? ORDER BY retired_at",
            (account,),
        )
        return [(r[0], r[1], r[2], r[3]) for r in rows]
