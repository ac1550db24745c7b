"""Pool configurations shared by the tests, so a new test starts from a named one.

Start from the base that describes the test's setting, and name only what the test needs
differently with :func:`config` (``dataclasses.replace`` underneath, so every value is
validated again):

    config(IN_MEMORY, max_per_key=1, max_total=1)
    config(IMAP, op_timeout=0.2, retry=config(FAST_RETRY, max_logins_per_minute=10_000))

:func:`config` derives a :class:`RetryPolicy` (or an ``AuditPolicy``) the same way, so a
test's backoff also names only what differs from a shared one.

The bases (all frozen):

- :data:`DEFAULTS`: ``PoolConfig()``, the shape a user starts from; for tests of one
  option, or of a connector whose pool bounds do not matter.
- :data:`IN_MEMORY`: the pool over the in-memory connector (small caps, short bounds).
- :data:`IMAP`: the pool over Dovecot on loopback.
- :data:`SYNC`: the example sync worker over Dovecot or the model server.
- :data:`QUIET`: no background work at all (no housekeeping, check or heartbeat).
- :data:`FAST_RETRY`: reconnect backoff in tens of milliseconds.

A test *about* a ``PoolConfig`` option's validation builds ``PoolConfig(...)`` itself: there
the constructor call is the subject of the test.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from guardedpool import AuditPolicy, PoolConfig, RetryPolicy

__all__ = ["DEFAULTS", "FAST_RETRY", "IMAP", "IN_MEMORY", "QUIET", "SYNC", "config"]

Policy = TypeVar("Policy", PoolConfig, RetryPolicy, AuditPolicy)

DEFAULTS = PoolConfig()
"""``PoolConfig``'s own defaults (30 s acquire, 15 s connect, 1 s housekeeping...)."""

FAST_RETRY = RetryPolicy(initial=0.02, multiplier=2.0, max_delay=0.2, jitter=0.02)
"""Reconnect backoff in tens of milliseconds: faults heal within a test's bounds."""

IN_MEMORY = PoolConfig(
    max_per_key=2,
    max_total=4,
    acquire_timeout=1.0,
    connect_timeout=1.0,
    close_timeout=0.2,
    housekeeping_interval=0.01,
    check_after=60.0,
    retry=RetryPolicy(initial=0.01, max_delay=0.05, jitter=0.01),
)
"""The pool over the in-memory connector: small caps, short bounds, busy housekeeping."""

QUIET = PoolConfig(housekeeping_interval=3600.0, check_after=3600.0, heartbeat_interval=None)
"""No housekeeping round, no check, no heartbeat during a test: only what the test does
(and what ``audit()`` finds) happens."""

IMAP = PoolConfig(
    acquire_timeout=5.0,
    connect_timeout=2.0,
    op_timeout=1.0,
    close_timeout=0.3,
    housekeeping_interval=0.05,
    retry=FAST_RETRY,
)
"""The pool over Dovecot on loopback: bounds a loaded CI machine still meets."""

SYNC = PoolConfig(connect_timeout=5.0, op_timeout=5.0, close_timeout=1.0)
"""The example sync worker (``examples/imap_sync``) over Dovecot or the model server: roomy
bounds for whole FETCH/APPEND rounds; everything else is ``PoolConfig``'s default."""


def config(base: Policy, **changes: Any) -> Policy:
    """``base`` with ``changes``: what the test needs differently, by name.

    ``base`` is a ``PoolConfig``, ``RetryPolicy`` or ``AuditPolicy``; the result is of the
    same type. Raises ``TypeError`` for a name the type has no field for, and the type's
    own ``ValueError`` for a bad value.
    """
    return dataclasses.replace(base, **changes)
