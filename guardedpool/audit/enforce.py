"""Acting on decisions: confirm against the OS, then poison, retire or force-close.

The scan is a snapshot taken over a few milliseconds while the pool keeps running, so
every decision is confirmed just before it is acted on: a "gone" socket that is back at
its fd in state ESTABLISHED was a race (identified after the listing), a straggler whose
inode no fd holds any more closed on its own. Confirmation and action happen in one
synchronous stretch (no ``await``), so the pool cannot change a record in between.

Force-close never ``os.close()``s anything: it shuts the socket down through a dup
(:func:`guardedpool.sockets.shutdown_socket`, inode-checked, so a reused fd number is
never touched), asks the pool to abort its transport if it still holds one, and then
waits -- bounded by ``VERIFY_WAIT`` -- for every fd holding the inode to go, because the
owner closes its fd only when it reads the EOF. An fd that stays (a dup someone keeps, a
raw socket nobody reads) makes the finding ``close_failed``: it is still a leak.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from ..records import ConnectionRecord
from ..sockets import is_open, shutdown_socket, tcp_state
from .classify import Decision, Kind, Plan
from .report import Action
from .scan_procfs import peek

__all__ = ["VERIFY_WAIT", "Outcome", "Remedies", "enforce"]

VERIFY_WAIT = 0.5
"""Seconds to wait for a shut-down socket to leave the process (owners close on EOF)."""


class Remedies(Protocol):
    """What enforcement needs from the pool (a subset of ``AuditTarget``)."""

    def poison(self, record: ConnectionRecord) -> None: ...
    def retire(self, record: ConnectionRecord) -> None: ...
    def abort(self, record: ConnectionRecord) -> bool: ...


@dataclass(frozen=True, slots=True)
class Outcome:
    """A confirmed decision and what was done; ``fds`` held the socket when acted on."""

    decision: Decision
    action: Action
    detail: str
    fds: tuple[int, ...]
    inode: int | None


@dataclass(slots=True)
class _Closing:
    index: int
    inode: int
    fds: list[int]
    detail: str


def _holders(fds: Iterable[int], inode: int) -> list[int]:
    out: list[int] = []
    for fd in dict.fromkeys(fds):
        try:
            if os.fstat(fd).st_ino == inode:
                out.append(fd)
        except OSError:
            pass
    return out


def _abort_loop_transport(fd: int, inode: int) -> bool:
    """Abort the running loop's transport on ``fd`` if it still owns that socket.

    A shutdown makes the owner read EOF, but a stream transport (``StreamReaderProtocol``)
    stays half-open after EOF until someone closes the writer -- which a leaked connection's
    owner never does. Aborting the transport closes the fd through its owner, so the
    number is released by the one object that held it (no stale-fd hazard). This reads
    the selector loop's private ``_transports`` map; on other loops it does nothing.
    """
    registry = getattr(asyncio.get_running_loop(), "_transports", None)
    transport = registry.get(fd) if isinstance(registry, Mapping) else None
    if not isinstance(transport, asyncio.WriteTransport):
        return False
    sock = transport.get_extra_info("socket")
    try:
        if sock is None or sock.fileno() != fd or os.fstat(fd).st_ino != inode:
            return False
    except OSError:
        return False
    transport.abort()
    return True


def _socket_of(d: Decision) -> tuple[int | None, list[int]]:
    """(inode, candidate fds) of the decision's socket, confirming a row without an inode.

    psutil and lsof rows carry no inode: read it from the fd, but only after checking that
    the fd still holds a socket with the row's addresses (the number may have been reused).
    """
    fds = [r.fd for r in d.sockets if r.fd is not None]
    if d.record is not None and d.record.socket is not None:
        return d.record.socket.inode, [*fds, d.record.socket.fd]
    inode = next((r.inode for r in d.sockets if r.inode is not None), None)
    if inode is not None or not d.sockets or socket.getdefaulttimeout() is not None:
        return inode, fds
    row = d.sockets[0]
    if row.fd is None:
        return None, fds
    try:
        inode = os.fstat(row.fd).st_ino
    except OSError:
        return None, fds
    now = peek(row.fd, inode, with_state=False)
    if now is None or (now.local, now.remote) != (row.local, row.remote):
        return None, fds
    return inode, fds


def _confirm_half_open(d: Decision) -> bool:
    ident = d.record.socket if d.record is not None else None
    if ident is None or not is_open(ident):
        return True  # gone
    state = tcp_state(ident.fd)
    if state is None:
        return bool(d.sockets)  # no state to read here: trust a row-based verdict only
    return state not in ("ESTABLISHED", "UNKNOWN")


def _act(
    decisions: Sequence[Decision], target: Remedies
) -> tuple[list[Outcome | None], list[_Closing]]:
    """Confirm and act on every decision at once, without awaiting (see module doc)."""
    outcomes: list[Outcome | None] = []
    closing: list[_Closing] = []
    for d in decisions:
        record = d.record
        if d.kind is Kind.HALF_OPEN:
            assert record is not None
            if not _confirm_half_open(d):
                outcomes.append(None)
                continue
            target.poison(record)
            outcomes.append(Outcome(d, Action.POISONED, d.reason, _fds(d), _inode(d)))
        elif d.kind is Kind.OVERDUE:
            assert record is not None
            target.retire(record)
            outcomes.append(Outcome(d, Action.RETIRED, d.reason, _fds(d), _inode(d)))
        elif d.kind in (Kind.STRAGGLER, Kind.ORPHAN):
            inode, candidates = _socket_of(d)
            held = _holders(candidates, inode) if inode is not None else []
            if inode is not None and not held:
                outcomes.append(None)  # closed since the scan
                continue
            if d.plan is not Plan.FORCE_CLOSE or inode is None:
                why = d.reason if inode is not None else f"{d.reason}; could not re-identify"
                outcomes.append(Outcome(d, Action.REPORTED, why, tuple(held or _fds(d)), inode))
                continue
            shut = sum(shutdown_socket(fd, inode) for fd in held)
            detail = f"{d.reason}; shut down via dup of fd {held[0]}" if shut else d.reason
            if record is not None and target.abort(record):
                detail += "; pool aborted its transport"
            aborted = [fd for fd in held if _abort_loop_transport(fd, inode)]
            if aborted:
                detail += f"; aborted the event loop's transport on fd {aborted[0]}"
            outcomes.append(None)  # filled in after verification
            closing.append(_Closing(len(outcomes) - 1, inode, held, detail))
        else:
            outcomes.append(Outcome(d, Action.REPORTED, d.reason, _fds(d), _inode(d)))
    return outcomes, closing


def _fds(d: Decision) -> tuple[int, ...]:
    return tuple(dict.fromkeys(r.fd for r in d.sockets if r.fd is not None))


def _inode(d: Decision) -> int | None:
    if d.record is not None and d.record.socket is not None:
        return d.record.socket.inode
    return next((r.inode for r in d.sockets if r.inode is not None), None)


async def _wait_gone(closing: Sequence[_Closing], wait: float) -> dict[int, list[int]]:
    """fds still holding each inode after at most ``wait`` seconds (empty lists: gone)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    turns = 0
    while True:
        left = {c.inode: _holders(c.fds, c.inode) for c in closing}
        if not any(left.values()) or loop.time() >= deadline:
            return left
        # An aborted transport releases its fd from a callback: a few loop turns usually
        # suffice; after that, poll gently until the deadline.
        turns += 1
        await asyncio.sleep(0 if turns <= 3 else 0.01)


async def enforce(
    decisions: Sequence[Decision], target: Remedies, *, verify_wait: float = VERIFY_WAIT
) -> list[Outcome]:
    """Confirm each decision, act on it, and verify force-closes (bounded by
    ``verify_wait`` seconds in total, not per socket). Decisions that no longer hold are
    dropped."""
    outcomes, closing = _act(decisions, target)
    if closing:
        left = await _wait_gone(closing, verify_wait)
        for c in closing:
            d = decisions[c.index]
            still = left[c.inode]
            if still:
                why = f"{c.detail}; fd {', '.join(map(str, still))} still holds it"
                outcomes[c.index] = Outcome(d, Action.CLOSE_FAILED, why, tuple(c.fds), c.inode)
            else:
                outcomes[c.index] = Outcome(d, Action.FORCE_CLOSED, c.detail, tuple(c.fds), c.inode)
    return [o for o in outcomes if o is not None]
