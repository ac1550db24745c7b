"""The local mirror on PostgreSQL: one store every worker of a fleet can reach.

The same invariants as the SQLite :class:`~.store.Store` (read its docstring): each batch
is one transaction with its checkpoint (``last_uid`` from the messages inserted), inserts
are idempotent (``UNIQUE (account, mailbox, uidvalidity, uid)`` and ``ON CONFLICT DO
NOTHING``), a UIDVALIDITY change resets the mailbox in one transaction, and a write for a
generation the mailbox is no longer at is refused (:class:`~.store.StoreError`).

**Fencing.** In a fleet, a worker writes an account only while it owns it, under the
owner lease's fencing token (strictly growing per account, from Redis; see
:class:`guardedpool.fleet.RedisOwnership`). :meth:`PgStore.set_fence` tells the store the
token this worker holds for an account; every write transaction then locks the account's
row in ``fences`` (``SELECT ... FOR UPDATE``), refuses the write with
:class:`StaleFence` when a higher token was seen, and records its own token otherwise --
in the same transaction as the write. Once the new owner has written once, nothing the
old owner still sends is committed, so two workers never interleave writes to one
mailbox (Kleppmann's fencing tokens). An account with no fence set writes under token 0.

The calls are synchronous, like the SQLite store's: a transaction against a PostgreSQL on
the same network is a millisecond or two, and one connection per worker on the event
loop's thread needs no locking. The connection uses ``connect_timeout`` and a
``statement_timeout``, so no call waits without bound.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AbstractContextManager
from typing import Any

import psycopg

from .mirror import SqlMirror, StoreError
from .store import UnusableStore, opening

__all__ = ["SCHEMA_VERSION", "PgStore", "StaleFence"]

SCHEMA_VERSION = 2  # the SQLite store's, so both read the same way

_SCHEMA = """
CREATE TABLE IF NOT EXISTS imap_sync_meta (
    version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS accounts (
    key          TEXT PRIMARY KEY,
    host         TEXT NOT NULL,
    username     TEXT NOT NULL,
    last_success DOUBLE PRECISION
);
CREATE TABLE IF NOT EXISTS fences (
    account TEXT PRIMARY KEY,
    fence   BIGINT NOT NULL          -- the highest fencing token any write carried
);
CREATE TABLE IF NOT EXISTS mailboxes (
    account       TEXT NOT NULL REFERENCES accounts(key) ON DELETE CASCADE,
    name          TEXT NOT NULL,
    uidvalidity   BIGINT,
    last_uid      BIGINT NOT NULL DEFAULT 0,
    uidnext       BIGINT,
    highestmodseq BIGINT,            -- RFC 7162 mod-sequences are 63-bit: they fit
    last_sync     DOUBLE PRECISION,
    PRIMARY KEY (account, name)
);
CREATE TABLE IF NOT EXISTS messages (
    account     TEXT NOT NULL,
    mailbox     TEXT NOT NULL,
    uidvalidity BIGINT NOT NULL,
    uid         BIGINT NOT NULL,
    flags       TEXT NOT NULL,
    size        INTEGER NOT NULL,
    raw         BYTEA NOT NULL,
    stored_at   DOUBLE PRECISION NOT NULL,
    UNIQUE (account, mailbox, uidvalidity, uid),
    FOREIGN KEY (account, mailbox) REFERENCES mailboxes(account, name)
        ON DELETE CASCADE ON UPDATE CASCADE
);
CREATE TABLE IF NOT EXISTS retired_mailboxes (
    account     TEXT NOT NULL,
    name        TEXT NOT NULL,
    original    TEXT NOT NULL,
    uidvalidity BIGINT,
    state       TEXT NOT NULL,
    renamed_to  TEXT,
    retired_at  DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (account, name)
);
"""


class StaleFence(StoreError):
    """A write carried a fencing token lower than one the store has seen for the account:
    another worker owns it now. Nothing of the write was committed."""

    def __init__(self, account: str, token: int, seen: int) -> None:
        self.account = account
        self.token = token
        self.seen = seen
        super().__init__(
            f"{account}: write under fencing token {token} refused, "
            f"the store has seen token {seen} (another worker owns the account now)"
        )


def _scrub(dsn: str) -> str:
    """The DSN without its password, for messages."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<unparsable dsn>"
    info.pop("password", None)
    return psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in info.items()})


