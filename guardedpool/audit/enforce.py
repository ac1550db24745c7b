"""Acting on decisions: confirm against the OS, then poison, retire or force-close.

The scan is a snapshot taken over a few milliseconds while the pool keeps running, so
every decision is confirmed just before it is acted on: a "gone" socket that is back at
its fd in state ESTABLISHED was a race (identified after the listing), a straggler whose
inode no fd holds any more closed on its own. Confirmation and action happen in one
synchronous stretch (no ``await``), so the pool cannot change a record in between.

Force-close never ``os.close()``s anything: it shuts the socket down through a dup
(:func:`guardedpool.sockets.shutdown_socket`, inode-checked, so a reused fd number is
never touched), asks the pool to abort its transport if it still holds one, and then
waits -- only :data:`~guardedpool.audit.verify.VERIFY_QUICK`, a few ms -- for every fd
holding the inode to go, because the owner closes its fd only when it reads the EOF. An
fd that is still there makes the finding ``close_failed`` (it is still a leak), and the
check goes on in the background (:mod:`.verify`) until ``VERIFY_WAIT``: its verdict lands
on the record and in the next report.

Every action taken is logged as one line that reads on its own (kind, conn id, key, fd,
inode, addresses, action, why) with the same facts in ``extra=``: see
:meth:`guardedpool.audit.report.Finding.log_fields` for the names.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ..records import ConnectionRecord
from ..sockets import is_open, shutdown_socket, tcp_state
from . import verify
from .classify import Decision, Kind, Plan
from .report import Action, describe
from .scan_procfs import peek
from .verify import VERIFY_QUICK, VERIFY_WAIT, Closing, Verifier, holders, record_verdict, wait_gone

__all__ = ["VERIFY_QUICK", "VERIFY_WAIT", "Outcome", "Remedies", "enforce"]

log = logging.getLogger("guardedpool.audit")


class Remedies(Protocol):
    """What enforcement needs from the pool (a subset of ``AuditTarget``)."""

    def now(self) -> float: ...
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
    decisions: Sequence[Decision], target: Remedies, verifier: Verifier | None
) -> tuple[list[Outcome | None], list[Closing]]:
    """Confirm and act on every decision at once, without awaiting (see module doc)."""
    now = asyncio.get_running_loop().time()
    outcomes: list[Outcome | None] = []
    closing: list[Closing] = []
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
            held = holders(candidates, inode) if inode is not None else []
            if inode is not None and not held:
                outcomes.append(None)  # closed since the scan
                continue
            if d.plan is not Plan.FORCE_CLOSE or inode is None:
                why = d.reason if inode is not None else f"{d.reason}; could not re-identify"
                outcomes.append(Outcome(d, Action.REPORTED, why, tuple(held or _fds(d)), inode))
                continue
            if verifier is not None and verifier.pending(inode):
                why = f"{d.reason}; shut down by an earlier audit, still being verified"
                outcomes.append(Outcome(d, Action.CLOSE_FAILED, why, tuple(held), inode))
                continue
            shut = sum(shutdown_socket(fd, inode) for fd in held)
            detail = f"{d.reason}; shut down via dup of fd {held[0]}" if shut else d.reason
            if record is not None and target.abort(record):
                detail += "; pool aborted its transport"
            outcomes.append(None)  # filled in after the quick verification
            closing.append(Closing(d, inode, held, detail, now))
        else:
            outcomes.append(Outcome(d, Action.REPORTED, d.reason, _fds(d), _inode(d)))
    return outcomes, closing


def _fds(d: Decision) -> tuple[int, ...]:
    return tuple(dict.fromkeys(r.fd for r in d.sockets if r.fd is not None))


def _inode(d: Decision) -> int | None:
    if d.record is not None and d.record.socket is not None:
        return d.record.socket.inode
    return next((r.inode for r in d.sockets if r.inode is not None), None)


async def enforce(
    decisions: Sequence[Decision],
    target: Remedies,
    *,
    verifier: Verifier | None = None,
    quick_wait: float = VERIFY_QUICK,
) -> list[Outcome]:
    """Confirm each decision, act on it, and report what is known ``quick_wait`` seconds
    (default :data:`VERIFY_QUICK`, plus three loop turns) after the force-closes.

    A force-closed socket that an fd still holds then is ``close_failed``; its check goes
    on in ``verifier``'s background (a throwaway one when None: the verdict then reaches
    only the record) until ``VERIFY_WAIT`` after the shutdown. Decisions that no longer
    hold are dropped. Logs every action taken (see the module doc).
    """
    outcomes, closing = _act(decisions, target, verifier)
    index = {id(d): i for i, d in enumerate(decisions)}
    if closing:
        loop = asyncio.get_running_loop()
        left = await wait_gone(closing, loop.time() + quick_wait, poll=0.001)
        background = verifier
        for c in closing:
            d = c.decision
            still = left[c.inode]
            if still:
                why = (
                    f"{c.detail}; fd {', '.join(map(str, still))} still holds it "
                    f"(checked again in the background for up to {verify.VERIFY_WAIT:g} s; the "
                    "verdict comes in the next report)"
                )
                action = Action.CLOSE_FAILED
                if background is None:
                    background = Verifier(target.now)
                background.start(c)
            else:
                why, action = c.detail, Action.FORCE_CLOSED
                record_verdict(d.record, target.now(), True, "audit force-close: gone")
            outcomes[index[id(d)]] = Outcome(d, action, why, tuple(c.fds), c.inode)
    done = [o for o in outcomes if o is not None]
    for o in done:
        _log(o)
    return done


_LEVELS = {
    Action.FORCE_CLOSED: logging.WARNING,  # fixed, but a socket leaked: worth a look
    Action.CLOSE_FAILED: logging.WARNING,  # the background check logs ERROR if it stays
    Action.POISONED: logging.WARNING,
    Action.RETIRED: logging.INFO,  # housekeeping lag, fixed
}


def _log(o: Outcome) -> None:
    level = _LEVELS.get(o.action)
    if level is None:  # reported only: nothing was done; the report (and the pool) say it
        return
    d = o.decision
    record = d.record
    ident = record.socket if record is not None else None
    row = d.sockets[0] if d.sockets else None
    local = ident.local if ident else (row.local if row else None)
    remote = ident.remote if ident else (row.remote if row else None)
    line = describe(
        d.kind,
        o.action,
        key=record.key if record else None,
        record_id=record.id if record else None,
        fds=o.fds,
        inode=o.inode,
        local=local,
        remote=remote,
        detail=o.detail,
    )
    log.log(
        level,
        "guardedpool audit: %s",
        line,
        extra={
            "kind": d.kind.value,
            "action": o.action.value,
            "key": record.key if record else None,
            "conn_id": record.id if record else None,
            "fd": o.fds[0] if o.fds else None,  # as the line says: "no fd" when none held it
            "fds": list(o.fds),
            "inode": o.inode,
        },
    )
