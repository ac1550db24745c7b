"""guardedpool.deadlines: the heap of due times and the rules for when a connection is due."""

from __future__ import annotations

import heapq

from hypothesis import given
from hypothesis import strategies as st

from guardedpool.config import PoolConfig
from guardedpool.deadlines import (
    HEARTBEAT_SPREAD,
    LIVENESS_PER_ROUND,
    Deadlines,
    attention_at,
    heartbeat_at,
    recheck_after,
    spread,
)
from guardedpool.leaks import leak_suspect, reclaim_due
from guardedpool.policy import heartbeat_due, retire_when_idle
from guardedpool.records import ConnectionRecord, ConnState

CFG = PoolConfig(
    idle_timeout=300.0,
    max_lifetime=3600.0,
    heartbeat_interval=60.0,
    leak_threshold=120.0,
    reclaim_after=600.0,
    housekeeping_interval=1.0,
)


def rec(
    state: ConnState, *, created: float = 0.0, used: float = 0.0, checked: float = 0.0
) -> ConnectionRecord:
    r = ConnectionRecord("k", created_at=created, expires_at=created + 3600.0)
    r.state = state
    r.last_used_at = used or created
    r.last_checked_at = checked or created
    return r


# ---------------------------------------------------------------- the heap


@given(st.lists(st.tuples(st.floats(0, 1000), st.integers()), max_size=200), st.floats(0, 1000))
def test_pop_due_takes_exactly_what_is_due_in_order(
    items: list[tuple[float, int]], now: float
) -> None:
    d: Deadlines[int] = Deadlines()
    for due, item in items:
        d.push(due, item)
    out: list[tuple[float, int]] = []
    while batch := d.pop_due(now, 7):
        assert len(batch) <= 7
        out.extend(batch)
    assert [due for due, _ in out] == sorted(due for due, _ in items if due <= now)
    assert len(d) == sum(1 for due, _ in items if due > now)
    earliest = d.earliest()
    assert earliest is None or earliest > now
    assert earliest == (min((due for due, _ in items if due > now), default=None))


def test_ties_pop_first_in_first_out_and_items_are_never_compared() -> None:
    d: Deadlines[object] = Deadlines()
    a, b, c = object(), object(), object()  # not orderable: a comparison would raise
    for item in (a, b, c):
        d.push(5.0, item)
    assert [item for _, item in d.pop_due(5.0, 10)] == [a, b, c]
    assert d.earliest() is None and len(d) == 0


def test_entries_are_tuples() -> None:
    d: Deadlines[str] = Deadlines()
    d.push(1.0, "x")
    entry = d._heap[0]
    assert type(entry) is tuple and len(entry) == 3
    heapq.heappush(d._heap, (0.5, -1, "y"))  # a plain heap underneath
    assert d.pop_due(1.0, 5) == [(0.5, "y"), (1.0, "x")]


# ---------------------------------------------------------------- spreading heartbeats


def test_spread_is_fixed_per_id_and_even_over_consecutive_ids() -> None:
    assert spread(12345) == spread(12345)
    draws = [spread(i) for i in range(1, 10_001)]
    assert all(0.0 <= u < 1.0 for u in draws)
    buckets = [0] * 10
    for u in draws:
        buckets[int(u * 10)] += 1
    assert min(buckets) >= 900  # 1,000 each if perfectly even


def test_ten_thousand_connections_opened_together_beat_in_many_rounds() -> None:
    records = [rec(ConnState.IDLE, created=100.0) for _ in range(10_000)]
    beats = [heartbeat_at(r, CFG) for r in records]
    assert all(b is not None and 100.0 + 60.0 * (1 - HEARTBEAT_SPREAD) <= b <= 160.0 for b in beats)
    per_second: dict[int, int] = {}
    for b in beats:
        assert b is not None
        per_second[int(b)] = per_second.get(int(b), 0) + 1
    assert len(per_second) >= 6 and max(per_second.values()) <= 2_000


def test_heartbeat_off() -> None:
    cfg = PoolConfig(heartbeat_interval=None)
    assert heartbeat_at(rec(ConnState.IDLE), cfg) is None
    assert not heartbeat_due(rec(ConnState.IDLE), 10**9, cfg)


# ---------------------------------------------------------------- recheck bounds


