"""Fleet member processes for the multi-process tests: ``python -m harness.fleetproc``.

``hammer``: tasks that acquire budget leases on a few keys, hold them briefly and give
them back. Every holder counts itself in an *observer* Redis (a second server, so the
count survives a restart of the budget's Redis): ``INCR inuse:<key>`` after the grant,
``DECR`` before the release, or as soon as the lease is found invalid. A count above the
limit is an over-admission, recorded in ``violations``; ``grants`` counts every grant.

``owner``: a :class:`RedisOwnership` worker over ``key0..keyN``. It prints one JSON line
per event on stdout, flushed: ``gained`` / ``lost`` (from the synchronous listener), and
``work`` every 50 ms for each key it validly owns, checked and printed with no await in
between, as a store write under the fencing token would be.

Both stop on SIGTERM (ownership: hands its keys back) or after ``--duration`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import sys
import time

import redis.asyncio as aioredis

from guardedpool.fleet import (
    BudgetError,
    OwnershipChange,
    RedisBudget,
    RedisOwnership,
)


def _say(event: str, **fields: object) -> None:
    sys.stdout.write(json.dumps({"event": event, "t": time.monotonic(), **fields}) + "\n")
    sys.stdout.flush()


async def hammer(args: argparse.Namespace) -> None:
    budget = RedisBudget(
        args.url, limit=args.limit, ttl=args.ttl, prefix=args.prefix, op_timeout=args.op_timeout
    )
    observer = aioredis.Redis.from_url(args.observer)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    counts = {"grants": 0, "errors": 0, "lost": 0}
    keys = [f"key{i}" for i in range(args.keys)]

    async def one(task_no: int) -> None:
        rng = random.Random(task_no)
        while not stop.is_set():
            key = rng.choice(keys)
            try:
                lease = await budget.acquire(key, timeout=args.ttl * 2)
            except BudgetError:
                counts["errors"] += 1
                continue
            counts["grants"] += 1
            inuse = f"{args.prefix}:inuse:{key}"
            try:
                n = await observer.incr(inuse)
                await observer.incr(f"{args.prefix}:grants")
                if n > args.limit:
                    await observer.incr(f"{args.prefix}:violations")
                    _say("violation", key=key, inuse=n)
                for _ in range(rng.randint(1, 4)):
                    if not lease.valid():
                        counts["lost"] += 1
                        break
                    await asyncio.sleep(0.005)
            finally:
                await observer.decr(inuse)
                budget.release(lease)

    tasks = [asyncio.create_task(one(args.seed * 1000 + i)) for i in range(args.tasks)]
    try:
        await asyncio.wait_for(stop.wait(), args.duration)
    except TimeoutError:
        stop.set()
    await asyncio.wait(tasks, timeout=args.ttl * 3)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    _say("done", **counts, stats=budget.stats())
    await budget.aclose()
    await observer.aclose()


async def owner(args: argparse.Namespace) -> None:
    keys = [f"key{i}" for i in range(args.keys)]
    own = RedisOwnership(
        args.url,
        keys=keys,
        ttl=args.ttl,
        prefix=args.prefix,
        worker_id=args.worker,
        op_timeout=args.op_timeout,
    )

    def on_change(change: OwnershipChange) -> None:
        _say(
            "gained" if change.gained else "lost",
            key=change.key,
            fence=change.fencing_token,
            reason=change.lease.lost,
        )

    own.subscribe(on_change)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await own.start()
    _say("started", worker=own.worker_id)
    deadline = time.monotonic() + args.duration
    while not stop.is_set() and time.monotonic() < deadline:
        for key in keys:
            lease = own.owns(key)
            if lease is not None:  # checked and "written" in one step, no await between
                _say("work", key=key, fence=lease.fencing_token)
        await asyncio.sleep(0.05)
    await own.aclose()
    _say("done", stats=own.stats())


def main() -> None:
    parser = argparse.ArgumentParser(prog="harness.fleetproc")
    parser.add_argument("mode", choices=["hammer", "owner"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--observer", default="")
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--worker", default=None)
    parser.add_argument("--limit", type=int, default=2)
    parser.add_argument("--ttl", type=float, default=2.0)
    parser.add_argument("--keys", type=int, default=3)
    # Roomier than the default ttl/6 with the short test TTLs: the test machine is busy,
    # and a timed-out renewal there would only churn keys (safely), not test anything.
    parser.add_argument("--op-timeout", dest="op_timeout", type=float, default=1.0)
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--duration", type=float, default=5.0)
    args = parser.parse_args()
    asyncio.run(hammer(args) if args.mode == "hammer" else owner(args))


if __name__ == "__main__":
    main()
