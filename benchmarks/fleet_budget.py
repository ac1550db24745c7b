"""The fleet budget's cost: Redis round trips and time per connect, and the renewal load.

Questions (issue 16, section 6, the budget part; the fleet sync figures come in phase 2):

* what does a lease cost per connect? ``acquire`` is one ``EVALSHA`` (one round trip,
  measured in µs against a local redis-server); ``release`` is one more, in the
  background. Counted with ``INFO commandstats``, not assumed.
* what does holding leases cost while idle? All of a process's leases are renewed in one
  ``EVALSHA`` every ``ttl/3``: commands per second per 1,000 held connections should be
  ``3/ttl`` whatever the number held (0.1/s at the default ttl of 30 s). Measured with
  1,000 leases over 1,000 keys and a short ttl, then scaled.

Set-up: a throwaway ``redis-server`` (tests/harness/redis.py, AOF with fsync always, as
the harness runs it) on loopback; one process.

    python benchmarks/fleet_budget.py           # 2,000 connects, 1,000 held (~15 s)
    python benchmarks/fleet_budget.py --quick   # 300 connects, 200 held
"""

from __future__ import annotations

import argparse
import asyncio
import time

import _bench
import redis.asyncio as aioredis

from guardedpool.fleet import RedisBudget
from tests.harness.redis import RedisServer


async def _evalsha(r: aioredis.Redis) -> int:
    stats = await r.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def measure(url: str, connects: int, held: int, idle_ttl: float, idle_for: float) -> dict:
    r = aioredis.Redis.from_url(url)
    budget = RedisBudget(url, limit=10, ttl=30, prefix="bench-connect", auto_renew=False)
    for _ in range(50):  # warm: scripts loaded, connection open
        budget.release(await budget.acquire("warm", timeout=5))
    await asyncio.sleep(0.1)
    before = await _evalsha(r)
    latencies = []
    started = time.perf_counter()
    for i in range(connects):
        t0 = time.perf_counter()
        lease = await budget.acquire(f"k{i % 100}", timeout=5)
        latencies.append((time.perf_counter() - t0) * 1e6)
        budget.release(lease)
    wall = time.perf_counter() - started
    await budget.aclose()
    calls = await _evalsha(r) - before

    idle = RedisBudget(url, limit=1, ttl=idle_ttl, prefix="bench-idle")
    leases = [await idle.acquire(f"k{i}", timeout=5) for i in range(held)]
    renew_one = []
    for _ in range(5):
        t0 = time.perf_counter()
        await idle.renew()
        renew_one.append((time.perf_counter() - t0) * 1e6)
    before = await _evalsha(r)
    await asyncio.sleep(idle_for)
    idle_calls = await _evalsha(r) - before
    assert all(lease.valid() for lease in leases)
    await idle.aclose()
    await r.aclose()
    per_s = idle_calls / idle_for
    return {
        "connect": {
            "connects": connects,
            "evalsha_per_connect": calls / connects,  # acquire + background release
            "acquire_us": _bench.spread(latencies),
            "acquire_us_p99": sorted(latencies)[int(len(latencies) * 0.99) - 1],
            "connects_per_s_one_task": connects / wall,
        },
        "idle": {
            "held": held,
            "ttl_s": idle_ttl,
            "seconds": idle_for,
            "renew_calls": idle_calls,
            "commands_per_s": per_s,
            "commands_per_s_per_1000_held": per_s * 1000 / held,
            "renew_round_us": _bench.spread(renew_one),
            "at_default_ttl_30s_commands_per_s": 3 / 30,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    connects, held = (300, 200) if args.quick else (2000, 1000)
    with RedisServer() as server:
        _bench.log(f"redis-server on {server.url}")
        result = asyncio.run(measure(server.url, connects, held, idle_ttl=3.0, idle_for=6.0))
    _bench.emit({"benchmark": "fleet_budget", "machine": _bench.machine(), **result})


if __name__ == "__main__":
    main()
