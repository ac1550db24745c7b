"""The audit's I/O edge: gather the pool's books and the OS view, classify, act, report.

``run_audit`` is what ``pool.audit()`` calls. The pool is reached only through the small
:class:`AuditTarget` protocol below (the pool's own is the adapter
:class:`~guardedpool.audit.target.PoolTarget`), so the auditor can be tested with any object
that keeps records for real sockets, and the pool never needs to know how the OS is read.
"""

from __future__ import annotations

import logging
import operator
import time
import weakref
from collections.abc import Callable, Mapping, Sequence, Set
from typing import Protocol

from ..config import PoolConfig
from ..leaks import Borrow
from ..records import ConnectionRecord, LifecycleEvent, SocketIdentity
from .classify import Candidate, Connecting, Kind, classify
from .enforce import Outcome, enforce
from .report import Action, AuditReport, Finding
from .rows import Address
from .scan import Backend, InodeCache, resolve_backend, scan
from .verify import Verifier

__all__ = ["AuditTarget", "log_finding", "run_audit"]

log = logging.getLogger("guardedpool.audit")

_SOCKET: Callable[[ConnectionRecord], SocketIdentity | None] = operator.attrgetter("socket")

_ORDER = {
    k: i
    for i, k in enumerate(
        (Kind.STRAGGLER, Kind.HALF_OPEN, Kind.OVERDUE, Kind.LEAK_SUSPECT, Kind.ORPHAN)
    )
}


class AuditTarget(Protocol):
    """What the auditor needs from a pool. Every method is synchronous and cheap.

    * ``now``: the pool's monotonic clock (records' times are in it).
    * ``records``: live records: OPENING, IDLE, IN_USE and CLOSING.
    * ``graveyard``: retired records whose close finished (CLOSED), kept for a while
      so an audit can check their sockets really left the process.
    * ``endpoints``: the (ip, port) pairs the pool connects to, resolved.
    * ``poison``: the record is half-open: take it out of service (an idle one now,
      one in use when it comes back) so it is replaced.
    * ``retire``: the record is overdue: retire it now (if still idle).
    * ``abort``: abort the record's transport if the pool still holds its connection;
      False if it does not.
    * ``foreign``: the socket inodes other pools of this process own (two pools to one
      server are not each other's orphans), and their connect attempts in flight, one
      :class:`~guardedpool.audit.classify.Connecting` per pool that has any, in this
      target's clock.
    * ``connecting``: this target's own connect attempts in flight, as a ``Connecting``
      (None: none). Asked right before the OS is listed, so an attempt that ends during a
      slow scan (psutil, lsof) still covers the socket the listing saw.
    """

    @property
    def config(self) -> PoolConfig: ...

    def now(self) -> float: ...
    def records(self) -> Sequence[ConnectionRecord]: ...
    def graveyard(self) -> Sequence[ConnectionRecord]: ...
    def endpoints(self) -> Set[Address]: ...
    def poison(self, record: ConnectionRecord) -> None: ...
    def retire(self, record: ConnectionRecord) -> None: ...
    def abort(self, record: ConnectionRecord) -> bool: ...
    def foreign(self) -> tuple[frozenset[int], tuple[Connecting, ...]]: ...
    def connecting(self) -> Connecting | None: ...


