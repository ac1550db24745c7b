"""The sync worker against the model IMAP server: no message is ever lost.

Real worker, real pool, real IMAP client, over loopback TCP; only the server is a model
(``tests/harness/imap_model.py``), because no local server answers SEARCH out of order,
leaves items out of a FETCH, or cuts its answer at a chosen byte on demand.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from harness.configs import FAST_RETRY, SYNC, config
from harness.imap_model import Faults, ModelIMAP
from harness.sync_histories import FaultPlan, History, histories, run_history
from hypothesis import HealthCheck, given, settings

from examples.imap_sync.config import AccountConfig
from examples.imap_sync.store import Store, flags_text
from examples.imap_sync.worker import SyncWorker
from guardedpool import GuardedPool
from guardedpool.imap import IMAPAccount, IMAPConnector

CFG = config(
    SYNC,
    housekeeping_interval=0.1,
    retry=config(FAST_RETRY, initial=0.01, max_delay=0.05, jitter=0.0),
)


def account(server: ModelIMAP, key: str = "m") -> AccountConfig:
    acc = IMAPAccount(host=server.host, port=server.port, username=key, password="pw", tls=False)
    return AccountConfig(key, acc, ("INBOX",))


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    with Store.open(tmp_path / "mirror.sqlite3") as s:
        yield s


def stored_view(store: Store, key: str = "m") -> dict[int, tuple[str, bytes]]:
    state = store.mailbox(key, "INBOX")
    out: dict[int, tuple[str, bytes]] = {}
    for uid in store.uids(key, "INBOX", state.uidvalidity or 0):
        got = store.message(key, "INBOX", uid)
        assert got is not None
        out[uid] = got
    return out


def server_view(server: ModelIMAP) -> dict[int, tuple[str, bytes]]:
    return {u: (flags_text(f), raw) for u, (f, raw) in server.mailboxes["INBOX"].view().items()}


async def test_search_9_3_7_batch_1_cut_in_second_fetch_loses_nothing(store: Store) -> None:
    """Issue 11's failing input: UIDs 3, 7, 9 answered ``* SEARCH 9 3 7``, batch_size 1,
    the connection cut during the second UID FETCH of the first pass. The buggy worker
    stored [9], moved its checkpoint to 9 and then reported success for ever without 3
    and 7."""
    async with ModelIMAP() as server:
        box = server.mailboxes["INBOX"]
        for uid in (3, 7, 9):
            box.uidnext = uid
            box.append(b"Subject: %d\r\n\r\nbody %d\r\n" % (uid, uid), ["\\Seen"])
        order = next(s for s in range(1000) if _shuffled(s, [3, 7, 9]) == [9, 3, 7])
        acc = account(server)
        async with GuardedPool(IMAPConnector({acc.key: acc.account}), CFG) as pool:
            worker = SyncWorker(pool, store, [acc], batch_size=1)
            server.start_pass(Faults(search_seed=order, cut_answer=("UID FETCH", 2, 10)))
            first = await worker.run_pass()
            assert server.cuts == 1
            assert not first.ok  # the cut is a failure of the pass, never a success
            assert set(stored_view(store)) <= {3, 7, 9}
            for _ in range(2):
                server.start_pass(Faults(search_seed=order))
                summary = await worker.run_pass()
                assert summary.ok, summary.failures
                assert stored_view(store) == server_view(server)
            assert sorted(stored_view(store)) == [3, 7, 9]


def _shuffled(seed: int, uids: list[int]) -> list[int]:
    out = list(uids)
    random.Random(seed).shuffle(out)
    return out


def test_flagged_then_expunged_mid_pass_under_condstore() -> None:
    """Found by the long run (10,000 examples, seed 11) -- in the *model's* check, not the
    worker: a message flagged between passes and expunged by another session right after
    SEARCH stays stored with its old flags until the next pass (CHANGEDSINCE does not
    report a message that is gone); the next pass removes it."""
    no_faults = FaultPlan(None, None, (), False, (), 0)
    history = History(
        condstore=True,
        batch_size=1,
        initial=2,
        steps=(
            ("pass", no_faults),
            ("expunge", 0),
            ("flag", (0, frozenset({"\\Seen"}))),
            ("pass", FaultPlan(None, None, (), False, (0,), 0)),
        ),
    )
    asyncio.run(run_history(history))


# -- the model-based test ----------------------------------------------------------------

MODEL_EXAMPLES = int(os.environ.get("IMAP_MODEL_EXAMPLES", "200"))


@pytest.mark.timeout(90)
@settings(
    max_examples=MODEL_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(history=histories)
def test_no_history_loses_or_duplicates_a_message(history: History) -> None:
    """Invariants (a), (b), (c) of ``harness/sync_histories.py`` over generated histories.

    ``IMAP_MODEL_EXAMPLES`` sets the number of examples (default 200: ~10 s here, well under 60 s);
    ``python -m tests.harness.sync_histories --examples 2000`` is the long run.
    """
    asyncio.run(run_history(history))
