"""Validated, frozen configuration: every wait has a finite default.

A bad value fails in the constructor with a ``ValueError`` that names the option and the
value, not an hour later inside the housekeeping task. Times are seconds (floats), counts
are ints; ``bool`` is rejected where an int is expected because ``True`` silently meaning
``1`` is how a typo becomes a pool of one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Literal

__all__ = ["AuditPolicy", "PoolConfig", "RetryPolicy"]

AuditBackend = Literal["auto", "procfs", "psutil", "lsof"]


def _check_number(
    owner: str,
    name: str,
    value: object,
    *,
    kind: type,
    minimum: float,
    inclusive: bool,
    optional: bool = False,
    maximum: float | None = None,
) -> None:
    where = f"{owner}.{name}"
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
        raise ValueError(
            f"{where} must be {'a number' if kind is float else 'an int'}"
            f"{' or None' if optional else ''}, got {value!r}"
        )
    if kind is float:
        # An int too large for a float would pass every comparison here and then raise
        # OverflowError inside the first timer that uses it.
        try:
            as_float = float(value)
        except OverflowError:
            raise ValueError(
                f"{where} must be finite, got an int of {len(str(value))} digits"
            ) from None
        if not math.isfinite(as_float):
            raise ValueError(f"{where} must be finite, got {value!r}")
    too_small = value < minimum if inclusive else value <= minimum
    if too_small:
        bound = f">= {minimum}" if inclusive else f"> {minimum}"
        raise ValueError(f"{where} must be {bound}, got {value!r}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{where} must be <= {maximum}, got {value!r}")


def _check_bool(owner: str, name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{owner}.{name} must be a bool, got {value!r}")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a key's connects back off after transient failures (built on tenacity).

    Delays grow as ``initial * multiplier ** n`` up to ``max_delay``, each with up to
    ``jitter`` seconds of random extra so that keys hit by the same outage do not retry in
    lock-step. After ``reconnect_deadline`` seconds of uninterrupted failure for a key the
    pool's ``on_reconnect_failed`` callback fires once; retrying continues at ``max_delay``
    for as long as someone waits for that key. A success resets the backoff.

    Attributes:
        initial: first delay, seconds (default 0.1).
        multiplier: growth factor per consecutive failure (default 2.0).
        max_delay: ceiling of one delay, seconds (default 30.0).
        jitter: maximum random extra per delay, seconds (default 0.5).
        reconnect_deadline: seconds of failure before the callback fires (default 120.0).
        max_throttle_delay: ceiling, seconds, of a wait a server asks for when it throttles
            (e.g. Office 365's "Suggested Backoff Time: 299961 milliseconds"; default
            300.0, five minutes, as ImapFlow caps it): a server cannot park a key for
            longer than this.
        reset_after: seconds a connection must live before the key's backoff resets
            (default 60.0). A connection that dies of a fault younger than this counts as a
            failure, so a server that accepts LOGIN and drops the connection a moment later
            meets a growing delay, not a login every ``initial``.
        max_logins_per_minute: most connect attempts (each one a login) per key in any 60 s
            (default 6); never below the pool's ``max_per_key``, so a cold start can open
            every slot at once. The last guard against a reconnect loop.
        capacity_cooldown: seconds a key's cap stays lowered after a "too many connections"
            refusal while it held connections (default 300.0); then it rises by one per
            cool-down until it is ``max_per_key`` again.
    """

    initial: float = 0.1
    multiplier: float = 2.0
    max_delay: float = 30.0
    jitter: float = 0.5
    reconnect_deadline: float = 120.0
    max_throttle_delay: float = 300.0
    reset_after: float = 60.0
    max_logins_per_minute: int = 6
    capacity_cooldown: float = 300.0

    def __post_init__(self) -> None:
        o = "RetryPolicy"
        _check_number(o, "initial", self.initial, kind=float, minimum=0.0, inclusive=True)
        _check_number(o, "multiplier", self.multiplier, kind=float, minimum=1.0, inclusive=True)
        _check_number(o, "max_delay", self.max_delay, kind=float, minimum=0.0, inclusive=False)
        _check_number(o, "jitter", self.jitter, kind=float, minimum=0.0, inclusive=True)
        _check_number(
            o,
            "reconnect_deadline",
            self.reconnect_deadline,
            kind=float,
            minimum=0.0,
            inclusive=False,
        )
        _check_number(
            o,
            "max_throttle_delay",
            self.max_throttle_delay,
            kind=float,
            minimum=0.0,
            inclusive=False,
        )
        _check_number(o, "reset_after", self.reset_after, kind=float, minimum=0.0, inclusive=True)
        _check_number(
            o,
            "max_logins_per_minute",
            self.max_logins_per_minute,
            kind=int,
            minimum=1,
            inclusive=True,
            maximum=1_000_000,
        )
        _check_number(
            o, "capacity_cooldown", self.capacity_cooldown, kind=float, minimum=0.0, inclusive=False
        )
        if self.initial > self.max_delay:
            raise ValueError(
                f"RetryPolicy.initial ({self.initial!r}) must be <= "
                f"RetryPolicy.max_delay ({self.max_delay!r})"
            )


