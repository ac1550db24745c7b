"""Seeded chaos against a real Dovecot: real IMAP work while everything goes wrong.

Shared by ``tests/integration/test_chaos.py`` (a short run in CI) and ``scripts/chaos.py``
(a long run with ``--duration`` and ``--seed``). One fault proxy per key and
``max_per_key=1``, so a proxy's ``peak_clients`` *is* the number of sockets a slot ever
held at once. Workers do SELECT / APPEND / UID FETCH / UID STORE / NOOP / UID SEARCH on
their key; IDLE sessions watch other keys and are stopped and restarted at random;
an injector drops, resets, stalls, slows, blackholes and garbles connections, refuses to
greet new ones, cancels workers mid-operation, and the server is paused and resumed.

Why every call is measured rather than merely awaited: the promise is "bounded", and a
call that takes its timeout + 20 s still "completes". Each call runs under a generous
backstop (so a hang fails the run instead of stalling it) and is checked against its own
bound + 1 s. The other invariants are sampled while the chaos runs, not only at the end:
books that balance at the end may still have been wrong in between.

Reproducible: every random decision (fault kinds, targets, timings, worker operations)
comes from ``random.Random`` instances derived from the seed. Network timing still varies
between runs, so a seed reproduces the schedule of faults, not every interleaving; a
failing report names its seed so the same schedule can be replayed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from guardedpool import (
    ConnectError,
    ConnectionPoisoned,
    GuardedPool,
    IMAPCommandError,
    PoolClosed,
    PoolConfig,
    PoolTimeout,
    RetryPolicy,
)
from guardedpool.audit.verify import VERIFY_QUICK
from guardedpool.imap import IMAPAccount, IMAPClient, IMAPConnector, parse_search
from guardedpool.imap.idle import IdleSession
from guardedpool.sockets import is_open

from .dovecot import DovecotServer, make_message
from .proxy import FaultProxy, Mode
from .sockets import socket_fds

__all__ = ["ChaosReport", "ChaosSettings", "chaos_config", "run_chaos"]

T = TypeVar("T")

SLACK = 1.0
"""The promise: no call takes longer than its bound plus this."""

BACKSTOP = 10.0
"""Beyond bound + BACKSTOP a call is abandoned (cancelled) and counted as a hang."""

AUDIT_BOUND = VERIFY_QUICK + 0.5
"""An audit is local work (a procfs pass) plus at most VERIFY_QUICK of force-close checks
(the rest of a check runs in the background and does not hold up the report)."""

FAULTS: dict[str, int] = {  # kind -> weight
    "rst": 14,
    "drop": 14,
    "stall": 10,
    "slow": 8,
    "latency": 6,
    "blackhole": 6,
    "garbage": 8,
    "never_greet": 6,
    "garbage_greeting": 3,
    "cancel_worker": 10,
}

GARBAGE: tuple[bytes | None, ...] = (
    None,  # random bytes
    b"* BYE server going down\r\n",  # an unexpected BYE
    b"ZZZZ1 OK done\r\n",  # a tagged reply nobody asked for
    b"* 1 FETCH (BODY[] {99999999}\r\n",  # a literal that never ends
    b"+ go ahead\r\n",  # a continuation nobody asked for
    b"\x00\xff" * 64 + b"\r\n",
)
"""What a garbling proxy sends instead of the server's bytes."""

EXPECTED_ERRORS = (PoolTimeout, ConnectError, ConnectionPoisoned, IMAPCommandError, PoolClosed)
"""What real IMAP work may raise while the network misbehaves. Anything else is a bug."""


