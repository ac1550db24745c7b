"""Pool configurations shared by the tests, so a new test starts from a named one.

Each is a frozen ``PoolConfig``; derive a variant with :func:`config` (``dataclasses.replace``
underneath), which names what the test changes and keeps the rest shared:

    config(IN_MEMORY, max_per_key=1, max_total=1)
"""

from __future__ import annotations

import dataclasses
from typing import Any

from guardedpool import PoolConfig, RetryPolicy

__all__ = ["FAST_RETRY", "IMAP", "IN_MEMORY", "QUIET", "SYNC", "config"]

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


def config(base: PoolConfig, **changes: Any) -> PoolConfig:
    """``base`` with ``changes``: what the test needs differently, by name."""
    return dataclasses.replace(base, **changes)