@dataclass(frozen=True, slots=True)
class AuditPolicy:
    """What ``pool.audit()`` looks at and what it may do.

    Attributes:
        backend: OS view to use: ``"procfs"`` (Linux, fastest), ``"psutil"``, ``"lsof"``
            (the classic, slowest) or ``"auto"`` (procfs where ``/proc/self/fd`` exists,
            else psutil). Default ``"auto"``.
        interval: run an audit from housekeeping every this many seconds and log its
            findings; ``None`` (default) only audits when asked.
        force_close_stragglers: shut down sockets the pool retired that the OS still holds
            (default True).
        close_orphans: also shut down sockets to pooled endpoints that no record owns
            (default False: they may belong to someone else in the process).
        fd_usage_unhealthy: the report is unhealthy when the process uses more than this
            share of its ``RLIMIT_NOFILE`` soft limit (default 0.9).
        graveyard_size: how many retired records are kept for audits to check (default 4096).
        graveyard_ttl: seconds a retired record is kept (default 600.0).
    """

    backend: AuditBackend = "auto"
    interval: float | None = None
    force_close_stragglers: bool = True
    close_orphans: bool = False
    fd_usage_unhealthy: float = 0.9
    graveyard_size: int = 4096
    graveyard_ttl: float = 600.0

    def __post_init__(self) -> None:
        o = "AuditPolicy"
        if self.backend not in ("auto", "procfs", "psutil", "lsof"):
            raise ValueError(
                f"{o}.backend must be one of 'auto', 'procfs', 'psutil', 'lsof', "
                f"got {self.backend!r}"
            )
        _check_number(
            o, "interval", self.interval, kind=float, minimum=0.0, inclusive=False, optional=True
        )
        _check_bool(o, "force_close_stragglers", self.force_close_stragglers)
        _check_bool(o, "close_orphans", self.close_orphans)
        _check_number(
            o,
            "fd_usage_unhealthy",
            self.fd_usage_unhealthy,
            kind=float,
            minimum=0.0,
            inclusive=False,
            maximum=1.0,
        )
        _check_number(o, "graveyard_size", self.graveyard_size, kind=int, minimum=1, inclusive=True)
        _check_number(
            o, "graveyard_ttl", self.graveyard_ttl, kind=float, minimum=0.0, inclusive=False
        )


