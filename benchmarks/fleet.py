"""The example worker as a fleet: scaling, takeover after ``kill -9``, the budget's cost.

Questions (issue 16, section 6):

* 1, 2 and 4 worker processes (``python -m examples.imap_sync run`` with ``[fleet]``)
  syncing one corpus from Dovecot into one PostgreSQL database, and scaling efficiency
  ``T1 / (n * Tn)``. Each run starts from an empty database, a fresh Redis prefix and new
  empty accounts; once the workers have settled (each account passed once, ownership
  spread over all of them and unchanged for 1 s: ``settle_s``), the corpus is delivered
  into the Maildirs and ``wall_s`` runs until the store holds all of it. So the figure is
  the fleet's sync rate, not the processes' start-up and first claims.
* takeover after ``kill -9``: two workers in sync; one is killed; seconds until every
  account it owned has a new owner in Redis, and until a message delivered to one of
  its accounts after the kill is in the store.
* the budget's cost per connect and the renewal load while idle: from
  ``fleet_budget.py`` (Redis round trips and µs per lease; commands/s per 1,000 held).

Set-up: throwaway Dovecot (``mail_max_userip_connections`` = the fleet cap, 2),
redis-server and PostgreSQL from tests/harness on loopback; the machine's CPUs are shared
by Dovecot, PostgreSQL, Redis and the workers, so on a 2-vCPU machine more than two
workers cannot scale linearly: the figure says how far it gets.

    python benchmarks/fleet.py            # 16 accounts x 1,000 messages, ttl 5 s
    python benchmarks/fleet.py --quick    # 8 accounts x 400 messages, ttl 3 s (~2 min)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import _bench
import psycopg
import redis
from fleet_budget import measure as budget_measure

from tests.harness.dovecot import DovecotServer
from tests.harness.postgres import PostgresServer
from tests.harness.redis import RedisServer

LIMIT = 2


class Bench:
    def __init__(self, tmp: Path, dovecot: DovecotServer, rds: RedisServer, pg: PostgresServer):
        self.tmp = tmp
        self.dovecot = dovecot
        self.redis = rds
        self.pg = pg
        self.users: dict[str, str] = {}
        self.concurrency = 8

    def accounts(self, n: int) -> None:
        """``n`` new accounts with empty mailboxes (the only ones the next config names)."""
        self.users = {}
        for _ in range(n):
            key = f"b{uuid.uuid4().hex[:10]}"
            self.users[key] = self.dovecot.add_user(key)
            self.dovecot.seed_messages(key, 0)

    def seed(self, messages: int) -> None:
        for key in self.users:
            self.dovecot.seed_messages(key, messages)

    def owners(self, r: redis.Redis, prefix: str) -> dict[str, str | None]:
        values = r.mget([f"{prefix}:owner:{k}" for k in self.users])
        return {
            k: None if v is None else v.decode().split(" ", 1)[1]
            for k, v in zip(self.users, values, strict=True)
        }

    def settle(
        self, r: redis.Redis, prefix: str, dsn: str, workers: int, bound: float, tick: float
    ) -> float:
        """Wait until every account has had a first pass, ``workers`` workers are live and
        every account has an owner, unchanged for a whole tick (``ttl/3``, at least 1 s:
        hand-overs happen at ticks); return the seconds it took."""
        started = time.monotonic()
        stable_since = None
        last: dict[str, str | None] = {}
        while True:
            if time.monotonic() - started > bound:
                raise RuntimeError(f"{workers} workers: ownership did not settle")
            owners = self.owners(r, prefix)
            ready = (
                None not in owners.values()
                and int(r.zcard(f"{prefix}:workers")) == workers
                and self.passed(dsn) == len(self.users)
            )
            if not ready or owners != last:
                stable_since = None
            elif stable_since is None:
                stable_since = time.monotonic()
            elif time.monotonic() - stable_since >= max(1.0, tick):
                return time.monotonic() - started
            last = owners
            time.sleep(0.1)

    @staticmethod
    def passed(dsn: str) -> int:
        """Accounts whose INBOX has had a pass (its UIDVALIDITY is stored)."""
        with psycopg.connect(dsn, connect_timeout=5) as db:
            if db.execute("SELECT to_regclass('mailboxes')").fetchone() == (None,):
                return 0
            row = db.execute(
                "SELECT COUNT(*) FROM mailboxes WHERE uidvalidity IS NOT NULL"
            ).fetchone()
        return int(row[0]) if row else 0

    def database(self) -> str:
        name = f"b{uuid.uuid4().hex[:10]}"
        with psycopg.connect(self.pg.dsn, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        return self.pg.dsn.rsplit("/", 1)[0] + f"/{name}"

    def config(self, dsn: str, prefix: str, ttl: float) -> Path:
        secrets = self.tmp / "secrets.toml"
        secrets.write_text("".join(f'"{k}" = "{p}"\n' for k, p in self.users.items()))
        accounts = "".join(
            f'\n[[accounts]]\nkey = "{k}"\nhost = "{self.dovecot.host}"\n'
            f'port = {self.dovecot.port}\nusername = "{k}"\ntls = false\n'
            for k in self.users
        )
        path = self.tmp / f"{prefix}.toml"
        path.write_text(
            f'store = "{dsn}"\nsecrets_file = "secrets.toml"\n'
            f"[sync]\nconcurrency = {self.concurrency}\npoll_interval = 0.5\nbatch_size = 50\n"
            "[health]\nenabled = false\n"
            "[pool]\nmax_per_key = 2\nmax_total = 200\nacquire_timeout = 10.0\n"
            f'[fleet]\nredis = "{self.redis.url}"\nmax_connections_per_account = {LIMIT}\n'
            f'ttl = {ttl}\nprefix = "{prefix}"\n' + accounts
        )
        return path

    def start(self, config: Path, name: str) -> subprocess.Popen[bytes]:
        own = config.with_name(f"{config.stem}-{name}.toml")
        own.write_text(config.read_text().replace("[fleet]\n", f'[fleet]\nworker_id = "{name}"\n'))
        log = open(self.tmp / f"{own.stem}.log", "wb")  # noqa: SIM115 - handed to the child
        try:
            return subprocess.Popen(
                [sys.executable, "-m", "examples.imap_sync", "run", "--config", str(own)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=self.tmp,
                env={**os.environ, "PYTHONPATH": str(_bench.ROOT)},
            )
        finally:
            log.close()

    @staticmethod
    def stored(dsn: str) -> int:
        with psycopg.connect(dsn, connect_timeout=5) as db:
            if db.execute("SELECT to_regclass('messages')").fetchone() == (None,):
                return 0
            row = db.execute("SELECT COUNT(*) FROM messages").fetchone()
        return int(row[0]) if row else 0

    @staticmethod
    def stop(procs: list[subprocess.Popen[bytes]]) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)

    def run(self, workers: int, accounts: int, messages: int, ttl: float) -> dict[str, float]:
        """Start ``workers`` on new empty accounts, wait until they settled, deliver the
        corpus, and time until the store holds all of it."""
        self.accounts(accounts)
        dsn = self.database()
        prefix = f"bench{uuid.uuid4().hex[:8]}"
        config = self.config(dsn, prefix, ttl)
        r = redis.Redis.from_url(self.redis.url, socket_timeout=2)
        procs = [self.start(config, f"w{i}") for i in range(workers)]
        try:
            settled = self.settle(r, prefix, dsn, workers, 120, ttl / 3)
            started = time.monotonic()
            self.seed(messages)
            total = accounts * messages
            while self.stored(dsn) < total:
                if time.monotonic() - started > 600:
                    raise RuntimeError(f"{workers} workers: not synced within 600 s")
                time.sleep(0.05)
            return {"settle_s": settled, "wall_s": time.monotonic() - started}
        finally:
            r.close()
            self.stop(procs)

    def takeover(self, accounts: int, ttl: float, bound: float = 120.0) -> dict[str, float]:
        """Two workers settled on ``accounts`` accounts; ``kill -9`` one; time until its
        accounts have a new owner, and until new mail in one of them is stored."""
        self.accounts(accounts)
        self.seed(5)
        dsn = self.database()
        prefix = f"bench{uuid.uuid4().hex[:8]}"
        config = self.config(dsn, prefix, ttl)
        r = redis.Redis.from_url(self.redis.url, socket_timeout=2)
        procs = [self.start(config, f"w{i}") for i in range(2)]
        try:
            self.settle(r, prefix, dsn, 2, bound, ttl / 3)
            total = self.stored(dsn)
            owners = self.owners(r, prefix)
            victim = owners[next(iter(self.users))] or "w0"
            mine = [k for k, o in owners.items() if o == victim]
            procs[int(victim[1:])].kill()
            killed = time.monotonic()
            self.dovecot.seed_messages(mine[0], 1)
            moved = stored = None
            while moved is None or stored is None:
                now = time.monotonic()
                if now - killed > bound:
                    raise RuntimeError("no takeover")
                owners = self.owners(r, prefix)
                if moved is None and all(owners[k] not in (None, victim) for k in mine):
                    moved = now - killed
                if stored is None and self.stored(dsn) >= total + 1:
                    stored = now - killed
                time.sleep(0.05)
            return {
                "ttl_s": ttl,
                "accounts_moved": len(mine),
                "owned_again_s": moved,
                "new_mail_stored_s": stored,
            }
        finally:
            r.close()
            self.stop(procs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=8,
        help="[sync] concurrency of each worker (mailboxes at once; default 8)",
    )
    args = parser.parse_args()
    accounts, messages, ttl = (8, 400, 3.0) if args.quick else (16, 1000, 5.0)
    total = accounts * messages
    result: dict[str, Any] = {"benchmark": "fleet", "machine": _bench.machine()}
    with (
        tempfile.TemporaryDirectory() as tmp,
        DovecotServer(max_userip_connections=LIMIT) as dovecot,
        RedisServer() as rds,
        PostgresServer() as pg,
    ):
        bench = Bench(Path(tmp), dovecot, rds, pg)
        bench.concurrency = args.concurrency
        _bench.log(f"corpus: {accounts} accounts x {messages} messages")
        walls: dict[int, float] = {}
        settles: dict[int, float] = {}
        for n in (1, 2, 4):
            run = bench.run(n, accounts, messages, ttl)
            walls[n], settles[n] = run["wall_s"], run["settle_s"]
            _bench.log(f"{n} worker(s): {walls[n]:.2f} s (settled in {settles[n]:.1f} s)")
        result["sync"] = {
            "accounts": accounts,
            "messages": total,
            "concurrency_per_worker": args.concurrency,
            "settle_s": {str(n): w for n, w in settles.items()},
            "wall_s": {str(n): w for n, w in walls.items()},
            "messages_per_s": {str(n): total / w for n, w in walls.items()},
            "scaling_efficiency": {str(n): walls[1] / (n * w) for n, w in walls.items()},
        }
        result["takeover"] = bench.takeover(accounts, ttl)
        _bench.log(f"takeover: {result['takeover']}")
        refusals = dovecot.log_path.read_text(errors="replace").count(
            "Maximum number of connections from user+IP exceeded"
        )
        result["dovecot_refusals_for_the_cap"] = refusals
        connects, held = (300, 200) if args.quick else (2000, 1000)
        result["budget"] = asyncio.run(budget_measure(rds.url, connects, held, 3.0, 6.0))
    _bench.emit(result)


if __name__ == "__main__":
    main()
