"""What the server allows a key, and how many connects the pool may start for it now.

Sans-I/O, like :mod:`guardedpool.policy`: plain data and functions over the pool's clock
(``now``, seconds) and its config. The pool (the I/O edge) records what happened here --
a refusal for the server's limits (:class:`~guardedpool.errors.ServerLimit`), a connect
attempt -- and asks how many connects it may start and when to look again.

Three limits, one per way a pool can knock too hard (issue 13):

* **Throttled** (a refusal that names a wait, e.g. Office 365's ``BAD Request is
  throttled. Suggested Backoff Time: 299961 milliseconds``): no connect and no hand-out of
  an idle connection for ``min(delay, retry.max_throttle_delay)`` seconds.
* **Capacity** (``"too many connections"`` while the key holds connections): the key's
  effective cap drops to what it holds, and rises by one per ``retry.capacity_cooldown``
  until it is ``max_per_key`` again: at most one probing login per cool-down.
* **Login rate**: at most :func:`login_limit` logins per key in any
  :data:`LOGIN_WINDOW` seconds (a sliding log of attempt times, so the bound holds in
  every window, not just on average). An attempt counts from the moment it starts, and
  stops counting if it failed before the server answered a login (see
  :func:`reached_login`): a server that is down is paced by the backoff alone.

A :class:`KeyLimits` exists only while one of these has something to remember; once
:meth:`KeyLimits.settled` it can be dropped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .config import PoolConfig
from .errors import AuthenticationError, ServerLimit

__all__ = ["LOGIN_WINDOW", "KeyLimits", "limit_stats", "login_limit", "reached_login"]

LOGIN_WINDOW = 60.0
"""Seconds over which ``retry.max_logins_per_minute`` is counted."""


def login_limit(config: PoolConfig) -> int:
    """Connect attempts allowed per key per :data:`LOGIN_WINDOW`: the retry policy's
    ``max_logins_per_minute``, never below ``max_per_key`` (a cold start opens every slot)."""
    return max(config.retry.max_logins_per_minute, config.max_per_key)


def reached_login(exc: BaseException) -> bool:
    """Whether a failed connect got as far as the server answering a login: credentials
    refused (:class:`AuthenticationError`) or a refusal for the server's limits."""
    return isinstance(exc, (AuthenticationError, ServerLimit))


