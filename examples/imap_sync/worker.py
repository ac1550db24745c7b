"""Many mailboxes at once, bounded; passes on a timer or on pushes; counters for /metrics.

A pass syncs every configured (account, mailbox) pair. At most ``concurrency`` of them run
at a time, and each takes its semaphore slot *before* asking the pool for a connection, so
the bound caps connections in flight as well as work (the pool's ``max_per_key`` still
caps each account). A failure is counted against its inbox and logged in one line; the
other mailboxes carry on, and the next pass fetches whatever the store still lacks. There
is nothing to undo: the store only ever holds whole messages the server had. A mailbox's
pass counts as a success only when it left the store equal to the server (see
:mod:`.mailbox`, step 7).

Continuous mode polls by default: a pass every ``poll_interval`` seconds, which keeps the
pool's connections shareable, the point of a pool. ``mode="idle"`` (:mod:`.push`) trades
one held connection per account for changes seen within a second: IDLE pushes trigger
passes of each account's INBOX, and its other mailboxes are still polled. Pushes only
speed things up: INBOX too gets a pass whenever none has run for ``poll_interval``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from guardedpool import GuardedPool
from guardedpool.imap import IMAPClient
from guardedpool.imap.mutf7 import display

from .config import MAX_IDLE_RENEW, AccountConfig
from .folders import Folder, Pattern, compile_patterns, literal_folders, needs_list, refresh
from .mailbox import MailboxResult, sync_mailbox
from .push import PushSync
from .stores import MailStore

__all__ = [
    "InboxCounters",
    "MailboxFailure",
    "MailboxView",
    "Observer",
    "PassSummary",
    "SyncWorker",
]

log = logging.getLogger("imap_sync")


@dataclass(slots=True)
class InboxCounters:
    """Running totals for one inbox (account key) since the worker started."""

    messages: int = 0
    bytes: int = 0
    flags_changed: int = 0
    expunged: int = 0
    errors: int = 0
    passes: int = 0
    last_success: float | None = None  # wall clock of the last pass with no error
    last_error: str | None = None


@dataclass(slots=True)
class MailboxView:
    """One mailbox as /metrics shows it: ``state`` is "synced", "failed", "gone" (deleted
    on the server) or "renamed"; ``messages`` stored by this worker since it started."""

    state: str = "synced"
    messages: int = 0


@dataclass(frozen=True, slots=True)
class MailboxFailure:
    account: str
    mailbox: str  # the human name, "/" for the delimiter; "(LIST)" when listing failed
    error: str  # "ExceptionType: message" (messages from guardedpool carry no secrets)


@dataclass(slots=True)
class PassSummary:
    started: float
    duration: float = 0.0
    results: list[MailboxResult] = field(default_factory=list)
    failures: list[MailboxFailure] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


class Observer(Protocol):
    """Progress hooks (see :mod:`.progress`); every method is called on the loop thread."""

    def planned(self, account: str, mailbox: str, new: int) -> None: ...
    def advanced(self, account: str, mailbox: str, messages: int, size: int) -> None: ...
    def finished(self, account: str, mailbox: str, error: str | None) -> None: ...


class SyncWorker:
    """Syncs ``accounts`` from ``pool`` into ``store``.

    Args:
        pool: the shared pool (keys are account keys).
        store: the open mirror (SQLite, or PostgreSQL; see :mod:`.stores`).
        accounts: what to sync (key + mailbox patterns, see :mod:`.folders`;
            host/username are recorded in the store). Each pass starts with a LIST per
            account: the folders the patterns select are synced, under their names as
            the server sends them; stored folders the server no longer has are retired.
        concurrency: mailboxes synced at once (>= 1).
        batch_size: messages per UID FETCH and per store transaction (>= 1).
        observer: progress hooks, or None.
    """

    def __init__(
        self,
        pool: GuardedPool[IMAPClient],
        store: MailStore,
        accounts: Sequence[AccountConfig],
        *,
        concurrency: int = 8,
        batch_size: int = 100,
        observer: Observer | None = None,
    ) -> None:
        if concurrency < 1 or batch_size < 1:
            raise ValueError(
                f"concurrency and batch_size must be >= 1, got {concurrency}, {batch_size}"
            )
        self.pool = pool
        self.store = store
        self.accounts = tuple(accounts)
        self.concurrency = concurrency
        self.batch_size = batch_size
        self.observer = observer
        self.counters: dict[str, InboxCounters] = {a.key: InboxCounters() for a in self.accounts}
        self.passes = 0
        self._gate = asyncio.Semaphore(concurrency)
        self._busy: dict[tuple[str, str], asyncio.Lock] = {}
        for a in self.accounts:
            store.ensure_account(a.key, a.account.host, a.account.username)
        self.patterns: dict[str, tuple[Pattern, ...]] = {
            a.key: compile_patterns(a.mailboxes) for a in self.accounts
        }
        self.folders: dict[str, tuple[Folder, ...]] = {
            key: literal_folders(patterns) for key, patterns in self.patterns.items()
        }
        """account key -> its mailboxes as last resolved (before any LIST: the literal
        names of its patterns)."""
        self.mailbox_views: dict[str, dict[str, MailboxView]] = {a.key: {} for a in self.accounts}
        """account key -> label (:meth:`label`) -> :class:`MailboxView`, for /metrics."""
        self.owned: Callable[[str], bool] | None = None
        """In a fleet (:mod:`.fleet`): whether this worker owns an account now. Passes
        then list and sync only the accounts it owns; None (default): every account."""
        self._by_name: dict[tuple[str, str], Folder] = {
            (k, f.name): f for k, fs in self.folders.items() for f in fs
        }

    def jobs(self) -> Iterable[tuple[str, str]]:
        """(account key, wire name) of every mailbox as last resolved."""
        owned = self.owned
        for key, folders in self.folders.items():
            if owned is not None and not owned(key):
                continue
            for folder in folders:
                yield key, folder.name

    def label(self, key: str, mailbox: str) -> str:
        """The human name of ``mailbox`` (a wire name) for logs and metrics:
        ``Entwürfe``, ``Archive/2024``."""
        folder = self._by_name.get((key, mailbox))
        return folder.path if folder is not None else display(mailbox)

    async def resolve(self) -> list[MailboxFailure]:
        """LIST each account with a wildcard or role pattern (bounded by the worker's
        concurrency) and update :attr:`folders`; retire stored folders the server no
        longer has. An account whose LIST fails keeps its previous folders and gets a
        failure, mailbox ``(LIST)``."""
        owned = self.owned
        keys = [
            k
            for k, patterns in self.patterns.items()
            if needs_list(patterns) and (owned is None or owned(k))
        ]
        outcomes = await asyncio.gather(*(self._resolve(key) for key in keys))
        return [f for f in outcomes if f is not None]

    async def _resolve(self, key: str) -> MailboxFailure | None:
        try:
            async with self._gate, self.pool.acquire(key) as imap:
                found = await refresh(imap, self.store, key, self.patterns[key])
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            counters = self.counters[key]
            counters.errors += 1
            counters.last_error = error
            log.warning("listing the mailboxes of %s failed: %s", key, error, extra={"key": key})
            return MailboxFailure(key, "(LIST)", error)
        self.folders[key] = found.folders
        self._by_name.update(((key, f.name), f) for f in found.folders)
        for label, state in found.retired:
            self.mailbox_views[key].setdefault(label, MailboxView()).state = state
        return None

    def _note(self, key: str, mailbox: str, outcome: object) -> None:
        view = self.mailbox_views[key].setdefault(self.label(key, mailbox), MailboxView())
        if isinstance(outcome, MailboxResult):
            view.state = "synced"
            view.messages += outcome.new
        else:
            view.state = "failed"

    async def run_pass(self, jobs: Iterable[tuple[str, str]] | None = None) -> PassSummary:
        """Sync every mailbox (or the ``(key, mailbox)`` pairs of ``jobs``) once.

        Never raises for a mailbox's failure (see the summary). Passes may overlap (push
        mode runs one per push): they share the ``concurrency`` bound, and a mailbox is
        never synced by two of them at once.
        """
        summary = PassSummary(started=time.time())
        clock = time.monotonic()
        failed_keys: set[str] = set()
        if jobs is None:  # every mailbox: resolve the patterns first
            summary.failures.extend(await self.resolve())
            failed_keys.update(f.account for f in summary.failures)
        jobs = list(self.jobs() if jobs is None else jobs)
        outcomes = await asyncio.gather(*(self._job(key, name) for key, name in jobs))
        for (key, name), outcome in zip(jobs, outcomes, strict=True):
            self._note(key, name, outcome)
            if isinstance(outcome, MailboxResult):
                summary.results.append(outcome)
            else:
                summary.failures.append(MailboxFailure(key, self.label(key, name), outcome))
                failed_keys.add(key)
        now = time.time()
        for key in dict.fromkeys([*(key for key, _ in jobs), *failed_keys]):
            counters = self.counters[key]
            counters.passes += 1
            if key not in failed_keys:
                counters.last_success = now
                self.store.mark_success(key, now)
        self.passes += 1
        summary.duration = time.monotonic() - clock
        return summary

    async def _job(self, key: str, mailbox: str) -> MailboxResult | str:
        """One mailbox: the result, or the error as text (counted, logged once)."""
        obs = self.observer
        counters = self.counters[key]
        label = self.label(key, mailbox)
        # Two passes of one mailbox at once could store older flags over newer ones with
        # the newer checkpoint. The mailbox lock comes first so a pass waiting for it
        # holds no concurrency slot.
        async with self._busy.setdefault((key, mailbox), asyncio.Lock()), self._gate:
            try:
                async with self.pool.acquire(key) as imap:
                    result = await sync_mailbox(
                        imap,
                        self.store,
                        key,
                        mailbox,
                        batch_size=self.batch_size,
                        on_plan=(lambda n: obs.planned(key, label, n)) if obs else None,
                        on_batch=(lambda m, b: obs.advanced(key, label, m, b)) if obs else None,
                    )
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
                counters.errors += 1
                counters.last_error = error
                log.warning(
                    "sync of %s/%s failed: %s",
                    key,
                    label,
                    error,
                    extra={"key": key, "mailbox": label},
                )
                if obs is not None:
                    obs.finished(key, label, error)
                return error
        counters.messages += result.new
        counters.bytes += result.bytes
        counters.flags_changed += result.flags_changed
        counters.expunged += result.expunged
        if result.reset:
            log.warning(
                "%s/%s: UIDVALIDITY changed; dropped %d stored messages and resynced",
                key,
                label,
                result.dropped,
                extra={"key": key, "mailbox": label},
            )
        if obs is not None:
            obs.finished(key, label, None)
        return result

    async def run_forever(
        self,
        poll_interval: float,
        stop: asyncio.Event,
        *,
        on_pass: Callable[[PassSummary], None] | None = None,
        mode: str = "poll",
        idle_renew_after: float = MAX_IDLE_RENEW,
    ) -> None:
        """Continuous mode until ``stop`` is set; the pass in flight finishes first.

        ``mode="poll"``: :meth:`poll` every mailbox. ``mode="idle"``: IDLE pushes trigger
        passes of each account's INBOX (or first mailbox), rounds of ``idle_renew_after``
        seconds; the other mailboxes are polled (see :mod:`.push`; the pool's
        ``max_per_key`` must be >= 2).
        """
        if mode == "idle":
            await self.resolve()  # which mailbox to watch depends on what LIST says
            push = PushSync(self, poll_interval=poll_interval, renew_after=idle_renew_after)
            await push.run(stop, on_pass=on_pass)
        elif mode == "poll":
            await self.poll(poll_interval, stop, on_pass=on_pass)
        else:
            raise ValueError(f'mode must be "poll" or "idle", got {mode!r}')

    async def poll(
        self,
        poll_interval: float,
        stop: asyncio.Event,
        *,
        on_pass: Callable[[PassSummary], None] | None = None,
        jobs: Callable[[], Iterable[tuple[str, str]]] | None = None,
        resolve_each_round: bool = False,
    ) -> None:
        """A pass of ``jobs()`` (default: every mailbox, patterns resolved first), then wait
        ``poll_interval`` seconds (or until ``stop`` is set), repeat. No jobs: no pass, just
        the wait. ``resolve_each_round``: resolve the patterns before each round of
        ``jobs()`` too."""
        while not stop.is_set():
            listing = await self.resolve() if resolve_each_round and jobs is not None else []
            todo = None if jobs is None else list(jobs())
            if todo is None or todo or listing:
                summary = await self.run_pass(todo)
                summary.failures[:0] = listing
                if on_pass is not None:
                    on_pass(summary)
            try:
                async with asyncio.timeout(poll_interval):
                    await stop.wait()
            except TimeoutError:
                pass

