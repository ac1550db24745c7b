"""Model-based test of the sync worker: seeded histories against :class:`ModelIMAP`.

A history is a starting mailbox, a batch size, CONDSTORE or not, and steps: mail
appended, expunged, flagged; the mailbox recreated under a new UIDVALIDITY that reuses
UIDs; and passes of the real :class:`~examples.imap_sync.worker.SyncWorker` -- through
the real pool and IMAP client over loopback TCP -- each answered under generated
:class:`~harness.imap_model.Faults` (SEARCH order, a cut at any byte, FETCH items missing,
reordered or split, unsolicited FETCH responses, expunges between SEARCH and FETCH).

Invariants checked after every pass (:func:`run_history`):

- (a) a pass that reports success left store == server as of the pass: every message the
  server held when the pass began, bytes and flags, except that a message expunged by
  another session during the pass may be there or not (if there, with its bytes, and
  flags perhaps older: CHANGEDSINCE no longer reports a message that is gone); nothing
  else;
- (b) after a failed pass every stored message is one the server held under the stored
  UIDVALIDITY, with those bytes (nothing invented, nothing of another generation), and
  the next clean pass (run at once) reports success with store == server exactly;
- (c) no message is ever stored twice, and no row of another UIDVALIDITY survives.

``python -m tests.harness.sync_histories --examples 2000`` runs that many examples and
prints one JSON line (examples, seconds, passes, failed passes, cuts, falsifying example).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sqlite3
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from examples.imap_sync.config import AccountConfig
from examples.imap_sync.store import Store, flags_text
from examples.imap_sync.worker import SyncWorker
from guardedpool import GuardedPool
from guardedpool.imap import IMAPAccount, IMAPConnector

from .configs import FAST_RETRY, SYNC, config
from .imap_model import FLAG_CHOICES, QUIRKS, Faults, ModelIMAP, ModelMailbox

__all__ = ["FaultPlan", "History", "Stats", "histories", "run_history"]

KEY = "m"
BOX = "INBOX"

POOL = config(
    SYNC,
    acquire_timeout=10.0,
    housekeeping_interval=0.1,
    retry=config(FAST_RETRY, initial=0.005, max_delay=0.02, jitter=0.0),
)


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """Faults by position in the mailbox (resolved to UIDs when the pass starts)."""

    search_seed: int | None
    cut_at: int | None
    quirks: tuple[tuple[int, frozenset[str]], ...]
    extra: bool
    expunge_after_search: tuple[int, ...]
    seed: int

    def resolve(self, box: ModelMailbox) -> Faults:
        uids = box.uids()
        pick = (lambda i: uids[i % len(uids)]) if uids else (lambda i: 0)
        return Faults(
            search_seed=self.search_seed,
            cut_at=self.cut_at,
            quirks={pick(i): q for i, q in self.quirks} if uids else {},
            extra=self.extra,
            expunge_after_search=frozenset(pick(i) for i in self.expunge_after_search)
            if uids
            else frozenset(),
            seed=self.seed,
        )


Step = tuple[str, Any]


@dataclass(frozen=True, slots=True)
class History:
    condstore: bool
    batch_size: int
    initial: int
    steps: tuple[Step, ...]


@dataclass(slots=True)
class Stats:
    passes: int = 0
    failed: int = 0
    cuts: int = 0
    kinds: dict[str, int] = field(default_factory=dict)


flag_sets = st.frozensets(st.sampled_from(FLAG_CHOICES), max_size=2)
fault_plans = st.builds(
    FaultPlan,
    search_seed=st.none() | st.integers(0, 2**16),
    cut_at=st.none() | st.integers(0, 2500),
    quirks=st.lists(
        st.tuples(st.integers(0, 20), st.frozensets(st.sampled_from(QUIRKS), min_size=1)),
        max_size=3,
    ).map(tuple),
    extra=st.booleans(),
    expunge_after_search=st.lists(st.integers(0, 20), max_size=2).map(tuple),
    seed=st.integers(0, 2**16),
)
steps = st.one_of(
    st.tuples(st.just("append"), st.tuples(st.integers(1, 4), flag_sets)),
    st.tuples(st.just("expunge"), st.integers(0, 20)),
    st.tuples(st.just("flag"), st.tuples(st.integers(0, 20), flag_sets)),
    st.tuples(st.just("recreate"), st.integers(0, 4)),
    st.tuples(st.just("pass"), fault_plans),
    st.tuples(st.just("pass"), fault_plans),
)
histories = st.builds(
    History,
    condstore=st.booleans(),
    batch_size=st.integers(1, 4),
    initial=st.integers(0, 6),
    steps=st.lists(steps, min_size=1, max_size=8).map(tuple),
)


def _raw(box: ModelMailbox, n: int) -> bytes:
    return b"Subject: g%d m%d\r\n\r\nbody %d of generation %d\r\n" % (
        box.uidvalidity,
        n,
        n,
        box.uidvalidity,
    )


def _stored(store: Store) -> tuple[int | None, dict[int, tuple[str, bytes]]]:
    validity = store.mailbox(KEY, BOX).uidvalidity
    out: dict[int, tuple[str, bytes]] = {}
    for uid in store.uids(KEY, BOX, validity or 0):
        got = store.message(KEY, BOX, uid)
        assert got is not None
        out[uid] = got
    return validity, out


def _exact(box: ModelMailbox) -> dict[int, tuple[str, bytes]]:
    return {u: (flags_text(f), raw) for u, (f, raw) in box.view().items()}


def _no_duplicates(path: Path) -> None:  # (c)
    with sqlite3.connect(path) as db:
        rows, distinct = db.execute(
            "SELECT COUNT(*), COUNT(DISTINCT mailbox || '/' || uidvalidity || '/' || uid) "
            "FROM messages"
        ).fetchone()
        stale = db.execute(
            "SELECT COUNT(*) FROM messages m JOIN mailboxes b ON b.account=m.account "
            "AND b.name=m.mailbox WHERE b.uidvalidity IS NOT m.uidvalidity"
        ).fetchone()[0]
    assert rows == distinct, f"(c) duplicate rows: {rows} rows, {distinct} distinct"
    assert stale == 0, f"(c) {stale} rows of another UIDVALIDITY"


def _check_success(
    store: Store, box: ModelMailbox, before: dict[int, tuple[str, bytes]], expunged: set[int]
) -> None:  # (a)
    validity, stored = _stored(store)
    assert validity == box.uidvalidity, f"(a) store at UIDVALIDITY {validity}"
    assert set(stored) <= set(before), f"(a) stored, not on server: {set(stored) - set(before)}"
    for uid, want in before.items():
        if uid in expunged:  # gone mid-pass: may be kept until the next pass, flags as were
            assert uid not in stored or stored[uid][1] == want[1], f"(a) UID {uid}: bytes"
            continue
        assert stored.get(uid) == want, f"(a) UID {uid}: stored {stored.get(uid)!r} != {want!r}"


def _check_subset(store: Store, box: ModelMailbox) -> None:  # (b), first half
    validity, stored = _stored(store)
    for uid, (_, raw) in stored.items():
        assert box.history.get((validity or 0, uid)) == raw, f"(b) UID {uid} never on server"


async def run_history(history: History, stats: Stats | None = None) -> Stats:
    """Play ``history``; raises AssertionError naming the invariant that broke."""
    stats = stats or Stats()
    logging.getLogger("imap_sync").setLevel(logging.CRITICAL)
    logging.getLogger("guardedpool").setLevel(logging.CRITICAL)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "store.sqlite3"
        async with ModelIMAP(condstore=history.condstore) as server:
            box = server.mailboxes[BOX]
            for n in range(history.initial):
                box.append(_raw(box, n))
            account = IMAPAccount(
                host=server.host, port=server.port, username=KEY, password="pw", tls=False
            )
            acc = AccountConfig(KEY, account, (BOX,))
            with Store.open(path, fsync=False) as store:
                async with GuardedPool(IMAPConnector({KEY: account}), POOL) as pool:
                    worker = SyncWorker(pool, store, [acc], batch_size=history.batch_size)

                    async def one_pass(faults: Faults) -> bool:
                        before, cuts = _exact(box), server.cuts
                        server.start_pass(faults)
                        summary = await worker.run_pass()
                        stats.passes += 1
                        stats.cuts += server.cuts - cuts
                        _no_duplicates(path)
                        if summary.ok:
                            _check_success(store, box, before, server.expunged_in_pass)
                        else:
                            stats.failed += 1
                            for f in summary.failures:
                                kind = f.error.split(":")[0]
                                stats.kinds[kind] = stats.kinds.get(kind, 0) + 1
                            _check_subset(store, box)
                        return summary.ok

                    async def clean_pass() -> None:
                        ok = await one_pass(Faults())
                        assert ok, "(b) a clean pass failed"
                        assert _stored(store) == (box.uidvalidity, _exact(box)), "(b) no converge"

                    for kind, arg in history.steps:
                        _apply(box, kind, arg)
                        if kind == "pass":
                            assert isinstance(arg, FaultPlan)
                            if not await one_pass(arg.resolve(box)):
                                await clean_pass()
                    await clean_pass()
    return stats


def _apply(box: ModelMailbox, kind: str, arg: Any) -> None:
    uids = box.uids()
    if kind == "append":
        n, flags = arg
        for _ in range(n):
            box.append(_raw(box, box.uidnext), flags)
    elif kind == "expunge" and uids:
        box.expunge(uids[arg % len(uids)])
    elif kind == "flag" and uids:
        i, flags = arg
        box.set_flags(uids[i % len(uids)], flags)
    elif kind == "recreate":  # UIDs counted from 1 again, with other bytes
        box.recreate([])
        for _ in range(arg):
            box.append(_raw(box, box.uidnext))


def check(examples: int, stats: Stats, *, seed: int | None = None) -> None:
    """Run ``examples`` hypothesis examples of :func:`run_history`, counting into ``stats``;
    raises AssertionError (hypothesis prints the falsifying history) on a failure."""

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        print_blob=True,
    )
    @given(history=histories)
    def run(history: History) -> None:
        asyncio.run(run_history(history, stats))

    if seed is not None:
        from hypothesis import seed as hseed

        run = hseed(seed)(run)
    run()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    started = time.monotonic()
    failure: str | None = None
    stats = Stats()
    try:
        check(args.examples, stats, seed=args.seed)
    except AssertionError as exc:
        failure = "\n".join([str(exc), *getattr(exc, "__notes__", [])])
    report = {
        "examples": args.examples,
        "seconds": round(time.monotonic() - started, 1),
        "passes": stats.passes,
        "failed_passes": stats.failed,
        "failure_kinds": stats.kinds,
        "cuts": stats.cuts,
        "falsified": failure,
    }
    print(json.dumps(report))
    return 1 if failure else 0


if __name__ == "__main__":
    raise SystemExit(main())
