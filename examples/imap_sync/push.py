"""Continuous mode by IDLE pushes (``[sync] mode = "idle"``): a sync per push, not per timer.

Per account one mailbox is watched -- INBOX when the account syncs it, else its first
mailbox -- through :func:`guardedpool.imap.idle.idle`, which holds one pool connection in
IDLE, renews it every ``renew_after`` seconds and replaces it after a fault or at the end
of its lifetime. Any event that may mean a change marks the mailbox dirty: EXISTS,
EXPUNGE and FETCH pushes; OVERFLOW (pushes were dropped); and CONNECTED, both the first
(IDLE is live from then on, so the initial sync done now misses nothing) and after a
reconnect (pushes may have been lost meanwhile). One syncer per watched mailbox runs an
incremental pass whenever it is dirty, so a burst of pushes during a pass costs one more
pass, not one per push. Passes go through :meth:`SyncWorker.run_pass`: they share the
worker's concurrency bound and never overlap another pass of the same mailbox.

Pushes are an accelerator, never relied on: a watched mailbox that has had no pass for
``poll_interval`` seconds gets one anyway, on the syncing connection, while its IDLE goes
on. Some servers never push inside an IDLE round (GNU Mailutils) or only poll their own
store every minute (Courier); on those, and on any server, a message is stored at most
``poll_interval`` plus one pass after it arrived -- the same bound as poll mode.

The other mailboxes are polled every ``poll_interval`` seconds, as in poll mode, and the
account's patterns are resolved again (LIST) before each polling round, so a folder created
on the server while the worker runs is synced within a round, and one deleted or renamed is
retired. A watched mailbox whose IDLE session ends for good (the server has no IDLE,
SELECT answers NO, the login is refused) is logged, counted as an error, and polled from
then on; one a polling round retired (renamed or deleted on the server) gets no more passes
of its own, even while its IDLE session lives on.

When ``stop`` is set no new pass starts, each IDLE ends with DONE (bounded by the pool's
``op_timeout``) and its connection goes back to the pool, and passes in flight finish.

The pool must allow two connections per account (``max_per_key >= 2``): one held in IDLE,
one to sync with.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from guardedpool.imap import WireName
from guardedpool.imap.idle import IdleSession, idle

from .config import AccountConfig
from .folders import Folder, compile_patterns, literal_folders, wanted

if TYPE_CHECKING:
    from .worker import PassSummary, SyncWorker

__all__ = ["TRIGGERS", "PushSync", "watched_mailbox"]

log = logging.getLogger("imap_sync")

TRIGGERS = frozenset({"CONNECTED", "EXISTS", "EXPUNGE", "FETCH", "OVERFLOW"})
"""The :class:`~guardedpool.imap.idle.IdleEvent` kinds that trigger a sync."""


def watched_mailbox(account: AccountConfig, mailboxes: Sequence[str] = ()) -> str | None:
    """The mailbox held in IDLE for ``account``: INBOX if it is synced, else the first of
    ``mailboxes`` (the account's resolved wire names). Before any LIST has answered
    (``mailboxes`` empty), INBOX if the patterns select it (every server has one, RFC 3501
    §5.1), else the first plain name configured, else None: a pattern is not a mailbox,
    and the account is then polled."""
    names = list(mailboxes)
    if names:
        return "INBOX" if "INBOX" in names else names[0]
    patterns = compile_patterns(account.mailboxes)
    if wanted(patterns, Folder(WireName("INBOX"), "INBOX")):
        return "INBOX"
    plain = literal_folders(patterns)
    return plain[0].name if plain else None


class PushSync:
    """Idle mode for one :class:`SyncWorker`; :meth:`run` until ``stop`` is set.

    Args:
        worker: the worker whose accounts, pool, store and bounds are used.
        poll_interval: seconds between passes over the mailboxes not watched.
        renew_after: seconds per IDLE round before DONE and a new IDLE.

    Attributes:
        watched: account key -> the mailbox held in IDLE (an account without one is polled).
        idle_ended: the watched (key, mailbox) pairs whose IDLE ended for good (polled).
        triggers: account key -> events that marked its watched mailbox dirty.
        timed: account key -> rounds of its watched mailbox run because no push had come
            for ``poll_interval`` seconds (the staleness bound at work): a pass each,
            none once the mailbox was retired (renamed or deleted on the server).
        sessions: account key -> its running :class:`IdleSession`.
    """

    def __init__(self, worker: SyncWorker, *, poll_interval: float, renew_after: float) -> None:
        per_key = worker.pool.config.max_per_key
        if per_key < 2:
            raise ValueError(
                "idle mode needs PoolConfig.max_per_key >= 2 (one connection held in IDLE, "
                f"one to sync with), got {per_key}"
            )
        self.worker = worker
        self.poll_interval = poll_interval
        self.renew_after = renew_after
        self.watched: dict[str, str] = {}
        for a in worker.accounts:
            box = watched_mailbox(a, [name for key, name in worker.jobs() if key == a.key])
            if box is None:
                log.warning(
                    "%s: no mailbox to hold in IDLE (its mailboxes could not be listed); "
                    "polling them instead",
                    a.key,
                    extra={"key": a.key},
                )
            else:
                self.watched[a.key] = box
        self.idle_ended: set[tuple[str, str]] = set()
        self.triggers = dict.fromkeys(self.watched, 0)
        self.timed = dict.fromkeys(self.watched, 0)
        self.sessions: dict[str, IdleSession] = {}

    def polled(self) -> list[tuple[str, str]]:
        """The (key, mailbox) pairs synced by polling, as last resolved: every mailbox but
        the watched ones whose IDLE is live."""
        return [
            (key, box)
            for key, box in self.worker.jobs()
            if self.watched.get(key) != box or (key, box) in self.idle_ended
        ]

    async def run(
        self, stop: asyncio.Event, *, on_pass: Callable[[PassSummary], None] | None = None
    ) -> None:
        dirty = {key: asyncio.Event() for key in self.watched}
        watchers = [
            asyncio.create_task(self._watch(key, dirty[key]), name=f"imap_sync-idle-{key}")
            for key in self.watched
        ]
        syncers = [
            asyncio.create_task(self._syncer(key, dirty[key], stop, on_pass))
            for key in self.watched
        ]
        tasks = watchers + syncers
        try:
            await self.worker.poll(
                self.poll_interval, stop, on_pass=on_pass, jobs=self.polled, resolve_each_round=True
            )
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        for task in watchers:  # ends each IDLE with DONE and gives its connection back
            task.cancel()
        for event in dirty.values():  # wakes the syncers, which see ``stop`` and return
            event.set()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _watch(self, key: str, dirty: asyncio.Event) -> None:
        mailbox = self.watched[key]
        try:
            async with idle(self.worker.pool, key, mailbox, renew_after=self.renew_after) as s:
                self.sessions[key] = s
                async for event in s:
                    if event.kind in TRIGGERS:
                        self.triggers[key] += 1
                        dirty.set()
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            counters = self.worker.counters[key]
            counters.errors += 1
            counters.last_error = error
            log.warning(
                "%s/%s: IDLE ended (%s); polling it instead",
                key,
                mailbox,
                error,
                extra={"key": key, "mailbox": mailbox},
            )
            self.idle_ended.add((key, mailbox))
            dirty.set()  # one sync now rather than a poll_interval later
        finally:
            self.sessions.pop(key, None)

    def _retired(self, job: tuple[str, str]) -> bool:
        """The watched mailbox was retired by a polling round (gone from LIST) and has not
        come back: its IDLE session may live on for a while, but a pass would fail."""
        key, mailbox = job
        if job in self.worker.jobs():
            return False
        return any(original == mailbox for _, original, _, _ in self.worker.store.retired(key))

    async def _syncer(
        self,
        key: str,
        dirty: asyncio.Event,
        stop: asyncio.Event,
        on_pass: Callable[[PassSummary], None] | None,
    ) -> None:
        job = (key, self.watched[key])
        while True:
            try:
                async with asyncio.timeout(self.poll_interval):
                    await dirty.wait()
            except TimeoutError:
                if job in self.idle_ended:  # IDLE failed for good: the poller has it
                    continue
                self.timed[key] += 1  # no push for poll_interval: never staler than a poll
            if stop.is_set():
                return
            if self._retired(job):  # renamed or deleted on the server: the poller knows
                dirty.clear()
                continue
            dirty.clear()  # before the pass: a push during it means one more pass
            summary = await self.worker.run_pass([job])
            if on_pass is not None:
                on_pass(summary)
