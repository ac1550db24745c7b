"""The fleet's pure parts and the in-process budget: leases, the watchdog, LocalBudget,
rendezvous hashing. No server, no sockets."""

from __future__ import annotations

import asyncio
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guardedpool import PoolError
from guardedpool.fleet import (
    Budget,
    BudgetTimeout,
    Lease,
    LocalBudget,
    LostReason,
    assign,
    clock,
    owner,
)
from guardedpool.fleet.lease import local_deadline


def test_lease_valid_until_its_deadline_and_never_once_lost_or_released() -> None:
    lease = Lease("k", "t", valid_until=10.0)
    assert lease.valid(now=9.999)
    assert not lease.valid(now=10.0)
    assert lease.remaining(now=4.0) == 6.0
    lost = Lease("k", "t", valid_until=10.0, lost=LostReason.GONE)
    assert not lost.valid(now=0.0)
    released = Lease("k", "t", valid_until=10.0, released=True)
    assert not released.valid(now=0.0)
    assert "t" in repr(lease) and "held" in repr(lease)


def test_local_deadline_is_before_the_servers_expiry() -> None:
    # The server stamps the lease after the request left: its expiry >= sent + ttl.
    assert local_deadline(100.0, 30.0, 3.0) == 127.0
    assert local_deadline(100.0, 30.0, 0.0) <= 100.0 + 30.0


def test_local_budget_is_a_budget() -> None:
    assert isinstance(LocalBudget(1), Budget)
    assert issubclass(BudgetTimeout, PoolError)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_local_budget_rejects_bad_limits(bad: object) -> None:
    with pytest.raises(ValueError, match="limit"):
        LocalBudget(bad)  # type: ignore[arg-type]


async def test_local_budget_never_over_admits_and_waiters_get_released_leases() -> None:
    budget = LocalBudget({"a": 2, "b": 1})
    inside = {"a": 0, "b": 0}
    peak = {"a": 0, "b": 0}

    async def borrower(key: str, i: int) -> None:
        lease = await budget.acquire(key, timeout=10)
        inside[key] += 1
        peak[key] = max(peak[key], inside[key])
        await asyncio.sleep(0.001 * (i % 3))
        inside[key] -= 1
        budget.release(lease)

    await asyncio.gather(*(borrower("ab"[i % 2], i) for i in range(60)))
    assert peak == {"a": 2, "b": 1}
    stats = budget.stats()
    assert stats["acquired"] == stats["released"] == 60
    assert stats["held"] == 0
    await budget.aclose()


async def test_local_budget_times_out_with_a_typed_error_naming_the_key() -> None:
    budget = LocalBudget(1)
    lease = await budget.acquire("k", timeout=1)
    with pytest.raises(BudgetTimeout) as caught:
        await budget.acquire("k", timeout=0.05)
    assert caught.value.key == "k" and caught.value.limit == 1 and caught.value.held == 1
    assert "'k'" in str(caught.value)
    assert budget.stats()["acquire_timeouts"] == 1
    budget.release(lease)
    budget.release(lease)  # idempotent
    assert budget.stats()["released"] == 1
    await budget.aclose()


async def test_cancelled_acquire_holds_nothing() -> None:
    budget = LocalBudget(1)
    lease = await budget.acquire("k", timeout=1)
    waiting = asyncio.create_task(budget.acquire("k", timeout=10))
    await asyncio.sleep(0.01)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    budget.release(lease)
    assert budget.held("k") == 0
    again = await budget.acquire("k", timeout=1)
    assert again.valid()
    await budget.aclose()