async def run_audit(target: AuditTarget, *, backend: Backend | None = None) -> AuditReport:
    """Audit ``target`` against the OS once; act on what is found; return the report.

    ``backend`` overrides ``target.config.audit.backend``. Bounded: the scan by
    :data:`~guardedpool.audit.scan.SCAN_TIMEOUT` (psutil, lsof; procfs is one pass over
    the fd table, in chunks that give the event loop a turn), force-close verification by
    :data:`~guardedpool.audit.verify.VERIFY_QUICK` (a few ms; the rest of it runs in the
    background and comes in the next report of the same ``target`` object). At the fd
    limit it still answers (see :func:`~guardedpool.audit.scan.scan`). Raises
    :class:`~guardedpool.audit.scan.ScanError`, and nothing else, when the OS view cannot
    be read.

    Orphan candidates deferred because a connect was in flight are looked at again by the
    next audit of the same ``target`` object, which remembers when it first saw each one
    (weakly keyed, like the verifier): one is reported once no attempt in flight could
    own it (see :mod:`.classify`), at the latest ``connect_bound(config)`` s after it was
    first seen.
    """
    started = time.perf_counter()
    checked_at = time.time()
    config = target.config
    chosen = backend or resolve_backend(config.audit.backend)
    verifier = _verifier_of(target)  # issue 12 §5
    try:
        endpoints = frozenset(target.endpoints())
        missed: tuple[str, ...] = ()
    except OSError as exc:  # resolving needs fds too: at the fd limit, audit the rest
        endpoints, missed = frozenset(), (f"orphans not looked for: endpoints failed: {exc}",)
    known = [
        ident
        for group in (target.records(), target.graveyard())
        for ident in map(_SOCKET, group)
        if ident is not None
    ]
    ours = target.connecting()  # attempts in flight as the OS is listed
    listed_at = target.now()
    view = await scan(chosen, known, endpoints, inodes=_inodes_of(target).inodes(known))
    # From here to the actions nothing awaits: the records cannot change under the verdict.
    live = list(target.records())
    grave = list(target.graveyard())
    now = target.now()
    wall = time.time() - now  # add to a monotonic record time to get wall-clock
    foreign, connecting = target.foreign()
    if ours is not None:
        connecting += (ours,)
    verdict = classify(
        live,
        grave,
        view.sockets,
        endpoints,
        now,
        config,
        quiet=view.quiet,
        foreign=foreign,
        connecting=connecting,
        first_seen=_seen_of(target),
        listed_at=listed_at,
    )
    if not missed:  # with no endpoints no candidate was looked for: keep what was seen
        _remember(target, verdict.seen)
    outcomes = await enforce(verdict.decisions, target, verifier=verifier)
    findings = sorted((_finding(o, wall) for o in outcomes), key=lambda f: _ORDER[f.kind])
    for finding in findings:
        # What the audit did is logged where it was done (enforce); what it only reports
        # (leak suspects with their borrower, orphans, stragglers left alone) is logged
        # here: one line per finding either way.
        if finding.action is Action.REPORTED:
            log_finding(finding)
    return AuditReport(
        checked_at=checked_at,
        duration=time.perf_counter() - started,
        backend=view.backend,
        fds_used=view.fds_used,
        fd_limit=view.fd_limit,
        fd_usage_unhealthy=config.audit.fd_usage_unhealthy,
        records_checked=len(live) + len(grave),
        sockets_seen=sum(1 for s in view.sockets if s.is_tcp) + len(view.quiet),
        findings=tuple(findings),
        orphans_deferred=verdict.orphans_deferred,
        notes=view.notes + missed,
        fd_exhausted=view.fd_exhausted,
        verifications=verifier.collect(),
    )


# Issue 12 §5: force-close verdicts that come after a report wait for the next report of
# the same target; the state lives here, weakly keyed, so the target needs no field for it.
_VERIFIERS: weakref.WeakKeyDictionary[AuditTarget, Verifier] = weakref.WeakKeyDictionary()


# The inodes of a target's sockets, rebuilt only when its socket identities change.
_INODES: weakref.WeakKeyDictionary[AuditTarget, InodeCache] = weakref.WeakKeyDictionary()


# Orphan candidates of a target's last audit -> when first seen (its clock); only the
# candidates of the last audit, so a socket gone is forgotten.
_SEEN: weakref.WeakKeyDictionary[AuditTarget, Mapping[Candidate, float]] = (
    weakref.WeakKeyDictionary()
)


def _seen_of(target: AuditTarget) -> Mapping[Candidate, float] | None:
    try:
        return _SEEN.get(target)
    except TypeError:  # not hashable or not weakly referable
        return None


