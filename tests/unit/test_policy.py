"""The pure decisions: tables and properties, no sockets, no event loop."""

from __future__ import annotations

import asyncio

import pytest
from harness.configs import DEFAULTS, config
from hypothesis import given
from hypothesis import strategies as st

from guardedpool import (
    AuthenticationError,
    CertificateError,
    ConnectError,
    ConnectTimeout,
    PoolConfig,
    UnknownKey,
    leaks,
    policy,
)
from guardedpool.records import CloseReason, ConnectionRecord, ConnState

CFG = config(
    DEFAULTS,
    idle_timeout=100.0,
    max_lifetime=1000.0,
    check_after=10.0,
    heartbeat_interval=50.0,
    leak_threshold=30.0,
    reclaim_after=60.0,
    max_per_key=2,
    max_total=5,
)


def rec(
    *,
    created: float = 0.0,
    used: float = 0.0,
    checked: float = 0.0,
    expires: float = 1000.0,
    state: ConnState = ConnState.IDLE,
) -> ConnectionRecord:
    r = ConnectionRecord("k", created_at=created, expires_at=expires)
    r.last_used_at, r.last_checked_at, r.state = used, checked, state
    return r


@pytest.mark.parametrize(
    ("now", "used", "expires", "want"),
    [
        (50.0, 0.0, 1000.0, None),
        (100.0, 0.0, 1000.0, CloseReason.IDLE),
        (99.9, 0.0, 1000.0, None),
        (1000.0, 999.0, 1000.0, CloseReason.LIFETIME),
        (1000.0, 0.0, 1000.0, CloseReason.LIFETIME),  # lifetime wins over idle
    ],
)
def test_retire_when_idle(
    now: float, used: float, expires: float, want: CloseReason | None
) -> None:
    assert policy.retire_when_idle(rec(used=used, expires=expires), now, CFG) is want


@pytest.mark.parametrize(
    ("alive", "faulted", "closing", "now", "want"),
    [
        (True, False, False, 10.0, None),
        (False, False, False, 10.0, CloseReason.POISONED),
        (True, True, False, 10.0, CloseReason.POISONED),
        (True, False, True, 10.0, CloseReason.SHUTDOWN),
        (False, True, True, 10.0, CloseReason.SHUTDOWN),
        (True, False, False, 1000.0, CloseReason.LIFETIME),
    ],
)
def test_retire_on_release(
    alive: bool, faulted: bool, closing: bool, now: float, want: CloseReason | None
) -> None:
    assert (
        policy.retire_on_release(rec(), now, alive=alive, faulted=faulted, shutting_down=closing)
        is want
    )


def test_checks_and_heartbeats() -> None:
    r = rec(checked=100.0)
    assert not policy.needs_check(r, 109.9, CFG)
    assert policy.needs_check(r, 110.0, CFG)
    # heartbeat_interval 50, shortened by up to HEARTBEAT_SPREAD (10%) per record
    assert not policy.heartbeat_due(r, 144.9, CFG)
    assert policy.heartbeat_due(r, 150.0, CFG)
    assert not policy.heartbeat_due(r, 10**9, PoolConfig(heartbeat_interval=None))
    assert policy.needs_check(r, 100.0, PoolConfig(check_after=0.0))


def test_leak_and_reclaim() -> None:
    r = rec(state=ConnState.IN_USE)
    assert not leaks.leak_suspect(r, 10**6, CFG)  # no borrower recorded: not a suspect
    r.borrowed_by, r.borrowed_at = "t", 100.0
    assert not leaks.leak_suspect(r, 129.0, CFG)
    assert leaks.leak_suspect(r, 130.0, CFG)
    assert not leaks.reclaim_due(r, 159.0, CFG)
    assert leaks.reclaim_due(r, 160.0, CFG)
    assert not leaks.reclaim_due(r, 10**6, PoolConfig())
    r.state = ConnState.IDLE
    assert not leaks.leak_suspect(r, 10**6, CFG)


@given(key=st.integers(0, 10), total=st.integers(0, 10))
def test_open_blocker_respects_both_caps(key: int, total: int) -> None:
    blocker = policy.open_blocker(key, total, CFG)
    if blocker is None:
        assert key < CFG.max_per_key and total < CFG.max_total
    elif blocker == "key":
        assert key >= CFG.max_per_key
    else:
        assert total >= CFG.max_total and key < CFG.max_per_key


@given(created=st.floats(0, 1e6), u=st.floats(0, 1, exclude_max=True), jitter=st.floats(0, 0.5))
def test_expiry_jitter_only_shortens(created: float, u: float, jitter: float) -> None:
    cfg = PoolConfig(max_lifetime=3600.0, lifetime_jitter=jitter)
    t = policy.expiry_time(created, cfg, u)
    assert created + 3600.0 * (1 - jitter) - 1e-6 <= t <= created + 3600.0 + 1e-6


@given(st.lists(st.tuples(st.floats(0, 1e6), st.sampled_from(list(ConnState))), max_size=20))
def test_pick_eviction_is_the_lru_idle(items: list[tuple[float, ConnState]]) -> None:
    records = [rec(used=used, state=state) for used, state in items]
    victim = policy.pick_eviction(records)
    idle = [r for r in records if r.state is ConnState.IDLE]
    if not idle:
        assert victim is None
    else:
        assert victim is not None and victim.state is ConnState.IDLE
        assert victim.last_used_at == min(r.last_used_at for r in idle)


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (ConnectError("refused"), True),
        (ConnectTimeout("slow"), True),
        (AuthenticationError("no"), False),
        (CertificateError("untrusted"), False),
        (UnknownKey("x"), False),
        (ConnectionRefusedError(), True),
        (ConnectionResetError(), True),
        (TimeoutError(), True),
        (asyncio.IncompleteReadError(b"", 5), True),
        (ValueError("bug"), False),
    ],
)
def test_is_transient(exc: BaseException, transient: bool) -> None:
    assert policy.is_transient(exc) is transient