def chaos_config(keys: int) -> PoolConfig:
    """Short bounds so a 20 s run sees hundreds of timeouts, reconnects and retirements."""
    return PoolConfig(
        max_per_key=1,
        max_total=keys,
        max_connecting=4,
        acquire_timeout=2.0,
        # An acquire whose connect is queued behind max_connecting waits on while other
        # connects succeed (issue 15), up to this: the bound the run holds acquires to.
        queue_timeout=4.0,
        connect_timeout=1.0,
        op_timeout=0.5,
        close_timeout=0.3,
        idle_timeout=3.0,
        max_lifetime=4.0,
        lifetime_jitter=0.25,
        check_after=0.5,
        heartbeat_interval=0.7,
        leak_threshold=60.0,
        housekeeping_interval=0.1,
        keepalive_idle=1,
        keepalive_interval=1,
        keepalive_count=2,
        retry=RetryPolicy(initial=0.05, max_delay=0.5, jitter=0.05, reconnect_deadline=5.0),
    )


def acquire_bound(cfg: PoolConfig) -> float:
    """The longest an acquire may take: ``acquire_timeout``, or ``queue_timeout`` for one
    whose connect is queued behind ``max_connecting`` while the pool makes progress."""
    return max(cfg.acquire_timeout, cfg.queue_timeout)


@dataclass(frozen=True)
class ChaosSettings:
    """One chaos run.

    Attributes:
        seed: drives every random decision (see the module docstring).
        duration: seconds of chaos (then a bounded wind-down and the final checks).
        work_keys: keys that workers use (one proxy and one Dovecot user each).
        idle_keys: keys held by IDLE sessions; key ``idle<i>`` watches the mailbox of
            ``work<i>``, so the workers' APPENDs become pushes.
        workers_per_key: concurrent workers per work key (they queue for the one slot).
        fault_gap: (min, max) seconds between two injected faults.
        restarts: how many times the server is paused and resumed, spread over the run.
        sample_every: seconds between two samples of stats and proxy peaks.
        audit_every: seconds between two audits.
        config: the pool's config; default :func:`chaos_config`.
    """

    seed: int = 1
    duration: float = 20.0
    work_keys: int = 6
    idle_keys: int = 2
    workers_per_key: int = 2
    fault_gap: tuple[float, float] = (0.02, 0.15)
    restarts: int = 2
    sample_every: float = 0.05
    audit_every: float = 0.5
    config: PoolConfig | None = None

    @property
    def pool_config(self) -> PoolConfig:
        return self.config or chaos_config(self.work_keys + self.idle_keys)


@dataclass
class ChaosReport:
    """What happened and what was violated; ``ok`` is the verdict."""

    seed: int
    duration: float = 0.0
    ops: Counter[str] = field(default_factory=Counter)  # "op:outcome" -> count
    faults: Counter[str] = field(default_factory=Counter)
    restarts: int = 0
    samples: int = 0
    audits: int = 0
    audit_findings: Counter[str] = field(default_factory=Counter)
    idle_events: Counter[str] = field(default_factory=Counter)
    slowest: dict[str, float] = field(default_factory=dict)  # op -> max(elapsed - bound)
    proxy_peaks: list[int] = field(default_factory=list)
    final_stats: dict[str, Any] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def violate(self, message: str) -> None:
        if len(self.violations) < 200:  # one bug can repeat a thousand times
            self.violations.append(message)

    def to_dict(self) -> dict[str, Any]:
        total = self.final_stats.get("total", {})
        return {
            "seed": self.seed,
            "ok": self.ok,
            "duration": round(self.duration, 3),
            "ops": dict(sorted(self.ops.items())),
            "faults": dict(sorted(self.faults.items())),
            "restarts": self.restarts,
            "samples": self.samples,
            "audits": self.audits,
            "audit_findings": dict(self.audit_findings),
            "idle_events": dict(self.idle_events),
            "worst_overrun_s": {k: round(v, 3) for k, v in sorted(self.slowest.items())},
            "proxy_peak_clients": self.proxy_peaks,
            "pool": {
                k: total.get(k)
                for k in ("opened", "closed", "reconnects", "connect_failures", "peak_connecting")
            },
            "violations": self.violations,
        }

    def summary(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str)


