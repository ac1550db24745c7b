"""The short chaos run (issue 7, part 1): real IMAP work on many keys while faults rain.

What it proves, sampled throughout the run and checked again at the end (see
``tests/harness/chaos.py`` for how each is measured):

* no call (acquire, each command, IDLE stop, audit, pool close) exceeds its bound + 1 s;
* never two sockets at once for one slot (``max_per_key=1``, one proxy per key);
* ``opened - closed == open`` in the stats at every sample, per key and in total;
* once housekeeping has run, no audit finds a straggler (or an orphan);
* after ``pool.close()`` (and the proxies' stop) the process holds exactly the sockets it
  held before the run.

``CHAOS_SEED`` and ``CHAOS_DURATION`` override the seed and length; the long run is
``scripts/chaos.py``. A failure prints the report, seed included, so it can be replayed.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable
from typing import Any, cast

import pytest
from harness import DovecotServer, socket_fds
from harness.chaos import SLACK, ChaosSettings, _Chaos, run_chaos

SEED = int(os.environ.get("CHAOS_SEED", "7"))
DURATION = float(os.environ.get("CHAOS_DURATION", "20"))


@pytest.mark.timeout(DURATION + 40)  # the run itself, a Dovecot start, two restarts
async def test_chaos_short_run(dovecot_factory: Callable[..., DovecotServer]) -> None:
    server = dovecot_factory()
    report = await run_chaos(server, ChaosSettings(seed=SEED, duration=DURATION))
    print(report.summary())
    assert report.ok, report.summary()
    # The run was real chaos, not a quiet afternoon:
    assert report.restarts == 2
    assert sum(report.faults.values()) >= DURATION * 3
    assert report.ops["acquire:ok"] > 100
    assert report.ops["append:ok"] > 20 and report.ops["uid_fetch:ok"] > 20
    assert report.idle_events["CONNECTED"] >= 4
    assert sum(v for k, v in report.ops.items() if not k.endswith(":ok")) > 20
    assert report.audits >= DURATION  # about two a second
    assert report.proxy_peaks and max(report.proxy_peaks) == 1
    total = report.final_stats["total"]
    assert total["opened"] == total["closed_total"] and total["open"] == 0


async def test_the_chaos_checks_can_fail() -> None:
    """A check that cannot fail proves nothing: feed each invariant a violation."""
    chaos = _Chaos(cast(DovecotServer, None), ChaosSettings(seed=0))
    await chaos.timed("slow_op", 0.01, asyncio.sleep(SLACK + 0.1))
    assert "slow_op took" in chaos.report.violations[-1]

    class Books:
        def stats(self) -> dict[str, Any]:
            entry = {"opened": 3, "closed_total": 1, "open": 1, "opening": 1, "closing": 0}
            return {"total": {**entry, "slots": 9}, "keys": {"k": entry}}

    chaos.pool = cast(Any, Books())
    chaos.check_books()
    assert any("books of k" in v for v in chaos.report.violations)
    assert any("slots > max_total" in v for v in chaos.report.violations)
    assert any("holds 2 slots" in v for v in chaos.report.violations)

    with socket.socket() as extra:
        baseline = set(socket_fds().values()) - {os.fstat(extra.fileno()).st_ino}
        chaos._check_sockets(baseline)
    assert "sockets differ" in chaos.report.violations[-1]
    chaos.outcome("noop", RuntimeError("not a pool error"))
    assert "unexpected RuntimeError" in chaos.report.violations[-1]
    assert not chaos.report.ok
