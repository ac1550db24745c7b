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
synchronous and any thread may make them, one at a time (the lock of
:class:`.mirror.SqlMirror`): the worker writes its batches of new messages on the store's
own thread (:attr:`~.mirror.SqlMirror.executor`), so that SQLite's work, which releases
the GIL, runs on another core than the event loop; everything else is called from the
loop's thread. Queries (``uids``, ``flags``, ``known_mailboxes``, ``totals``...) run on a
second, read-only connection with a lock of its own: in WAL mode a reader sees the last
commit and neither waits for the writer nor holds it up, so a pass's read of its stored
UIDs does not stall the event loop -- every mailbox's session -- behind another
mailbox's batch being committed. A pass never reads what it has not committed: each of
its batches is committed before its next step (see :mod:`.mailbox`).

Pages are 32 KiB. Measured with ``benchmarks/store_pages.py`` (10 inboxes of the sync
benchmark's corpus, 297 MB of bodies), SQLite in WAL mode makes the disk take 1.35x the
bodies' bytes with 64 KiB pages (1.13x in the file, the rest WAL pages written back
before the WAL was reused), 1.24x with 32 KiB and 1.17x with 16 KiB, for the same CPU at
32 KiB and ~20% more at 16 KiB (4 KiB: ~2x, long overflow chains). A rollback journal
(``PERSIST``) would write each body once (1.08x) for ~30% less CPU, but a reader in
another process would then block commits, and a commit that reader, and
``synchronous=NORMAL`` is not power-safe without WAL: WAL is kept.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from .mirror import MailboxState, NewMessage, SqlMirror, StoreError, flags_text

__all__ = ["MailboxState", "NewMessage", "Store", "StoreError", "UnusableStore", "flags_text"]

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


class Closable(Protocol):
    def close(self) -> None: ...


class UnusableStore(StoreError):
    """The store path cannot be opened as this worker's store: not a file SQLite can open
    or create, not a database, or another schema. Nothing was written to it."""


@contextmanager
def opening(db: Closable, error: type[Exception], where: str) -> Iterator[None]:
    """The setup of a store just connected: if it fails, ``db`` is closed, and the
    driver's ``error`` is raised as :class:`UnusableStore` (``where: error``)."""
    try:
        yield
    except error as exc:
        db.close()
        raise UnusableStore(f"{where}: {exc}") from exc
    except BaseException:
        db.close()
        raise


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


class Store(SqlMirror):
    """One SQLite file; open with :meth:`open` (creates the schema), close when done.
    The operations are :class:`.mirror.SqlMirror`'s; this is their SQLite dialect."""

    _GREATEST = "MAX"

    def __init__(
        self, db: sqlite3.Connection, reader: sqlite3.Connection | None, path: Path
    ) -> None:
        super().__init__()
        self._db = db
        self._reader = reader  # read-only, for queries (see the module docstring)
        self._reading = threading.RLock()
        self.path = path

    @classmethod
    def open(cls, path: str | Path, *, fsync: bool = True) -> Store:
        """Open (creating the schema if new). ``fsync=False`` never fsyncs: a crash of
        this process loses nothing (WAL), a power cut may lose or corrupt the file."""
        p = Path(path)
        try:
            # We BEGIN/COMMIT ourselves; any thread may use the connection, one at a time
            # (SqlMirror's lock).
            db = sqlite3.connect(p, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise UnusableStore(f"{p}: {exc}") from exc
        with opening(db, sqlite3.Error, str(p)):
            # Read before anything writes: switching to WAL rewrites the file header, and
            # a file that is not ours must be refused exactly as it was found.
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, 1, SCHEMA_VERSION):
                raise UnusableStore(f"{p}: schema version {version}, expected {SCHEMA_VERSION}")
            # Only takes on a new file; 16 KiB: see the module docstring.
            db.execute("PRAGMA page_size=32768")
            # NORMAL in WAL mode fsyncs at checkpoints only, never per commit. Set before
            # the switch to WAL: on a new file that switch is a write of its own (a
            # rollback journal, the header), fsynced unless OFF is already in force.
            db.execute(f"PRAGMA synchronous={'NORMAL' if fsync else 'OFF'}")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA foreign_keys=ON")
            db.execute("PRAGMA busy_timeout=5000")
            db.executescript(_SCHEMA)
            if version == 1:
                _migrate_1_to_2(db)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            reader = None  # a database in memory has no second connection: one for all
            if str(path) not in ("", ":memory:"):
                reader = sqlite3.connect(
                    f"{p.resolve().as_uri()}?mode=ro",
                    uri=True,
                    isolation_level=None,
                    check_same_thread=False,
                )
                with opening(reader, sqlite3.Error, str(p)):
                    reader.execute("PRAGMA busy_timeout=5000")
        return cls(db, reader, p)

    def _close(self) -> None:
        if self._reader is not None:
            with self._serial(self._reading):
                self._reader.close()
        self._db.close()

    def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        """The rows of one query, on the read-only connection (holding its own lock), or
        on the one connection of a database in memory."""
        if self._reader is None:
            return super()._read(sql, args)
        with self._serial(self._reading):
            return list(self._reader.execute(sql, args).fetchall())

    def _run(self, sql: str, args: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        return self._db.execute(sql, args)

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

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

    def _ensure_retired_table(self) -> None:
        self._db.execute(self._RETIRED)

    def _move_messages(self, account: str, name: str, key: str) -> None:
        self._db.execute("PRAGMA defer_foreign_keys=ON")  # parent and children move together
        self._db.execute(
            "UPDATE messages SET mailbox=? WHERE account=? AND mailbox=?", (key, account, name)
        )
