"""Housekeeping: the pool's background rounds, driven by due times.

The :class:`Housekeeper` owns when each live connection and each possibly quiet key next
needs a look (two :class:`~guardedpool.deadlines.Deadlines` heaps, see that module for the
lateness bounds), runs the rounds that pop what is due, and decides, through
:mod:`guardedpool.policy` and :mod:`guardedpool.leaks`, what to do with it:

* an idle connection past ``idle_timeout`` or its lifetime, or found dead, is retired;
* an idle connection due for a heartbeat gets a NOOP (at most ``MAX_HEARTBEATS`` at once);
* a lent-out one past ``leak_threshold`` is reported, past ``reclaim_after`` reclaimed;
* a key quiet for ``forget_keys_after`` is forgotten;
* the graveyard loses records older than ``audit.graveyard_ttl``.

What it does is done by the pool, through the callables it is given: retiring, NOOPs,
aborting under a borrower and forgetting are the pool's, with their logs and bookkeeping.
A round costs what is due, not what is open, and hands the event loop back every
:data:`ROUND_SLICE` seconds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sized
from typing import TYPE_CHECKING, Generic, TypeVar

from . import policy
from .deadlines import Deadlines, attention_at, recheck_after
from .fastpath import IDLE, IN_USE
from .records import CloseReason, ConnectionRecord, ConnState

if TYPE_CHECKING:
    from .books import Books, Slot
    from .config import PoolConfig
    from .keystate import KeyState
    from .leaks import LeakWatch

__all__ = ["CHUNK", "MAX_HEARTBEATS", "ROUND_SLICE", "Housekeeper"]

_log = logging.getLogger("guardedpool.pool")  # its lines are the pool's

C = TypeVar("C")

CHUNK = 32
"""Due items handled between two looks at the time."""
ROUND_SLICE = 0.002
"""Seconds of housekeeping work between two turns of the event loop."""
MAX_HEARTBEATS = 256
"""NOOPs in flight from housekeeping; the rest wait a round."""
_STALE_ALLOWED = 1024  # entries of closed connections tolerated in the heap beyond 2x live
_MIN_SLEEP_SHARE = 0.25  # rounds come at most 1 / this many times per housekeeping_interval
_RETIRED = frozenset({ConnState.CLOSING, ConnState.CLOSED})


class Housekeeper(Generic[C]):
    """The due times of a pool's connections and keys, and the rounds that serve them.

    Args:
        config: the pool's config (``housekeeping_interval``, timeouts, audit policy).
        clock: the pool's clock (monotonic seconds).
        books: the pool's live slots and graveyard (read; changed only through the callables).
        keys: the pool's key states by key (read).
        leaks: the pool's leak watch (which borrows are suspects).
        is_alive: the connector's cheap liveness check.
        retire: ``(slot, reason)``: take an idle connection out of service and close it.
        heartbeat: ``(slot)``: NOOP an idle connection (moved out of the idle stack first).
        heartbeats: the heartbeat NOOPs in flight (read for its size).
        reclaim: ``(record, now)``: abort a connection held past ``reclaim_after`` under
            its borrower.
        forget: ``(key state)``: drop a quiet key (its counters go to the pool's totals).
    """

    def __init__(
        self,
        config: PoolConfig,
        clock: Callable[[], float],
        books: Books[C],
        keys: Mapping[str, KeyState[C]],
        leaks: LeakWatch,
        is_alive: Callable[[C], bool],
        *,
        retire: Callable[[Slot[C], CloseReason], None],
        heartbeat: Callable[[Slot[C]], None],
        heartbeats: Sized,
        reclaim: Callable[[ConnectionRecord, float], None],
        forget: Callable[[KeyState[C]], None],
    ) -> None:
        self._config = config
        self._clock = clock
        self._books = books
        self._keys = keys
        self._leaks = leaks
        self._is_alive = is_alive
        self._retire = retire
        self._heartbeat = heartbeat
        self._heartbeats = heartbeats
        self._reclaim = reclaim
        self._forget = forget
        # One entry per live connection; keys that may be quiet, with the due time of
        # their one valid entry (later entries of a key are stale and skipped).
        self.due: Deadlines[Slot[C]] = Deadlines()
        self.key_due: Deadlines[KeyState[C]] = Deadlines()
        self._key_due_at: dict[KeyState[C], float] = {}

    # ------------------------------------------------------------------ scheduling

    def watch(self, slot: Slot[C], now: float, recheck: tuple[float, float] | None = None) -> None:
        """Schedule the next look at a live connection (none if it is retired)."""
        if recheck is None:
            recheck = recheck_after(self._config, len(self._books.live))
        record = slot.record
        warned = record.id in self._leaks.warned
        due = attention_at(record, now, self._config, recheck, warned=warned)
        if due is not None:
            self.due.push(due, slot)

    def watch_key(self, ks: KeyState[C], at: float) -> None:
        """Look at ``ks`` at ``at``: it may have become quiet (no slot left, a waiter gone).
        One valid entry per key; an earlier one already scheduled stands."""
        scheduled = self._key_due_at.get(ks)
        if scheduled is not None and scheduled <= at:
            return
        self._key_due_at[ks] = at
        self.key_due.push(at, ks)

    def key_may_be_quiet(self, ks: KeyState[C]) -> None:
        """``ks`` lost its last slot or a waiter: quiet from the next look on, maybe."""
        if ks.slots == 0:
            ks.quiet_since = None
            self.watch_key(ks, self._clock())

    # ------------------------------------------------------------------ rounds

    async def run(
        self, running: Callable[[], bool], after_round: Callable[[], Awaitable[None]]
    ) -> None:
        """Rounds until ``running()`` is false; ``after_round`` (the periodic audit) after
        each. Sleeps until the earliest due time, but no sooner than a share of
        ``housekeeping_interval`` (10,000 spread-out due times are not 10,000 wake-ups)
        and no later than the interval. A failed round is logged by the caller's logger
        and the next one comes as usual."""
        interval = self._config.housekeeping_interval
        loop = asyncio.get_running_loop()
        while running():
            earliest = self.due.earliest()
            delay = interval
            if earliest is not None:
                delay = min(interval, max(earliest - self._clock(), interval * _MIN_SLEEP_SHARE))
            await asyncio.sleep(delay)
            try:
                deadline = loop.time() + ROUND_SLICE
                for _ in self.round():
                    if loop.time() >= deadline:
                        await asyncio.sleep(0)  # a turn for the loop between chunks
                        deadline = loop.time() + ROUND_SLICE
                await after_round()
            except Exception:
                _log.exception("guardedpool: housekeeping round failed")

    def run_once(self) -> None:
        """One whole round, without yielding (tests, benchmarks)."""
        for _ in self.round():
            pass

    def round(self) -> Iterator[None]:
        """Serve every connection and key whose due time has come, then prune the
        graveyard. A generator that yields every :data:`CHUNK` items so that a burst of
        due work does not stall the event loop in one go; each record's state is read when
        it is handled."""
        now = self._clock()
        cfg = self._config
        live = len(self._books.live)
        recheck = recheck_after(cfg, live)
        if len(self.due) > 2 * live + _STALE_ALLOWED:
            # Closed connections leave their entry behind (lazy invalidation); under
            # heavy churn they would pile up for a re-look's time, holding their records.
            self.due.prune(lambda slot: slot.record.state not in _RETIRED)
            yield
            now = self._clock()
        while True:
            batch = self.due.pop_due(now, CHUNK)
            for _, slot in batch:
                try:
                    self._attend(slot, now, recheck)
                except Exception:
                    _log.exception(
                        "guardedpool: housekeeping of connection %d of key %r failed",
                        slot.record.id,
                        slot.record.key,
                        extra={"key": slot.record.key, "conn_id": slot.record.id},
                    )
                    self.due.push(now + cfg.housekeeping_interval, slot)
            if len(batch) < CHUNK:
                break
            yield
            now = self._clock()
        while True:
            keys = self.key_due.pop_due(now, CHUNK)
            for due, ks in keys:
                if self._key_due_at.get(ks) == due:  # else a stale entry: a later one holds
                    del self._key_due_at[ks]
                    self._attend_key(ks, now)
            if len(keys) < CHUNK:
                break
            yield
            now = self._clock()
        ttl = cfg.audit.graveyard_ttl
        grave = self._books.graveyard
        while grave and grave[0].closed_at is not None and now - grave[0].closed_at > ttl:
            grave.popleft()

    def _attend(self, slot: Slot[C], now: float, recheck: tuple[float, float]) -> None:
        """The look at one connection whose due time came."""
        record = slot.record
        cfg = self._config
        state = record.state
        if state is IDLE:
            reason = policy.retire_when_idle(record, now, cfg)
            if reason is None and not self._is_alive(slot.conn):  # type: ignore[arg-type]
                reason = CloseReason.ERROR
            if reason is not None:
                self._retire(slot, reason)
                return  # retired: no entry any more
            if policy.heartbeat_due(record, now, cfg):
                if len(self._heartbeats) >= MAX_HEARTBEATS:
                    self.due.push(now + cfg.housekeeping_interval, slot)  # wait a round
                    return
                self._heartbeat(slot)
        elif state is IN_USE:
            if record.borrowed_by is not None:
                for due in self._leaks.sweep((record,), now):
                    self._reclaim(due, now)
        else:
            return  # retired: its entry ends here
        self.watch(slot, now, recheck)

    def _attend_key(self, ks: KeyState[C], now: float) -> None:
        """Forget a key quiet for ``forget_keys_after``; else look again when it may be."""
        if self._keys.get(ks.key) is not ks:
            return  # forgotten already
        if ks.quiet(now):
            if ks.quiet_since is None:
                ks.quiet_since = now
            if now - ks.quiet_since >= self._config.forget_keys_after:
                self._forget(ks)
            else:
                self.watch_key(ks, ks.quiet_since + self._config.forget_keys_after)
            return
        ks.quiet_since = None
        if ks.slots == 0:
            # Waiters, a backoff or a server limit still in progress: look again later.
            self.watch_key(ks, now + self._config.housekeeping_interval)
        # With a slot, the close of its last one schedules the next look.
