"""The server's limits as data (guardedpool.limits) and the backoff's reset_after
(guardedpool.reconnect): plain functions over an injected ``now``, no event loop."""

from __future__ import annotations

import pytest
from harness.configs import DEFAULTS, config

from guardedpool import (
    AuthenticationError,
    CommandThrottled,
    ConnectError,
    PoolConfig,
    RetryPolicy,
    ServerBusy,
    ServerBusyClosed,
)
from guardedpool.limits import LOGIN_WINDOW, KeyLimits, limit_stats, login_limit, reached_login
from guardedpool.reconnect import KeyBackoff, record_short_life

CFG = config(
    DEFAULTS,
    max_per_key=4,
    retry=config(DEFAULTS.retry, max_throttle_delay=300.0, capacity_cooldown=100.0),
)
O365 = "Request is throttled. Suggested Backoff Time: 299961 milliseconds"


def throttled(delay: float | None) -> CommandThrottled:
    return CommandThrottled("SELECT", "BAD", O365, kind="throttled", delay=delay)


def capacity() -> ServerBusy:
    return ServerBusy("too many", kind="capacity", server_text="Too many simultaneous connections")


def test_a_named_wait_throttles_connects_and_hand_outs_until_it_ends() -> None:
    lim = KeyLimits()
    assert lim.refused(throttled(299.961), 1000.0, held=1, config=CFG) == pytest.approx(299.961)
    assert lim.throttled(1000.0) and lim.throttled(1299.9)
    assert lim.opens_allowed(1299.9, 0, CFG) == 0
    assert lim.next_change(1000.0, CFG) == pytest.approx(1299.961)
    assert not lim.throttled(1299.961) and lim.opens_allowed(1299.961, 0, CFG) == 4
    words = lim.why(1100.0, 0, CFG)
    assert words is not None and "throttling by the server" in words and "200.0 s" in words
    assert "Suggested Backoff Time" in words


def test_the_wait_is_capped_by_max_throttle_delay_and_never_shortened() -> None:
    lim = KeyLimits()
    assert lim.refused(throttled(10_000.0), 0.0, held=0, config=CFG) == 300.0
    assert lim.throttled_until == 300.0
    lim.refused(throttled(5.0), 10.0, held=0, config=CFG)  # a shorter wait later
    assert lim.throttled_until == 300.0


def test_no_named_wait_is_left_to_the_backoff() -> None:
    lim = KeyLimits()
    assert lim.refused(throttled(None), 0.0, held=2, config=CFG) == 0.0
    assert not lim.throttled(0.0) and lim.key_cap(0.0, CFG) == 4


def test_capacity_lowers_the_cap_to_what_is_held_then_raises_it_one_per_cooldown() -> None:
    lim = KeyLimits()
    lim.refused(capacity(), 50.0, held=2, config=CFG)
    assert lim.key_cap(50.0, CFG) == 2
    assert lim.opens_allowed(60.0, 2, CFG) == 0
    assert lim.opens_allowed(60.0, 1, CFG) == 1  # one closed meanwhile: room again
    assert lim.next_change(60.0, CFG) == 150.0
    assert lim.key_cap(149.9, CFG) == 2 and lim.key_cap(150.0, CFG) == 3
    assert lim.key_cap(250.0, CFG) == 4 and lim.key_cap(10_000.0, CFG) == 4
    assert not lim.settled(149.0, CFG) and lim.settled(250.0, CFG)
    words = lim.why(60.0, 2, CFG)
    assert words is not None and "capped at 2" in words


def test_capacity_with_nothing_held_keeps_the_cap() -> None:
    lim = KeyLimits()
    lim.refused(capacity(), 0.0, held=0, config=CFG)
    assert lim.cap is None and lim.key_cap(0.0, CFG) == 4


def test_a_login_that_crossed_the_refusal_raises_the_cap_to_what_the_server_took() -> None:
    lim = KeyLimits()
    lim.refused(capacity(), 0.0, held=1, config=CFG)
    lim.accepted(2)
    assert lim.key_cap(0.0, CFG) == 2
    lim.accepted(1)
    assert lim.key_cap(0.0, CFG) == 2


