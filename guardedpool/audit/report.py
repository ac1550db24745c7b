"""What an audit found and did, as frozen data: ``to_dict()`` for JSON, ``str()`` for people.

Times in a report are wall-clock (``time.time()``) seconds, converted from the pool's
monotonic record times, because a report is read next to logs and dashboards. Nothing here
can hold a credential: records carry keys (inbox ids), addresses and history, never an
account.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ..records import LifecycleEvent
from .classify import Kind
from .rows import Address

__all__ = ["Action", "AuditReport", "Finding", "Verification", "describe"]


class Action(enum.Enum):
    FORCE_CLOSED = "force_closed"  # shut down, and verified gone from the process
    CLOSE_FAILED = "close_failed"  # shut down (or tried), but an fd still holds it
    POISONED = "poisoned"  # the pool will replace the connection
    RETIRED = "retired"  # the pool retired the connection now
    REPORTED = "reported"  # nothing done: look at it


def _addr(addr: Address | None) -> str | None:
    if addr is None:
        return None
    return f"[{addr[0]}]:{addr[1]}" if ":" in addr[0] else f"{addr[0]}:{addr[1]}"


def describe(
    kind: Kind,
    action: Action,
    *,
    key: str | None,
    record_id: int | None,
    fds: tuple[int, ...],
    inode: int | None,
    local: Address | None,
    remote: Address | None,
    detail: str,
) -> str:
    """One self-explaining line: what was found, where, and what was done about it.

    ``straggler conn 12 key 'alice' fd 14 inode 5678 127.0.0.1:40158 -> 127.0.0.1:993:
    force_closed (retired 3.2 s ago, the OS still holds it; shut down via dup of fd 14)``.
    The same facts, under stable names, are in :meth:`Finding.log_fields`.
    """
    who = f"conn {record_id} key {key!r}" if record_id is not None else "no record"
    where = f"fd {','.join(map(str, fds))}" if fds else "no fd"
    if inode is not None:
        where += f" inode {inode}"
    if local is not None or remote is not None:
        where += f" {_addr(local) or '?'} -> {_addr(remote) or '?'}"
    return f"{kind.value} {who} {where}: {action.value} ({detail})"


@dataclass(frozen=True, slots=True)
class Finding:
    """One socket or connection that does not match the pool's books, and what was done.

    ``record_id``/``key``/``record_state`` are None for an orphan (no record owns it).
    ``fd`` is the first fd that held the socket, ``fds`` all of them (a dup'd leak shows up
    as more than one). ``opened_at``/``retired_at``/``should_have_closed_at``/``borrowed_at``
    are wall-clock seconds. ``history`` is the record's recent lifecycle (wall-clock ``at``);
    ``task``/``stack`` name the borrower of a leak suspect.
    """

    kind: Kind
    action: Action
    key: str | None
    record_id: int | None
    fd: int | None
    fds: tuple[int, ...]
    inode: int | None
    local: Address | None
    remote: Address | None
    os_state: str | None
    record_state: str | None
    opened_at: float | None
    retired_at: float | None
    should_have_closed_at: float | None
    detail: str
    history: tuple[LifecycleEvent, ...] = ()
    task: str | None = None
    borrowed_at: float | None = None
    stack: tuple[str, ...] = ()

    def summary(self) -> str:
        """The finding as one line that reads on its own (see :func:`describe`)."""
        return describe(
            self.kind,
            self.action,
            key=self.key,
            record_id=self.record_id,
            fds=self.fds or ((self.fd,) if self.fd is not None else ()),
            inode=self.inode,
            local=self.local,
            remote=self.remote,
            detail=self.detail,
        )

    def log_fields(self) -> dict[str, Any]:
        """The ``extra=`` fields of a log line about this finding, under stable names:
        ``kind``, ``action``, ``key``, ``conn_id``, ``fd``, ``fds``, ``inode``, and the
        whole finding as ``finding`` (:meth:`to_dict`)."""
        return {
            "kind": self.kind.value,
            "action": self.action.value,
            "key": self.key,
            "conn_id": self.record_id,
            "fd": self.fd,
            "fds": list(self.fds),
            "inode": self.inode,
            "finding": self.to_dict(),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "action": self.action.value,
            "key": self.key,
            "record_id": self.record_id,
            "fd": self.fd,
            "fds": list(self.fds),
            "inode": self.inode,
            "local": _addr(self.local),
            "remote": _addr(self.remote),
            "os_state": self.os_state,
            "record_state": self.record_state,
            "opened_at": self.opened_at,
            "retired_at": self.retired_at,
            "should_have_closed_at": self.should_have_closed_at,
            "detail": self.detail,
            "history": [e.to_dict() for e in self.history],
            "task": self.task,
            "borrowed_at": self.borrowed_at,
            "stack": list(self.stack),
        }


@dataclass(frozen=True, slots=True)
class Verification:
    """How a force-close turned out, when that was not known yet as its report went out.

    An audit waits only a few ms for a shut-down socket to leave the process and reports
    ``close_failed`` while an fd still holds it; the check goes on in the background (up
    to 0.5 s after the shutdown) and its verdict comes in the target's next report.
    ``action`` is the verdict: ``force_closed`` (gone ``after`` seconds after the shutdown)
    or ``close_failed`` (``still`` lists the fds holding it then). ``finished_at`` is
    wall-clock seconds. ``key``/``record_id`` are None for an orphan.
    """

    kind: Kind
    action: Action
    key: str | None
    record_id: int | None
    inode: int
    fds: tuple[int, ...]
    still: tuple[int, ...]
    after: float
    finished_at: float
    detail: str

    def summary(self) -> str:
        who = f"conn {self.record_id} key {self.key!r}" if self.record_id is not None else "orphan"
        fds = ",".join(map(str, self.fds)) or "-"
        return (
            f"{self.kind.value} {who} fd {fds} inode {self.inode}: {self.action.value} "
            f"({self.detail})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "action": self.action.value,
            "key": self.key,
            "record_id": self.record_id,
            "inode": self.inode,
            "fds": list(self.fds),
            "still": list(self.still),
            "after": self.after,
            "finished_at": self.finished_at,
            "detail": self.detail,
        }


def _counts(findings: tuple[Finding, ...]) -> Mapping[str, int]:
    counts = {kind.value: 0 for kind in Kind}
    for f in findings:
        counts[f.kind.value] += 1
    return MappingProxyType(counts)


@dataclass(frozen=True, slots=True)
class AuditReport:
    """The result of one audit.

    ``healthy`` is False when any of these holds, True otherwise:
      * a straggler is still open after the audit (its action is ``close_failed``, or
        ``reported`` because ``force_close_stragglers`` is off): an fd is still leaking;
      * there is any ``half_open``, ``orphan`` or ``leak_suspect`` finding, whatever was
        done about it (a poisoned or closed socket was still a fault worth a look);
      * the process uses more than ``fd_usage_unhealthy`` x its ``RLIMIT_NOFILE`` soft
        limit (``fds_used > share * fd_limit``; never with an unlimited limit);
      * no fd was left for the scan (``fd_exhausted``), whatever the share.
    ``overdue`` findings alone leave it healthy: the connection was retired and the only
    fault was housekeeping lag. ``orphans_deferred`` counts orphan candidates held back this
    time because a connect attempt in flight could own them (its socket looks like one
    until it is identified); the next audit of the same pool looks again, and reports one
    at the latest ``connect_bound`` s after it was first seen (see
    :mod:`guardedpool.audit.classify`).
    ``verifications`` finish what an earlier report of the same pool could not know yet:
    whether a socket it shut down left the process after all; they do not change health.

    Attributes:
        healthy: see above.
        checked_at: wall-clock time the audit started (``time.time()``).
        duration: seconds the audit took, scan and actions included.
        backend: the OS view used (``procfs``, ``psutil`` or ``lsof``).
        counts: findings per kind, every kind present (0 if none).
        fds_used: file descriptors the process holds.
        fd_limit: the ``RLIMIT_NOFILE`` soft limit (None: unlimited).
        fd_usage_unhealthy: the share of ``fd_limit`` above which the report is unhealthy.
        records_checked: live plus retired records held against the OS.
        sockets_seen: TCP sockets (rows) the OS view returned.
        findings: the findings, in order: stragglers, half-open, overdue, leaks, orphans.
        orphans_deferred: orphan candidates held back this time (a connect attempt in
            flight could own them); the next audit looks at them again.
        notes: what the audit could not look at, in words.
        fd_exhausted: the backend could not start because the process (``EMFILE``) or the
            system (``ENFILE``) had no fd left; the scan probed fd numbers instead (notes).
        verifications: background force-close checks finished since the last report.
    """

    checked_at: float
    duration: float
    backend: str
    fds_used: int
    fd_limit: int | None
    fd_usage_unhealthy: float
    records_checked: int
    sockets_seen: int
    findings: tuple[Finding, ...] = ()
    orphans_deferred: int = 0
    notes: tuple[str, ...] = ()
    fd_exhausted: bool = False
    verifications: tuple[Verification, ...] = ()
    counts: Mapping[str, int] = field(init=False)
    healthy: bool = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "counts", _counts(self.findings))
        object.__setattr__(self, "healthy", not self.problems())

    def problems(self) -> list[str]:
        """Why the report is unhealthy, one phrase per reason (empty when healthy)."""
        out: list[str] = []
        open_stragglers = sum(
            1
            for f in self.findings
            if f.kind is Kind.STRAGGLER and f.action is not Action.FORCE_CLOSED
        )
        if open_stragglers:
            out.append(f"{open_stragglers} straggler(s) still open")
        for kind in (Kind.HALF_OPEN, Kind.ORPHAN, Kind.LEAK_SUSPECT):
            if self.counts[kind.value]:
                out.append(f"{self.counts[kind.value]} {kind.value}")
        limit = self.fd_limit
        if self.fd_exhausted:
            out.append(f"no fd left (fds {self.fds_used}/{limit or 'unlimited'})")
        elif limit is not None and self.fds_used > self.fd_usage_unhealthy * limit:
            out.append(f"fds {self.fds_used} > {self.fd_usage_unhealthy:g} x limit {limit}")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "healthy": self.healthy,
            "problems": self.problems(),
            "checked_at": self.checked_at,
            "duration": self.duration,
            "backend": self.backend,
            "counts": dict(self.counts),
            "fds_used": self.fds_used,
            "fd_limit": self.fd_limit,
            "fd_usage_unhealthy": self.fd_usage_unhealthy,
            "records_checked": self.records_checked,
            "sockets_seen": self.sockets_seen,
            "orphans_deferred": self.orphans_deferred,
            "fd_exhausted": self.fd_exhausted,
            "notes": list(self.notes),
            "findings": [f.to_dict() for f in self.findings],
            "verifications": [v.to_dict() for v in self.verifications],
        }

    def __str__(self) -> str:
        verdict = "healthy" if self.healthy else "UNHEALTHY: " + "; ".join(self.problems())
        limit = "unlimited" if self.fd_limit is None else str(self.fd_limit)
        lines = [
            f"audit ({self.backend}, {self.duration * 1000:.1f} ms): {verdict}",
            f"  records {self.records_checked}, tcp sockets {self.sockets_seen}, "
            f"fds {self.fds_used}/{limit}, "
            + ", ".join(f"{k} {n}" for k, n in self.counts.items()),
        ]
        lines.extend(f"  note: {note}" for note in self.notes)
        lines.extend(f"  verified since last audit: {v.summary()}" for v in self.verifications)
        if not self.findings:
            return "\n".join(lines)
        header = ("kind", "action", "key", "id", "fds", "os/record state", "local -> remote")
        table = [header]
        for f in self.findings:
            table.append(
                (
                    f.kind.value,
                    f.action.value,
                    f.key or "-",
                    "-" if f.record_id is None else str(f.record_id),
                    ",".join(map(str, f.fds)) or "-",
                    f"{f.os_state or ('?' if f.fds else 'gone')}/{f.record_state or '-'}",
                    f"{_addr(f.local) or '?'} -> {_addr(f.remote) or '?'}",
                )
            )
        widths = [max(len(row[i]) for row in table) for i in range(len(header))]
        for row in table:
            lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
        for f in self.findings:
            lines.append(f"  {f.kind.value} {f.key or '-'}: {f.detail}")
        return "\n".join(lines)
