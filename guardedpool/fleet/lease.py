"""A lease: the right to hold one connection (or own one key) until a deadline.

Sans-I/O: a lease is a plain record; the budget that granted it moves its deadline
forward after each renewal and marks it lost. The holder checks it synchronously with
:meth:`Lease.valid` before each use.

**The deadline is local and conservative.** The store (Redis) expires a lease by its own
clock at ``server_time + ttl``. The holder cannot read that clock, but it knows the
request left *before* the server stamped the lease, so ``sent_at + ttl`` (on the
holder's clock) is never later than the server's expiry, up to clock rate error. The
lease is valid locally until ``sent_at + ttl - margin``: the margin covers the time to
abort a connection and event-loop lag, so the holder stops using a connection *before*
another process can be granted its place (Kleppmann's paused-holder hazard).

**The clock** is ``CLOCK_BOOTTIME`` where the OS has it (Linux): unlike
``time.monotonic`` it keeps counting while the machine is suspended, and a suspended
holder must find its leases expired on resume just like a SIGSTOPped one.
``time.monotonic`` elsewhere. Both count through SIGSTOP.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

__all__ = ["Lease", "LostReason", "clock", "lease_timing", "local_deadline"]

if hasattr(time, "CLOCK_BOOTTIME"):
    _BOOTTIME = time.CLOCK_BOOTTIME

    def clock() -> float:
        """Seconds on the lease clock (``CLOCK_BOOTTIME``: counts through suspend)."""
        return time.clock_gettime(_BOOTTIME)

else:  # pragma: no cover - not Linux

    def clock() -> float:
        """Seconds on the lease clock (``time.monotonic`` where there is no boottime)."""
        return time.monotonic()


class LostReason:
    """Why a lease was lost; plain strings so they log and serialise as they are."""

    GONE = "gone"  # the store no longer had it at a renewal (expired there, or deleted)
    EXPIRED = "expired"  # its local deadline passed: renewals failed, or the process paused
    NO_ROOM = "no_room"  # a fallback lease the store had no room for once it came back
    CLOSED = "closed"  # the budget was closed while the lease was held
    REVOKED = "revoked"  # taken away on purpose (LocalBudget.revoke)
    MOVED = "moved"  # an owned key handed to a worker that joined (RedisOwnership)


def lease_timing(
    ttl: float, margin: float | None, op_timeout: float | None
) -> tuple[float, float, float]:
    """Checked ``(ttl, margin, op_timeout)`` of a lease holder, in seconds.

    ``ttl``: finite, > 0. ``margin`` (default ``ttl / 10``): in ``[0, ttl)``.
    ``op_timeout`` (default the smaller of 5 s and ``ttl / 6``): finite, > 0.
    Raises ValueError for anything else.
    """
    if not (0 < ttl < math.inf):
        raise ValueError(f"ttl must be a finite number of seconds > 0, got {ttl!r}")
    margin = ttl / 10 if margin is None else margin
    if not (0 <= margin < ttl):
        raise ValueError(f"margin must be in [0, ttl), got {margin!r}")
    op_timeout = min(5.0, ttl / 6) if op_timeout is None else op_timeout
    if not (0 < op_timeout < math.inf):
        raise ValueError(f"op_timeout must be finite and > 0, got {op_timeout!r}")
    return ttl, margin, op_timeout


def local_deadline(sent_at: float, ttl: float, margin: float) -> float:
    """The last instant (lease clock) a lease stamped by a request sent at ``sent_at`` may
    be used: ``sent_at + ttl - margin``. ``ttl`` and ``margin`` in seconds."""
    return sent_at + ttl - margin


@dataclass(eq=False, slots=True)
class Lease:
    """One lease on ``key``, identified by ``token`` (unique, random; not a secret).

    Fields the budget maintains (read them, never set them):

    * ``valid_until``: lease-clock seconds after which the holder must not use what the
      lease covers; ``math.inf`` for a lease that cannot expire (an in-process budget
      without a TTL).
    * ``lost``: ``None`` while held, else a :class:`LostReason` string. A lost lease is
      never valid again; the budget still counts it until it is released.
    * ``released``: ``release()`` was called; the lease is no longer counted.
    * ``fallback``: granted from the per-process fallback share while the store was
      unreachable, not counted fleet-wide.
    * ``fencing_token``: for ownership leases, the store's strictly growing counter for
      the key at the time of the grant; 0 for budget leases.
    """

    key: str
    token: str
    valid_until: float = math.inf
    lost: str | None = None
    released: bool = False
    fallback: bool = False
    fencing_token: int = 0
    granted_at: float = field(default_factory=clock)

    def valid(self, now: float | None = None) -> bool:
        """True while the lease may be used: not lost, not released, before its deadline.

        Synchronous and cheap (one clock read): call it before every hand-out and every
        command. ``now`` is lease-clock seconds (:func:`clock`), for tests.
        """
        if self.lost is not None or self.released:
            return False
        return (clock() if now is None else now) < self.valid_until

    def remaining(self, now: float | None = None) -> float:
        """Seconds until ``valid_until`` (negative once past); ``inf`` without a TTL."""
        return self.valid_until - (clock() if now is None else now)

    def __repr__(self) -> str:
        state = self.lost or ("released" if self.released else "held")
        kind = " fallback" if self.fallback else ""
        return f"<Lease {self.key!r} {self.token[:8]}{kind} {state}>"
