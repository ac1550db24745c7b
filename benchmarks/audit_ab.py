"""The audit of N pooled IDLE sessions, one checkout's auditor against another's, in one process.

Opens idle_scale's pool (N accounts, one IMAPS connection each, held in
``guardedpool.imap.idle()``, scripted server in a child process), then runs
``run_audit(pool.audit_target)`` with the audit package of each ``--variant``, alternating
round by round on the same sockets, records and heap: what a change to the audit costs or
saves, without the noise of two processes opened minutes apart. Per audit: the process's
CPU time, the audit's own CPU time (``own_cpu_ms``: this thread's CPU inside the audit's
steps only, not what the event loop runs between them: timers falling due, other tasks;
see :func:`_bench.own_cpu`), and the longest gap between two turns of a task that only yields
(the loop stall). A variant named ``*-cold`` starts each audit with empty caches (what a
first audit costs). Prints JSON (milliseconds; min, lower quartile, median, max).

A variant is loaded from ``PATH/audit`` (plus ``sockets.py`` and ``leaks.py``) as a
package of its own that shares ``records``, ``config`` and ``errors`` with the pool, so
its classification sees the pool's record states; the pool itself is the checkout on
``sys.path`` (``PYTHONPATH``).

    python benchmarks/audit_ab.py --n 10000 --rounds 50 \\
        --variant old=/path/to/old/guardedpool --variant new=guardedpool
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import _bench
import idle_scale

T = TypeVar("T")


def load_variant(src: Path, name: str, into: Path) -> ModuleType:
    """``src``'s audit package as ``name``, sharing the pool's data modules."""
    root = into / name
    root.mkdir()
    shutil.copytree(src / "audit", root / "audit")
    for module in ("sockets.py", "leaks.py"):
        shutil.copy(src / module, root / module)
    (root / "__init__.py").write_text("")
    if str(into) not in sys.path:
        sys.path.insert(0, str(into))
    package = importlib.import_module(name)
    for shared_name in ("records", "config", "errors", "reconnect"):
        shared = importlib.import_module(f"guardedpool.{shared_name}")
        sys.modules[f"{name}.{shared_name}"] = shared
        setattr(package, shared_name, shared)
    return importlib.import_module(f"{name}.audit.auditor")


def forget(auditor: ModuleType) -> None:
    """Empty what a variant's audit keeps from one audit to the next, where it has it:
    the inode sets (``auditor._INODES``) and the scan's poll objects (``scan_procfs``'s
    per-thread ``_THREAD``). The connector's endpoint cache belongs to the pool's checkout
    and stays."""
    getattr(auditor, "_INODES", {}).clear()
    procfs = sys.modules.get(auditor.__name__.rpartition(".")[0] + ".scan_procfs")
    kept = getattr(procfs, "_THREAD", None)
    if kept is not None:
        vars(kept).clear()


async def timed(work: Callable[[], Coroutine[Any, Any, T]]) -> tuple[T, float, float, float]:
    """(result, process CPU s, own CPU s, longest loop stall s) of ``work()``."""
    own = 0.0

    async def driven() -> T:
        nonlocal own
        result, own = await _bench.own_cpu(work())
        return result

    c0 = time.process_time()
    result, worst = await _bench.with_longest_stall(driven)
    return result, time.process_time() - c0, own, worst


def quantiles(values: list[float]) -> dict[str, float]:
    v = sorted(values)
    return {"min": v[0], "p25": v[len(v) // 4], "median": _bench.median(v), "max": v[-1]}


async def run(n: int, port: int, cafile: str, variants: dict[str, Path], rounds: int) -> Any:
    pool, accounts = _bench.idle_pool(n, port, cafile)
    pool.start()
    t0 = time.perf_counter()
    sessions = await _bench.enter_idle(pool, accounts, 900)
    _bench.log(f"{n} sessions in IDLE after {time.perf_counter() - t0:.1f} s")
    target = pool.audit_target
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        audits: dict[str, Callable[[], Coroutine[Any, Any, Any]]] = {}
        for i, (label, src) in enumerate(variants.items()):
            auditor = load_variant(src, f"_audit_variant_{i}", Path(tmp))

            def run(auditor: ModuleType = auditor, cold: bool = label.endswith("-cold")) -> Any:
                if cold:
                    forget(auditor)
                return auditor.run_audit(target)

            audits[label] = run
        cpu: dict[str, list[float]] = {label: [] for label in audits}
        own: dict[str, list[float]] = {label: [] for label in audits}
        stall: dict[str, list[float]] = {label: [] for label in audits}
        reports: set[str] = set()
        for audit in audits.values():
            await audit()  # warm-up, not counted
        for r in range(rounds):
            order = list(audits) if r % 2 == 0 else list(reversed(audits))
            for label in order:
                report, c, o, s = await timed(audits[label])
                cpu[label].append(1000 * c)
                own[label].append(1000 * o)
                stall[label].append(1000 * s)
                reports.add(
                    f"findings {len(report.findings)}, sockets {report.sockets_seen}, "
                    f"fds {report.fds_used}, records {report.records_checked}"
                )
        for label in audits:
            out[label] = {
                "cpu_ms": quantiles(cpu[label]),
                "own_cpu_ms": quantiles(own[label]),
                "loop_stall_ms": quantiles(stall[label]),
            }
        out["reports"] = sorted(reports)  # one line: every variant saw the same
    await asyncio.wait_for(pool.close(), 600)
    for s in sessions:
        await s.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="sessions (default 1000)")
    parser.add_argument("--rounds", type=int, default=20, help="audits per variant")
    parser.add_argument(
        "--variant",
        action="append",
        required=True,
        help="NAME=PATH of a guardedpool package directory (repeat; *-cold: empty caches)",
    )
    args = parser.parse_args()
    variants = {}
    for spec in args.variant:
        label, _, path = spec.partition("=")
        variants[label] = Path(path).resolve()
    _bench.raise_nofile()
    with tempfile.TemporaryDirectory() as tmp:
        certdir = Path(tmp)
        idle_scale.write_certs(certdir)
        with idle_scale.ServerProcess(certdir) as server:
            result = asyncio.run(
                run(args.n, server.port, str(certdir / "ca.pem"), variants, args.rounds)
            )
    _bench.emit(
        {
            "benchmark": "audit_ab",
            "machine": _bench.machine(),
            "load_average": os.getloadavg(),
            "n": args.n,
            "rounds": args.rounds,
            "variants": {k: str(v) for k, v in variants.items()},
            "results": result,
        }
    )


if __name__ == "__main__":
    main()
