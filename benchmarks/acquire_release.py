"""Acquire + release of a pooled connection against the floor of an ``asyncio.Queue`` handoff.

Question: what does the pool's bookkeeping cost per checkout, next to the cheapest way
asyncio has to hand one object from a shelf to a task and back?

* uncontended: one key, one idle connection (``MemoryConnector``: no sockets, so the
  network is not measured). Pool: ``conn = await pool.acquire(k); pool.release(conn)``
  (and the ``async with`` form, reported alongside). Floor: ``o = await q.get();
  q.put_nowait(o)`` on an ``asyncio.Queue`` holding the same kind of object. The release
  is synchronous in both.
* contended: 1,000 tasks over 100 connections across 10 keys (10 per key); each task
  repeatedly acquires its key's connection, yields once to the loop while holding it
  (``await asyncio.sleep(0)``, standing in for work), and releases it. Floor: the same
  shape over 10 ``asyncio.Queue`` objects each holding 10 objects.

Pool and floor run in the same process, alternating order every round; the figures are
medians over rounds and the ratios are medians of the per-round ratios. Target:
uncontended pool <= 3x the floor.

    python benchmarks/acquire_release.py            # full run (about a minute)
    python benchmarks/acquire_release.py --quick    # a few seconds
    python benchmarks/acquire_release.py --profile uncontended   # pyinstrument to stderr
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import time
from typing import Any

import _bench

from guardedpool import GuardedPool, PoolConfig
from guardedpool.testing import MemoryConnection, MemoryConnector

TARGET_UNCONTENDED = 3.0
N_TASKS, N_CONNS, N_KEYS = 1000, 100, 10


# ---------------------------------------------------------------- uncontended


async def pool_explicit(pool: GuardedPool[Any], n: int) -> float:
    acquire, release = pool.acquire, pool.release
    t0 = time.perf_counter_ns()
    for _ in range(n):
        conn = await acquire("k0")
        release(conn)
    return (time.perf_counter_ns() - t0) / n


async def pool_with(pool: GuardedPool[Any], n: int) -> float:
    acquire = pool.acquire
    t0 = time.perf_counter_ns()
    for _ in range(n):
        async with acquire("k0"):
            pass
    return (time.perf_counter_ns() - t0) / n


async def queue_floor(q: asyncio.Queue[Any], n: int) -> float:
    get, put = q.get, q.put_nowait
    t0 = time.perf_counter_ns()
    for _ in range(n):
        obj = await get()
        put(obj)
    return (time.perf_counter_ns() - t0) / n


async def uncontended(rounds: int, n: int, deadline: _bench.Deadline) -> dict[str, Any]:
    pool: GuardedPool[MemoryConnection] = GuardedPool(MemoryConnector(), PoolConfig())
    async with pool:
        conn = await pool.acquire("k0")  # open the one connection the loop will reuse
        pool.release(conn)
        q: asyncio.Queue[Any] = asyncio.Queue()
        q.put_nowait(MemoryConnection("k0", 0))
        # warm-up: bytecode caches, allocator pools
        await pool_explicit(pool, n // 4)
        await pool_with(pool, n // 4)
        await queue_floor(q, n // 4)
        runs: dict[str, list[float]] = {"pool": [], "pool_with": [], "floor": []}
        ratios: list[float] = []
        ratios_with: list[float] = []
        for r in range(rounds):
            if r and deadline.passed():
                break
            order = ("pool", "pool_with", "floor") if r % 2 == 0 else ("floor", "pool_with", "pool")
            got: dict[str, float] = {}
            for name in order:
                gc.collect()
                if name == "pool":
                    got[name] = await pool_explicit(pool, n)
                elif name == "pool_with":
                    got[name] = await pool_with(pool, n)
                else:
                    got[name] = await queue_floor(q, n)
                runs[name].append(got[name])
            ratios.append(got["pool"] / got["floor"])
            ratios_with.append(got["pool_with"] / got["floor"])
        opens = pool.stats()["total"]["opened"]
    ratio = _bench.median(ratios)
    return {
        "ops_per_round": n,
        "rounds": len(ratios),
        "pool_ns_per_op": _bench.spread(runs["pool"]),
        "pool_async_with_ns_per_op": _bench.spread(runs["pool_with"]),
        "floor_ns_per_op": _bench.spread(runs["floor"]),
        "ratio_pool_over_floor": ratio,
        "ratio_pool_async_with_over_floor": _bench.median(ratios_with),
        "connections_opened": opens,
        "target_ratio_max": TARGET_UNCONTENDED,
        "target_met": ratio <= TARGET_UNCONTENDED,
    }


# ---------------------------------------------------------------- contended


async def pool_contended(pool: GuardedPool[Any], iters: int) -> float:
    acquire, release, pause = pool.acquire, pool.release, asyncio.sleep

    async def worker(key: str) -> None:
        for _ in range(iters):
            conn = await acquire(key)
            await pause(0)
            release(conn)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(f"k{i % N_KEYS}") for i in range(N_TASKS)))
    return N_TASKS * iters / (time.perf_counter() - t0)


async def queue_contended(queues: list[asyncio.Queue[Any]], iters: int) -> float:
    pause = asyncio.sleep

    async def worker(q: asyncio.Queue[Any]) -> None:
        get, put = q.get, q.put_nowait
        for _ in range(iters):
            obj = await get()
            await pause(0)
            put(obj)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(queues[i % N_KEYS]) for i in range(N_TASKS)))
    return N_TASKS * iters / (time.perf_counter() - t0)


async def make_full_pool() -> GuardedPool[MemoryConnection]:
    per_key = N_CONNS // N_KEYS
    cfg = PoolConfig(max_per_key=per_key, max_total=N_CONNS, max_connecting=N_CONNS)
    pool: GuardedPool[MemoryConnection] = GuardedPool(MemoryConnector(), cfg)
    pool.start()
    held = await asyncio.gather(
        *(pool.acquire(f"k{k}") for k in range(N_KEYS) for _ in range(per_key))
    )
    for conn in held:
        pool.release(conn)
    return pool


async def contended(rounds: int, iters: int, deadline: _bench.Deadline) -> dict[str, Any]:
    pool = await make_full_pool()
    queues: list[asyncio.Queue[Any]] = []
    for k in range(N_KEYS):
        q: asyncio.Queue[Any] = asyncio.Queue()
        for j in range(N_CONNS // N_KEYS):
            q.put_nowait(MemoryConnection(f"k{k}", j))
        queues.append(q)
    try:
        await pool_contended(pool, max(1, iters // 4))  # warm-up
        await queue_contended(queues, max(1, iters // 4))
        runs: dict[str, list[float]] = {"pool": [], "floor": []}
        ratios: list[float] = []
        for r in range(rounds):
            if r and deadline.passed():
                break
            got: dict[str, float] = {}
            for name in ("pool", "floor") if r % 2 == 0 else ("floor", "pool"):
                gc.collect()
                if name == "pool":
                    got[name] = await pool_contended(pool, iters)
                else:
                    got[name] = await queue_contended(queues, iters)
                runs[name].append(got[name])
            ratios.append(got["floor"] / got["pool"])
        stats = pool.stats()["total"]
    finally:
        await pool.close()
    return {
        "tasks": N_TASKS,
        "connections": N_CONNS,
        "keys": N_KEYS,
        "ops_per_round": N_TASKS * iters,
        "rounds": len(ratios),
        "pool_ops_per_s": _bench.spread(runs["pool"]),
        "floor_ops_per_s": _bench.spread(runs["floor"]),
        "pool_us_per_op": 1e6 / _bench.median(runs["pool"]),
        "floor_us_per_op": 1e6 / _bench.median(runs["floor"]),
        "slowdown_floor_over_pool_throughput": _bench.median(ratios),
        "connections_opened": stats["opened"],
        "acquire_timeouts": stats["acquire_timeouts"],
    }


# ---------------------------------------------------------------- profiling


async def profile(which: str) -> None:
    try:
        from pyinstrument import Profiler
    except ImportError:  # fall back to the stdlib
        Profiler = None  # type: ignore[assignment,misc]
    if which == "uncontended":
        pool: GuardedPool[MemoryConnection] = GuardedPool(MemoryConnector(), PoolConfig())
        await pool_explicit(pool, 1000)

        async def body() -> None:
            await pool_explicit(pool, 200_000)
    else:
        pool = await make_full_pool()

        async def body() -> None:
            await pool_contended(pool, 100)

    if Profiler is not None:
        prof = Profiler(interval=0.0001, async_mode="disabled")
        prof.start()
        await body()
        prof.stop()
        print(prof.output_text(unicode=False, color=False, show_all=False), file=sys.stderr)
    else:
        import cProfile
        import pstats

        cp = cProfile.Profile()
        cp.enable()
        await body()
        cp.disable()
        pstats.Stats(cp, stream=sys.stderr).sort_stats("tottime").print_stats(25)
    await pool.close()


# ---------------------------------------------------------------- main


async def main(args: argparse.Namespace) -> dict[str, Any]:
    if args.quick:
        rounds_u, n_u, rounds_c, iters_c, budget = 5, 5_000, 3, 5, 20.0
    else:
        rounds_u, n_u, rounds_c, iters_c, budget = 15, 50_000, 9, 30, 150.0
    deadline = _bench.Deadline(budget)
    _bench.log("uncontended")
    unc = await uncontended(rounds_u, n_u, _bench.Deadline(budget * 0.5))
    _bench.log("contended")
    con = await contended(rounds_c, iters_c, deadline)
    return {
        "benchmark": "acquire_release",
        "quick": args.quick,
        "machine": _bench.machine(),
        "loop": type(asyncio.get_running_loop()).__name__,
        "uncontended": unc,
        "contended": con,
        "targets": {"uncontended_ratio_max": TARGET_UNCONTENDED, "met": unc["target_met"]},
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small, fast run")
    parser.add_argument(
        "--profile",
        choices=("uncontended", "contended"),
        help="profile the pool side (pyinstrument if installed, else cProfile) to stderr",
    )
    ns = parser.parse_args()
    if ns.profile:
        asyncio.run(profile(ns.profile))
    else:
        _bench.emit(asyncio.run(main(ns)))