class PgStore(SqlMirror):
    """One PostgreSQL database; open with :meth:`open` (creates the schema), close when done.
    The operations are :class:`.mirror.SqlMirror`'s; this is their PostgreSQL dialect.

    ``statement_timeout`` (seconds, default 30) bounds every statement; ``connect_timeout``
    (seconds, default 10) the connect. Raises :class:`~.store.UnusableStore` when the
    database cannot be reached or holds another schema version.
    """

    _GREATEST = "GREATEST"

    def __init__(self, db: psycopg.Connection[Any], dsn: str) -> None:
        super().__init__()
        self._db = db
        self.path = _scrub(dsn)  # what the SQLite store calls its path: for messages
        self._fences: dict[str, int] = {}

    @classmethod
    def open(
        cls, dsn: str, *, connect_timeout: float = 10.0, statement_timeout: float = 30.0
    ) -> PgStore:
        try:
            db = psycopg.connect(
                dsn,
                connect_timeout=max(1, round(connect_timeout)),
                options=f"-c statement_timeout={int(statement_timeout * 1000)}",
            )
        except psycopg.Error as exc:
            raise UnusableStore(f"{_scrub(dsn)}: {type(exc).__name__}") from exc
        with opening(db, psycopg.Error, _scrub(dsn)), db.transaction():
            db.execute("SELECT pg_advisory_xact_lock(7262016)")  # one creator at a time
            db.execute(_SCHEMA)
            row = db.execute("SELECT version FROM imap_sync_meta").fetchone()
            if row is None:
                db.execute("INSERT INTO imap_sync_meta VALUES (%s)", (SCHEMA_VERSION,))
            elif row[0] != SCHEMA_VERSION:
                raise UnusableStore(
                    f"{_scrub(dsn)}: schema version {row[0]}, expected {SCHEMA_VERSION}"
                )
        return cls(db, dsn)

    def _close(self) -> None:
        self._db.close()

    def _run(self, sql: str, args: tuple[Any, ...] = ()) -> psycopg.Cursor[Any]:
        return self._db.execute(sql.replace("?", "%s"), args)

    def _transaction(self) -> AbstractContextManager[object]:
        return self._db.transaction()

    def _select(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        """Each read is its own short transaction."""
        with self._db.transaction():
            return list(self._run(sql, args).fetchall())

    def _delete_uids(self, account: str, name: str, uidvalidity: int, uids: Iterable[int]) -> int:
        return self._run(
            "DELETE FROM messages WHERE account=? AND mailbox=? AND uidvalidity=? AND uid = ANY(?)",
            (account, name, uidvalidity, list(uids)),
        ).rowcount

    # -- fencing -----------------------------------------------------------------------

    def set_fence(self, account: str, token: int) -> None:
        """Write ``account`` under fencing token ``token`` from now on (an int >= 0)."""
        self._fences[account] = token

    def fence_seen(self, account: str) -> int:
        """The highest fencing token the store has seen for ``account`` (0: none)."""
        with self._serial():
            row = self._run("SELECT fence FROM fences WHERE account=?", (account,)).fetchone()
            self._db.commit()
        return 0 if row is None else int(row[0])

    def _fence(self, account: str) -> None:
        """Check and record this worker's token for ``account``, holding the row lock
        until the transaction ends; raise :class:`StaleFence` if a higher one was seen."""
        token = self._fences.get(account, 0)
        self._run(
            "INSERT INTO fences(account, fence) VALUES (?, ?) ON CONFLICT DO NOTHING",
            (account, token),
        )
        seen = self._run(
            "SELECT fence FROM fences WHERE account=? FOR UPDATE", (account,)
        ).fetchone()
        assert seen is not None
        if seen[0] > token:
            raise StaleFence(account, token, int(seen[0]))
        if seen[0] < token:
            self._run("UPDATE fences SET fence=? WHERE account=?", (token, account))