def test_recheck_bounds() -> None:
    idle, lent = recheck_after(CFG, 10)
    assert (idle, lent) == (1.0, 60.0)  # heartbeat_interval < leak_threshold < idle_timeout
    idle, lent = recheck_after(CFG, 10 * LIVENESS_PER_ROUND)
    assert idle == 10.0 and lent == 60.0
    idle, lent = recheck_after(CFG, 10**9)
    assert idle == lent == 60.0
    cfg = PoolConfig(leak_threshold=0.1, housekeeping_interval=0.02, heartbeat_interval=None)
    assert recheck_after(cfg, 1) == (0.02, 0.1)
    cfg = PoolConfig(leak_threshold=0.001, housekeeping_interval=0.5)
    assert recheck_after(cfg, 1) == (0.5, 0.5)  # never more often than a round


# ---------------------------------------------------------------- attention_at


def test_idle_connection_is_due_at_its_first_deadline() -> None:
    r = rec(ConnState.IDLE, created=0.0, used=1000.0, checked=1000.0)
    recheck = (1000.0, 1000.0)
    beat = heartbeat_at(r, CFG)
    assert attention_at(r, 1000.0, CFG, recheck) == beat  # the heartbeat comes first
    cfg = PoolConfig(heartbeat_interval=None, idle_timeout=300.0)
    assert attention_at(r, 1000.0, cfg, recheck) == 1300.0  # idle timeout
    r.expires_at = 1100.0
    assert attention_at(r, 1000.0, cfg, recheck) == 1100.0  # lifetime
    assert attention_at(r, 1000.0, cfg, (5.0, 60.0)) == 1005.0  # the liveness check


def test_lent_connection_is_due_at_its_leak_threshold_unless_declared_or_warned() -> None:
    r = rec(ConnState.IN_USE, created=0.0)
    r.borrowed_by, r.borrowed_at = "task", 10.0
    recheck = (1.0, 1000.0)
    assert attention_at(r, 10.0, CFG, recheck) == 130.0  # leak_threshold
    assert attention_at(r, 10.0, CFG, recheck, warned=True) == 610.0  # reclaim_after
    r.long_hold = True
    assert attention_at(r, 10.0, CFG, recheck) == 610.0
    cfg = PoolConfig(reclaim_after=None, leak_threshold=120.0)
    assert attention_at(r, 10.0, cfg, recheck) == 1010.0  # only the next look
    r.borrowed_by = None  # a pool NOOP check, not a borrower
    assert attention_at(r, 10.0, CFG, recheck) == 1010.0


def test_retired_and_opening_connections_need_no_look() -> None:
    for state in (ConnState.CLOSING, ConnState.CLOSED, ConnState.OPENING):
        assert attention_at(rec(state), 0.0, CFG, (1.0, 1.0)) is None


_times = st.floats(0.0, 5000.0)


@given(
    state=st.sampled_from([ConnState.IDLE, ConnState.IN_USE]),
    created=_times,
    used=_times,
    checked=_times,
    borrowed=st.none() | _times,
    long_hold=st.booleans(),
    live=st.integers(0, 50_000),
    look=_times,
    later=st.floats(0.0, 5000.0),
)
def test_nothing_falls_due_before_the_next_look(
    state: ConnState,
    created: float,
    used: float,
    checked: float,
    borrowed: float | None,
    long_hold: bool,
    live: int,
    look: float,
    later: float,
) -> None:
    """The core promise: when attention_at says t, nothing the pool acts on is due
    strictly between the look and t, and at t the record is looked at again."""
    r = rec(state, created=created)
    r.last_used_at, r.last_checked_at = max(used, created), max(checked, created)
    now = max(look, r.last_used_at, r.last_checked_at)
    if state is ConnState.IN_USE and borrowed is not None:
        r.borrowed_by, r.borrowed_at, r.long_hold = "task", min(borrowed, now), long_hold
    recheck = recheck_after(CFG, live)
    due = attention_at(r, now, CFG, recheck)
    assert due is not None
    assert due <= now + max(recheck)
    t = now + min(later, max(due - now, 0.0)) * 0.999  # strictly before due (or now)
    if t < due:
        if state is ConnState.IDLE:
            assert retire_when_idle(r, t, CFG) is None
            assert not heartbeat_due(r, t, CFG)
        else:
            assert not leak_suspect(r, t, CFG) or r.borrowed_at + CFG.leak_threshold <= now
            assert not reclaim_due(r, t, CFG) or r.borrowed_at + 600.0 <= now


def test_prune_drops_what_is_rejected_and_keeps_the_order() -> None:
    d: Deadlines[int] = Deadlines()
    for i in range(100):
        d.push(float(100 - i), i)
    assert d.prune(lambda item: item % 3 == 0) == 66
    assert len(d) == 34
    out = d.pop_due(1000.0, 1000)
    assert [due for due, _ in out] == sorted(due for due, _ in out)
    assert all(item % 3 == 0 for _, item in out)
    assert d.prune(lambda item: True) == 0
