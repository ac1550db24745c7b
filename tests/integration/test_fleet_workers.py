"""The example worker as a fleet, with the real engines: ``python -m examples.imap_sync run``
processes sharing a Redis (budget + ownership) and a PostgreSQL store, syncing a Dovecot
whose ``mail_max_userip_connections`` equals the fleet's cap.

Each account reaches Dovecot through a fault proxy of its own, so the proxy's count of
client connections is that account's connections, fleet-wide; the test samples every
proxy every few milliseconds. Faults: ``kill -9`` of a worker mid-sync, a Redis restart
mid-run, a worker SIGSTOPped past the TTL. Waits are bounded polls; takeover times are
printed (``-s``), never asserted against the clock beyond a generous bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest
import redis
from harness import DovecotServer, FaultProxy, Mode, PostgresServer, RedisServer

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parents[2]
TTL = 2.0
LIMIT = 2
ACCOUNTS = 40  # the cap test's accounts (3 mailboxes each)
REFUSAL = "Maximum number of connections from user+IP exceeded"


@pytest.fixture
def pg_dsn(postgres_server: PostgresServer) -> Iterator[str]:
    name = f"t{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server.dsn, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield postgres_server.dsn.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(postgres_server.dsn, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class Worker:
    name: str
    proc: asyncio.subprocess.Process
    log: Path

    def alive(self) -> bool:
        return self.proc.returncode is None

    def signal(self, sig: int) -> None:
        if self.alive():
            self.proc.send_signal(sig)


@dataclass
class FleetRig:
    """Dovecot users, one proxy per account, the config, the worker processes."""

    tmp: Path
    dovecot: DovecotServer
    redis: RedisServer
    dsn: str
    prefix: str
    users: dict[str, str] = field(default_factory=dict)  # account key -> password
    proxies: dict[str, FaultProxy] = field(default_factory=dict)
    workers: list[Worker] = field(default_factory=list)
    peak: dict[str, int] = field(default_factory=dict)  # sampled concurrent conns
    mailboxes: tuple[str, ...] = ("INBOX",)

    async def add_accounts(
        self, n: int, messages: int, mode: Mode = Mode.PASS, **fault: Any
    ) -> None:
        for i in range(n):
            key = f"f{i}{uuid.uuid4().hex[:6]}"
            self.users[key] = self.dovecot.add_user(key)
            for box in self.mailboxes:
                self.dovecot.seed_messages(key, messages, folder=box)
            proxy = FaultProxy(self.dovecot.host, self.dovecot.port)
            proxy.set_mode(mode, **fault)
            self.proxies[key] = await proxy.start()
            self.peak[key] = 0

    def write_config(self, *, max_per_key: int = 4, poll: float = 0.3) -> Path:
        secrets = self.tmp / "secrets.toml"
        secrets.write_text("".join(f'"{k}" = "{p}"\n' for k, p in self.users.items()))
        boxes = ", ".join(f'"{b}"' for b in self.mailboxes)
        accounts = "".join(
            f'\n[[accounts]]\nkey = "{k}"\nhost = "127.0.0.1"\nport = {self.proxies[k].port}\n'
            f'username = "{k}"\ntls = false\nmailboxes = [{boxes}]\n'
            for k in self.users
        )
        config = self.tmp / "sync.toml"
        config.write_text(
            f'store = "{self.dsn}"\nsecrets_file = "secrets.toml"\n'
            f"[sync]\nconcurrency = 8\npoll_interval = {poll}\nbatch_size = 10\n"
            f"[health]\nenabled = false\n"
            f"[pool]\nmax_per_key = {max_per_key}\nmax_total = 200\nacquire_timeout = 4.0\n"
            f"connect_timeout = 5.0\nop_timeout = 10.0\n"
            f"[pool.retry]\ninitial = 0.05\nmax_delay = 0.5\n"
            f'[fleet]\nredis = "{self.redis.url}"\nmax_connections_per_account = {LIMIT}\n'
            f'ttl = {TTL}\nprefix = "{self.prefix}"\n' + accounts
        )
        return config

    async def start_worker(self, name: str) -> Worker:
        config = self.tmp / "sync.toml"
        text = config.read_text()
        own = self.tmp / f"{name}.toml"
        own.write_text(text.replace("[fleet]\n", f'[fleet]\nworker_id = "{name}"\n', 1))
        log = self.tmp / f"{name}.log"
        with open(log, "wb") as sink:  # noqa: ASYNC230 - a local temp file, at once
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "examples.imap_sync",
                "run",
                "-v",
                "--config",
                str(own),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=sink,
                stderr=sink,
                cwd=self.tmp,
                env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"},
            )
        worker = Worker(name, proc, log)
        self.workers.append(worker)
        return worker

    def sample(self) -> None:
        for key, proxy in self.proxies.items():
            n = proxy.current_clients
            if n > self.peak[key]:
                self.peak[key] = n

    async def sampling(self, seconds: float, until: Callable[[], bool] | None = None) -> bool:
        """Sample every proxy every 5 ms for at most ``seconds``; True once ``until()``."""
        end = time.monotonic() + seconds
        checked = 0.0
        while time.monotonic() < end:
            self.sample()
            if until is not None and time.monotonic() - checked > 0.25:
                checked = time.monotonic()
                if until():
                    return True
            await asyncio.sleep(0.005)
        return until is None

    def stored(self) -> dict[str, int]:
        """account -> messages in the store (all its mailboxes)."""
        with psycopg.connect(self.dsn, connect_timeout=5) as db:
            try:
                rows = db.execute(
                    "SELECT account, COUNT(*) FROM messages GROUP BY account"
                ).fetchall()
            except psycopg.errors.UndefinedTable:  # no worker has created the schema yet
                return {}
        return {r[0]: int(r[1]) for r in rows}

    def owners(self) -> dict[str, str | None]:
        r = redis.Redis.from_url(self.redis.url, socket_timeout=2)
        try:
            values = r.mget([f"{self.prefix}:owner:{k}" for k in self.users])
        finally:
            r.close()
        return {
            k: (None if v is None else v.decode().split(" ", 1)[1])
            for k, v in zip(self.users, values, strict=True)
        }

    def store_equals_server(self, per_mailbox: int) -> bool:
        """Every account holds exactly UIDs 1..per_mailbox in each mailbox (UNIQUE rules
        out duplicates; the count and the range rule out losses)."""
        with psycopg.connect(self.dsn, connect_timeout=5) as db:
            if db.execute("SELECT to_regclass('messages')").fetchone() == (None,):
                return False  # no worker has created the schema yet
            rows = db.execute(
                "SELECT m.account, m.mailbox, COUNT(*), MIN(m.uid), MAX(m.uid) FROM messages m "
                "JOIN mailboxes b ON b.account=m.account AND b.name=m.mailbox "
                "AND b.uidvalidity=m.uidvalidity GROUP BY m.account, m.mailbox"
            ).fetchall()
        got = {(r[0], r[1]): (int(r[2]), int(r[3]), int(r[4])) for r in rows}
        want = {(k, b): (per_mailbox, 1, per_mailbox) for k in self.users for b in self.mailboxes}
        return got == want

    def refusals(self) -> int:
        return self.dovecot.log_path.read_text(errors="replace").count(REFUSAL)

    async def stop(self) -> None:
        for w in self.workers:
            w.signal(signal.SIGCONT)
            w.signal(signal.SIGTERM)
        for w in self.workers:
            try:
                await asyncio.wait_for(w.proc.wait(), 15)
            except TimeoutError:
                w.signal(signal.SIGKILL)
                await asyncio.wait_for(w.proc.wait(), 5)
        for proxy in self.proxies.values():
            await proxy.stop()


@pytest.fixture
async def rig(
    tmp_path: Path,
    dovecot_factory: Callable[..., DovecotServer],
    redis_factory: Callable[..., RedisServer],
    pg_dsn: str,
    fleet_prefix: str,
) -> AsyncIterator[FleetRig]:
    dovecot = dovecot_factory(max_userip_connections=LIMIT)
    rig = FleetRig(tmp_path, dovecot, redis_factory(), pg_dsn, fleet_prefix)
    try:
        yield rig
    finally:
        await rig.stop()
        for w in rig.workers:
            tail = w.log.read_text(errors="replace").splitlines()[-15:]
            print(f"--- {w.name} (exit {w.proc.returncode}):", *tail, sep="\n")


def fail_with_logs(rig: FleetRig, what: str) -> None:
    tails = {w.name: w.log.read_text(errors="replace")[-2500:] for w in rig.workers}
    pytest.fail(f"{what}\nstored={rig.stored()}\nowners={rig.owners()}\nlogs={tails}")


async def test_cap_never_exceeded_and_dovecot_never_refuses(rig: FleetRig) -> None:
    """4 workers joining one after another (so accounts move between them while they
    sync), ACCOUNTS accounts of 3 mailboxes each (3 syncs at once want 3 connections), cap 2."""
    rig.mailboxes = ("INBOX", "A", "B")
    begun = time.monotonic()
    await rig.add_accounts(ACCOUNTS, 4)
    rig.write_config(max_per_key=4)
    print(f"setup: {time.monotonic() - begun:.1f} s")
    for i in range(4):
        await rig.start_worker(f"w{i}")
        await rig.sampling(0.5)
    done = await rig.sampling(60, lambda: rig.store_equals_server(4))
    if not done:
        fail_with_logs(rig, "the fleet did not sync every account")
    print(f"synced {ACCOUNTS} accounts: {time.monotonic() - begun:.1f} s after setup began")
    await rig.sampling(1.0)  # passes go on: more samples
    assert max(rig.peak.values()) <= LIMIT, {k: v for k, v in rig.peak.items() if v > LIMIT}
    assert max(rig.peak.values()) == LIMIT  # the cap was reached, never passed
    assert rig.refusals() == 0
    assert len({o for o in rig.owners().values()}) >= 2  # the accounts were shared


async def test_a_killed_worker_is_taken_over_and_the_store_equals_the_server(
    rig: FleetRig,
) -> None:
    await rig.add_accounts(9, 120, Mode.LATENCY, delay=0.01)
    rig.write_config(max_per_key=2)
    workers = [await rig.start_worker(f"w{i}") for i in range(3)]
    # The victim is a worker caught mid-sync of an account it owns (rendezvous hashing
    # over random keys may leave any given worker without one).
    chosen: list[Worker] = []

    def victim_mid_sync() -> bool:
        owners, stored = rig.owners(), rig.stored()
        chosen[:] = [
            w
            for w in workers
            if any(o == w.name and 0 < stored.get(k, 0) < 120 for k, o in owners.items())
        ]
        return bool(chosen)

    if not await rig.sampling(40, victim_mid_sync):
        fail_with_logs(rig, "no worker was ever caught mid-sync")
    victim = chosen[0]
    taken = [k for k, o in rig.owners().items() if o == victim.name]
    victim.signal(signal.SIGKILL)
    killed_at = time.monotonic()

    def taken_over() -> bool:
        owners = rig.owners()
        return all(owners[k] not in (None, victim.name) for k in taken)

    if not await rig.sampling(TTL * 4 + 10, taken_over):
        fail_with_logs(rig, f"accounts of the killed worker not taken over: {taken}")
    print(f"takeover of {len(taken)} accounts: {time.monotonic() - killed_at:.2f} s (ttl {TTL})")
    if not await rig.sampling(60, lambda: rig.store_equals_server(120)):
        fail_with_logs(rig, "the store never equalled the server after the kill")
    assert max(rig.peak.values()) <= LIMIT
    assert rig.refusals() == 0


async def test_a_redis_restart_never_over_admits_and_the_fleet_recovers(rig: FleetRig) -> None:
    rig.mailboxes = ("INBOX", "A")
    await rig.add_accounts(8, 60, Mode.LATENCY, delay=0.005)
    rig.write_config(max_per_key=3)
    for i in range(2):
        await rig.start_worker(f"w{i}")
    if not await rig.sampling(40, lambda: sum(rig.stored().values()) > 100):
        fail_with_logs(rig, "no progress before the restart")
    await asyncio.to_thread(rig.redis.kill)  # a crash: AOF keeps every lease
    await rig.sampling(1.5)  # Redis away for most of a TTL
    await asyncio.to_thread(rig.redis.resume)
    for key in rig.users:  # new mail after the restart must arrive too
        for box in rig.mailboxes:
            rig.dovecot.seed_messages(key, 5, messages=(), folder=box)
    if not await rig.sampling(60, lambda: rig.store_equals_server(65)):
        fail_with_logs(rig, "the fleet did not recover after the Redis restart")
    assert max(rig.peak.values()) <= LIMIT, rig.peak
    assert rig.refusals() == 0


async def test_a_worker_paused_past_the_ttl_sends_nothing_more_on_its_connections(
    rig: FleetRig,
) -> None:
    await rig.add_accounts(4, 150, Mode.LATENCY, delay=0.02)
    rig.write_config(max_per_key=2)
    workers = [await rig.start_worker("w0"), await rig.start_worker("w1")]

    def connections_of(worker: Worker) -> set[int]:
        """Local ports of ``worker``'s sockets to the proxies."""
        ports = {p.port for p in rig.proxies.values()}
        conns = psutil.Process(worker.proc.pid).net_connections(kind="tcp")
        return {c.laddr.port for c in conns if c.raddr and c.raddr.port in ports}

    # Rendezvous hashing may give every account to one worker (1 run in 8 with 4 random
    # keys): pause whichever worker is connected, not a fixed one.
    connected: list[Worker] = []

    def someone_connected() -> bool:
        connected[:] = [w for w in workers if connections_of(w)]
        return bool(connected)

    if not await rig.sampling(40, someone_connected):
        fail_with_logs(rig, "no worker ever connected")
    paused = connected[0]

    def own_connections() -> set[int]:
        return connections_of(paused)
    await rig.sampling(0.3)
    paused.signal(signal.SIGSTOP)
    mine_ports = own_connections()
    await rig.sampling(TTL * 2.5)  # past the TTL: the other worker takes over meanwhile
    mine = [
        c
        for p in rig.proxies.values()
        for c in p.connections
        if c.client_addr is not None and c.client_addr[1] in mine_ports and c.is_open
    ]
    assert mine, "the paused worker had no open connection through the proxies"
    sent_before = {c.id: c.bytes_up for c in mine}
    paused.signal(signal.SIGCONT)
    await rig.sampling(2.0, lambda: all(not c.is_open for c in mine))
    sent_after = {c.id: c.bytes_up for c in mine}
    assert sent_after == sent_before  # not a byte more: no command, no LOGOUT
    assert all(not c.is_open for c in mine)  # and the connections were closed
    assert max(rig.peak.values()) <= LIMIT
    assert rig.refusals() == 0
    with contextlib.suppress(Exception):
        text = paused.log.read_text(errors="replace")
        assert "fleet lease lost" in text or "lease on key" in text