@dataclass(slots=True, eq=False)
class KeyLimits:
    """One key's server-imposed limits. Times are readings of the pool's clock.

    Attributes:
        logins: times of the connect attempts of the last :data:`LOGIN_WINDOW` seconds,
            oldest first (at most :func:`login_limit` of them are kept).
        throttled_until: no connect or hand-out before this time.
        throttle: the refusal that set ``throttled_until`` (for messages).
        cap: the effective cap set by the last capacity refusal, or None (``max_per_key``).
        cap_since: when ``cap`` was set; it rises by one per ``capacity_cooldown`` since.
        quiet_at: by then neither a throttle nor a lowered cap holds the key back (the pool
            may forget the key, see ``KeyState.quiet``; the login log does not keep it: a
            key is forgotten only after ``forget_keys_after`` of quiet, which outlasts it).
    """

    logins: list[float] = field(default_factory=list)
    throttled_until: float = 0.0
    throttle: ServerLimit | None = None
    cap: int | None = None
    cap_since: float = 0.0
    quiet_at: float = 0.0

    # -- recording ------------------------------------------------------------------------

    def note_login(self, now: float, config: PoolConfig) -> None:
        """A connect attempt starts now: counted as a login until :meth:`unnote_login`."""
        logins = self.logins
        logins.append(now)
        keep = login_limit(config)
        if len(logins) > keep:
            del logins[: len(logins) - keep]

    def unnote_login(self, at: float) -> None:
        """The attempt counted at ``at`` never reached a login (a refused port, a timeout,
        a TLS failure): the server saw no LOGIN, so it does not count."""
        logins = self.logins
        for i in range(len(logins) - 1, -1, -1):
            if logins[i] == at:
                del logins[i]
                return

    def refused(self, exc: ServerLimit, now: float, *, held: int, config: PoolConfig) -> float:
        """The server refused for its limits while the key held ``held`` open connections
        (the ones that outlive the refusal). Returns the seconds the key is now throttled
        for (0.0: not throttled by this refusal).

        A named wait throttles the key for ``min(exc.delay, retry.max_throttle_delay)``; a
        capacity refusal while ``held >= 1`` lowers the effective cap to ``held`` and
        restarts the cool-down. A refusal that names no wait leaves the connects to the
        key's backoff (:mod:`guardedpool.reconnect`).
        """
        throttled = 0.0
        if exc.delay is not None and exc.delay > 0:
            throttled = min(exc.delay, config.retry.max_throttle_delay)
            if now + throttled >= self.throttled_until:
                self.throttled_until = now + throttled
                self.throttle = exc
        if exc.kind == "capacity" and 1 <= held < config.max_per_key:
            self.cap = held
            self.cap_since = now
            restored = now + config.retry.capacity_cooldown * (config.max_per_key - held)
            self.quiet_at = max(self.quiet_at, restored)
        self.quiet_at = max(self.quiet_at, self.throttled_until)
        return throttled

    def accepted(self, held: int) -> None:
        """A connect succeeded and the key now holds ``held`` open connections: the server
        takes at least that many, so a cap set lower (a refusal that crossed a concurrent
        login) rises to it."""
        if self.cap is not None and held > self.cap:
            self.cap = held

    # -- questions ------------------------------------------------------------------------

    def throttled(self, now: float) -> bool:
        """Whether no connect and no hand-out may happen now."""
        return now < self.throttled_until

    def key_cap(self, now: float, config: PoolConfig) -> int:
        """The key's effective cap: ``max_per_key``, or lower while cooling down."""
        cap = self.cap
        if cap is None:
            return config.max_per_key
        steps = math.floor((now - self.cap_since) / config.retry.capacity_cooldown)
        return min(config.max_per_key, cap + max(0, steps))

    def logins_left(self, now: float, config: PoolConfig) -> int:
        """Connect attempts the key may start now without passing the login limit."""
        since = now - LOGIN_WINDOW
        recent = sum(1 for t in self.logins if t > since)
        return max(0, login_limit(config) - recent)

    def opens_allowed(self, now: float, slots: int, config: PoolConfig) -> int:
        """How many connects may start now for a key holding ``slots`` slots."""
        if self.throttled(now):
            return 0
        return max(0, min(self.key_cap(now, config) - slots, self.logins_left(now, config)))

    def next_change(self, now: float, config: PoolConfig) -> float | None:
        """The earliest time after ``now`` at which :meth:`opens_allowed` or a hand-out may
        change (the throttle ends, a login leaves the window, the cap rises), or None."""
        times: list[float] = []
        if self.throttled(now):
            times.append(self.throttled_until)
        limit = login_limit(config)
        if len(self.logins) >= limit:
            oldest = self.logins[-limit] + LOGIN_WINDOW
            if oldest > now:
                times.append(oldest)
        if self.cap is not None and self.key_cap(now, config) < config.max_per_key:
            cooldown = config.retry.capacity_cooldown
            steps = math.floor((now - self.cap_since) / cooldown) + 1
            times.append(self.cap_since + steps * cooldown)
        return min(times) if times else None

    def settled(self, now: float, config: PoolConfig) -> bool:
        """Nothing left to remember: not throttled, cap restored, no login in the window."""
        if self.throttled(now):
            return False
        if self.cap is not None and self.key_cap(now, config) < config.max_per_key:
            return False
        return not self.logins or self.logins[-1] <= now - LOGIN_WINDOW

    def why(self, now: float, slots: int, config: PoolConfig) -> str | None:
        """Which of the server's limits keeps the key from a connection now, in words that
        fit ``PoolTimeout.limited_by`` ("... was the limit"); None: none of them."""
        out: list[str] = []
        if self.throttled(now):
            exc = self.throttle
            said = f"; {type(exc).__name__}: {exc.server_text}" if exc is not None else ""
            out.append(
                f"throttling by the server (no connect or hand-out for another "
                f"{self.throttled_until - now:.1f} s{said})"
            )
        cap = self.key_cap(now, config)
        if cap < config.max_per_key and slots >= cap:
            out.append(
                f"the server's connection limit (too many connections: the key is capped at "
                f"{cap} of max_per_key {config.max_per_key} for now)"
            )
        if self.logins_left(now, config) == 0:
            change = self.next_change(now, config)
            left = "" if change is None else f"; the next in {change - now:.1f} s"
            out.append(
                f"the login rate (at most {login_limit(config)} logins per minute for a key"
                f"{left})"
            )
        return " and ".join(out) or None


def limit_stats(
    limits: KeyLimits | None, now: float, config: PoolConfig, first_login: float | None = None
) -> dict[str, Any]:
    """The stable per-key stats of the limits (the same names whether or not any applies):
    ``throttled`` (bool), ``throttled_until`` (pool clock, or None), ``throttled_for``
    (seconds left, 0.0 when not throttled), ``effective_max_per_key``,
    ``logins_last_minute``. ``first_login``: a key without limits keeps the time of its
    one login (a KeyLimits per key costs ~200 bytes; most keys log in once an hour)."""
    if limits is None:
        recent = first_login is not None and first_login > now - LOGIN_WINDOW
        return {
            "throttled": False,
            "throttled_until": None,
            "throttled_for": 0.0,
            "effective_max_per_key": config.max_per_key,
            "logins_last_minute": 1 if recent else 0,
        }
    throttled = limits.throttled(now)
    return {
        "throttled": throttled,
        "throttled_until": limits.throttled_until if throttled else None,
        "throttled_for": limits.throttled_until - now if throttled else 0.0,
        "effective_max_per_key": limits.key_cap(now, config),
        "logins_last_minute": login_limit(config) - limits.logins_left(now, config),
    }