def test_a_refusal_mid_session_counts_the_connections_that_outlive_it() -> None:
    lim = KeyLimits()
    bye = ServerBusyClosed("bye", kind="capacity", server_text="Too many connections")
    lim.refused(bye, 0.0, held=3, config=CFG)
    assert lim.key_cap(0.0, CFG) == 3


def test_logins_are_limited_in_every_window_of_a_minute() -> None:
    cfg = PoolConfig(max_per_key=2, retry=RetryPolicy(max_logins_per_minute=6))
    lim = KeyLimits()
    for i in range(6):
        assert lim.logins_left(i * 5.0, cfg) == 6 - i
        lim.note_login(i * 5.0, cfg)
    assert lim.logins_left(30.0, cfg) == 0 and lim.opens_allowed(30.0, 0, cfg) == 0
    assert lim.next_change(30.0, cfg) == LOGIN_WINDOW  # the first one leaves the window
    assert lim.logins_left(LOGIN_WINDOW, cfg) == 1
    words = lim.why(30.0, 0, cfg)
    assert words is not None and "at most 6 logins per minute" in words
    lim.unnote_login(25.0)  # that attempt never reached a login
    assert lim.logins_left(30.0, cfg) == 1
    assert not lim.settled(79.9, cfg) and lim.settled(80.0, cfg)


def test_the_login_limit_never_stops_a_cold_start() -> None:
    assert login_limit(PoolConfig(max_per_key=2)) == 6
    assert login_limit(PoolConfig(max_per_key=50, max_total=100)) == 50


def test_only_answers_to_a_login_count_as_logins() -> None:
    assert reached_login(AuthenticationError("no")) and reached_login(capacity())
    assert not reached_login(ConnectError("refused")) and not reached_login(OSError())


def test_stats_have_stable_names_with_or_without_limits() -> None:
    empty = limit_stats(None, 0.0, CFG)
    lim = KeyLimits()
    lim.refused(throttled(30.0), 0.0, held=1, config=CFG)
    lim.note_login(0.0, CFG)
    full = limit_stats(lim, 10.0, CFG)
    assert set(empty) == set(full)
    assert empty["effective_max_per_key"] == 4 and empty["throttled"] is False
    assert full["throttled"] is True and full["throttled_until"] == 30.0
    assert full["throttled_for"] == 20.0 and full["logins_last_minute"] == 1


# -- the backoff resets only after a connection lived reset_after ------------------------


def test_a_success_ends_the_failure_streak_but_not_the_delay() -> None:
    policy = RetryPolicy(initial=1.0, multiplier=2.0, max_delay=100.0, jitter=0.0, reset_after=60.0)
    b = KeyBackoff()
    b.record_failure(ConnectError("x"), 0.0, 1.0)
    b.record_failure(ConnectError("x"), 1.0, 1.0)
    b.record_success(3.0)
    assert b.failures == 0 and b.level == 2  # the stat resets; the exponent waits
    # the connection died young: one more level, and the next connect waits for it
    assert record_short_life(b, policy, 10.0) == 2.0
    assert b.level == 3 and b.next_attempt_at == 12.0
    b.record_success(13.0)
    b.settle(72.9, policy.reset_after)
    assert b.level == 3
    b.settle(73.0, policy.reset_after)  # that connection lived 60 s: reset
    assert b.level == 0 and b.next_attempt_at == 0.0


def test_short_lives_grow_the_delay_like_failures() -> None:
    policy = RetryPolicy(initial=0.1, multiplier=2.0, max_delay=30.0, jitter=0.0)
    b = KeyBackoff()
    delays = []
    now = 0.0
    for _ in range(10):
        b.record_success(now)
        now += 0.5  # the server drops the connection half a second after LOGIN
        delays.append(record_short_life(b, policy, now))
        now = b.next_attempt_at
    assert delays == pytest.approx([0.1, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6])
