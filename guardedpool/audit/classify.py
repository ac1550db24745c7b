"""Records x OS sockets x now -> decisions. Pure: no I/O, no await, no clock of its own.

The auditor (:mod:`.auditor`) gathers the inputs and acts on the output; everything in
between is here, so each rule is a line a reader can check and a row in a table test.

Joining: a row with an inode belongs to the record whose socket has that inode (inodes are
never reused while a socket exists, unlike fd numbers). A row without one (psutil, lsof)
belongs to the record with the same (local, remote) pair -- a TCP 4-tuple names one
connection at a time; its fd is not a key because psutil shows one fd of a dup'd socket.
Live records claim rows before retired ones, so a reused inode or 4-tuple counts as the
live connection's.

The rules, per record (at most one of straggler / half_open / overdue, plus leak_suspect):
  * straggler: retired (graveyard, or state CLOSED, or CLOSING for longer than
    ``close_timeout + CLOSING_SLACK``) for at least ``STRAGGLER_GRACE`` s, and the OS still
    holds its socket -> force-close (if ``force_close_stragglers``) else report.
  * half_open: IDLE or IN_USE, and the OS has no socket for it or shows a state other than
    ESTABLISHED -> poison. An unknown state (None) is no evidence either way.
  * overdue: IDLE past ``last_used_at + idle_timeout`` or ``expires_at`` by more than two
    housekeeping intervals (normal housekeeping lag) -> retire.
  * leak_suspect: IN_USE by a borrower for ``leak_threshold`` s or more, and not declared
    a long hold (the rule is :func:`guardedpool.leaks.leak_suspect`) -> report.
  * orphan: a TCP row no record owns whose peer is a pooled endpoint -> close (if
    ``close_orphans``) else report. A connect attempt in flight (an OPENING record with
    ``attempt_at`` set and no socket identity yet, or another pool's, see
    :class:`Connecting`) owns a socket the pool cannot name yet, indistinguishable from an
    orphan, so a candidate it could own is deferred (counted, not reported) instead. It
    could own it only if it started before the candidate was first seen, and only for
    :func:`connect_bound` s after that: an attempt ends (its socket closed) within
    ``connect_timeout + CONNECT_BACKSTOP``. So a candidate is deferred at most that long
    plus :data:`CONNECT_SLACK`, and not at all once the attempts that were in flight when
    it was first seen are over, however many start later. Records waiting for a connect
    permit or sleeping in backoff between attempts hold no socket and defer nothing.
OPENING and (recently) CLOSING records are in flux: they own their rows, nothing more.
Non-TCP rows (UNIX, UDP, or not inspected) never produce a finding.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence, Set
from dataclasses import dataclass, field

from ..config import PoolConfig
from ..leaks import leak_suspect, suspect_reason
from ..reconnect import CONNECT_BACKSTOP
from ..records import ConnectionRecord, ConnState, SocketIdentity
from .rows import Address, OsSocket, normalize_address, quiet_row

__all__ = [
    "CLOSING_SLACK",
    "CONNECT_SLACK",
    "STRAGGLER_GRACE",
    "Candidate",
    "Classification",
    "Connecting",
    "Decision",
    "Kind",
    "Plan",
    "classify",
    "connect_bound",
]

STRAGGLER_GRACE = 0.5
"""Seconds after close before a socket still held counts as a straggler: an aborted
transport releases its fd from a loop callback, a moment after the pool marks it closed."""

CLOSING_SLACK = 2.0
"""Seconds beyond ``close_timeout`` a close may take (the pool's verify waits) before a
record stuck in CLOSING is judged as retired."""

CONNECT_SLACK = 2.0
"""Seconds beyond ``connect_timeout + CONNECT_BACKSTOP`` a connect attempt's socket may
still be seen: a late timer on a busy event loop, and the aborted transport's close on a
later loop turn."""

Candidate = int | tuple[Address, Address]
"""An orphan candidate's name across audits: its inode, or (local, remote) for a row
without one (psutil, lsof)."""

_OPEN_OK = frozenset({"ESTABLISHED", "UNKNOWN"})
_IDLE, _IN_USE = ConnState.IDLE, ConnState.IN_USE  # guardedpool/fastpath.py, trick 1
_NO_QUIET: Mapping[int, int] = {}


class Kind(enum.Enum):
    STRAGGLER = "straggler"
    HALF_OPEN = "half_open"
    ORPHAN = "orphan"
    LEAK_SUSPECT = "leak_suspect"
    OVERDUE = "overdue"


class Plan(enum.Enum):
    """What the auditor should do; it confirms against the OS before it acts."""

    FORCE_CLOSE = "force_close"
    POISON = "poison"
    RETIRE = "retire"
    REPORT = "report"


@dataclass(frozen=True, slots=True)
class Decision:
    """One finding before any action: what, about which record and which OS rows, why.

    ``sockets`` are every row of the socket (a dup'd socket has one per fd; empty when the
    socket is gone). ``due_at`` is when the connection should have been closed (overdue)
    or was closed (straggler), or when borrowing became suspect (leak), in the target's
    monotonic clock.
    """

    kind: Kind
    plan: Plan
    record: ConnectionRecord | None
    sockets: tuple[OsSocket, ...]
    reason: str
    due_at: float | None = None
    record_state: ConnState | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        # The state the verdict was reached on; acting on it (poison, retire) changes it.
        if self.record is not None:
            object.__setattr__(self, "record_state", self.record.state)

    @property
    def os_state(self) -> str | None:
        return next((s.state for s in self.sockets if s.state is not None), None)


@dataclass(frozen=True, slots=True)
class Connecting:
    """Connect attempts in flight of one pool: ``since`` is when the earliest of them
    started, in the auditing pool's clock (s); ``bound`` how long (s) after that any of
    them can still hold a socket the pool has not recorded (:func:`connect_bound` of that
    pool's config)."""

    since: float
    bound: float


def connect_bound(config: PoolConfig) -> float:
    """Seconds a connect attempt can hold a socket no record names yet:
    ``connect_timeout + CONNECT_BACKSTOP + CONNECT_SLACK`` (15 + 1 + 2 by default). The
    attempt is bounded by ``connect_timeout`` (the connector's contract) and cancelled
    by the pool at ``CONNECT_BACKSTOP`` past it (:mod:`guardedpool.reconnect`)."""
    return config.connect_timeout + CONNECT_BACKSTOP + CONNECT_SLACK


@dataclass(frozen=True, slots=True)
class Classification:
    """The decisions; ``deferred``: orphan decisions held back this time (a connect in
    flight could own their sockets); ``seen``: every orphan candidate of this look
    (deferred or not) -> when it was first seen, to pass back as ``first_seen`` next time.
    """

    decisions: tuple[Decision, ...]
    deferred: tuple[Decision, ...] = ()
    seen: Mapping[Candidate, float] = field(default_factory=dict)

    @property
    def orphans_deferred(self) -> int:
        return len(self.deferred)


class _Index:
    """Rows by inode and by address pair; claiming a socket removes its rows, so whatever
    is left at the end is owned by no record (orphan candidates)."""

    def __init__(self, rows: Iterable[OsSocket], quiet: Mapping[int, int]) -> None:
        self.by_inode: dict[int, list[OsSocket]] = {}
        self.by_pair: dict[tuple[Address, Address], list[OsSocket]] = {}
        self.quiet = dict(quiet)
        for row in rows:
            if not row.is_tcp:
                continue
            if row.inode is not None:
                self.by_inode.setdefault(row.inode, []).append(row)
            elif row.local is not None and row.remote is not None:
                self.by_pair.setdefault((row.local, row.remote), []).append(row)

    def claim(self, ident: SocketIdentity) -> list[OsSocket]:
        fd = self.quiet.pop(ident.inode, None)
        if fd is not None:
            return [self.quiet_row(ident, fd)]
        rows = self.by_inode.pop(ident.inode, [])
        if self.by_pair:
            rows += self.by_pair.pop((ident.local, ident.remote), [])
        return rows

    @staticmethod
    def quiet_row(ident: SocketIdentity, fd: int) -> OsSocket:
        return quiet_row(ident.inode, fd, "inet6" if ":" in ident.local[0] else "inet")

    def unclaimed(self) -> Iterable[list[OsSocket]]:
        yield from self.by_inode.values()
        yield from self.by_pair.values()


def _retired_since(record: ConnectionRecord, now: float, config: PoolConfig) -> float | None:
    """Since when the record's socket should be gone, or None while its close is in flux."""
    if record.state is ConnState.CLOSING:
        started = record.retired_at if record.retired_at is not None else record.created_at
        stuck_at = started + config.close_timeout + CLOSING_SLACK
        return stuck_at if now >= stuck_at else None
    # CLOSED, or any other state on a record the target calls retired.
    for at in (record.closed_at, record.retired_at):
        if at is not None:
            return at
    return record.created_at


def _open_findings(
    record: ConnectionRecord, rows: Sequence[OsSocket], now: float, config: PoolConfig
) -> list[Decision]:
    """Findings for a record the pool calls open (IDLE or IN_USE)."""
    out: list[Decision] = []
    bad = sorted({r.state for r in rows if r.state is not None and r.state not in _OPEN_OK})
    if not rows:
        out.append(Decision(Kind.HALF_OPEN, Plan.POISON, record, (), "socket gone"))
    elif bad:
        reason = f"OS state {bad[0]}"
        out.append(Decision(Kind.HALF_OPEN, Plan.POISON, record, tuple(rows), reason))
    elif record.state is ConnState.IDLE:
        idle_due = record.last_used_at + config.idle_timeout
        due = min(idle_due, record.expires_at)
        if now >= due + 2 * config.housekeeping_interval:
            why = "idle_timeout" if idle_due <= record.expires_at else "max_lifetime"
            reason = f"past its {why} by {now - due:.1f} s"
            out.append(Decision(Kind.OVERDUE, Plan.RETIRE, record, tuple(rows), reason, due))
    if leak_suspect(record, now, config):
        reason, due = suspect_reason(record, now, config)
        out.append(Decision(Kind.LEAK_SUSPECT, Plan.REPORT, record, tuple(rows), reason, due))
    return out


def _orphans(
    index: _Index, endpoints: Set[Address], close: bool, foreign: Set[int]
) -> list[tuple[Candidate, Decision]]:
    wanted = {normalize_address(e) for e in endpoints}
    plan = Plan.FORCE_CLOSE if close else Plan.REPORT
    out: list[tuple[Candidate, Decision]] = []
    for rows in index.unclaimed():
        # by_inode groups a dup'd socket's fds; by_pair rows are one socket each way.
        hits = [
            r
            for r in rows
            if r.remote is not None
            and normalize_address(r.remote) in wanted
            and r.inode not in foreign
        ]
        if hits:
            first = hits[0]
            name: Candidate
            if first.inode is not None:
                name = first.inode
            else:
                assert first.local is not None and first.remote is not None  # by_pair's key
                name = (first.local, first.remote)
            reason = "socket to a pooled endpoint that no record owns"
            out.append((name, Decision(Kind.ORPHAN, plan, None, tuple(hits), reason)))
    return out


def _could_own(seen_at: float, listed_at: float, connecting: Iterable[Connecting]) -> bool:
    """Whether an attempt in flight could own a candidate first seen at ``seen_at`` and
    listed again no earlier than ``listed_at``: one that started by then, whose bound has
    not passed since."""
    return any(c.since <= seen_at and listed_at - seen_at <= c.bound for c in connecting)


def _unsettled(
    records: Iterable[ConnectionRecord], quiet: dict[int, int], now: float, config: PoolConfig
) -> list[tuple[ConnectionRecord, int | None]]:
    """The records that need a look, in order, each with its quiet fd (None: not quiet);
    the common case is settled here, in one pass.

    Each record's socket takes its entry out of ``quiet`` (as claiming it would). A record
    is settled when the rules cannot find anything on it: it is open (IDLE or IN_USE), its
    socket is quiet (one of ours, ESTABLISHED, at one fd), it is not overdue, and it is
    not a leak suspect (the rule of :func:`guardedpool.leaks.leak_suspect`, written out:
    ``tests/unit/test_audit_fastpath.py`` holds the two against each other). At 10,000
    connections this pass is most of classification, and its cost is reading the
    records: one dict operation and the fewest attributes per record.
    """
    out: list[tuple[ConnectionRecord, int | None]] = []
    pop = quiet.pop
    idle_timeout = config.idle_timeout
    lag = 2 * config.housekeeping_interval
    leak = config.leak_threshold
    # The comparisons are the rules' own, negated, term by term (the same float sums).
    for record in records:
        ident = record.socket
        if ident is not None:
            fd = pop(ident.inode, None)
            if fd is not None:
                state = record.state
                if state is _IN_USE:
                    if (
                        record.long_hold
                        or record.borrowed_by is None
                        or now - record.borrowed_at < leak
                    ):
                        continue
                elif (
                    state is _IDLE
                    and now < record.last_used_at + idle_timeout + lag
                    and now < record.expires_at + lag
                ):
                    continue
            out.append((record, fd))
        else:
            out.append((record, None))
    return out


def classify(
    live_records: Iterable[ConnectionRecord],
    graveyard_records: Iterable[ConnectionRecord],
    os_sockets: Iterable[OsSocket],
    endpoints: Set[Address],
    now: float,
    config: PoolConfig,
    *,
    quiet: Mapping[int, int] = _NO_QUIET,
    foreign: Set[int] = frozenset(),
    connecting: Iterable[Connecting] = (),
    first_seen: Mapping[Candidate, float] | None = None,
    listed_at: float | None = None,
) -> Classification:
    """Decide every finding; see the module docstring for the rules.

    ``quiet`` (from a procfs scan) maps inode -> fd for the pool's sockets that are
    ESTABLISHED at a single fd; they count as rows. Records on such a socket that are
    open and neither overdue nor leaking are settled in one lean pass first
    (``_unsettled``), because at 10,000 connections this function's cost is the event
    loop's longest stall; only the rest take the full look.

    ``foreign``: inodes owned by other pools in this process (never orphans of this one);
    ``connecting``: connect attempts in flight that ``live_records`` may not show (one
    :class:`Connecting` per pool): other pools', and this pool's as the OS was listed
    (an attempt that ended during a slow scan still owned the socket the listing saw);
    they defer orphans like the attempts of ``live_records`` do.

    ``first_seen``: the ``seen`` of the previous look (candidate -> when first seen, in
    ``now``'s clock); a candidate not in it is first seen ``now``. ``listed_at``: when the
    OS listing of this look started (default ``now``), so a slow scan never makes a
    candidate look older than it is. The deferral rule is in the module docstring.
    """
    index = _Index(os_sockets, quiet)
    decisions: list[Decision] = []
    earliest: float | None = None  # our earliest connect attempt in flight
    settled: list[tuple[ConnectionRecord, list[OsSocket], float | None]] = []
    for record, fd in _unsettled(live_records, index.quiet, now, config):
        ident = record.socket
        if ident is None:
            at = record.attempt_at
            if at is not None and record.state is ConnState.OPENING:
                earliest = at if earliest is None or at < earliest else earliest
            continue
        state = record.state
        # every record owns its rows, in flux or not
        rows = [index.quiet_row(ident, fd)] if fd is not None else index.claim(ident)
        if state is ConnState.IDLE or state is ConnState.IN_USE:
            decisions.extend(_open_findings(record, rows, now, config))
        elif state is not ConnState.OPENING:
            settled.append((record, rows, _retired_since(record, now, config)))
    for record in graveyard_records:
        if record.socket is not None:
            rows = index.claim(record.socket)
            settled.append((record, rows, _retired_since(record, now, config)))
    policy = config.audit
    plan = Plan.FORCE_CLOSE if policy.force_close_stragglers else Plan.REPORT
    for record, rows, since in settled:
        if rows and since is not None and now - since >= STRAGGLER_GRACE:
            why = f"retired ({record.state.value}) {now - since:.1f} s ago, socket still open"
            decisions.append(Decision(Kind.STRAGGLER, plan, record, tuple(rows), why, since))
    orphans = _orphans(index, endpoints, policy.close_orphans, foreign)
    if not orphans:
        return Classification(tuple(decisions))
    attempts = list(connecting)
    if earliest is not None:
        attempts.append(Connecting(earliest, connect_bound(config)))
    before = first_seen or {}
    listed = now if listed_at is None else listed_at
    seen: dict[Candidate, float] = {}
    deferred: list[Decision] = []
    for name, decision in orphans:
        at = seen[name] = before.get(name, now)
        if attempts and _could_own(at, listed, attempts):
            deferred.append(decision)
        else:
            decisions.append(decision)
    return Classification(tuple(decisions), tuple(deferred), seen)