# (name, kind, minimum, inclusive, optional) for every numeric PoolConfig option.
_POOL_NUMBERS: tuple[tuple[str, type, float, bool, bool], ...] = (
    ("max_per_key", int, 1, True, False),
    ("max_total", int, 1, True, False),
    ("max_connecting", int, 1, True, False),
    ("acquire_timeout", float, 0.0, False, False),
    ("queue_timeout", float, 0.0, False, False),
    ("connect_timeout", float, 0.0, False, False),
    ("op_timeout", float, 0.0, False, False),
    ("close_timeout", float, 0.0, False, False),
    ("shutdown_timeout", float, 0.0, False, False),
    ("idle_timeout", float, 0.0, False, False),
    ("max_lifetime", float, 0.0, False, False),
    ("lifetime_jitter", float, 0.0, True, False),
    ("check_after", float, 0.0, True, False),
    ("check_timeout", float, 0.0, False, False),
    ("heartbeat_interval", float, 0.0, False, True),
    ("leak_threshold", float, 0.0, False, False),
    ("reclaim_after", float, 0.0, False, True),
    ("housekeeping_interval", float, 0.0, False, False),
    ("forget_keys_after", float, 0.0, False, False),
    ("keepalive_idle", int, 1, True, False),
    ("keepalive_interval", int, 1, True, False),
    ("keepalive_count", int, 1, True, False),
)


# Linux: TCP_KEEPIDLE and TCP_KEEPINTVL at most MAX_TCP_KEEPIDLE/INTVL (32767 s),
# TCP_KEEPCNT at most MAX_TCP_KEEPCNT (127).
_KEEPALIVE_LIMITS = (
    ("keepalive_idle", 32767),
    ("keepalive_interval", 32767),
    ("keepalive_count", 127),
)


