"""The fleet across real processes: budget never over-admits (also across a Redis
restart); ownership survives ``kill -9`` and SIGSTOP of a worker; fencing tokens grow.

Members are ``python -m harness.fleetproc`` child processes (see there); TTLs are short
(1.5-2 s) to keep the whole module near 30 s. Waits are bounded polls; no timing is
asserted, takeover times are printed (``-s``) for the record.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from harness import RedisServer

pytestmark = pytest.mark.timeout(60)

TESTS_DIR = Path(__file__).resolve().parent.parent


class Member:
    def __init__(self, proc: subprocess.Popen[bytes], out: Path) -> None:
        self.proc = proc
        self.out = out

    def events(self) -> list[dict[str, Any]]:
        lines = self.out.read_text().splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Member]]:
    members: list[Member] = []
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")]),
    }

    def start(mode: str, name: str, **options: object) -> Member:
        out = tmp_path / f"{name}.jsonl"
        argv = [sys.executable, "-m", "harness.fleetproc", mode]
        for option, value in options.items():
            argv += [f"--{option}", str(value)]
        with open(out, "wb") as sink:
            proc = subprocess.Popen(
                argv, stdout=sink, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, env=env
            )
        member = Member(proc, out)
        members.append(member)
        return member

    yield start
    for member in members:
        member.stop()


def _wait(what: str, check: Callable[[], bool], timeout: float, step: float = 0.05) -> float:
    """Poll ``check`` until true; return the seconds it took; fail after ``timeout``."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            pytest.fail(f"{what}: not within {timeout} s")
        time.sleep(step)
    return time.monotonic() - started


# -- the budget --------------------------------------------------------------------


def _run_hammers(
    spawn: Callable[..., Member],
    budget_url: str,
    observer: RedisServer,
    prefix: str,
    *,
    during: Callable[[], None] | None = None,
) -> tuple[list[Member], int, int]:
    """3 processes x 8 tasks on 3 keys, limit 2, for 4 s; the parent samples the in-use
    counts and runs ``during`` once 50 grants were made. Returns (members, peak sampled,
    grants counted when ``during`` ran)."""
    limit = 2
    members = [
        spawn(
            "hammer",
            f"hammer{i}",
            url=budget_url,
            observer=observer.url,
            prefix=prefix,
            limit=limit,
            ttl=2.0,
            keys=3,
            tasks=8,
            seed=i,
            duration=4.0,
        )
        for i in range(3)
    ]
    obs = redis.Redis.from_url(observer.url)
    peak = 0
    grants_then = -1
    started = time.monotonic()
    try:
        while any(m.proc.poll() is None for m in members):
            assert time.monotonic() - started < 40, "hammers did not finish"
            counts = obs.mget([f"{prefix}:inuse:key{i}" for i in range(3)])
            peak = max([peak, *(int(c or 0) for c in counts)])
            if during is not None and grants_then < 0:
                # Mid-run: once the members are up and granting (start-up takes a
                # while on a busy machine), not at a fixed time.
                grants = int(obs.get(f"{prefix}:grants") or 0)
                if grants >= 50:
                    grants_then = grants
                    during()
            time.sleep(0.01)
        assert int(obs.get(f"{prefix}:violations") or 0) == 0
    finally:
        obs.close()
    assert peak <= limit
    return members, peak, grants_then


def test_budget_never_over_admits_across_processes(
    spawn: Callable[..., Member], redis_server: RedisServer, fleet_prefix: str
) -> None:
    members, peak, _ = _run_hammers(spawn, redis_server.url, redis_server, fleet_prefix)
    done = [next(e for e in m.events() if e["event"] == "done") for m in members]
    assert all(d["grants"] > 10 for d in done), done
    assert peak == 2  # the cap was reached (and never passed)
    assert not any(e["event"] == "violation" for m in members for e in m.events())


def test_budget_never_over_admits_across_a_redis_restart_and_recovers(
    spawn: Callable[..., Member],
    redis_server: RedisServer,
    redis_factory: Callable[..., RedisServer],
    fleet_prefix: str,
) -> None:
    budget_redis = redis_factory()
    members, _, grants_then = _run_hammers(
        spawn, budget_redis.url, redis_server, fleet_prefix, during=budget_redis.restart
    )
    obs = redis.Redis.from_url(redis_server.url)
    try:
        grants_end = int(obs.get(f"{fleet_prefix}:grants") or 0)
    finally:
        obs.close()
    assert grants_then > 0
    assert grants_end > grants_then + 10  # grants went on after the restart
    assert not any(e["event"] == "violation" for m in members for e in m.events())


# -- ownership ---------------------------------------------------------------------

KEYS = 12
TTL = 1.5


