"""The pool's decisions, as plain functions over records, counts and an injected ``now``.

Nothing here awaits, sleeps, or touches a socket: the pool (the I/O edge) asks these
functions what to do and then does it. That keeps every rule testable in microseconds and
keeps the rules in one place where a reader can check them against the documentation.
The rules about borrows held too long live in :mod:`guardedpool.leaks`.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable

from .config import PoolConfig
from .deadlines import heartbeat_at
from .errors import ConnectError
from .records import CloseReason, ConnectionRecord, ConnState

__all__ = [
    "expiry_time",
    "heartbeat_due",
    "is_transient",
    "open_blocker",
    "pick_eviction",
    "ready_to_hand_out",
    "retire_on_release",
    "retire_when_idle",
    "needs_check",
]


def expiry_time(created_at: float, config: PoolConfig, u: float) -> float:
    """When a connection created at ``created_at`` must be retired.

    ``u`` in [0, 1) is the caller's random draw: the lifetime is shortened by up to
    ``lifetime_jitter`` of itself, so connections opened together (after a restart, say)
    do not all expire, and reconnect, in the same second.
    """
    return created_at + config.max_lifetime * (1.0 - config.lifetime_jitter * u)


def retire_when_idle(
    record: ConnectionRecord, now: float, config: PoolConfig
) -> CloseReason | None:
    """Why an idle connection should be retired now, or None to keep it."""
    if now >= record.expires_at:
        return CloseReason.LIFETIME
    if now - record.last_used_at >= config.idle_timeout:
        return CloseReason.IDLE
    return None


def retire_on_release(
    record: ConnectionRecord,
    now: float,
    alive: bool,
    faulted: bool,
    shutting_down: bool,
    logged_out: bool = False,
) -> CloseReason | None:
    """Why a connection coming back from a borrower should not go back to the idle list.

    ``faulted``: the borrower's block raised an error that came from the connection;
    ``alive``: the connector's cheap liveness check; ``shutting_down``: the pool is closed
    or closing (``pool.close()`` was called); ``logged_out``: the borrower ended the
    session itself (the connector says so), which is no fault of the connection.
    """
    if shutting_down:
        return CloseReason.SHUTDOWN
    if faulted:
        return CloseReason.POISONED
    if not alive:
        return CloseReason.LOGGED_OUT if logged_out else CloseReason.POISONED
    if now >= record.expires_at:
        return CloseReason.LIFETIME
    return None


def ready_to_hand_out(record: ConnectionRecord, now: float, config: PoolConfig) -> bool:
    """Whether an idle connection may be handed out as it is: not due for retirement and
    not due for a check (the acquire fast path; anything else takes the slow path)."""
    return (
        now < record.expires_at
        and now - record.last_used_at < config.idle_timeout
        and now - record.last_checked_at < config.check_after
    )


def needs_check(record: ConnectionRecord, now: float, config: PoolConfig) -> bool:
    """Whether to NOOP an idle connection before handing it out.

    A connection that sat idle for a while may have been dropped by a NAT or the server
    without our noticing; a bounded NOOP is cheaper than a user's command failing.
    """
    return now - record.last_checked_at >= config.check_after


def heartbeat_due(record: ConnectionRecord, now: float, config: PoolConfig) -> bool:
    """Whether housekeeping should NOOP this idle connection to detect a half-open peer:
    ``heartbeat_interval`` since its last check, less its spread (see
    :func:`guardedpool.deadlines.heartbeat_at`)."""
    due = heartbeat_at(record, config)
    return due is not None and now >= due


def open_blocker(key_count: int, total_count: int, config: PoolConfig) -> str | None:
    """Which cap stops a new connection for a key: ``"key"``, ``"total"``, or None.

    Counts include connections that are opening and closing: a slot is held from the
    moment its connect is permitted until its socket is verified closed, which is what
    makes "close before open" and the caps hold at the OS level, not just in our books.
    """
    if key_count >= config.max_per_key:
        return "key"
    if total_count >= config.max_total:
        return "total"
    return None


def pick_eviction(idle: Iterable[ConnectionRecord]) -> ConnectionRecord | None:
    """The idle connection to close so that a starved key can open one: least recently used."""
    best: ConnectionRecord | None = None
    best_used = math.inf
    for record in idle:
        if record.state is ConnState.IDLE and record.last_used_at < best_used:
            best, best_used = record, record.last_used_at
    return best


def is_transient(exc: BaseException) -> bool:
    """Whether another connect attempt may succeed where this one failed.

    Credentials, certificates and unknown keys are permanent: retrying them only locks
    accounts and floods logs. Network-level failures and timeouts may heal.
    """
    if isinstance(exc, ConnectError):
        return exc.transient
    return isinstance(exc, (OSError, TimeoutError, asyncio.IncompleteReadError, EOFError))