class _Chaos:
    """One run's moving parts; see :func:`run_chaos`."""

    def __init__(self, server: DovecotServer, settings: ChaosSettings) -> None:
        self.server = server
        self.s = settings
        self.cfg = settings.pool_config
        self.report = ChaosReport(seed=settings.seed)
        self.rnd = random.Random(settings.seed)
        self.stop = asyncio.Event()
        self.proxies: dict[str, FaultProxy] = {}
        self.users: dict[str, str] = {}  # key -> Dovecot user
        self.restore: dict[str, float] = {}  # key -> when to put its new connections back
        self.workers: dict[str, asyncio.Task[None]] = {}
        self.pool: GuardedPool[IMAPClient] | None = None
        self.housekept_at = 0.0

    # -- measuring ---------------------------------------------------------------------

    async def timed(self, op: str, bound: float, aw: Awaitable[T]) -> T:
        """Await ``aw``; a violation if it takes more than ``bound + SLACK`` (or hangs)."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        timer: asyncio.Timeout | None = None
        try:
            async with asyncio.timeout(bound + BACKSTOP) as timer:
                return await aw
        except TimeoutError:
            if timer is not None and timer.expired():
                self.report.violate(f"{op} hung: still running after {bound + BACKSTOP:.1f} s")
            raise
        finally:
            over = loop.time() - start - bound
            if over > self.report.slowest.get(op, -bound):
                self.report.slowest[op] = over
            if over > SLACK:
                self.report.violate(f"{op} took {bound + over:.2f} s, bound {bound} s + {SLACK}")

    def outcome(self, op: str, exc: BaseException | None) -> None:
        """Count an outcome; an exception the pool must never raise here is a violation."""
        if exc is None:
            self.report.ops[f"{op}:ok"] += 1
            return
        self.report.ops[f"{op}:{type(exc).__name__}"] += 1
        if isinstance(exc, IMAPCommandError) and "refused by the client" not in str(exc):
            # NO/BAD from Dovecot for a well-formed command means the bytes were corrupted
            # on the way, which no fault here does (garbage is server->client only).
            self.report.violate(f"{op}: server rejected a command: {exc}")
        elif not isinstance(exc, EXPECTED_ERRORS):
            self.report.violate(f"{op}: unexpected {type(exc).__name__}: {exc}")

    # -- workers -----------------------------------------------------------------------

    async def worker(self, key: str, rnd: random.Random) -> None:
        """Acquire, run 1-4 random commands, release; forever, until told to stop."""
        pool = self.pool
        assert pool is not None
        cfg = self.cfg
        while not self.stop.is_set():
            try:
                conn = await self.timed("acquire", acquire_bound(cfg), pool.acquire(key))
            except Exception as exc:
                self.outcome("acquire", exc)
                await asyncio.sleep(rnd.uniform(0.0, 0.1))
                continue
            self.outcome("acquire", None)
            error: BaseException | None = None
            try:
                for _ in range(rnd.randint(1, 4)):
                    await self.command(conn, rnd)
            except BaseException as exc:
                error = exc
                if not isinstance(exc, Exception):
                    raise
            finally:
                pool.release(conn, error=error)
            await asyncio.sleep(rnd.uniform(0.0, 0.03))

    async def command(self, conn: IMAPClient, rnd: random.Random) -> None:
        op = rnd.choices(
            ["select", "append", "uid_fetch", "uid_store", "noop", "uid_search"],
            weights=[1, 3, 3, 2, 3, 2],
        )[0]
        if conn.selected is None and op not in ("noop", "append"):
            op = "select"
        bound = self.cfg.op_timeout
        try:
            if op == "select":
                await self.timed(op, bound, conn.select("INBOX"))
            elif op == "append":
                msg = make_message(rnd.randrange(10**6), subject=f"chaos {self.s.seed}")
                await self.timed(op, bound, conn.append(msg, mailbox="INBOX"))
            elif op == "uid_fetch":
                await self.timed(op, bound, conn.uid_fetch("1:*", "(UID FLAGS RFC822.SIZE)"))
            elif op == "uid_store":
                found = await self.timed("uid_search", bound, conn.uid_search("ALL"))
                uids = parse_search(found.lines)
                if uids:
                    uid = str(rnd.choice(uids))
                    await self.timed(op, bound, conn.uid("STORE", uid, "+FLAGS", r"(\Flagged)"))
            elif op == "noop":
                await self.timed(op, bound, conn.noop())
            else:
                await self.timed(op, bound, conn.uid_search("UNSEEN"))
        except Exception as exc:
            self.outcome(op, exc)
            raise
        self.outcome(op, None)

    async def supervise(self) -> None:
        """Keep ``workers_per_key`` workers per work key alive (the injector kills some)."""
        n = 0
        while not self.stop.is_set():
            for slot in list(self.workers):
                task = self.workers[slot]
                if task.done():
                    if not task.cancelled() and task.exception() is not None:
                        exc = task.exception()
                        self.report.violate(f"worker {slot} died: {type(exc).__name__}: {exc}")
                    key = slot.split("/")[0]
                    n += 1
                    self.workers[slot] = asyncio.create_task(
                        self.worker(key, random.Random(f"{self.s.seed}/{slot}/{n}")),
                        name=f"chaos-worker-{slot}",
                    )
            await asyncio.sleep(0.05)

    # -- IDLE sessions -----------------------------------------------------------------

    async def idler(self, key: str, rnd: random.Random) -> None:
        """Run IDLE sessions of random length; each stop() is a measured call."""
        pool = self.pool
        assert pool is not None
        while not self.stop.is_set():
            session = IdleSession(pool, key, "INBOX", renew_after=rnd.uniform(0.3, 1.5))
            await session.__aenter__()
            try:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(rnd.uniform(0.5, 3.0)):
                        async for event in session:
                            self.report.idle_events[event.kind] += 1
            except Exception as exc:
                self.outcome("idle_session", exc)
            finally:
                # stop(): cancel, DONE bounded by op_timeout, release.
                await self.timed("idle_stop", self.cfg.op_timeout, session.stop())

    # -- faults ------------------------------------------------------------------------

    def inject(self, now: float) -> None:
        kind = self.rnd.choices(list(FAULTS), weights=list(FAULTS.values()))[0]
        key = self.rnd.choice(sorted(self.proxies))
        proxy = self.proxies[key]
        self.report.faults[kind] += 1
        rnd = self.rnd
        if kind == "rst":
            proxy.reset_all()
        elif kind == "drop":
            proxy.close_all()
        elif kind == "stall":
            proxy.stall_all()
        elif kind == "slow":
            proxy.set_mode_all(Mode.SLOW, interval=rnd.uniform(0.005, 0.05))
        elif kind == "latency":
            proxy.set_mode_all(Mode.LATENCY, delay=rnd.uniform(0.05, 0.6))
        elif kind == "blackhole":
            proxy.set_mode_all(Mode.BLACKHOLE)
        elif kind == "garbage":
            junk = rnd.choice(GARBAGE)
            proxy.set_mode_all(Mode.GARBAGE, after_bytes=rnd.randint(0, 200), garbage=junk)
        elif kind == "never_greet":
            proxy.set_mode(Mode.NEVER_GREET)
            self.restore[key] = now + rnd.uniform(0.3, 2.0)
        elif kind == "garbage_greeting":
            proxy.set_mode(Mode.GARBAGE)
            self.restore[key] = now + rnd.uniform(0.2, 1.0)
        else:  # cancel_worker: a caller cancelled mid-acquire or mid-command
            running = [t for t in self.workers.values() if not t.done()]
            if running:
                rnd.choice(running).cancel()

    async def injector(self) -> None:
        loop = asyncio.get_running_loop()
        lo, hi = self.s.fault_gap
        while not self.stop.is_set():
            await asyncio.sleep(self.rnd.uniform(lo, hi))
            now = loop.time()
            for key, at in list(self.restore.items()):
                if now >= at:
                    self.proxies[key].set_mode(Mode.PASS)
                    del self.restore[key]
            self.inject(now)

    async def restarter(self) -> None:
        """Pause the server (every connection dies, the port refuses), then resume it."""
        n = self.s.restarts
        started = asyncio.get_running_loop().time()
        for i in range(n):
            at = started + self.s.duration * (i + 1) / (n + 1)
            delay = at - asyncio.get_running_loop().time()
            try:
                async with asyncio.timeout(max(delay, 0.0)):
                    await self.stop.wait()
                return
            except TimeoutError:
                pass
            await asyncio.to_thread(self.server.pause)
            await asyncio.sleep(self.rnd.uniform(0.2, 1.0))
            await asyncio.to_thread(self.server.resume)
            self.report.restarts += 1

    # -- invariants --------------------------------------------------------------------

    def check_books(self) -> None:
        """opened - closed == open, and no key over its one slot, in every sample."""
        assert self.pool is not None
        stats = self.pool.stats()
        self.report.samples += 1
        for name, entry in [("total", stats["total"]), *stats["keys"].items()]:
            if entry["opened"] - entry["closed_total"] != entry["open"]:
                self.report.violate(
                    f"books of {name}: opened {entry['opened']} - closed "
                    f"{entry['closed_total']} != open {entry['open']}"
                )
            if name != "total":
                held = entry["open"] + entry["opening"] + entry["closing"]
                if held > self.cfg.max_per_key:
                    self.report.violate(f"key {name} holds {held} slots > max_per_key")
        if stats["total"]["slots"] > self.cfg.max_total:
            self.report.violate(f"{stats['total']['slots']} slots > max_total")
        for key, proxy in self.proxies.items():
            if proxy.peak_clients > 1:
                self.report.violate(f"key {key}: {proxy.peak_clients} sockets at once")
                proxy.reset_peaks()

    async def audit_once(self) -> None:
        assert self.pool is not None
        report = await self.timed("audit", AUDIT_BOUND, self.pool.audit())
        self.report.audits += 1
        for finding in report.findings:
            self.report.audit_findings[f"{finding.kind.value}:{finding.action.value}"] += 1
        stragglers = [f for f in report.findings if f.kind.value == "straggler"]
        if stragglers:
            self.report.violate(f"audit found stragglers: {[f.to_dict() for f in stragglers]}")
        if report.counts["orphan"]:
            self.report.violate(f"audit found orphans: {report.counts['orphan']}")

    async def sampler(self) -> None:
        loop = asyncio.get_running_loop()
        # "once housekeeping has run": the first audit waits for two rounds of it.
        next_audit = loop.time() + 2 * self.cfg.housekeeping_interval
        while not self.stop.is_set():
            self.check_books()
            if loop.time() >= next_audit:
                await self.audit_once()
                next_audit = loop.time() + self.s.audit_every
            await asyncio.sleep(self.s.sample_every)

    # -- the run -----------------------------------------------------------------------

    async def run(self) -> ChaosReport:
        s, cfg = self.s, self.cfg
        loop = asyncio.get_running_loop()
        started = loop.time()
        baseline = set(socket_fds().values())
        keys = [f"work{i}" for i in range(s.work_keys)] + [f"idle{i}" for i in range(s.idle_keys)]
        for i in range(s.work_keys):
            user = f"chaos{s.seed}w{i}"
            if user not in self.server.users:
                self.server.add_user(user)
            self.users[f"work{i}"] = user
        for i in range(s.idle_keys):
            self.users[f"idle{i}"] = self.users[f"work{i % max(s.work_keys, 1)}"]
        for key in keys:
            self.proxies[key] = await FaultProxy(self.server.host, self.server.port).start()
        accounts = {
            key: IMAPAccount(
                host=p.host,
                port=p.port,
                username=self.users[key],
                password=self.server.users[self.users[key]],
                tls=False,
            )
            for key, p in self.proxies.items()
        }
        pool: GuardedPool[IMAPClient] = GuardedPool(IMAPConnector(accounts), cfg)
        self.pool = pool
        pool.start()
        background: list[asyncio.Task[None]] = []
        try:
            for i in range(s.work_keys):
                for w in range(s.workers_per_key):
                    slot = f"work{i}/{w}"
                    self.workers[slot] = asyncio.create_task(
                        self.worker(f"work{i}", random.Random(f"{s.seed}/{slot}/0")),
                        name=f"chaos-worker-{slot}",
                    )
            idlers = [
                asyncio.create_task(self.idler(f"idle{i}", random.Random(f"{s.seed}/idle{i}")))
                for i in range(s.idle_keys)
            ]
            background = [
                asyncio.create_task(c)
                for c in (self.supervise(), self.injector(), self.restarter(), self.sampler())
            ]
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(s.duration):
                    await self.stop.wait()
            self.stop.set()
            await self._wind_down([*self.workers.values(), *idlers], background)
            # Let the last faults settle, then the books must still balance.
            for proxy in self.proxies.values():
                proxy.set_mode(Mode.PASS)
            self.check_books()
            await self.audit_once()
        finally:
            self.stop.set()
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            bound = 2 * cfg.close_timeout + 1.0  # returns, graceful closes, OS checks
            await self.timed("pool_close", bound, pool.close())
            self.report.final_stats = pool.stats()
            self._check_closed(pool)
            for proxy in self.proxies.values():
                self.report.proxy_peaks.append(proxy.peak_clients)
                await proxy.stop()
            self._check_sockets(baseline)
            self.report.duration = loop.time() - started
        return self.report

    async def _wind_down(
        self, users: list[asyncio.Task[None]], background: list[asyncio.Task[None]]
    ) -> None:
        """Workers finish their cycle (bounded); what is left is cancelled, also bounded."""
        cfg = self.cfg
        cycle = acquire_bound(cfg) + 6 * cfg.op_timeout + SLACK
        _, pending = await asyncio.wait(users, timeout=cycle)
        for task in pending:
            task.cancel()
        if pending:
            _, stuck = await asyncio.wait(pending, timeout=cfg.op_timeout + SLACK)
            for task in stuck:
                self.report.violate(f"{task.get_name()} did not end after cancel")
        for task in users:
            if task.done() and not task.cancelled() and task.exception() is not None:
                exc = task.exception()
                self.report.violate(f"{task.get_name()} raised {type(exc).__name__}: {exc}")

    def _check_closed(self, pool: GuardedPool[IMAPClient]) -> None:
        total = pool.stats()["total"]
        if total["slots"] or total["open"] or total["waiting"]:
            self.report.violate(f"after close: {total}")
        for record in pool.audit_target.graveyard():
            if record.socket is not None and is_open(record.socket):
                self.report.violate(f"record {record.id} socket still open after close")

    def _check_sockets(self, baseline: set[int]) -> None:
        deadline = time.monotonic() + 1.0
        while True:
            now = set(socket_fds().values())
            if now == baseline or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        if now != baseline:
            self.report.violate(
                f"sockets differ from the baseline after close: +{sorted(now - baseline)} "
                f"-{sorted(baseline - now)}"
            )


async def run_chaos(server: DovecotServer, settings: ChaosSettings) -> ChaosReport:
    """Run the chaos described by ``settings`` against ``server`` (which it restarts).

    The server must be private to the run: it is paused and resumed, and users
    ``chaos<seed>w<i>`` are added to it. Returns the report; ``report.ok`` is the verdict.
    """
    # Thousands of expected "poisoned"/"connect failed" warnings: keep them out of memory.
    quiet = [logging.getLogger(n) for n in ("guardedpool", "aioimaplib")]
    levels = [log.level for log in quiet]
    for log in quiet:
        log.setLevel(logging.ERROR)
    try:
        return await _Chaos(server, settings).run()
    finally:
        for log, level in zip(quiet, levels, strict=True):
            log.setLevel(level)


def write_report(report: ChaosReport, path: Path | None) -> None:
    if path is not None:
        path.write_text(report.summary() + "\n")


ChaosRunner = Callable[[DovecotServer, ChaosSettings], Awaitable[ChaosReport]]
