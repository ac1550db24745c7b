"""The first audit of a fresh process with N pooled IDLE sessions, variant against variant.

``audit_ab.py`` compares auditors on one process's sockets, after a warm-up; this script
measures what it cannot: the first audit of a process (empty caches, code not yet run)
and the one right after it. Each round starts one fresh process per ``--variant``
(alternating the order round by round), which opens idle_scale's pool (N accounts, one
IMAPS connection each, held in ``guardedpool.imap.idle()``, scripted server in a child
process), waits ``--settle`` seconds, and runs ``run_audit(pool.audit_target)`` with that
variant's audit package (loaded as in ``audit_ab.py``) twice, back to back.

Per audit: wall time, this thread's CPU time (``cpu_ms``, what ``idle_scale.py`` reports
as ``audit_cpu_ms``), and the audit's own CPU time (``own_cpu_ms``: inside its own steps
only, see ``_bench.own_cpu``). ``cpu_ms - own_cpu_ms`` is what the event loop ran between
the audit's turns (timers falling due, other tasks): the loop's work, not the audit's.
Prints JSON (milliseconds; median, min, max per variant and audit).

    python benchmarks/audit_first.py --n 10000 --rounds 3 \\
        --variant old=/path/to/old/guardedpool --variant new=guardedpool
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _bench
import idle_scale
from audit_ab import load_variant

AUDITS = ("first", "second")


async def _audits(n: int, port: int, cafile: str, src: Path, settle: float) -> dict[str, Any]:
    pool, accounts = _bench.idle_pool(n, port, cafile)
    pool.start()
    t0 = time.perf_counter()
    sessions = await _bench.enter_idle(pool, accounts, 900)
    out: dict[str, Any] = {"open_all_s": time.perf_counter() - t0}
    with tempfile.TemporaryDirectory() as tmp:
        auditor = load_variant(src, "_audit_variant", Path(tmp))
        gc.collect()
        await asyncio.sleep(settle)
        for name in AUDITS:
            t0, c0 = time.perf_counter(), time.thread_time()
            report, own = await _bench.own_cpu(auditor.run_audit(pool.audit_target))
            out[name] = {
                "wall_ms": 1000 * (time.perf_counter() - t0),
                "cpu_ms": 1000 * (time.thread_time() - c0),
                "own_cpu_ms": 1000 * own,
                "findings": len(report.findings),
            }
    await asyncio.wait_for(pool.close(), 600)
    for s in sessions:
        await s.stop()
    return out


def child(n: int, src: Path, settle: float) -> None:
    _bench.raise_nofile()
    with tempfile.TemporaryDirectory() as tmp:
        certdir = Path(tmp)
        idle_scale.write_certs(certdir)
        with idle_scale.ServerProcess(certdir) as server:
            result = asyncio.run(_audits(n, server.port, str(certdir / "ca.pem"), src, settle))
    print(json.dumps(result), flush=True)


def run_child(n: int, src: Path, settle: float) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", str(src), "--n", str(n), "--settle", str(settle)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="sessions (default 1000)")
    parser.add_argument("--rounds", type=int, default=3, help="processes per variant")
    parser.add_argument(
        "--settle", type=float, default=0.0, help="seconds between opening and the audit"
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help="NAME=PATH of a guardedpool package directory (repeat)",
    )
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.n, args.child, args.settle)
        return
    if not args.variant:
        parser.error("at least one --variant NAME=PATH")
    variants = {}
    for spec in args.variant:
        label, _, path = spec.partition("=")
        variants[label] = Path(path).resolve()
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label in variants}
    for r in range(args.rounds):
        order = list(variants) if r % 2 == 0 else list(reversed(variants))
        for label in order:
            runs[label].append(run_child(args.n, variants[label], args.settle))
            _bench.log(f"round {r + 1} {label}: {runs[label][-1]['first']}")
    results = {
        label: {
            name: {
                field: _bench.spread([run[name][field] for run in done])
                for field in ("wall_ms", "cpu_ms", "own_cpu_ms")
            }
            for name in AUDITS
        }
        for label, done in runs.items()
    }
    _bench.emit(
        {
            "benchmark": "audit_first",
            "machine": _bench.machine(),
            "load_average": os.getloadavg(),
            "n": args.n,
            "rounds": args.rounds,
            "settle_s": args.settle,
            "variants": {k: str(v) for k, v in variants.items()},
            "results": results,
            "runs": runs,
        }
    )


if __name__ == "__main__":
    main()