@dataclass(frozen=True, slots=True)
class PoolConfig:
    """Every limit and bound of a :class:`~guardedpool.GuardedPool`.

    Attributes:
        max_per_key: most connections (opening, open or closing) for one key (default 2).
        max_total: most connections in the whole pool (default 100).
        max_connecting: most connects in flight at once, pool-wide; a server restart then
            brings a trickle of reconnects, not a storm (default 8). Keys in a failure
            streak hold at most three quarters of them
            (:func:`guardedpool.reconnect.failing_key_permits`).
        acquire_timeout: seconds ``acquire()`` may wait for a connection, including any
            connect it waits on (default 30.0); longer only while its connect is queued
            behind ``max_connecting`` and the pool makes progress (see ``queue_timeout``).
        queue_timeout: seconds ``acquire()`` may wait in all when its key's connect is
            queued behind ``max_connecting`` (or under way) and the pool keeps opening
            connections: such a caller times out at ``acquire_timeout`` after the pool's
            last successful connect, not after its own start, and never later than this
            (or ``acquire_timeout``, if that is longer) after its start (default 300.0).
        connect_timeout: seconds for TCP connect + TLS + greeting + login (default 15.0).
        op_timeout: seconds for each command; a command that overruns poisons the
            connection (default 30.0).
        close_timeout: seconds for a graceful LOGOUT before the transport is aborted
            (default 5.0); ``close()`` also gives connections still lent out this long
            to come back before it aborts them.
        shutdown_timeout: for a connector without ``farewell`` (which says goodbye
            without waiting; the IMAP connector has it): seconds ``close()`` gives the
            awaited goodbyes (LOGOUT) of the connections it closes, all running at once,
            counted from the call; a goodbye not done by then is cut short (the transport
            is aborted, the socket still verified gone), and one that would start later is
            skipped (default 1.0).
        idle_timeout: seconds a connection may sit idle in the pool before it is retired
            (default 300.0).
        max_lifetime: seconds after which a connection is retired, even one held in IDLE
            (at the next safe point); each connection's expiry is jittered down by up to
            ``lifetime_jitter`` of this so they do not expire together (default 3600.0).
        lifetime_jitter: share of ``max_lifetime`` used as jitter, 0..0.5 (default 0.05).
        check_after: a connection idle longer than this many seconds is checked with a
            bounded NOOP before it is handed out; 0 checks every time (default 30.0).
        check_timeout: seconds that NOOP check (and a heartbeat's) may take, at most
            ``op_timeout``; one that does not answer in time is retired and ``acquire()``
            opens a replacement within what is left of ``acquire_timeout`` (default 5.0).
        heartbeat_interval: housekeeping NOOPs idle connections that have been idle this
            long, to find half-open peers; ``None`` disables it (default 60.0).
        leak_threshold: seconds a connection may stay checked out before the audit calls
            it a leak suspect (default 300.0).
        reclaim_after: abort a checked-out connection after this many seconds (it is
            marked and never reused); ``None`` (default) never reclaims.
        housekeeping_interval: seconds between housekeeping rounds (default 1.0).
        forget_keys_after: a key with no connection, no waiter and no backoff in progress
            is forgotten after this many seconds; its counters are folded into the pool's
            totals (default 300.0). A key the connector does not know leaves nothing
            behind at all.
        keepalive_idle, keepalive_interval, keepalive_count: TCP keepalive on every socket:
            first probe after ``keepalive_idle`` s of silence, then every
            ``keepalive_interval`` s, dead after ``keepalive_count`` unanswered probes
            (defaults 60, 10, 3).
        retry: backoff for connects, see :class:`RetryPolicy`.
        audit: what ``audit()`` does, see :class:`AuditPolicy`.
    """

    max_per_key: int = 2
    max_total: int = 100
    max_connecting: int = 8
    acquire_timeout: float = 30.0
    queue_timeout: float = 300.0
    connect_timeout: float = 15.0
    op_timeout: float = 30.0
    close_timeout: float = 5.0
    shutdown_timeout: float = 1.0
    idle_timeout: float = 300.0
    max_lifetime: float = 3600.0
    lifetime_jitter: float = 0.05
    check_after: float = 30.0
    check_timeout: float = 5.0
    heartbeat_interval: float | None = 60.0
    leak_threshold: float = 300.0
    reclaim_after: float | None = None
    housekeeping_interval: float = 1.0
    forget_keys_after: float = 300.0
    keepalive_idle: int = 60
    keepalive_interval: int = 10
    keepalive_count: int = 3
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    audit: AuditPolicy = field(default_factory=AuditPolicy)

    def __post_init__(self) -> None:
        for name, kind, minimum, inclusive, optional in _POOL_NUMBERS:
            _check_number(
                "PoolConfig",
                name,
                getattr(self, name),
                kind=kind,
                minimum=minimum,
                inclusive=inclusive,
                optional=optional,
            )
        # The kernel refuses larger values (EINVAL on every connect, retried forever).
        for name, limit in _KEEPALIVE_LIMITS:
            if getattr(self, name) > limit:
                raise ValueError(
                    f"PoolConfig.{name} must be <= {limit}, got {getattr(self, name)!r}"
                )
        if self.lifetime_jitter > 0.5:
            raise ValueError(
                f"PoolConfig.lifetime_jitter must be <= 0.5, got {self.lifetime_jitter!r}"
            )
        if self.max_per_key > self.max_total:
            raise ValueError(
                f"PoolConfig.max_per_key ({self.max_per_key!r}) must be <= "
                f"PoolConfig.max_total ({self.max_total!r})"
            )
        if self.reclaim_after is not None and self.reclaim_after <= self.leak_threshold:
            raise ValueError(
                f"PoolConfig.reclaim_after ({self.reclaim_after!r}) must be > "
                f"PoolConfig.leak_threshold ({self.leak_threshold!r})"
            )
        if not isinstance(self.retry, RetryPolicy):
            raise ValueError(f"PoolConfig.retry must be a RetryPolicy, got {self.retry!r}")
        if not isinstance(self.audit, AuditPolicy):
            raise ValueError(f"PoolConfig.audit must be an AuditPolicy, got {self.audit!r}")

    def to_dict(self) -> dict[str, object]:
        """Plain data for logs and reports (nothing secret lives in a config)."""
        out: dict[str, object] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (RetryPolicy, AuditPolicy)):
                value = {g.name: getattr(value, g.name) for g in fields(value)}
            out[f.name] = value
        return out
