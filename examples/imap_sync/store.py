"""The local mirror: SQLite, where a checkpoint never runs ahead of the messages.

A pass decides what to fetch as *server minus stored* (see :mod:`.mailbox`), so the
messages themselves are the checkpoint: whatever was stored is stored, whatever was not
is fetched again. Each batch is one transaction, so a crash loses at most the batch in
flight; ``UNIQUE(account, mailbox, uidvalidity, uid)`` makes a second insert of a stored
message a no-op rather than a duplicate. ``last_uid`` (the highest UID stored in this
generation) is computed in the same transaction from the messages inserted, never from
what was asked for: it is for people and metrics, no pass decides anything by it.
``uidnext`` and ``highestmodseq`` are written by :meth:`Store.finish_pass` only after a
pass verified the store equal to the server, so the "nothing changed" fast path only ever
trusts a verified store.

A mailbox whose UIDVALIDITY changed is reset in one transaction: its messages are
deleted, its checkpoints cleared, the new UIDVALIDITY recorded. UIDs of the old
generation mean nothing any more (RFC 3501 2.3.1.1), so nothing of it is kept.

Schema version 2 (this one) differs from 1 only in meaning: version 1 moved ``last_uid``
to the highest UID a batch *asked for*, and fetched only above it, so a store written by
it may lack messages while its ``uidnext``/``highestmodseq`` claim a complete pass.
Opening a version-1 store clears those two columns of every mailbox (one transaction),
so the next pass of each mailbox runs in full -- SEARCH, all flags, every message
missing fetched -- and heals whatever version 1 lost. Nothing else changes.

WAL mode lets readers (``/metrics``, a test, ``sqlite3`` in a shell) look while a sync
writes. ``synchronous=NORMAL`` does not fsync each commit: a killed process loses
nothing committed, a power cut may lose the last transactions -- but always whole ones, in
order, so a store is always a set of whole messages the server had. The calls are
synchronous: a commit is a few milliseconds, and one writer connection on the event
loop's thread needs no locking.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

__all__ = ["MailboxState", "NewMessage", "Store", "StoreError", "UnusableStore"]

SCHEMA_VERSION = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    key          TEXT PRIMARY KEY,
    host         TEXT NOT NULL,
    username     TEXT NOT NULL,
    last_success REAL                -- wall clock of the last pass with no error
);
CREATE TABLE IF NOT EXISTS mailboxes (
    account       TEXT NOT NULL REFERENCES accounts(key) ON DELETE CASCADE,
    name          TEXT NOT NULL,
    uidvalidity   INTEGER,           -- NULL until the first SELECT
    last_uid      INTEGER NOT NULL DEFAULT 0,  -- highest UID stored (informational)
    uidnext       INTEGER,           -- as of the last verified pass
    highestmodseq INTEGER,           -- flags current up to here; NULL: unknown/no CONDSTORE
    last_sync     REAL,              -- wall clock of the last completed pass
    PRIMARY KEY (account, name)
);
CREATE TABLE IF NOT EXISTS messages (
    account     TEXT NOT NULL,
    mailbox     TEXT NOT NULL,
    uidvalidity INTEGER NOT NULL,
    uid         INTEGER NOT NULL,
    flags       TEXT NOT NULL,       -- space-separated, sorted; \\Recent is never stored
    size        INTEGER NOT NULL,
    raw         BLOB NOT NULL,       -- the RFC 822 bytes as the server sent them
    stored_at   REAL NOT NULL,
    UNIQUE (account, mailbox, uidvalidity, uid),
    FOREIGN KEY (account, mailbox) REFERENCES mailboxes(account, name) ON DELETE CASCADE
);
"""


class StoreError(RuntimeError):
    """The store refused an operation that would break its invariants."""


class UnusableStore(StoreError):
    """The store path cannot be opened as this worker's store: not a file SQLite can open
    or create, not a database, or another schema. Nothing was written to it."""


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


def _migrate_1_to_2(db: sqlite3.Connection) -> None:
    """Forget every mailbox's fast-path checkpoints: its next pass runs in full."""
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute("UPDATE mailboxes SET uidnext=NULL, highestmodseq=NULL")
        db.execute("PRAGMA user_version=2")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


