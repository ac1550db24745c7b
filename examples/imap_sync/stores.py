"""What the worker needs from a store (:class:`MailStore`), and which store a config names.

Two implementations keep the same invariants (see :mod:`.store`): :class:`.store.Store`
on SQLite (the default, one worker) and :class:`.pgstore.PgStore` on PostgreSQL (one
database every worker of a fleet can reach, with fencing). ``store = "postgresql://..."``
in sync.toml selects PostgreSQL; anything else is a SQLite file.

:class:`FencedStore` is how a fleet worker writes: before each write it checks,
synchronously, that it still owns the account (its owner lease is valid) and hands the
lease's fencing token to the store, which refuses the write if a newer owner has written
(:class:`.pgstore.StaleFence`). A worker that lost an account thus stops writing it at
its next write, and even a worker paused mid-write cannot interleave with the new owner.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Executor
from typing import Protocol

from guardedpool.fleet import Lease

from .store import MailboxState, NewMessage, StoreError

log = logging.getLogger("imap_sync")

__all__ = ["FencedStore", "MailStore", "NotOwner", "is_postgres_url", "open_store"]


def is_postgres_url(value: str) -> bool:
    """Whether a ``store`` value names a PostgreSQL database rather than a SQLite file."""
    return value.startswith(("postgresql://", "postgres://"))


class MailStore(Protocol):
    """The calls :mod:`.mailbox`, :mod:`.folders` and :mod:`.worker` make. Every write is
    one transaction; see :class:`.store.Store` for each method's contract. Any thread may
    call them (one at a time: the store serialises); ``executor`` is the store's own
    thread, where :mod:`.mailbox` writes its batches (see :mod:`.mirror`)."""

    @property
    def executor(self) -> Executor: ...

    def ensure_account(self, key: str, host: str, username: str) -> None: ...
    def mark_success(self, key: str, when: float | None = None) -> None: ...
    def mailbox(self, account: str, name: str) -> MailboxState: ...
    def reset_mailbox(self, account: str, name: str, uidvalidity: int) -> int: ...
    def store_batch(
        self, account: str, name: str, uidvalidity: int, messages: Iterable[NewMessage]
    ) -> int: ...
    def update_flags(
        self, account: str, name: str, uidvalidity: int, flags: Mapping[int, Iterable[str]]
    ) -> int: ...
    def expunge(self, account: str, name: str, uidvalidity: int, uids: Iterable[int]) -> int: ...
    def finish_pass(
        self,
        account: str,
        name: str,
        uidvalidity: int,
        *,
        uidnext: int | None,
        highestmodseq: int | None,
    ) -> None: ...
    def uids(self, account: str, name: str, uidvalidity: int) -> list[int]: ...
    def known_mailboxes(self, account: str) -> dict[str, int | None]: ...
    def retire_mailbox(
        self, account: str, name: str, *, state: str, renamed_to: str | None = None
    ) -> str: ...
    def retired(self, account: str) -> list[tuple[str, str, str, str | None]]: ...
    def totals(self) -> dict[str, tuple[int, int]]: ...
    def close(self) -> None: ...


class FencingStore(MailStore, Protocol):
    """A store that checks fencing tokens (:class:`.pgstore.PgStore`)."""

    def set_fence(self, account: str, token: int) -> None: ...


def open_store(target: str, *, fsync: bool = True) -> MailStore:
    """Open the store ``target`` names: a ``postgresql://`` URL or a SQLite path.
    Raises :class:`.store.UnusableStore`."""
    if is_postgres_url(target):
        from .pgstore import PgStore  # psycopg: the optional extra guardedpool[postgres]

        return PgStore.open(target)
    from .store import Store

    return Store.open(target, fsync=fsync)


class NotOwner(StoreError):
    """This worker does not own the account (any more): the write was not attempted."""


class FencedStore:
    """``store`` as a fleet worker writes it: every write first checks ``owns(account)``
    (a valid owner lease, else :class:`NotOwner`) and passes the lease's fencing token
    on. Reads go straight through."""

    def __init__(self, store: FencingStore, owns: Callable[[str], Lease | None]) -> None:
        self.inner = store
        self._owns = owns

    @property
    def executor(self) -> Executor:
        return self.inner.executor

    def _check(self, account: str) -> None:
        lease = self._owns(account)
        if lease is None or not lease.valid():
            raise NotOwner(f"{account}: this worker no longer owns the account; write skipped")
        self.inner.set_fence(account, lease.fencing_token)

    def ensure_account(self, key: str, host: str, username: str) -> None:
        self.inner.ensure_account(key, host, username)

    def mark_success(self, key: str, when: float | None = None) -> None:
        """Informational (the account's last good pass): skipped, not raised, for an
        account this worker no longer owns."""
        try:
            self._check(key)
            self.inner.mark_success(key, when)
        except StoreError as exc:
            log.info("not recording the pass of %s: %s", key, exc, extra={"key": key})

    def mailbox(self, account: str, name: str) -> MailboxState:
        self._check(account)
        return self.inner.mailbox(account, name)

    def reset_mailbox(self, account: str, name: str, uidvalidity: int) -> int:
        self._check(account)
        return self.inner.reset_mailbox(account, name, uidvalidity)

    def store_batch(
        self, account: str, name: str, uidvalidity: int, messages: Iterable[NewMessage]
    ) -> int:
        self._check(account)
        return self.inner.store_batch(account, name, uidvalidity, messages)

    def update_flags(
        self, account: str, name: str, uidvalidity: int, flags: Mapping[int, Iterable[str]]
    ) -> int:
        self._check(account)
        return self.inner.update_flags(account, name, uidvalidity, flags)

    def expunge(self, account: str, name: str, uidvalidity: int, uids: Iterable[int]) -> int:
        self._check(account)
        return self.inner.expunge(account, name, uidvalidity, uids)

    def finish_pass(
        self,
        account: str,
        name: str,
        uidvalidity: int,
        *,
        uidnext: int | None,
        highestmodseq: int | None,
    ) -> None:
        self._check(account)
        self.inner.finish_pass(
            account, name, uidvalidity, uidnext=uidnext, highestmodseq=highestmodseq
        )

    def uids(self, account: str, name: str, uidvalidity: int) -> list[int]:
        return self.inner.uids(account, name, uidvalidity)

    def known_mailboxes(self, account: str) -> dict[str, int | None]:
        return self.inner.known_mailboxes(account)

    def retire_mailbox(
        self, account: str, name: str, *, state: str, renamed_to: str | None = None
    ) -> str:
        self._check(account)
        return self.inner.retire_mailbox(account, name, state=state, renamed_to=renamed_to)

    def retired(self, account: str) -> list[tuple[str, str, str, str | None]]:
        return self.inner.retired(account)

    def totals(self) -> dict[str, tuple[int, int]]:
        return self.inner.totals()

    def close(self) -> None:
        self.inner.close()
