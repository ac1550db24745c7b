"""A reconnect storm: 1,000 pooled connections reset at once, then re-acquired by their users.

Question: when every connection dies together (a server restart, a NAT flush), does the
pool bring them back as a bounded trickle of at most ``max_connecting`` concurrent connects,
how long does full recovery take, and how many connect attempts does it cost?

Set-up: a ``LineServer`` in its own process; the ``FaultProxy`` (tests/harness/proxy.py)
in front of it, adding ``--latency`` seconds to every chunk each way so that a connect has
a visible duration; a ``GuardedPool`` with 1,000 keys (one connection each, the
one-IDLE-connection-per-inbox shape). A connect is TCP connect + one PING/PONG round trip
through the proxy, standing in for an IMAP greeting + LOGIN. One worker task per key loops
acquire -> PING -> release -> sleep(~0.2 s, jittered), as a sync worker would.

Each round: all workers healthy, then ``proxy.reset_all()`` (RST on every connection).
Measured per round:

* peak concurrent connects, two ways: the pool's own ``stats()["total"]["peak_connecting"]``,
  and the proxy's view, sampled every millisecond: accepted connections that have not yet
  received a byte from the server (i.e. still in their handshake). Both must be
  <= ``max_connecting``. The proxy's ``peak_upstream`` (concurrent upstream connections)
  is reported too.
* time to full recovery: from the reset until the last worker completes a successful
  acquire + PING (each worker's first success after the reset; median and p90 too).
* connect attempts: ``LineConnector.opens`` during the round, and the pool's ``opened``
  and ``connect_failures``.
* the floor: with ``max_connecting`` connects in flight and the median connect time
  measured in the same round, N connects cannot finish sooner than
  ``N / max_connecting * median connect``; ``recovery_over_floor`` is the ratio.

    python benchmarks/storm.py            # 1,000 connections, 3 rounds (about a minute)
    python benchmarks/storm.py --quick    # 200 connections, 1 round
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from typing import Any

import _bench

from guardedpool import GuardedPool, PoolConfig, PoolError
from guardedpool.testing import LineConnection, LineConnector
from tests.harness.proxy import FaultProxy, Mode


class HandshakeConnector(LineConnector):
    """``LineConnector`` whose open also does one PING/PONG, like a greeting + login."""

    def __init__(self, addresses: dict[str, tuple[str, int]]) -> None:
        super().__init__(addresses)
        self.durations: list[float] = []

    async def open(self, key: str, config: PoolConfig) -> LineConnection:
        t0 = time.perf_counter()
        conn = await super().open(key, config)
        try:
            await conn.ping(config.connect_timeout)
        except BaseException:
            conn.abort()
            raise
        self.durations.append(time.perf_counter() - t0)
        return conn


class Sampler:
    """Polls the proxy every millisecond: connections still in their handshake."""

    def __init__(self, proxy: FaultProxy) -> None:
        self.proxy = proxy
        self.peak = 0
        self.samples = 0
        self._task: asyncio.Task[None] | None = None

    def in_handshake(self) -> int:
        return sum(1 for c in self.proxy.live() if c.bytes_down == 0)

    async def _run(self) -> None:
        while True:
            n = sum(1 for c in self.proxy._live if c.bytes_down == 0)
            self.samples += 1
            if n > self.peak:
                self.peak = n
            await asyncio.sleep(0.001)

    def start(self) -> None:
        self.peak = 0
        self.samples = 0
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None


class Workers:
    """One task per key: acquire -> PING -> release -> sleep, noting successes and errors."""

    def __init__(self, pool: GuardedPool[LineConnection], keys: list[str], pause: float) -> None:
        self.pool = pool
        self.keys = keys
        self.pause = pause
        self.mark = 0.0  # the first success of each key after this time is noted
        self.first_ok: dict[str, float] = {}
        self.errors: dict[str, int] = {}
        self.ops = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._stop = False

    async def _work(self, key: str) -> None:
        rng = random.Random(key)
        await asyncio.sleep(rng.random() * self.pause)
        while not self._stop:
            try:
                async with self.pool.acquire(key) as conn:
                    await conn.ping()
                now = time.monotonic()
                if key not in self.first_ok and now > self.mark:
                    self.first_ok[key] = now - self.mark
                self.ops += 1
            except (PoolError, OSError, TimeoutError) as exc:
                name = type(exc).__name__
                self.errors[name] = self.errors.get(name, 0) + 1
            await asyncio.sleep(self.pause * (0.5 + rng.random()))

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._work(k)) for k in self.keys]

    async def stop(self) -> None:
        self._stop = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def watch(self, mark: float) -> None:
        self.mark = mark
        self.first_ok = {}

    def all_ok(self) -> bool:
        return len(self.first_ok) == len(self.keys)


async def wait_for(predicate: Any, timeout: float, step: float = 0.01) -> bool:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            return False
        await asyncio.sleep(step)
    return True


async def run(args: argparse.Namespace) -> dict[str, Any]:
    n = args.n or (200 if args.quick else 1000)
    rounds = args.rounds or (1 if args.quick else 3)
    deadline = _bench.Deadline(90.0 if args.quick else 420.0)
    keys = [f"u{i:04d}" for i in range(n)]
    rounds_out: list[dict[str, Any]] = []
    with _bench.LineServerProcess() as server:
        proxy = await FaultProxy("127.0.0.1", server.port, connect_timeout=10.0).start()
        proxy.set_mode(Mode.LATENCY, delay=args.latency)
        connector = HandshakeConnector({k: (proxy.host, proxy.port) for k in keys})
        cfg = PoolConfig(
            max_per_key=1,
            max_total=n,
            max_connecting=args.max_connecting,
            acquire_timeout=60.0,
            connect_timeout=10.0,
            op_timeout=10.0,
            check_after=3600.0,
            heartbeat_interval=None,
        )
        pool: GuardedPool[LineConnection] = GuardedPool(connector, cfg)
        sampler = Sampler(proxy)
        workers = Workers(pool, keys, args.pause)
        try:
            pool.start()
            sampler.start()
            t0 = time.monotonic()
            workers.watch(t0)
            workers.start()
            filled = await wait_for(workers.all_ok, 120.0)
            fill_s = time.monotonic() - t0
            fill_peak_proxy = sampler.peak
            fill = {
                "seconds": fill_s,
                "complete": filled,
                "peak_connecting_pool": pool.stats()["total"]["peak_connecting"],
                "peak_in_handshake_proxy": fill_peak_proxy,
                "connect_attempts": connector.opens,
                "median_connect_ms": statistics.median(connector.durations) * 1e3,
            }
            _bench.log(f"filled {n} in {fill_s:.2f}s")
            for r in range(rounds):
                if r and deadline.left() < 60:
                    break
                await asyncio.sleep(1.0)  # steady state
                pool.reset_peaks()  # a fresh window for the peak
                proxy.reset_peaks()
                sampler.peak = sampler.in_handshake()
                opens0 = connector.opens
                stats0 = pool.stats()["total"]
                accepted0 = proxy.accepted
                connector.durations.clear()
                t_reset = time.monotonic()
                workers.watch(t_reset)
                proxy.reset_all()
                ok = await wait_for(workers.all_ok, 120.0, step=0.001)
                stats1 = pool.stats()["total"]
                per_worker = sorted(workers.first_ok.values()) or [float("nan")]
                median_connect = (
                    statistics.median(connector.durations) if connector.durations else 0.0
                )
                floor = n / cfg.max_connecting * median_connect
                recovery = per_worker[-1]
                res = {
                    "recovered": ok,
                    "recovery_seconds": recovery,
                    "connect_attempts": connector.opens - opens0,
                    "opened": stats1["opened"] - stats0["opened"],
                    "connect_failures": stats1["connect_failures"] - stats0["connect_failures"],
                    "proxy_accepted": proxy.accepted - accepted0,
                    "peak_connecting_pool": stats1["peak_connecting"],
                    "peak_in_handshake_proxy": sampler.peak,
                    "peak_upstream_proxy": proxy.peak_upstream,
                    "median_connect_ms": median_connect * 1e3,
                    "floor_seconds": floor,
                    "recovery_over_floor": _bench.ratio(recovery, floor),
                    "worker_recovered_s": {
                        "p50": per_worker[len(per_worker) // 2],
                        "p90": per_worker[int(len(per_worker) * 0.9)],
                    },
                }
                _bench.log(
                    f"round {r + 1}: recovered in {recovery:.2f}s, "
                    f"{res['connect_attempts']} attempts, peaks pool "
                    f"{res['peak_connecting_pool']} proxy {res['peak_in_handshake_proxy']}"
                )
                rounds_out.append(res)
            errors = dict(workers.errors)
            ops = workers.ops
        finally:
            await workers.stop()
            await sampler.stop()
            await pool.close()
            await proxy.stop()

    def med(field: str) -> float:
        return _bench.median([r[field] for r in rounds_out])

    peak_pool = max(r["peak_connecting_pool"] for r in [*rounds_out, fill])
    peak_proxy = max(r["peak_in_handshake_proxy"] for r in [*rounds_out, fill])
    all_recovered = all(r["recovered"] for r in rounds_out)
    return {
        "benchmark": "storm",
        "quick": args.quick,
        "machine": _bench.machine(),
        "connections": n,
        "max_connecting": args.max_connecting,
        "proxy_latency_ms": args.latency * 1e3,
        "worker_pause_s": args.pause,
        "fill": fill,
        "rounds": len(rounds_out),
        "recovery_seconds": _bench.spread([r["recovery_seconds"] for r in rounds_out]),
        "connect_attempts": med("connect_attempts"),
        "connect_failures": med("connect_failures"),
        "median_connect_ms": med("median_connect_ms"),
        "floor_seconds": med("floor_seconds"),
        "recovery_over_floor": med("recovery_over_floor"),
        "peak_connecting_pool": peak_pool,
        "peak_in_handshake_proxy": peak_proxy,
        "worker_ops": ops,
        "worker_errors": errors,
        "per_round": rounds_out,
        "targets": {
            "peak_connects_max": args.max_connecting,
            "met": peak_pool <= args.max_connecting
            and peak_proxy <= args.max_connecting
            and all_recovered,
        },
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="200 connections, one round")
    parser.add_argument("--n", type=int, default=0, help="connections (default 1,000)")
    parser.add_argument("--rounds", type=int, default=0, help="resets (default 3)")
    parser.add_argument("--max-connecting", type=int, default=8, help="pool cap (default 8)")
    parser.add_argument(
        "--latency", type=float, default=0.005, help="proxy delay per chunk, s (default 0.005)"
    )
    parser.add_argument(
        "--pause", type=float, default=0.2, help="worker pause between uses, s (default 0.2)"
    )
    _bench.raise_nofile()
    _bench.emit(asyncio.run(run(parser.parse_args())))