class Store:
    """One SQLite file; open with :meth:`open` (creates the schema), close when done."""

    def __init__(self, db: sqlite3.Connection, path: Path) -> None:
        self._db = db
        self.path = path

    @classmethod
    def open(cls, path: str | Path, *, fsync: bool = True) -> Store:
        """Open (creating the schema if new). ``fsync=False`` never fsyncs: a crash of
        this process loses nothing (WAL), a power cut may lose or corrupt the file."""
        p = Path(path)
        try:
            db = sqlite3.connect(p, isolation_level=None)  # we BEGIN/COMMIT ourselves
        except sqlite3.Error as exc:
            raise UnusableStore(f"{p}: {exc}") from exc
        try:
            # Read before anything writes: switching to WAL rewrites the file header, and
            # a file that is not ours must be refused exactly as it was found.
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, 1, SCHEMA_VERSION):
                raise UnusableStore(f"{p}: schema version {version}, expected {SCHEMA_VERSION}")
            db.execute("PRAGMA page_size=65536")  # only takes on a new file
            db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode fsyncs at checkpoints only, never per commit.
            db.execute(f"PRAGMA synchronous={'NORMAL' if fsync else 'OFF'}")
            db.execute("PRAGMA foreign_keys=ON")
            db.execute("PRAGMA busy_timeout=5000")
            db.executescript(_SCHEMA)
            if version == 1:
                _migrate_1_to_2(db)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.Error as exc:
            db.close()
            raise UnusableStore(f"{p}: {exc}") from exc
        except BaseException:
            db.close()
            raise
        return cls(db, p)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: all of it is committed, or none of it."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # -- accounts and mailboxes ---------------------------------------------------------

    def ensure_account(self, key: str, host: str, username: str) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO accounts(key, host, username) VALUES (?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET host=excluded.host, username=excluded.username",
                (key, host, username),
            )

    def mark_success(self, key: str, when: float | None = None) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE accounts SET last_success=? WHERE key=?",
                (time.time() if when is None else when, key),
            )

    def mailbox(self, account: str, name: str) -> MailboxState:
        """The mailbox's checkpoints; a mailbox seen for the first time starts empty."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO mailboxes(account, name) VALUES (?, ?) ON CONFLICT DO NOTHING",
                (account, name),
            )
            row = db.execute(
                "SELECT uidvalidity, last_uid, uidnext, highestmodseq, last_sync "
                "FROM mailboxes WHERE account=? AND name=?",
                (account, name),
            ).fetchone()
        return MailboxState(*row)

    def reset_mailbox(self, account: str, name: str, uidvalidity: int) -> int:
        """Start the mailbox over under a new UIDVALIDITY; returns messages dropped."""
        with self._tx() as db:
            dropped = db.execute(
                "DELETE FROM messages WHERE account=? AND mailbox=?", (account, name)
            ).rowcount
            db.execute(
                "INSERT INTO mailboxes(account, name, uidvalidity) VALUES (?, ?, ?) "
                "ON CONFLICT DO UPDATE SET uidvalidity=excluded.uidvalidity, last_uid=0, "
                "uidnext=NULL, highestmodseq=NULL",
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
        with self._tx() as db:
            self._guard(db, account, name, uidvalidity)
            inserted = 0
            highest = 0
            for m in messages:
                cur = db.execute(
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
            db.execute(
                "UPDATE mailboxes SET last_uid=MAX(last_uid, ?) WHERE account=? AND name=?",
                (highest, account, name),
            )
        return inserted

    def update_flags(
        self, account: str, name: str, uidvalidity: int, flags: Mapping[int, Iterable[str]]
    ) -> int:
        """Set the flags of stored messages; returns how many actually changed."""
        changed = 0
        with self._tx() as db:
            self._guard(db, account, name, uidvalidity)
            for uid, value in flags.items():
                text = flags_text(value)
                cur = db.execute(
                    "UPDATE messages SET flags=? WHERE account=? AND mailbox=? AND uidvalidity=? "
                    "AND uid=? AND flags<>?",
                    (text, account, name, uidvalidity, uid, text),
                )
                changed += cur.rowcount
        return changed

    def expunge(self, account: str, name: str, uidvalidity: int, uids: Iterable[int]) -> int:
        """Delete messages the server no longer has; returns how many were deleted."""
        deleted = 0
        with self._tx() as db:
            self._guard(db, account, name, uidvalidity)
            for uid in uids:
                deleted += db.execute(
                    "DELETE FROM messages WHERE account=? AND mailbox=? AND uidvalidity=? "
                    "AND uid=?",
                    (account, name, uidvalidity, uid),
                ).rowcount
        return deleted

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
        with self._tx() as db:
            self._guard(db, account, name, uidvalidity)
            db.execute(
                "UPDATE mailboxes SET uidnext=?, highestmodseq=?, last_sync=? "
                "WHERE account=? AND name=?",
                (uidnext, highestmodseq, time.time(), account, name),
            )

    @staticmethod
    def _guard(db: sqlite3.Connection, account: str, name: str, uidvalidity: int) -> None:
        """Refuse writes for a UIDVALIDITY generation the mailbox is no longer at."""
        row = db.execute(
            "SELECT uidvalidity FROM mailboxes WHERE account=? AND name=?", (account, name)
        ).fetchone()
        if row is None or row[0] != uidvalidity:
            raise StoreError(
                f"{account}/{name}: write for UIDVALIDITY {uidvalidity}, "
                f"mailbox is at {None if row is None else row[0]}"
            )

    # -- reads -------------------------------------------------------------------------

    def uids(self, account: str, name: str, uidvalidity: int) -> list[int]:
        rows = self._db.execute(
            "SELECT uid FROM messages WHERE account=? AND mailbox=? AND uidvalidity=? ORDER BY uid",
            (account, name, uidvalidity),
        )
        return [r[0] for r in rows]

    def flags(self, account: str, name: str, uidvalidity: int) -> dict[int, str]:
        rows = self._db.execute(
            "SELECT uid, flags FROM messages WHERE account=? AND mailbox=? AND uidvalidity=?",
            (account, name, uidvalidity),
        )
        return {r[0]: r[1] for r in rows}

    def message(self, account: str, name: str, uid: int) -> tuple[str, bytes] | None:
        """(flags, raw) of the message with ``uid`` in the mailbox's current generation."""
        row = self._db.execute(
            "SELECT m.flags, m.raw FROM messages m JOIN mailboxes b "
            "ON b.account=m.account AND b.name=m.mailbox AND b.uidvalidity=m.uidvalidity "
            "WHERE m.account=? AND m.mailbox=? AND m.uid=?",
            (account, name, uid),
        ).fetchone()
        return None if row is None else (row[0], bytes(row[1]))

    def totals(self) -> dict[str, tuple[int, int]]:
        """account key -> (messages, bytes) currently stored."""
        rows = self._db.execute(
            "SELECT a.key, COUNT(m.uid), COALESCE(SUM(m.size), 0) FROM accounts a "
            "LEFT JOIN messages m ON m.account=a.key GROUP BY a.key ORDER BY a.key"
        )
        return {r[0]: (r[1], r[2]) for r in rows}

    # -- folders gone from the server (see folders.py) -----------------------------------

    _RETIRED = """
    CREATE TABLE IF NOT EXISTS retired_mailboxes (
        account     TEXT NOT NULL,
        name        TEXT NOT NULL,   -- the key the local copy now has in mailboxes/messages
        original    TEXT NOT NULL,   -- its name on the server (wire form)
        uidvalidity INTEGER,
        state       TEXT NOT NULL,   -- 'gone' (deleted) or 'renamed'
        renamed_to  TEXT,            -- wire name of the rename target, when known
        retired_at  REAL NOT NULL,
        PRIMARY KEY (account, name)
    )"""

    def known_mailboxes(self, account: str) -> dict[str, int | None]:
        """Mailboxes of ``account`` the store syncs into (not retired): name -> UIDVALIDITY."""
        self._db.execute(self._RETIRED)
        rows = self._db.execute(
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
        self._db.execute(self._RETIRED)
        with self._tx() as db:
            n = db.execute(
                "SELECT COUNT(*) FROM retired_mailboxes WHERE account=? AND original=?",
                (account, name),
            ).fetchone()[0]
            key = f"{name}\x1e{n + 1}"
            uidvalidity = db.execute(
                "SELECT uidvalidity FROM mailboxes WHERE account=? AND name=?", (account, name)
            ).fetchone()
            if uidvalidity is None:
                raise StoreError(f"{account}/{name}: no such mailbox in the store")
            db.execute("PRAGMA defer_foreign_keys=ON")  # parent and children move together
            db.execute(
                "UPDATE mailboxes SET name=? WHERE account=? AND name=?", (key, account, name)
            )
            db.execute(
                "UPDATE messages SET mailbox=? WHERE account=? AND mailbox=?", (key, account, name)
            )
            db.execute(
                "INSERT INTO retired_mailboxes(account, name, original, uidvalidity, state, "
                "renamed_to, retired_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (account, key, name, uidvalidity[0], state, renamed_to, time.time()),
            )
        return key

    def retired(self, account: str) -> list[tuple[str, str, str, str | None]]:
        """``account``'s retired copies: (key, original name, state, renamed_to)."""
        self._db.execute(self._RETIRED)
        rows = self._db.execute(
            "SELECT name, original, state, renamed_to FROM retired_mailboxes "
            "WHERE account=? ORDER BY retired_at",
            (account,),
        )
        return [(r[0], r[1], r[2], r[3]) for r in rows]