async def test_revoke_tells_every_listener_once_and_the_lease_stays_counted() -> None:
    budget = LocalBudget(1)
    heard: list[tuple[str, str | None]] = []
    unsubscribe = budget.subscribe(lambda lease: heard.append((lease.key, lease.lost)))
    budget.subscribe(lambda lease: 1 / 0)  # a broken listener must not silence the others
    lease = await budget.acquire("k", timeout=1)
    assert budget.revoke(lease)
    assert not budget.revoke(lease)
    assert heard == [("k", LostReason.REVOKED)]
    assert not lease.valid()
    assert budget.stats()["lost_held"] == 1
    with pytest.raises(BudgetTimeout):  # still counted: its socket may still exist
        await budget.acquire("k", timeout=0.01)
    budget.release(lease)
    unsubscribe()
    await budget.aclose()


async def test_renewal_keeps_leases_valid() -> None:
    budget = LocalBudget(1, ttl=0.3)
    lease = await budget.acquire("k", timeout=1)
    first = lease.valid_until
    await asyncio.sleep(0.01)
    assert await budget.renew() == []
    assert lease.valid_until > first
    await budget.aclose()
    assert lease.lost == LostReason.CLOSED and lease.released


async def test_after_a_pause_past_the_ttl_the_loss_is_heard_before_any_task_runs() -> None:
    """The SIGSTOP case in one process: the loop is blocked past the lease's deadline.

    When it runs again, the borrower's timer and the watchdog are both due. The watchdog
    is a plain timer callback, so it runs in that same loop turn, before the borrower's
    task can take its next step: the borrower finds the lease already lost.
    """
    budget = LocalBudget(1, ttl=0.2, margin=0.05)
    lease = await budget.acquire("k", timeout=1)
    order: list[str] = []
    budget.subscribe(lambda lost: order.append(f"lost:{lost.lost}"))

    async def borrower() -> None:
        await asyncio.sleep(0.01)
        order.append(f"borrower sees valid={lease.valid()}")

    task = asyncio.create_task(borrower())
    await asyncio.sleep(0)
    time.sleep(0.4)  # noqa: ASYNC251 - the point: the whole loop paused past ttl - margin
    await task
    assert order == ["lost:expired", "borrower sees valid=False"]
    assert lease.remaining() < 0
    await budget.aclose()


def test_lease_clock_counts_forward() -> None:
    a = clock()
    assert clock() >= a


# -- rendezvous hashing ------------------------------------------------------------

workers_st = st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=6, unique=True)
keys_st = st.lists(st.text(max_size=12), max_size=40, unique=True)


@settings(deadline=None)  # pure and fast; a busy machine must not fail it on time
@given(workers_st, keys_st, st.text(min_size=1, max_size=8))
def test_a_join_moves_keys_only_to_the_newcomer(
    workers: list[str], keys: list[str], newcomer: str
) -> None:
    if newcomer in workers:
        return
    before = assign(keys, workers)
    after = assign(keys, [*workers, newcomer])
    for key in keys:
        assert after[key] in (before[key], newcomer)


@settings(deadline=None)
@given(workers_st, keys_st)
def test_a_leave_moves_only_the_leavers_keys_and_order_does_not_matter(
    workers: list[str], keys: list[str]
) -> None:
    before = assign(keys, workers)
    assert before == assign(keys, list(reversed(workers)))
    gone = workers[0]
    after = assign(keys, workers[1:])
    for key in keys:
        if before[key] != gone:
            assert after[key] == before[key]
        else:
            assert after.get(key) != gone


def test_about_one_in_n_keys_move_when_a_worker_joins() -> None:
    keys = [f"account-{i}" for i in range(3000)]
    workers = [f"w{i}" for i in range(4)]
    before = assign(keys, workers)
    after = assign(keys, [*workers, "w4"])
    moved = sum(1 for key in keys if before[key] != after[key])
    # Deterministic (BLAKE2b of fixed names); 1/5 of 3000 is 600.
    assert 450 < moved < 750
    counts = {w: sum(1 for k in keys if after[k] == w) for w in [*workers, "w4"]}
    assert all(450 < c < 750 for c in counts.values()), counts


def test_owner_of_nothing_is_none() -> None:
    assert owner("k", []) is None
    assert assign(["k"], []) == {}