def _remember(target: AuditTarget, seen: Mapping[Candidate, float]) -> None:
    try:
        if seen:
            _SEEN[target] = seen
        else:
            _SEEN.pop(target, None)
    except TypeError:  # not hashable or weakly referable: each audit sees every one anew
        pass


def _inodes_of(target: AuditTarget) -> InodeCache:
    try:
        cache = _INODES.get(target)
        if cache is None:
            cache = _INODES[target] = InodeCache()
    except TypeError:  # not hashable or not weakly referable: a fresh set each audit
        cache = InodeCache()
    return cache


def _verifier_of(target: AuditTarget) -> Verifier:
    try:
        verifier = _VERIFIERS.get(target)
        if verifier is None:
            verifier = _VERIFIERS[target] = Verifier(target.now)
    except TypeError:  # not hashable or not weakly referable: verdicts reach records only
        verifier = Verifier(target.now)
    return verifier


def _wall(t: float | None, offset: float) -> float | None:
    return None if t is None else t + offset


def _finding(o: Outcome, offset: float) -> Finding:
    d = o.decision
    record = d.record
    ident = record.socket if record is not None else None
    row = d.sockets[0] if d.sockets else None
    borrower: Borrow | None = record.borrower if d.kind is Kind.LEAK_SUSPECT and record else None
    return Finding(
        kind=d.kind,
        action=o.action,
        key=record.key if record else None,
        record_id=record.id if record else None,
        fd=o.fds[0] if o.fds else (ident.fd if ident else None),
        fds=o.fds,
        inode=o.inode,
        local=ident.local if ident else (row.local if row else None),
        remote=ident.remote if ident else (row.remote if row else None),
        os_state=d.os_state,
        record_state=d.record_state.value if d.record_state else None,
        opened_at=_wall(record.created_at, offset) if record else None,
        retired_at=_wall(record.retired_at, offset) if record else None,
        should_have_closed_at=_wall(d.due_at, offset),
        detail=o.detail,
        history=tuple(LifecycleEvent(e.at + offset, e.event, e.detail) for e in record.history)
        if record
        else (),
        task=borrower.task if borrower else None,
        borrowed_at=_wall(borrower.since, offset) if borrower else None,
        stack=borrower.stack if borrower else (),
    )


def _addr(address: Address | None) -> str:
    return "?" if address is None else f"{address[0]}:{address[1]}"


def log_finding(finding: Finding) -> None:
    """One WARNING per finding, saying what, where, which fd and what was done.

    For example ``guardedpool: audit finding straggler on key 'alice' connection 7, fd 12
    (127.0.0.1:40312 -> 127.0.0.1:143): force_closed (retired (closed) 1.2 s ago, socket
    still open)``. ``extra=``: ``finding`` (the whole ``to_dict()``), ``kind``, ``action``,
    ``key``, ``conn_id``, ``fd``, and for a leak suspect ``task`` and ``acquired_at``.
    """
    where = (
        f"on key {finding.key!r} connection {finding.record_id}"
        if finding.key is not None
        else "on a socket no record owns"
    )
    fd = "no fd (the socket is gone)" if finding.fd is None else f"fd {finding.fd}"
    borrower = ""
    if finding.task is not None:
        site = f", acquired at {finding.stack[0]}" if finding.stack else ""
        borrower = f"; borrower task {finding.task!r}{site}"
    log.warning(
        "guardedpool: audit finding %s %s, %s (%s -> %s): %s (%s)%s",
        finding.kind.value,
        where,
        fd,
        _addr(finding.local),
        _addr(finding.remote),
        finding.action.value,
        finding.detail,
        borrower,
        extra={
            "finding": finding.to_dict(),
            "kind": finding.kind.value,
            "action": finding.action.value,
            "key": finding.key,
            "conn_id": finding.record_id,
            "fd": finding.fd,
            "task": finding.task,
            "acquired_at": finding.stack[0] if finding.stack else None,
        },
    )