def _owners(r: redis.Redis, prefix: str) -> dict[str, tuple[int, str] | None]:
    values = r.mget([f"{prefix}:owner:key{i}" for i in range(KEYS)])
    result: dict[str, tuple[int, str] | None] = {}
    for i, value in enumerate(values):
        if value is None:
            result[f"key{i}"] = None
        else:
            fence, worker = value.decode().split(" ", 1)
            result[f"key{i}"] = (int(fence), worker)
    return result


def _start_workers(
    spawn: Callable[..., Member], url: str, prefix: str, r: redis.Redis
) -> dict[str, Member]:
    workers = {
        f"w{i}": spawn(
            "owner",
            f"w{i}",
            url=url,
            prefix=prefix,
            worker=f"w{i}",
            ttl=TTL,
            keys=KEYS,
            duration=45,
        )
        for i in range(3)
    }

    def settled() -> bool:
        owners = _owners(r, prefix)
        holders = {o[1] for o in owners.values() if o is not None}
        return None not in owners.values() and holders == set(workers)

    _wait("3 workers own every key between them", settled, timeout=20)
    return workers


def _check_fences_grow(workers: dict[str, Member]) -> None:
    gained: dict[str, list[int]] = {}
    for member in workers.values():
        for e in member.events():
            if e["event"] == "gained":
                gained.setdefault(e["key"], []).append(e["fence"])
    for key, fences in gained.items():
        assert len(fences) == len(set(fences)), (key, fences)  # never handed out twice


def test_keys_of_a_killed_worker_are_taken_over_with_higher_fencing_tokens(
    spawn: Callable[..., Member], redis_server: RedisServer, fleet_prefix: str
) -> None:
    r = redis.Redis.from_url(redis_server.url)
    try:
        workers = _start_workers(spawn, redis_server.url, fleet_prefix, r)
        before = _owners(r, fleet_prefix)
        victim = "w0"
        its_keys = {k: o for k, o in before.items() if o is not None and o[1] == victim}
        assert its_keys
        workers[victim].proc.kill()  # kill -9: no goodbye, no hand-back

        def taken_over() -> bool:
            now = _owners(r, fleet_prefix)
            return all(now[k] is not None and now[k][1] != victim for k in its_keys)  # type: ignore[index]

        took = _wait("survivors take the killed worker's keys", taken_over, timeout=6 * TTL)
        print(f"takeover after kill -9: {took:.2f} s (ttl {TTL} s)")
        after = _owners(r, fleet_prefix)
        for key, (fence, _worker) in its_keys.items():
            new = after[key]
            assert new is not None and new[0] > fence
        for key, old in before.items():  # keys of survivors stay with their worker
            if key not in its_keys:
                # (same worker; the token may have grown if a renewal on this busy
                # machine came too late and the worker claimed the key afresh)
                assert after[key] is not None and old is not None, (key, before, after)
                assert after[key][1] == old[1], (key, before, after)
        for name in ("w1", "w2"):
            workers[name].stop()
        _check_fences_grow(workers)
    finally:
        r.close()


def test_a_worker_paused_past_the_ttl_sees_its_keys_lost_before_working_again(
    spawn: Callable[..., Member], redis_server: RedisServer, fleet_prefix: str
) -> None:
    r = redis.Redis.from_url(redis_server.url)
    try:
        workers = _start_workers(spawn, redis_server.url, fleet_prefix, r)
        before = _owners(r, fleet_prefix)
        victim = workers["w0"]
        its_keys = {k: o[0] for k, o in before.items() if o is not None and o[1] == "w0"}
        assert its_keys
        victim.proc.send_signal(signal.SIGSTOP)
        try:

            def taken_over() -> bool:
                now = _owners(r, fleet_prefix)
                return all(now[k] is not None and now[k][1] != "w0" for k in its_keys)  # type: ignore[index]

            _wait("survivors take the paused worker's keys", taken_over, timeout=6 * TTL)
        finally:
            victim.proc.send_signal(signal.SIGCONT)

        def heard_loss() -> bool:
            lost = {(e["key"], e["fence"]) for e in victim.events() if e["event"] == "lost"}
            return all((k, f) in lost for k, f in its_keys.items())

        _wait("the resumed worker reports its leases lost", heard_loss, timeout=10)
        time.sleep(0.3)  # let it run on a little: any stale work would show now
        for member in workers.values():
            member.stop()
        events = victim.events()
        for key, fence in its_keys.items():
            lost_at = next(
                i
                for i, e in enumerate(events)
                if e["event"] == "lost" and e["key"] == key and e["fence"] == fence
            )
            assert events[lost_at]["reason"] == "expired"
            stale = [
                e
                for e in events[lost_at:]
                if e["event"] == "work" and e["key"] == key and e["fence"] == fence
            ]
            assert stale == [], f"worked on {key} under lost fence {fence} after the pause"
        _check_fences_grow(workers)
    finally:
        r.close()
