"""The PostgreSQL store on a real PostgreSQL: the SQLite store's invariants (checkpoint in
the batch's transaction, idempotent inserts, UIDVALIDITY reset, generation guard) and
fencing (a write under a stale token is refused, in the same transaction, and nothing of
it is committed). The worker syncing real Dovecot mail into it ends equal to the server."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from harness import DovecotServer, PostgresServer
from harness.configs import DEFAULTS

from examples.imap_sync.pgstore import PgStore, StaleFence
from examples.imap_sync.store import NewMessage, StoreError, UnusableStore
from examples.imap_sync.stores import FencedStore, NotOwner, open_store
from guardedpool.fleet import Lease


@pytest.fixture
def pg_dsn(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh database of this test's own on the session PostgreSQL."""
    name = f"t{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server.dsn, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    dsn = postgres_server.dsn.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield dsn
    finally:
        with psycopg.connect(postgres_server.dsn, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def msgs(*uids: int) -> list[NewMessage]:
    return [NewMessage(u, ("\\Seen",), f"Subject: {u}\r\n\r\nbody {u}\r\n".encode()) for u in uids]


def test_batches_are_idempotent_and_carry_their_checkpoint(pg_dsn: str) -> None:
    with PgStore.open(pg_dsn) as store:
        store.ensure_account("a", "h", "u")
        assert store.mailbox("a", "INBOX").uidvalidity is None
        store.reset_mailbox("a", "INBOX", 7)
        assert store.store_batch("a", "INBOX", 7, msgs(1, 2, 3)) == 3
        assert store.store_batch("a", "INBOX", 7, msgs(2, 3, 4)) == 1  # no duplicates
        assert store.uids("a", "INBOX", 7) == [1, 2, 3, 4]
        assert store.mailbox("a", "INBOX").last_uid == 4
        assert store.update_flags("a", "INBOX", 7, {1: ["\\Flagged", "\\Recent"]}) == 1
        assert store.flags("a", "INBOX", 7)[1] == "\\Flagged"
        assert store.expunge("a", "INBOX", 7, [2, 99]) == 1
        store.finish_pass("a", "INBOX", 7, uidnext=5, highestmodseq=2**62)
        state = store.mailbox("a", "INBOX")
        assert (state.uidnext, state.highestmodseq) == (5, 2**62)
        with pytest.raises(StoreError):  # a write for a generation no longer current
            store.store_batch("a", "INBOX", 8, msgs(9))
        assert store.reset_mailbox("a", "INBOX", 8) == 3  # UIDVALIDITY changed: start over
        assert store.uids("a", "INBOX", 8) == [] and store.mailbox("a", "INBOX").uidnext is None
        assert store.totals() == {"a": (0, 0)}


def test_retired_mailboxes_keep_their_messages(pg_dsn: str) -> None:
    with PgStore.open(pg_dsn) as store:
        store.ensure_account("a", "h", "u")
        store.reset_mailbox("a", "Old", 1)
        store.store_batch("a", "Old", 1, msgs(1, 2))
        key = store.retire_mailbox("a", "Old", state="renamed", renamed_to="New")
        assert store.uids("a", key, 1) == [1, 2]
        assert "Old" not in store.known_mailboxes("a")
        assert store.retired("a") == [(key, "Old", "renamed", "New")]


def test_a_stale_fencing_token_is_refused_and_nothing_of_its_write_commits(pg_dsn: str) -> None:
    old = PgStore.open(pg_dsn)
    new = PgStore.open(pg_dsn)
    try:
        old.ensure_account("a", "h", "u")
        old.set_fence("a", 5)
        old.reset_mailbox("a", "INBOX", 7)
        old.store_batch("a", "INBOX", 7, msgs(1))
        new.set_fence("a", 6)  # the account moved to another worker, with a higher token
        new.store_batch("a", "INBOX", 7, msgs(2))
        with pytest.raises(StaleFence) as info:
            old.store_batch("a", "INBOX", 7, msgs(3))
        assert info.value.seen == 6 and info.value.token == 5
        with pytest.raises(StaleFence):
            old.finish_pass("a", "INBOX", 7, uidnext=4, highestmodseq=None)
        assert new.uids("a", "INBOX", 7) == [1, 2]
        assert new.mailbox("a", "INBOX").uidnext is None
        assert new.fence_seen("a") == 6
    finally:
        old.close()
        new.close()


def test_the_fenced_store_writes_only_while_the_account_is_owned(pg_dsn: str) -> None:
    lease = Lease("a", "t", fencing_token=3)
    owned: dict[str, Lease] = {"a": lease}
    with PgStore.open(pg_dsn) as inner:
        store = FencedStore(inner, owned.get)
        store.ensure_account("a", "h", "u")
        store.reset_mailbox("a", "INBOX", 1)
        assert inner.fence_seen("a") == 3
        lease.lost = "gone"
        with pytest.raises(NotOwner):
            store.store_batch("a", "INBOX", 1, msgs(1))
        store.mark_success("a")  # informational: skipped, not raised
        assert inner.uids("a", "INBOX", 1) == []


def test_the_fenced_store_reads_retired_mailboxes_through(pg_dsn: str) -> None:
    # Push mode asks the store which mailboxes a polling round retired; a fleet worker's
    # store is a FencedStore, which had no ``retired`` (AttributeError in push mode).
    owned: dict[str, Lease] = {"a": Lease("a", "t", fencing_token=1)}
    with PgStore.open(pg_dsn) as inner:
        store = FencedStore(inner, owned.get)
        store.ensure_account("a", "h", "u")
        store.reset_mailbox("a", "Old", 1)
        key = store.retire_mailbox("a", "Old", state="renamed", renamed_to="New")
        assert store.retired("a") == inner.retired("a") == [(key, "Old", "renamed", "New")]


def test_open_store_picks_postgres_by_url_and_refuses_what_it_cannot_reach(
    pg_dsn: str, tmp_path: object
) -> None:
    store = open_store(pg_dsn)
    assert isinstance(store, PgStore)
    store.close()
    with pytest.raises(UnusableStore) as info:
        open_store("postgresql://nobody:s3cret@127.0.0.1:1/none")
    assert "s3cret" not in str(info.value)


async def test_the_worker_syncs_dovecot_into_postgres(
    pg_dsn: str, dovecot: DovecotServer, fresh_user: tuple[str, str]
) -> None:
    from examples.imap_sync.config import AccountConfig
    from examples.imap_sync.worker import SyncWorker
    from guardedpool import GuardedPool
    from guardedpool.imap import IMAPAccount, IMAPConnector

    user, password = fresh_user
    dovecot.seed_messages(user, 12)
    account = IMAPAccount(
        host=dovecot.host, port=dovecot.port, username=user, password=password, tls=False
    )
    accounts = [AccountConfig("acct", account, ("INBOX",))]
    with PgStore.open(pg_dsn) as store:
        pool = GuardedPool(IMAPConnector({"acct": account}), DEFAULTS)
        async with pool:
            worker = SyncWorker(pool, store, accounts, batch_size=5)
            summary = await worker.run_pass()
            assert summary.ok, summary.failures
            again = await worker.run_pass()
            assert again.ok
        state = store.mailbox("acct", "INBOX")
        assert state.uidvalidity is not None
        assert store.uids("acct", "INBOX", state.uidvalidity) == list(range(1, 13))
        assert store.totals()["acct"][0] == 12
