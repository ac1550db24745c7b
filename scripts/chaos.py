#!/usr/bin/env python
"""The long chaos run: ``python scripts/chaos.py --duration 600 --seed 42``.

Starts a private Dovecot (as the test harness does), runs
:func:`harness.chaos.run_chaos` for ``--duration`` seconds and prints the JSON report.
Exit status 0 when every invariant held, 1 otherwise; ``--seed`` replays a run's schedule
of faults (timings still vary, see ``tests/harness/chaos.py``). The CI runs the same
chaos for 20 s (``tests/integration/test_chaos.py``); this is for the hours in between.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The chaos lives in the test harness (shared with the CI test); the package is at ROOT.
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]

from harness import DovecotServer  # noqa: E402
from harness.chaos import ChaosSettings, run_chaos, write_report  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=300.0, help="seconds (default 300)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument("--work-keys", type=int, default=6, help="keys with workers (6)")
    parser.add_argument("--idle-keys", type=int, default=2, help="keys held in IDLE (2)")
    parser.add_argument("--workers", type=int, default=2, help="workers per key (2)")
    parser.add_argument(
        "--restarts", type=int, default=None, help="server restarts (default: one per 10 s)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    args = parser.parse_args(argv)
    if args.duration <= 0:
        parser.error("--duration must be > 0")
    restarts = args.restarts if args.restarts is not None else max(1, int(args.duration // 10))
    settings = ChaosSettings(
        seed=args.seed,
        duration=args.duration,
        work_keys=args.work_keys,
        idle_keys=min(args.idle_keys, args.work_keys),
        workers_per_key=args.workers,
        restarts=restarts,
    )
    with DovecotServer() as server:
        report = asyncio.run(run_chaos(server, settings))
    print(report.summary())
    write_report(report, args.json)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
