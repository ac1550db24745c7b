"""RedisOwnership in one process against a real redis-server: assignment, hand-over on
join and on leave, the change stream, fencing tokens, Redis unreachable."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
import redis.asyncio as aioredis
from harness import RedisServer

from guardedpool.fleet import LostReason, OwnershipChange, RedisOwnership, assign

pytestmark = pytest.mark.timeout(30)

KEYS = [f"inbox{i}" for i in range(24)]


async def _until(what: str, check: Callable[[], bool], timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if check():
            return
        await asyncio.sleep(0.02)
    pytest.fail(f"{what}: not within {timeout} s")


async def test_one_worker_owns_everything_then_a_join_moves_only_the_newcomers_keys(
    redis_server: RedisServer, fleet_prefix: str
) -> None:
    a = RedisOwnership(
        redis_server.url, keys=KEYS, ttl=1.5, op_timeout=1, prefix=fleet_prefix, worker_id="a"
    )
    b = RedisOwnership(
        redis_server.url, keys=KEYS, ttl=1.5, op_timeout=1, prefix=fleet_prefix, worker_id="b"
    )
    changes: list[OwnershipChange] = []
    a.subscribe(changes.append)
    try:
        await a.start()
        assert set(a.owned()) == set(KEYS)
        assert all(change.gained for change in changes) and len(changes) == len(KEYS)
        first_tokens = {key: lease.fencing_token for key, lease in a.owned().items()}
        await b.start()
        expected = assign(KEYS, ["a", "b"])
        theirs = {key for key, worker in expected.items() if worker == "b"}
        assert theirs and theirs != set(KEYS)
        await _until(
            "b owns its share",
            lambda: set(b.owned()) == theirs and set(a.owned()) == set(KEYS) - theirs,
        )
        moved = [c for c in changes if not c.gained]
        assert {c.key for c in moved} == theirs
        assert all(c.lease.lost == LostReason.MOVED for c in moved)
        for key in theirs:  # fencing tokens grow across the hand-over
            lease = b.owns(key)
            assert lease is not None and lease.fencing_token > first_tokens[key]
            assert a.owns(key) is None
        assert a.stats()["handovers"] == len(theirs)
        assert b.live_workers == ("a", "b")
    finally:
        await b.aclose()
        await a.aclose()


async def test_a_clean_leave_hands_the_keys_over_at_once_and_the_stream_ends(
    redis_server: RedisServer, fleet_prefix: str
) -> None:
    a = RedisOwnership(
        redis_server.url, keys=KEYS, ttl=20, op_timeout=5, prefix=fleet_prefix, worker_id="a"
    )
    b = RedisOwnership(
        redis_server.url, keys=KEYS, ttl=20, op_timeout=5, prefix=fleet_prefix, worker_id="b"
    )
    seen: list[OwnershipChange] = []

    async def follow() -> None:
        async for change in b.changes():
            seen.append(change)

    try:
        await a.start()
        await b.start()
        follower = asyncio.create_task(follow())
        await asyncio.sleep(0)
        # Both see each other; a hands b's share over (b claims at its next tick, which a
        # ttl of 20 s would put far off: tick b by hand).
        await a.tick()
        await b.tick()
        assert set(a.owned()) | set(b.owned()) == set(KEYS)
        await a.aclose()  # hands over and leaves: no waiting for the 20 s TTL
        await b.tick()
        assert set(b.owned()) == set(KEYS)
        assert any(c.gained for c in seen)
    finally:
        await b.aclose()
    await asyncio.wait_for(follower, 5)  # the stream ends when the ownership closes
    assert not seen[-1].gained and seen[-1].lease.lost == LostReason.CLOSED


async def test_a_key_whose_owner_value_changed_is_lost_at_the_next_tick(
    redis_server: RedisServer, fleet_prefix: str
) -> None:
    own = RedisOwnership(redis_server.url, keys=["k"], ttl=10, op_timeout=5, prefix=fleet_prefix)
    r = aioredis.Redis.from_url(redis_server.url)
    try:
        await own.start()
        lease = own.owns("k")
        assert lease is not None and lease.fencing_token >= 1
        await r.set(own.owner_key("k"), "999 intruder", px=10_000)
        await own.tick()
        assert own.owns("k") is None
        assert lease.lost == LostReason.GONE
        assert own.stats()["lost"] == 1
    finally:
        await own.aclose()
        await r.aclose()


async def test_unreachable_redis_loses_the_keys_at_their_local_deadline(
    redis_factory: Callable[..., RedisServer], fleet_prefix: str
) -> None:
    server = redis_factory()
    own = RedisOwnership(server.url, keys=["k1", "k2"], ttl=1.0, prefix=fleet_prefix)
    lost: list[OwnershipChange] = []
    own.subscribe(lambda c: lost.append(c) if not c.gained else None)
    try:
        await own.start()
        assert set(own.owned()) == {"k1", "k2"}
        server.kill()
        await _until("keys lost locally", lambda: len(lost) == 2)
        assert {c.lease.lost for c in lost} == {LostReason.EXPIRED}
        assert own.owned() == {}
        assert own.stats()["tick_failures"] >= 1
        server.resume()  # back (AOF): the keys are claimed again with new tokens
        await _until("keys owned again", lambda: len(own.owned()) == 2)
        assert all(
            lease.fencing_token > c.lease.fencing_token
            for c in lost
            for lease in [own.owned()[c.key]]
        )
    finally:
        await own.aclose()


def test_bad_options_are_rejected() -> None:
    for kwargs in ({"ttl": 0}, {"ttl": float("inf")}, {"margin": 30}, {"worker_id": "a\nb"}):
        with pytest.raises(ValueError):
            RedisOwnership("redis://127.0.0.1:1/0", keys=[], **kwargs)  # type: ignore[arg-type]
