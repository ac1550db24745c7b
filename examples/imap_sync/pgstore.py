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

import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from types import TracebackType
from typing import Any

import psycopg

from .store import MailboxState, NewMessage, StoreError, UnusableStore, flags_text

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


class PgStore:
    """One PostgreSQL database; open with :meth:`open` (creates the schema), close when done.

    ``statement_timeout`` (seconds, default 30) bounds every statement; ``connect_timeout``
    (seconds, default 10) the connect. Raises :class:`~.store.UnusableStore` when the
    database cannot be reached or holds another schema version.
    """

    def __init__(self, db: psycopg.Connection[Any], dsn: str) -> None:
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
        try:
            with db.transaction():
                db.execute("SELECT pg_advisory_xact_lock(7262016)")  # one creator at a time
                db.execute(_SCHEMA)
                row = db.execute("SELECT version FROM imap_sync_meta").fetchone()
                if row is None:
                    db.execute("INSERT INTO imap_sync_meta VALUES (%s)", (SCHEMA_VERSION,))
                elif row[0] != SCHEMA_VERSION:
                    raise UnusableStore(
                        f"{_scrub(dsn)}: schema version {row[0]}, expected {SCHEMA_VERSION}"
                    )
        except psycopg.Error as exc:
            db.close()
            raise UnusableStore(f"{_scrub(dsn)}: {exc}") from exc
        except BaseException:
            db.close()
            raise
        return cls(db, dsn)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> PgStore:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- fencing -----------------------------------------------------------------------

    def set_fence(self, account: str, token: int) -> None:
        """Write ``account`` under fencing token ``token`` from now on (an int >= 0)."""
        self._fences[account] = token

    def fence_seen(self, account: str) -> int:
        """The highest fencing token the store has seen for ``account`` (0: none)."""
        row = self._db.execute("SELECT fence FROM fences WHERE account=%s", (account,)).fetchone()
        self._db.commit()
        return 0 if row is None else int(row[0])

    def _fence(self, db: psycopg.Connection[Any], account: str) -> None:
        """Check and record this worker's token for ``account``, holding the row lock
        until the transaction ends; raise :class:`StaleFence` if a higher one was seen."""
        token = self._fences.get(account, 0)
        db.execute(
            "INSERT INTO fences(account, fence) VALUES (%s, %s) ON CONFLICT DO NOTHING",
            (account, token),
        )
        seen = db.execute(
            "SELECT fence FROM fences WHERE account=%s FOR UPDATE", (account,)
        ).fetchone()
        assert seen is not None
        if seen[0] > token:
            raise StaleFence(account, token, int(seen[0]))
        if seen[0] < token:
            db.execute("UPDATE fences SET fence=%s WHERE account=%s", (token, account))

    @contextmanager
    def _tx(self, account: str | None = None) -> Iterator[psycopg.Connection[Any]]:
        """One write transaction, fenced for ``account``: all of it commits, or none."""
        with self._db.transaction():
            if account is not None:
                self._fence(self._db, account)
            yield self._db

    # -- accounts and mailboxes ---------------------------------------------------------

    def ensure_account(self, key: str, host: str, username: str) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO accounts(key, host, username) VALUES (%s, %s, %s) "
                "ON CONFLICT(key) DO UPDATE SET host=excluded.host, username=excluded.username",
                (key, host, username),
            )

    def mark_success(self, key: str, when: float | None = None) -> None:
        with self._tx(key) as db:
            db.execute(
                "UPDATE accounts SET last_success=%s WHERE key=%s",
                (time.time() if when is None else when, key),
            )

    def mailbox(self, account: str, name: str) -> MailboxState:
        with self._tx(account) as db:
            db.execute(
                "INSERT INTO mailboxes(account, name) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                (account, name),
            )
            row = db.execute(
                "SELECT uidvalidity, last_uid, uidnext, highestmodseq, last_sync "
                "FROM mailboxes WHERE account=%s AND name=%s",
                (account, name),
            ).fetchone()
        assert row is not None
        return MailboxState(*row)

    def reset_mailbox(self, account: str, name: str, uidvalidity: int) -> int:
        with self._tx(account) as db:
            dropped = db.execute(
                "DELETE FROM messages WHERE account=%s AND mailbox=%s", (account, name)
            ).rowcount
            db.execute(
                "INSERT INTO mailboxes(account, name, uidvalidity) VALUES (%s, %s, %s) "
                "ON CONFLICT (account, name) DO UPDATE SET uidvalidity=excluded.uidvalidity, "
                "last_uid=0, uidnext=NULL, highestmodseq=NULL",
                (account, name, uidvalidity),
            )
        return int(dropped)

    # -- messages ----------------------------------------------------------------------

    def store_batch(
        self, account: str, name: str, uidvalidity: int, messages: Iterable[NewMessage]
    ) -> int:
        now = time.time()
        with self._tx(account) as db:
            self._guard(db, account, name, uidvalidity)
            inserted = 0
            highest = 0
            for m in messages:
                cur = db.execute(
                    "INSERT INTO messages(account, mailbox, uidvalidity, uid, flags, size, raw, "
                    "stored_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
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
                "UPDATE mailboxes SET last_uid=GREATEST(last_uid, %s) WHERE account=%s AND name=%s",
                (highest, account, name),
            )
        return inserted

    def update_flags(
        self, account: str, name: str, uidvalidity: int, flags: Mapping[int, Iterable[str]]
    ) -> int:
        changed = 0
        with self._tx(account) as db:
            self._guard(db, account, name, uidvalidity)
            for uid, value in flags.items():
                text = flags_text(value)
                changed += db.execute(
                    "UPDATE messages SET flags=%s WHERE account=%s AND mailbox=%s "
                    "AND uidvalidity=%s AND uid=%s AND flags<>%s",
                    (text, account, name, uidvalidity, uid, text),
                ).rowcount
        return changed

    def expunge(self, account: str, name: str, uidvalidity: int, uids: Iterable[int]) -> int:
        wanted = list(uids)
        with self._tx(account) as db:
            self._guard(db, account, name, uidvalidity)
            deleted = db.execute(
                "DELETE FROM messages WHERE account=%s AND mailbox=%s AND uidvalidity=%s "
                "AND uid = ANY(%s)",
                (account, name, uidvalidity, wanted),
            ).rowcount
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
        with self._tx(account) as db:
            self._guard(db, account, name, uidvalidity)
            db.execute(
                "UPDATE mailboxes SET uidnext=%s, highestmodseq=%s, last_sync=%s "
                "WHERE account=%s AND name=%s",
                (uidnext, highestmodseq, time.time(), account, name),
            )

    @staticmethod
    def _guard(db: psycopg.Connection[Any], account: str, name: str, uidvalidity: int) -> None:
        row = db.execute(
            "SELECT uidvalidity FROM mailboxes WHERE account=%s AND name=%s", (account, name)
        ).fetchone()
        if row is None or row[0] != uidvalidity:
            raise StoreError(
                f"{account}/{name}: write for UIDVALIDITY {uidvalidity}, "
                f"mailbox is at {None if row is None else row[0]}"
            )

    # -- reads (each its own short transaction) -----------------------------------------

    def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._db.transaction():
            return list(self._db.execute(sql, args).fetchall())

    def uids(self, account: str, name: str, uidvalidity: int) -> list[int]:
        rows = self._read(
            "SELECT uid FROM messages WHERE account=%s AND mailbox=%s AND uidvalidity=%s "
            "ORDER BY uid",
            (account, name, uidvalidity),
        )
        return [int(r[0]) for r in rows]

    def flags(self, account: str, name: str, uidvalidity: int) -> dict[int, str]:
        rows = self._read(
            "SELECT uid, flags FROM messages WHERE account=%s AND mailbox=%s AND uidvalidity=%s",
            (account, name, uidvalidity),
        )
        return {int(r[0]): r[1] for r in rows}

    def message(self, account: str, name: str, uid: int) -> tuple[str, bytes] | None:
        rows = self._read(
            "SELECT m.flags, m.raw FROM messages m JOIN mailboxes b "
            "ON b.account=m.account AND b.name=m.mailbox AND b.uidvalidity=m.uidvalidity "
            "WHERE m.account=%s AND m.mailbox=%s AND m.uid=%s",
            (account, name, uid),
        )
        return None if not rows else (rows[0][0], bytes(rows[0][1]))

    def totals(self) -> dict[str, tuple[int, int]]:
        rows = self._read(
            "SELECT a.key, COUNT(m.uid), COALESCE(SUM(m.size), 0) FROM accounts a "
            "LEFT JOIN messages m ON m.account=a.key GROUP BY a.key ORDER BY a.key"
        )
        return {r[0]: (int(r[1]), int(r[2])) for r in rows}

    # -- folders gone from the server (see folders.py) -----------------------------------

    def known_mailboxes(self, account: str) -> dict[str, int | None]:
        rows = self._read(
            "SELECT name, uidvalidity FROM mailboxes WHERE account=%s AND name NOT IN "
            "(SELECT name FROM retired_mailboxes WHERE account=%s)",
            (account, account),
        )
        return {r[0]: r[1] for r in rows}

    def retire_mailbox(
        self, account: str, name: str, *, state: str, renamed_to: str | None = None
    ) -> str:
        """As :meth:`.store.Store.retire_mailbox`; the messages follow the mailbox's new
        key through ``ON UPDATE CASCADE``."""
        if state not in ("gone", "renamed"):
            raise ValueError(f"state must be 'gone' or 'renamed', got {state!r}")
        with self._tx(account) as db:
            row = db.execute(
                "SELECT COUNT(*) FROM retired_mailboxes WHERE account=%s AND original=%s",
                (account, name),
            ).fetchone()
            key = f"{name}\x1e{(row[0] if row else 0) + 1}"
            uv = db.execute(
                "SELECT uidvalidity FROM mailboxes WHERE account=%s AND name=%s", (account, name)
            ).fetchone()
            if uv is None:
                raise StoreError(f"{account}/{name}: no such mailbox in the store")
            db.execute(
                "UPDATE mailboxes SET name=%s WHERE account=%s AND name=%s", (key, account, name)
            )
            db.execute(
                "INSERT INTO retired_mailboxes(account, name, original, uidvalidity, state, "
                "renamed_to, retired_at) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (account, key, name, uv[0], state, renamed_to, time.time()),
            )
        return key

    def retired(self, account: str) -> list[tuple[str, str, str, str | None]]:
        rows = self._read(
            "SELECT name, original, state, renamed_to FROM retired_mailboxes "
            "WHERE account=%s ORDER BY retired_at",
            (account,),
        )
        return [(r[0], r[1], r[2], r[3]) for r in rows]
