"""Finishing a force-close's verification after the report has gone out.

A force-close shuts a socket down and then needs its holders to close their fds: an
aborted transport does so within a loop turn or two, a thread blocked on the socket
within a few ms, but a dup nobody reads never does. The audit waits only
:data:`VERIFY_QUICK` for that (a health probe must answer fast) and reports what it knows
then: ``force_closed`` when every fd has gone, ``close_failed`` when one still holds the
socket. The check then goes on here, in the background, up to :data:`VERIFY_WAIT` after the
shutdown. Its verdict lands on the connection's record (``os_closed`` and a ``verified``
history event) and, as a :class:`Verification`, in the next report of the same target.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ..records import ConnectionRecord, Event
from .classify import Decision
from .report import Action, Verification

__all__ = [
    "MAX_KEPT",
    "VERIFY_QUICK",
    "VERIFY_WAIT",
    "Closing",
    "Verifier",
    "holders",
    "record_verdict",
    "wait_gone",
]

log = logging.getLogger("guardedpool.audit")

VERIFY_QUICK = 0.005
"""Seconds (after three loop turns) an audit waits for a shut-down socket's fds to go
before it reports; the rest of the check runs in the background."""

VERIFY_WAIT = 0.5
"""Seconds from the shutdown after which a socket still held is ``close_failed`` for good
(owners close on EOF: an fd still there by then is kept by someone who does not read)."""

MAX_KEPT = 1000
"""Finished verifications kept for the next report; older ones are dropped (bounded)."""


@dataclass(slots=True)
class Closing:
    """A socket the audit shut down, waiting for every fd that held it to go.

    ``started`` is the event loop's time of the shutdown; ``fds`` held the socket then.
    """

    decision: Decision
    inode: int
    fds: list[int]
    detail: str
    started: float


def holders(fds: Iterable[int], inode: int) -> list[int]:
    """Those of ``fds`` that still hold the socket ``inode`` (fstat, no new fd)."""
    out: list[int] = []
    for fd in dict.fromkeys(fds):
        try:
            if os.fstat(fd).st_ino == inode:
                out.append(fd)
        except OSError:
            pass
    return out


async def wait_gone(
    closing: Sequence[Closing], until: float, *, poll: float
) -> dict[int, list[int]]:
    """fds still holding each inode at loop time ``until`` at the latest (empty: gone)."""
    loop = asyncio.get_running_loop()
    turns = 0
    while True:
        left = {c.inode: holders(c.fds, c.inode) for c in closing}
        if not any(left.values()) or loop.time() >= until:
            return left
        # An aborted transport releases its fd from a callback: a few loop turns usually
        # suffice; after that, poll every ``poll`` s (a sleep lets other threads run too).
        turns += 1
        await asyncio.sleep(0 if turns <= 3 else poll)


def record_verdict(record: ConnectionRecord | None, at: float, gone: bool, detail: str) -> None:
    """Put a force-close's verdict on the connection's record (orphans have none)."""
    if record is not None:
        record.os_closed = gone
        record.note(at, Event.VERIFIED, detail)


def _fields(c: Closing) -> dict[str, Any]:
    record = c.decision.record
    return {
        "kind": c.decision.kind.value,
        "key": record.key if record else None,
        "conn_id": record.id if record else None,
        "fd": c.fds[0] if c.fds else None,
        "fds": list(c.fds),
        "inode": c.inode,
    }


def _what(c: Closing) -> str:
    record = c.decision.record
    who = f"conn {record.id} key {record.key!r}" if record else "no record"
    return f"{c.decision.kind.value} {who} fd {','.join(map(str, c.fds))} inode {c.inode}"


class Verifier:
    """Background verifications for one audit target, and their verdicts until collected.

    One per target (the auditor keeps it): a socket already being verified is not
    verified twice, and :meth:`collect` hands the verdicts to the next report. Each check
    is a task bounded by ``VERIFY_WAIT``; cancelled (the loop closing), it records nothing.
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock  # the target's clock: record times are in it
        self._pending: dict[int, asyncio.Task[None]] = {}
        self._done: deque[Verification] = deque(maxlen=MAX_KEPT)

    def pending(self, inode: int) -> bool:
        return inode in self._pending

    def start(self, closing: Closing) -> None:
        """Go on checking ``closing`` (already reported ``close_failed``) in the background."""
        if closing.inode in self._pending:
            return
        task = asyncio.get_running_loop().create_task(
            self._verify(closing), name=f"guardedpool-audit-verify-{closing.inode}"
        )
        self._pending[closing.inode] = task
        task.add_done_callback(lambda _: self._pending.pop(closing.inode, None))

    def collect(self) -> tuple[Verification, ...]:
        """The verdicts finished since the last call (oldest first), and forget them."""
        out = tuple(self._done)
        self._done.clear()
        return out

    async def _verify(self, c: Closing) -> None:
        loop = asyncio.get_running_loop()
        left = (await wait_gone([c], c.started + VERIFY_WAIT, poll=0.01))[c.inode]
        after = loop.time() - c.started
        ms = f"{after * 1000:.0f} ms"
        record = c.decision.record
        if left:
            still = ", ".join(map(str, left))
            detail = f"fd {still} still holds it {ms} after the shutdown"
            log.error(
                "guardedpool audit: %s still open %s after the audit shut it down: fd %s "
                "holds it (close_failed; whoever holds that fd must close it)",
                _what(c),
                ms,
                still,
                extra={**_fields(c), "action": "close_failed", "still": left, "after": after},
            )
        else:
            detail = f"gone {ms} after the shutdown"
            log.info(
                "guardedpool audit: %s verified gone %s after the audit shut it down "
                "(reported close_failed; now force_closed)",
                _what(c),
                ms,
                extra={**_fields(c), "action": "force_closed", "after": after},
            )
        record_verdict(record, self._clock(), not left, f"audit force-close: {detail}")
        self._done.append(
            Verification(
                kind=c.decision.kind,
                action=Action.CLOSE_FAILED if left else Action.FORCE_CLOSED,
                key=record.key if record else None,
                record_id=record.id if record else None,
                inode=c.inode,
                fds=tuple(c.fds),
                still=tuple(left),
                after=after,
                finished_at=time.time(),
                detail=detail,
            )
        )

