"""What the pool's bookkeeping costs per connection, and what one housekeeping tick costs.

10,000 real TCP connections to a :class:`guardedpool.testing.LineServer` on loopback, held
idle. The server runs in its own process, so its 10,000 sockets and buffers count neither
against this process's ``RLIMIT_NOFILE`` nor in its memory.

Each measurement runs in a fresh child process (memory a process has freed is not given
back to the OS, so a second measurement in the same process would be flattered):

* ``baseline``: the same connections opened with the same ``LineConnector``, no pool;
* ``pool_1key``: through a ``GuardedPool``, one key per connection (10,000 keys, the
  one-IDLE-connection-per-inbox shape, where per-key state weighs most);
* ``pool_100keys``: through a ``GuardedPool``, 100 keys x 100 connections.

Connections are opened 100 at a time (``--batch``), the way a service fills its pool,
not all 10,000 at once: a single 10,000-wide burst leaves the allocator's high-water mark
of short-lived tasks and futures in RSS, for the baseline as much as for the pool.

Every mode is measured in two flavours: RSS (``/proc/self/statm``, without tracemalloc,
whose own traces would inflate RSS) and tracemalloc (Python allocations only). The
pool's bookkeeping per connection is ``(pool delta - baseline delta) / N``. Children run
alternating, round after round; figures are medians. The pool children also time
``pool._housekeeper.run_once()`` (one housekeeping tick over N idle connections) and
``pool.stats()``. ``allocations`` shows where a pool child's whole delta went (its
connections included), by file and by line.
Target: <= 2 KiB per connection.

``--keys-churn N`` asks another question: does per-key state stay bounded when keys come
and go? N distinct keys (a million by default), each acquired once and released, in
batches of ``--batch``, over the in-memory connector (no sockets: only the pool's own
state is measured), with ``idle_timeout`` and ``forget_keys_after`` short so connections
retire and keys are forgotten as they would over days. RSS is sampled every tenth of the
run after a collection; the figure is the growth from the sample at 30% of the run (the
first ones include warm-up: the graveyard filling up, allocator arenas) to the last, per
thousand keys (target: flat, under 1 KiB per 1,000 keys, i.e. about a byte a key).

    python benchmarks/memory.py            # N = 10,000, 3 rounds (a few minutes)
    python benchmarks/memory.py --quick    # N = 1,000, 1 round
    python benchmarks/memory.py --keys-churn           # a million keys (~10 min, loaded 2 vCPU)
    python benchmarks/memory.py --keys-churn --quick   # 100,000 keys
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import subprocess
import sys
import time
import tracemalloc
from typing import Any

import _bench

from guardedpool import GuardedPool, PoolConfig
from guardedpool.testing import LineConnector, MemoryConnector

TARGET_BYTES = 2048
HOST = "127.0.0.1"
WARMUP = 200
MODES = ("baseline", "pool_1key", "pool_100keys")


def config(n: int, per_key: int) -> PoolConfig:
    # Nothing may retire, heartbeat or be checked while we measure: every timer far out.
    return PoolConfig(
        max_per_key=per_key,
        max_total=n + WARMUP,
        max_connecting=64,
        acquire_timeout=300.0,
        connect_timeout=30.0,
        idle_timeout=3600.0,
        max_lifetime=7200.0,
        check_after=3600.0,
        heartbeat_interval=3600.0,
        leak_threshold=3600.0,
    )


# ---------------------------------------------------------------- child process


def layout(mode: str, n: int) -> tuple[list[str], int]:
    """The keys of the n connections (one entry per connection) and max_per_key."""
    if mode == "pool_100keys":
        per_key = max(1, n // 100)
        return [f"k{i % 100:03d}" for i in range(n)], per_key
    return [f"u{i:05d}" for i in range(n)], 1


async def open_baseline(
    connector: LineConnector, keys: list[str], cfg: PoolConfig, batch: int
) -> list[Any]:
    out: list[Any] = []
    for i in range(0, len(keys), batch):
        out += await asyncio.gather(*(connector.open(k, cfg) for k in keys[i : i + batch]))
    return out


async def open_pooled(pool: GuardedPool[Any], keys: list[str], batch: int) -> None:
    held: list[Any] = []  # hold every one until all are open, so none is reused
    for i in range(0, len(keys), batch):
        held += await asyncio.gather(*(pool.acquire(k) for k in keys[i : i + batch]))
    for conn in held:
        pool.release(conn)


def timed(fn: Any, repeat: int) -> dict[str, float]:
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        runs.append((time.perf_counter() - t0) * 1e3)
    return _bench.spread(runs)


def _short(filename: str) -> str:
    if "/guardedpool/" in filename:
        return "guardedpool/" + filename.split("/guardedpool/")[-1]
    return "/".join(filename.rsplit("/", 2)[-2:])


def top_allocations(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, n: int) -> Any:
    """Where the delta went: bytes per connection by file, and the biggest lines."""
    diff = after.compare_to(before, "lineno")
    by_file: dict[str, int] = {}
    for stat in diff:
        tag = _short(stat.traceback[0].filename)
        by_file[tag] = by_file.get(tag, 0) + stat.size_diff
    files = sorted(by_file.items(), key=lambda kv: -kv[1])[:12]
    lines = [
        {
            "where": f"{_short(stat.traceback[0].filename)}:{stat.traceback[0].lineno}",
            "bytes_per_conn": stat.size_diff / n,
            "count_per_conn": stat.count_diff / n,
        }
        for stat in diff[:15]
    ]
    return {"by_file_bytes_per_conn": {k: v / n for k, v in files}, "top_lines": lines}


async def child(mode: str, metric: str, n: int, port: int, batch: int) -> dict[str, Any]:
    _bench.raise_nofile()
    keys, per_key = layout(mode, n)
    warm_keys = [f"w{i:03d}" for i in range(WARMUP)]
    addresses = {k: (HOST, port) for k in set(keys) | set(warm_keys)}
    connector = LineConnector(addresses)
    cfg = config(n, per_key)
    pool: GuardedPool[Any] | None = None
    if mode != "baseline":
        pool = GuardedPool(connector, cfg)
        pool.start()
    # Warm-up through the same path: imports, code caches, first allocator arenas.
    if pool is None:
        warm = await open_baseline(connector, warm_keys, cfg, batch)
        for conn in warm:
            conn.transport.close()
        del warm
    else:
        await open_pooled(pool, warm_keys, batch)
    await asyncio.sleep(0.2)
    gc.collect()

    snap0 = None
    if metric == "tracemalloc":
        tracemalloc.start(1)
        snap0 = tracemalloc.take_snapshot()
    traced0 = tracemalloc.get_traced_memory()[0] if metric == "tracemalloc" else 0
    rss0 = _bench.rss_bytes()
    t0 = time.perf_counter()
    held: list[Any] = []
    if pool is None:
        held = await open_baseline(connector, keys, cfg, batch)
    else:
        await open_pooled(pool, keys, batch)
    open_s = time.perf_counter() - t0
    await asyncio.sleep(0.2)
    gc.collect()
    rss1 = _bench.rss_bytes()
    out: dict[str, Any] = {"mode": mode, "metric": metric, "n": n, "open_seconds": open_s}
    if metric == "tracemalloc":
        assert snap0 is not None
        out["traced_delta"] = tracemalloc.get_traced_memory()[0] - traced0
        if pool is not None:
            out["allocations"] = top_allocations(snap0, tracemalloc.take_snapshot(), n)
        tracemalloc.stop()
    else:
        out["rss_delta"] = rss1 - rss0
    if pool is not None:
        stats = pool.stats()["total"]
        out["idle"] = stats["idle"]
        out["opened"] = stats["opened"] - WARMUP
        if metric == "rss":
            out["housekeep_tick_ms"] = timed(pool._housekeeper.run_once, 15)
            out["stats_ms"] = timed(pool.stats, 5)
        await pool.close()
    else:
        out["idle"] = out["opened"] = len(held)
        for conn in held:
            conn.transport.close()
    return out


# ---------------------------------------------------------------- keys churn

CHURN_TARGET_BYTES_PER_1000_KEYS = 1024


async def keys_churn(n: int, batch: int) -> dict[str, Any]:
    """N distinct keys over time: RSS and the pool's key count, sampled ten times."""
    cfg = PoolConfig(
        max_per_key=1,
        max_total=4 * batch,
        acquire_timeout=60.0,
        idle_timeout=0.05,
        forget_keys_after=0.05,
        housekeeping_interval=0.02,
        check_after=3600.0,
        heartbeat_interval=None,
    )
    pool = GuardedPool(MemoryConnector(), cfg)
    samples: list[dict[str, Any]] = []
    every = max(batch, (n // 10) // batch * batch)
    t0 = time.perf_counter()
    async with pool:
        for start in range(0, n, batch):
            keys = [f"user-{i}" for i in range(start, min(n, start + batch))]
            for conn in await asyncio.gather(*(pool.acquire(k) for k in keys)):
                pool.release(conn)
            done = start + len(keys)
            if done % every == 0 or done == n:
                await asyncio.sleep(0.2)  # housekeeping retires and forgets what is due
                gc.collect()
                stats = pool.stats()
                samples.append(
                    {
                        "keys_acquired": done,
                        "rss_bytes": _bench.rss_bytes(),
                        "keys_in_pool": len(stats["keys"]),
                        "open": stats["total"]["open"],
                    }
                )
                _bench.log(f"keys churn: {done:,} keys, {samples[-1]['rss_bytes']:,} B RSS")
        totals = pool.stats()["total"]
    # The first samples include warm-up: the graveyard filling to graveyard_size records,
    # allocator arenas, code caches. Growth is measured from the sample at 30% on.
    first, last = samples[len(samples) * 3 // 10 - 1 if len(samples) >= 4 else 0], samples[-1]
    keys_between = last["keys_acquired"] - first["keys_acquired"]
    growth = last["rss_bytes"] - first["rss_bytes"]
    per_1000 = growth / keys_between * 1000 if keys_between else 0.0
    return {
        "benchmark": "memory_keys_churn",
        "machine": _bench.machine(),
        "keys": n,
        "batch": batch,
        "seconds": time.perf_counter() - t0,
        "samples": samples,
        "rss_growth_from_keys": first["keys_acquired"],
        "rss_growth_bytes": growth,
        "rss_growth_bytes_per_1000_keys": per_1000,
        "max_keys_in_pool": max(x["keys_in_pool"] for x in samples),
        "books": {
            "acquires": totals["acquires"],
            "opened": totals["opened"],
            "closed_total": totals["closed_total"],
            "open": totals["open"],
            "holds": totals["opened"] - totals["closed_total"] == totals["open"],
        },
        "target_bytes_per_1000_keys_max": CHURN_TARGET_BYTES_PER_1000_KEYS,
        "target_met": per_1000 <= CHURN_TARGET_BYTES_PER_1000_KEYS,
    }


# ---------------------------------------------------------------- parent


def run_child(
    mode: str, metric: str, n: int, port: int, batch: int, timeout: float
) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", mode, "--metric", metric, "--n", str(n)]
    cmd += ["--port", str(port), "--batch", str(batch)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"child {mode}/{metric} failed:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def main(args: argparse.Namespace) -> dict[str, Any]:
    n = args.n or (1000 if args.quick else 10_000)
    rounds = args.rounds or (1 if args.quick else 3)
    deadline = _bench.Deadline(120.0 if args.quick else 900.0)
    _bench.raise_nofile()  # children inherit it
    with _bench.LineServerProcess() as server:
        port = server.port
        results: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for r in range(rounds):
            if r and deadline.left() < 120:
                _bench.log(f"time budget spent; stopping after {r} rounds")
                break
            order = [(m, k) for m in MODES for k in ("rss", "tracemalloc")]
            if r % 2:
                order.reverse()
            for mode, metric in order:
                server.wait_quiet()  # the previous child's sockets gone before N more
                _bench.log(f"round {r + 1}/{rounds}: {mode} {metric}")
                res = run_child(
                    mode, metric, n, port, args.batch, timeout=max(60.0, deadline.left())
                )
                results.setdefault((mode, metric), []).append(res)

    def med(mode: str, metric: str, field: str) -> float:
        return _bench.median([x[field] for x in results[(mode, metric)]])

    base_rss = med("baseline", "rss", "rss_delta")
    base_tm = med("baseline", "tracemalloc", "traced_delta")
    out: dict[str, Any] = {
        "benchmark": "memory",
        "quick": args.quick,
        "machine": _bench.machine(),
        "n": n,
        "batch": args.batch,
        "rounds": len(results[("baseline", "rss")]),
        "baseline": {
            "rss_bytes_per_conn": base_rss / n,
            "traced_bytes_per_conn": base_tm / n,
            "open_seconds": med("baseline", "rss", "open_seconds"),
        },
    }
    met = True
    for mode in MODES[1:]:
        rss = med(mode, "rss", "rss_delta")
        tm = med(mode, "tracemalloc", "traced_delta")
        pool_rss = (rss - base_rss) / n
        pool_tm = (tm - base_tm) / n
        ticks = [x["housekeep_tick_ms"]["median"] for x in results[(mode, "rss")]]
        entry = {
            "keys": 100 if mode == "pool_100keys" else n,
            "rss_bytes_per_conn_total": rss / n,
            "traced_bytes_per_conn_total": tm / n,
            "pool_rss_bytes_per_conn": pool_rss,
            "pool_traced_bytes_per_conn": pool_tm,
            "pool_rss_runs_bytes_per_conn": [
                (x["rss_delta"] - base_rss) / n for x in results[(mode, "rss")]
            ],
            "open_seconds": med(mode, "rss", "open_seconds"),
            "idle_after_open": results[(mode, "rss")][-1]["idle"],
            "housekeep_tick_ms": _bench.spread(ticks),
            "housekeep_tick_us_per_conn": _bench.median(ticks) * 1e3 / n,
            "stats_ms": _bench.median([x["stats_ms"]["median"] for x in results[(mode, "rss")]]),
            "allocations": results[(mode, "tracemalloc")][-1].get("allocations"),
            "target_bytes_max": TARGET_BYTES,
            "target_met": max(pool_rss, pool_tm) <= TARGET_BYTES,
        }
        met = met and entry["target_met"]
        out[mode] = entry
    out["targets"] = {"pool_bytes_per_conn_max": TARGET_BYTES, "met": met}
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="N = 1,000, one round")
    parser.add_argument("--n", type=int, default=0, help="connections (default 10,000)")
    parser.add_argument("--rounds", type=int, default=0, help="rounds (default 3)")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--metric", choices=("rss", "tracemalloc"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument(
        "--batch", type=int, default=100, help="connections opened at once (default 100)"
    )
    parser.add_argument(
        "--keys-churn",
        type=int,
        nargs="?",
        const=1_000_000,
        default=0,
        metavar="N",
        help="N distinct keys over time, RSS sampled (default N: 1,000,000; --quick: 100,000)",
    )
    ns = parser.parse_args()
    if ns.keys_churn:
        n_keys = 100_000 if ns.quick and ns.keys_churn == 1_000_000 else ns.keys_churn
        _bench.emit(asyncio.run(keys_churn(n_keys, max(ns.batch, 1000))))
    elif ns.child:
        print(json.dumps(asyncio.run(child(ns.child, ns.metric, ns.n, ns.port, ns.batch))))
    else:
        _bench.emit(main(ns))
