"""The audit's pure core: records x OS rows x now -> decisions. No sockets, no event loop."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest
from harness.configs import DEFAULTS, config
from hypothesis import given, settings
from hypothesis import strategies as st

from guardedpool.audit.classify import (
    CLOSING_SLACK,
    STRAGGLER_GRACE,
    Candidate,
    Classification,
    Connecting,
    Kind,
    Plan,
    classify,
    connect_bound,
)
from guardedpool.audit.rows import OsSocket
from guardedpool.config import PoolConfig
from guardedpool.records import ConnectionRecord, ConnState, SocketIdentity

CFG = config(
    DEFAULTS,
    idle_timeout=100.0,
    max_lifetime=1000.0,
    leak_threshold=30.0,
    close_timeout=5.0,
    housekeeping_interval=1.0,
)
ENDPOINT = ("127.0.0.1", 993)
ENDPOINTS = frozenset({ENDPOINT})
NOW = 500.0
_ports = itertools.count(40000)


def ident(inode: int, fd: int | None = None, port: int | None = None) -> SocketIdentity:
    return SocketIdentity(
        fd=inode if fd is None else fd,
        inode=inode,
        local=("127.0.0.1", next(_ports) if port is None else port),
        remote=ENDPOINT,
    )


def rec(
    state: ConnState,
    sock: SocketIdentity | None,
    *,
    used: float = NOW - 1,
    expires: float = NOW + 500,
    borrowed: float | None = None,
    retired: float | None = None,
    closed: float | None = None,
    attempt: float | None = None,
) -> ConnectionRecord:
    r = ConnectionRecord("inbox-1", created_at=0.0, expires_at=expires)
    r.state, r.socket, r.last_used_at = state, sock, used
    r.attempt_at = attempt
    r.retired_at, r.closed_at = retired, closed
    if borrowed is not None:
        r.borrowed_by, r.borrowed_at = "worker-1", borrowed
        r.borrowed_site = "worker.py:10 in sync"
    return r


def row(
    sock: SocketIdentity | None = None,
    *,
    state: str | None = "ESTABLISHED",
    fd: int | None = None,
    inode: int | None = -1,
    remote: tuple[str, int] | None = ENDPOINT,
    local: tuple[str, int] | None = None,
    family: str | None = "inet",
    type: str | None = "stream",
) -> OsSocket:
    """A row; with ``sock`` its inode/fd/addresses, ``inode=None`` for a psutil-style row."""
    if sock is not None:
        return OsSocket(
            fd=sock.fd if fd is None else fd,
            inode=sock.inode if inode == -1 else inode,
            family=family,
            type=type,
            local=sock.local,
            remote=sock.remote,
            state=state,
        )
    return OsSocket(
        fd=fd,
        inode=None if inode == -1 else inode,
        family=family,
        type=type,
        local=local or ("127.0.0.1", next(_ports)),
        remote=remote,
        state=state,
    )


@dataclass
class Case:
    live: Sequence[ConnectionRecord] = ()
    grave: Sequence[ConnectionRecord] = ()
    rows: Sequence[OsSocket] = ()
    quiet: dict[int, int] = field(default_factory=dict)
    config: PoolConfig = CFG
    now: float = NOW
    first_seen: dict[Candidate, float] = field(default_factory=dict)
    foreign_connecting: Sequence[Connecting] = ()
    listed_at: float | None = None

    def run(self) -> Classification:
        return classify(
            self.live,
            self.grave,
            self.rows,
            ENDPOINTS,
            self.now,
            self.config,
            quiet=self.quiet,
            connecting=self.foreign_connecting,
            first_seen=self.first_seen,
            listed_at=self.listed_at,
        )


def kinds(result: Classification) -> list[tuple[Kind, Plan]]:
    return [(d.kind, d.plan) for d in result.decisions]


S = {n: ident(n) for n in range(1, 20)}
IDLE, IN_USE, OPENING, CLOSING, CLOSED = (
    ConnState.IDLE,
    ConnState.IN_USE,
    ConnState.OPENING,
    ConnState.CLOSING,
    ConnState.CLOSED,
)
LONG_AGO = NOW - 60
NO_FORCE = config(
    DEFAULTS,
    idle_timeout=100.0,
    leak_threshold=30.0,
    audit=config(DEFAULTS.audit, force_close_stragglers=False),
)
CLOSE_ORPHANS = config(
    DEFAULTS, idle_timeout=100.0, audit=config(DEFAULTS.audit, close_orphans=True)
)

BOUND = connect_bound(CFG)

TABLE: dict[str, tuple[Case, list[tuple[Kind, Plan]]]] = {
    # healthy: nothing to say
    "idle, established row": (Case(live=[rec(IDLE, S[1])], rows=[row(S[1])]), []),
    "idle, quiet socket": (Case(live=[rec(IDLE, S[1])], quiet={1: 1}), []),
    "in use, fresh borrower": (
        Case(live=[rec(IN_USE, S[1], borrowed=NOW - 5)], quiet={1: 1}),
        [],
    ),
    "idle, state unknown": (Case(live=[rec(IDLE, S[1])], rows=[row(S[1], state=None)]), []),
    "psutil row matched by pair": (
        Case(live=[rec(IDLE, S[1])], rows=[row(S[1], inode=None)]),
        [],
    ),
    # half-open
    "idle, socket gone": (Case(live=[rec(IDLE, S[1])]), [(Kind.HALF_OPEN, Plan.POISON)]),
    "idle, CLOSE_WAIT": (
        Case(live=[rec(IDLE, S[1])], rows=[row(S[1], state="CLOSE_WAIT")]),
        [(Kind.HALF_OPEN, Plan.POISON)],
    ),
    "in use, CLOSE (after RST)": (
        Case(live=[rec(IN_USE, S[1], borrowed=NOW)], rows=[row(S[1], state="CLOSE")]),
        [(Kind.HALF_OPEN, Plan.POISON)],
    ),
    "idle, FIN_WAIT2 (someone shut it down)": (
        Case(live=[rec(IDLE, S[1])], rows=[row(S[1], state="FIN_WAIT2")]),
        [(Kind.HALF_OPEN, Plan.POISON)],
    ),
    "psutil: pair gone": (
        Case(live=[rec(IDLE, S[1])], rows=[row(inode=None, remote=("127.0.0.1", 994))]),
        [(Kind.HALF_OPEN, Plan.POISON)],
    ),
    # in flux
    "opening, no socket yet": (Case(live=[rec(OPENING, None)]), []),
    "opening, socket not listed yet": (Case(live=[rec(OPENING, S[1])]), []),
    "closing just now, still open": (
        Case(live=[rec(CLOSING, S[1], retired=NOW - 1)], rows=[row(S[1])]),
        [],
    ),
    # stragglers
    "closing for too long, still open": (
        Case(
            live=[rec(CLOSING, S[1], retired=NOW - CFG.close_timeout - CLOSING_SLACK - 1)],
            rows=[row(S[1])],
        ),
        [(Kind.STRAGGLER, Plan.FORCE_CLOSE)],
    ),
    "graveyard, still open": (
        Case(grave=[rec(CLOSED, S[1], closed=LONG_AGO)], rows=[row(S[1])]),
        [(Kind.STRAGGLER, Plan.FORCE_CLOSE)],
    ),
    "graveyard, still open, quiet": (
        Case(grave=[rec(CLOSED, S[1], closed=LONG_AGO)], quiet={1: 1}),
        [(Kind.STRAGGLER, Plan.FORCE_CLOSE)],
    ),
    "graveyard, still open in CLOSE state": (
        Case(grave=[rec(CLOSED, S[1], closed=LONG_AGO)], rows=[row(S[1], state="CLOSE")]),
        [(Kind.STRAGGLER, Plan.FORCE_CLOSE)],
    ),
    "graveyard, psutil pair still listed": (
        Case(grave=[rec(CLOSED, S[1], closed=LONG_AGO)], rows=[row(S[1], inode=None)]),
        [(Kind.STRAGGLER, Plan.FORCE_CLOSE)],
    ),
    "graveyard, just closed (grace)": (
        Case(grave=[rec(CLOSED, S[1], closed=NOW - STRAGGLER_GRACE / 2)], rows=[row(S[1])]),
        [],
    ),
    "graveyard, gone": (Case(grave=[rec(CLOSED, S[1], closed=LONG_AGO)]), []),
    "graveyard, reporting only": (
        Case(grave=[rec(CLOSED, S[1], closed=LONG_AGO)], rows=[row(S[1])], config=NO_FORCE),
        [(Kind.STRAGGLER, Plan.REPORT)],
    ),
    "graveyard inode now a live record's": (
        Case(
            live=[rec(IDLE, S[1])],
            grave=[rec(CLOSED, S[1], closed=LONG_AGO)],
            rows=[row(S[1])],
        ),
        [],
    ),
    "graveyard, dup'd at another fd": (
        Case(
            grave=[rec(CLOSED, S[1], closed=LONG_AGO)],
            rows=[row(S[1], fd=77), row(S[1], fd=78)],
        ),
        [(Kind.STRAGGLER, Plan.FORCE_CLOSE)],
    ),
    # orphans
    "unknown socket to the endpoint": (
        Case(rows=[row(inode=900)]),
        [(Kind.ORPHAN, Plan.REPORT)],
    ),
    "unknown socket to the endpoint, close_orphans": (
        Case(rows=[row(inode=900)], config=CLOSE_ORPHANS),
        [(Kind.ORPHAN, Plan.FORCE_CLOSE)],
    ),
    "psutil orphan": (Case(rows=[row(inode=None)]), [(Kind.ORPHAN, Plan.REPORT)]),
    "IPv4-mapped peer is the endpoint": (
        Case(rows=[row(inode=900, family="inet6", remote=("::ffff:127.0.0.1", 993))]),
        [(Kind.ORPHAN, Plan.REPORT)],
    ),
    "orphan while a connect is in flight": (
        Case(live=[rec(OPENING, None, attempt=NOW - 1)], rows=[row(inode=900)]),
        [],
    ),
    "orphan while a connect sleeps in backoff (no attempt)": (
        Case(live=[rec(OPENING, None)], rows=[row(inode=900)]),
        [(Kind.ORPHAN, Plan.REPORT)],
    ),
    "orphan seen before the attempt in flight started": (
        Case(
            live=[rec(OPENING, None, attempt=NOW - 1)],
            rows=[row(inode=900)],
            first_seen={900: NOW - 2},
        ),
        [(Kind.ORPHAN, Plan.REPORT)],
    ),
    "orphan seen since the attempt started, within its bound": (
        Case(
            live=[rec(OPENING, None, attempt=NOW - 5)],
            rows=[row(inode=900)],
            first_seen={900: NOW - 3},
        ),
        [],
    ),
    "orphan seen for longer than the connect bound (a hung attempt)": (
        Case(
            live=[rec(OPENING, None, attempt=NOW - 100)],
            rows=[row(inode=900)],
            first_seen={900: NOW - BOUND - 0.1},
        ),
        [(Kind.ORPHAN, Plan.REPORT)],
    ),
    "orphan seen for longer than the bound, but listed by a slow scan": (
        Case(
            live=[rec(OPENING, None, attempt=NOW - 100)],
            rows=[row(inode=900)],
            first_seen={900: NOW - BOUND - 0.1},
            listed_at=NOW - 1,
        ),
        [],
    ),
    "psutil orphan seen before the attempt started (by address pair)": (
        Case(
            live=[rec(OPENING, None, attempt=NOW - 1)],
            rows=[row(inode=None, local=("127.0.0.1", 30000))],
            first_seen={(("127.0.0.1", 30000), ENDPOINT): NOW - 2},
        ),
        [(Kind.ORPHAN, Plan.REPORT)],
    ),
    "orphan while another pool's connect is in flight": (
        Case(rows=[row(inode=900)], foreign_connecting=[Connecting(NOW - 1, BOUND)]),
        [],
    ),
    "orphan seen before another pool's attempt started": (
        Case(
            rows=[row(inode=900)],
            first_seen={900: NOW - 2},
            foreign_connecting=[Connecting(NOW - 1, BOUND)],
        ),
        [(Kind.ORPHAN, Plan.REPORT)],
    ),
    "orphan past another pool's shorter bound": (
        Case(
            rows=[row(inode=900)],
            first_seen={900: NOW - 5},
            foreign_connecting=[Connecting(NOW - 60, 4.0)],
        ),
        [(Kind.ORPHAN, Plan.REPORT)],
    ),
    "unknown socket to another port": (
        Case(rows=[row(inode=900, remote=("127.0.0.1", 994))]),
        [],
    ),
    "unknown socket to another host": (
        Case(rows=[row(inode=900, remote=("10.0.0.1", 993))]),
        [],
    ),
    "listening socket on the endpoint's port": (
        Case(rows=[row(inode=900, remote=None, local=ENDPOINT, state="LISTEN")]),
        [],
    ),
    "UDP socket to the endpoint": (Case(rows=[row(inode=900, type="dgram")]), []),
    "UNIX socket": (
        Case(rows=[row(inode=900, family="unix", local=None, remote=None, state=None)]),
        [],
    ),
    "socket not inspected": (
        Case(rows=[row(inode=900, family=None, type=None, local=None, remote=None)]),
        [],
    ),
    # leaks and overdue
    "in use past leak_threshold": (
        Case(live=[rec(IN_USE, S[1], borrowed=NOW - 31)], quiet={1: 1}),
        [(Kind.LEAK_SUSPECT, Plan.REPORT)],
    ),
    "in use past leak_threshold and half-open": (
        Case(live=[rec(IN_USE, S[1], borrowed=NOW - 31)], rows=[row(S[1], state="CLOSE_WAIT")]),
        [(Kind.HALF_OPEN, Plan.POISON), (Kind.LEAK_SUSPECT, Plan.REPORT)],
    ),
    "in use past its lifetime (not overdue: in use)": (
        Case(live=[rec(IN_USE, S[1], borrowed=NOW - 1, expires=NOW - 50)], quiet={1: 1}),
        [],
    ),
    "idle past idle_timeout": (
        Case(live=[rec(IDLE, S[1], used=NOW - 110)], quiet={1: 1}),
        [(Kind.OVERDUE, Plan.RETIRE)],
    ),
    "idle past its lifetime": (
        Case(live=[rec(IDLE, S[1], expires=NOW - 10)], rows=[row(S[1])]),
        [(Kind.OVERDUE, Plan.RETIRE)],
    ),
    "idle past idle_timeout within housekeeping lag": (
        Case(live=[rec(IDLE, S[1], used=NOW - 101)], quiet={1: 1}),
        [],
    ),
    "idle, overdue and gone: half-open wins": (
        Case(live=[rec(IDLE, S[1], used=NOW - 110)]),
        [(Kind.HALF_OPEN, Plan.POISON)],
    ),
}


@pytest.mark.parametrize("name", list(TABLE))
def test_table(name: str) -> None:
    case, want = TABLE[name]
    assert kinds(case.run()) == want


def test_dupd_straggler_is_one_decision_with_every_fd() -> None:
    (d,) = (
        Case(
            grave=[rec(CLOSED, S[1], closed=LONG_AGO)],
            rows=[row(S[1], fd=77), row(S[1], fd=78)],
        )
        .run()
        .decisions
    )
    assert sorted(r.fd for r in d.sockets if r.fd is not None) == [77, 78]
    assert d.due_at == LONG_AGO


def test_overdue_says_when_it_should_have_closed() -> None:
    (d,) = Case(live=[rec(IDLE, S[1], used=NOW - 110)], quiet={1: 1}).run().decisions
    assert d.due_at == NOW - 110 + CFG.idle_timeout
    assert "idle_timeout" in d.reason


def test_leak_suspect_carries_record_state_at_decision_time() -> None:
    r = rec(IN_USE, S[1], borrowed=NOW - 40)
    (d,) = Case(live=[r], quiet={1: 1}).run().decisions
    r.state = IDLE  # what acting on it may do; the decision remembers what it saw
    assert d.record_state is IN_USE
    assert d.due_at == NOW - 40 + CFG.leak_threshold


def test_deferred_orphans_are_counted() -> None:
    result = Case(
        live=[rec(OPENING, None, attempt=NOW - 1)], rows=[row(inode=900), row(inode=901)]
    ).run()
    assert result.decisions == ()
    assert result.orphans_deferred == 2


def test_connect_bound_is_connect_timeout_backstop_and_slack() -> None:
    assert connect_bound(config(DEFAULTS, connect_timeout=15.0)) == 15.0 + 1.0 + 2.0


def test_candidates_seen_are_remembered_from_their_first_sighting() -> None:
    result = Case(
        live=[rec(OPENING, None, attempt=NOW - 5)],
        rows=[row(inode=900), row(inode=901), row(inode=902, remote=("127.0.0.1", 994))],
        first_seen={900: NOW - 3, 777: NOW - 9},  # 777 is gone: forgotten
    ).run()
    assert result.seen == {900: NOW - 3, 901: NOW}
    assert result.orphans_deferred == 2  # both could still be the attempt's


def test_a_deferred_orphan_is_reported_once_the_bound_passes() -> None:
    """What successive audits see with one attempt hung for good: deferred, then reported."""
    hung = rec(OPENING, None, attempt=NOW - 1)
    seen: dict[Candidate, float] = {}
    verdicts = []
    for step in range(int(BOUND) + 3):
        case = Case(live=[hung], rows=[row(inode=900)], now=NOW + step, first_seen=seen)
        result = case.run()
        seen = dict(result.seen)
        verdicts.append(kinds(result) == [(Kind.ORPHAN, Plan.REPORT)])
        assert result.orphans_deferred == (0 if verdicts[-1] else 1)
    assert verdicts[0] is False and verdicts[-1] is True
    assert verdicts.index(True) == int(BOUND) + 1  # first seen at NOW, reported past BOUND
    assert all(verdicts[verdicts.index(True) :])


# --------------------------------------------------------------------------- properties

STATES = st.sampled_from(list(ConnState))
OS_STATES = st.sampled_from(
    ["ESTABLISHED", "CLOSE_WAIT", "CLOSE", "FIN_WAIT1", "LAST_ACK", "UNKNOWN", None]
)


@st.composite
def scenario(draw: st.DrawFn) -> Case:
    """Random records (live or retired, any state and age) and what the OS shows for them,
    plus unknown TCP sockets (to the endpoint or elsewhere) and non-TCP noise."""
    live: list[ConnectionRecord] = []
    grave: list[ConnectionRecord] = []
    rows: list[OsSocket] = []
    quiet: dict[int, int] = {}
    n = draw(st.integers(0, 8))
    for inode in range(1, n + 1):
        sock = draw(st.none() | st.just(ident(inode)))
        r = rec(
            draw(STATES),
            sock,
            used=NOW - draw(st.floats(0, 300)),
            expires=NOW + draw(st.floats(-100, 100)),
            borrowed=draw(st.none() | st.floats(NOW - 100, NOW)),
            retired=draw(st.none() | st.floats(0, NOW)),
            closed=draw(st.none() | st.floats(0, NOW)),
        )
        (grave if draw(st.booleans()) else live).append(r)
        if sock is None:
            continue
        shown = draw(st.sampled_from(["gone", "row", "pair", "quiet", "dup"]))
        if shown == "quiet":
            quiet[inode] = sock.fd
        elif shown == "pair":
            rows.append(row(sock, inode=None, state=draw(OS_STATES)))
        elif shown != "gone":
            rows.append(row(sock, state=draw(OS_STATES)))
            if shown == "dup":
                rows.append(row(sock, fd=1000 + inode))
    for inode in range(100, 100 + draw(st.integers(0, 3))):
        remote = draw(st.sampled_from([ENDPOINT, ("127.0.0.1", 994), None]))
        rows.append(row(inode=inode, remote=remote, state=draw(OS_STATES)))
    rows.extend(draw(st.lists(non_tcp_rows(), max_size=3)))
    cfg = config(
        DEFAULTS,
        idle_timeout=100.0,
        leak_threshold=30.0,
        audit=config(
            DEFAULTS.audit,
            force_close_stragglers=draw(st.booleans()),
            close_orphans=draw(st.booleans()),
        ),
    )
    return Case(live, grave, draw(st.permutations(rows)), quiet, cfg)


@st.composite
def non_tcp_rows(draw: st.DrawFn) -> OsSocket:
    family, kind = draw(
        st.sampled_from([("unix", "stream"), ("inet", "dgram"), ("inet6", "dgram"), (None, None)])
    )
    return row(
        inode=draw(st.integers(500, 600)),
        family=family,
        type=kind,
        remote=draw(st.sampled_from([ENDPOINT, None])),
        state=None,
    )


@settings(max_examples=300)
@given(scenario())
def test_only_stragglers_and_orphans_are_ever_closed(case: Case) -> None:
    for d in case.run().decisions:
        if d.plan is Plan.FORCE_CLOSE:
            assert d.kind in (Kind.STRAGGLER, Kind.ORPHAN)
        if d.kind is Kind.ORPHAN:
            assert d.record is None
            assert (d.plan is Plan.FORCE_CLOSE) == case.config.audit.close_orphans
        if d.kind is Kind.STRAGGLER:
            assert (d.plan is Plan.FORCE_CLOSE) == case.config.audit.force_close_stragglers


@settings(max_examples=300)
@given(scenario(), st.lists(non_tcp_rows(), max_size=5))
def test_non_tcp_rows_are_never_findings(case: Case, noise: list[OsSocket]) -> None:
    before = case.run()
    case.rows = [*case.rows, *noise]
    after = case.run()
    assert [(d.kind, d.record) for d in after.decisions] == [
        (d.kind, d.record) for d in before.decisions
    ]
    for d in after.decisions:
        assert all(r.is_tcp for r in d.sockets)


@settings(max_examples=300)
@given(scenario())
def test_one_verdict_per_record_and_leaks_only_in_use(case: Case) -> None:
    seen: dict[int, list[Kind]] = {}
    for d in case.run().decisions:
        if d.record is not None:
            seen.setdefault(d.record.id, []).append(d.kind)
            if d.kind in (Kind.LEAK_SUSPECT, Kind.HALF_OPEN, Kind.OVERDUE):
                assert d.record_state in (IDLE, IN_USE)
            if d.kind is Kind.LEAK_SUSPECT:
                assert d.record_state is IN_USE
    exclusive = {Kind.STRAGGLER, Kind.HALF_OPEN, Kind.OVERDUE}
    for found in seen.values():
        assert len(exclusive.intersection(found)) <= 1
        assert len(found) == len(set(found))


@settings(max_examples=300)
@given(scenario())
def test_records_in_flux_are_never_judged(case: Case) -> None:
    for d in case.run().decisions:
        if d.record is None or d.record not in case.live:
            continue  # a retired record is judged whatever state it was left in
        assert d.record_state is not OPENING
        if d.record_state is CLOSING:
            assert d.kind is Kind.STRAGGLER
            started = d.record.retired_at
            started = d.record.created_at if started is None else started
            assert case.now >= started + case.config.close_timeout + CLOSING_SLACK


@st.composite
def healthy_pool(draw: st.DrawFn) -> Case:
    """Healthy live records on ESTABLISHED sockets, seen every way a backend can show them,
    next to sockets the pool does not own that are not orphans."""
    live: list[ConnectionRecord] = []
    rows: list[OsSocket] = []
    quiet: dict[int, int] = {}
    for inode in range(1, draw(st.integers(0, 10)) + 1):
        sock = ident(inode)
        state = draw(st.sampled_from([IDLE, IN_USE]))
        live.append(
            rec(
                state,
                sock,
                used=NOW - draw(st.floats(0, 100)),
                expires=NOW + draw(st.floats(0, 100)),
                borrowed=NOW - draw(st.floats(0, 29)) if state is IN_USE else None,
            )
        )
        shown = draw(st.sampled_from(["quiet", "row", "pair", "unknown-state"]))
        if shown == "quiet":
            quiet[inode] = sock.fd
        elif shown == "row":
            rows.append(row(sock))
        elif shown == "pair":
            rows.append(row(sock, inode=None))
        else:
            rows.append(row(sock, state=draw(st.sampled_from([None, "UNKNOWN"]))))
    for inode in range(100, 100 + draw(st.integers(0, 3))):
        remote = draw(st.sampled_from([("127.0.0.1", 994), ("10.1.1.1", 993), None]))
        rows.append(row(inode=inode, remote=remote, state=draw(OS_STATES)))
    rows.extend(draw(st.lists(non_tcp_rows(), max_size=3)))
    return Case(live=live, rows=draw(st.permutations(rows)), quiet=quiet)


@settings(max_examples=300)
@given(healthy_pool())
def test_a_healthy_pool_has_no_findings(case: Case) -> None:
    assert case.run() == Classification(())


@given(scenario())
def test_classify_does_not_change_its_inputs(case: Case) -> None:
    snapshot = [r.to_dict() for r in (*case.live, *case.grave)]
    quiet = dict(case.quiet)
    case.run()
    assert [r.to_dict() for r in (*case.live, *case.grave)] == snapshot
    assert case.quiet == quiet


@st.composite
def connects_in_flight(draw: st.DrawFn) -> Case:
    """Orphan candidates first seen at random times, next to records opening (in an attempt
    started at a random time, or between attempts) and other pools' attempts."""
    live = [
        rec(OPENING, None, attempt=draw(st.none() | st.floats(NOW - 60, NOW)))
        for _ in range(draw(st.integers(0, 3)))
    ]
    rows: list[OsSocket] = []
    first_seen: dict[Candidate, float] = {}
    for inode in range(900, 900 + draw(st.integers(1, 4))):
        if draw(st.booleans()):
            rows.append(row(inode=inode))
            if draw(st.booleans()):
                first_seen[inode] = draw(st.floats(NOW - 60, NOW))
        else:
            local = ("127.0.0.1", 30000 + inode)
            rows.append(row(inode=None, local=local))
            if draw(st.booleans()):
                first_seen[(local, ENDPOINT)] = draw(st.floats(NOW - 60, NOW))
    foreign = draw(
        st.lists(st.builds(Connecting, st.floats(NOW - 60, NOW), st.floats(1, 30)), max_size=2)
    )
    listed_at = draw(st.none() | st.floats(NOW - 5, NOW))
    return Case(
        live=live,
        rows=rows,
        first_seen=first_seen,
        foreign_connecting=foreign,
        listed_at=listed_at,
        config=config(DEFAULTS, connect_timeout=draw(st.floats(1, 30))),
    )


@settings(max_examples=300)
@given(connects_in_flight())
def test_connects_in_flight_defer_only_what_they_could_own(case: Case) -> None:
    result = case.run()
    without = Case(rows=case.rows).run()  # no connect in flight: every candidate reported
    assert {d.sockets for d in (*result.decisions, *result.deferred)} == {
        d.sockets for d in without.decisions
    }
    assert set(result.seen) == set(without.seen)
    attempts = [*case.foreign_connecting]
    attempts += [
        Connecting(r.attempt_at, connect_bound(case.config))
        for r in case.live
        if r.attempt_at is not None
    ]
    listed = NOW if case.listed_at is None else case.listed_at
    for d in (*result.deferred, *result.decisions):
        (name,) = [
            n
            for n in result.seen
            if n == d.sockets[0].inode or n == (d.sockets[0].local, d.sockets[0].remote)
        ]
        seen_at = result.seen[name]
        assert seen_at == case.first_seen.get(name, NOW)
        # held back exactly when an attempt in flight had started by its first sighting,
        # and that attempt's bound has not passed since
        could_own = any(a.since <= seen_at and listed - seen_at <= a.bound for a in attempts)
        assert could_own == (d in result.deferred)
    if not attempts:
        assert result.deferred == ()
    if all(a.since > max(result.seen.values(), default=NOW) for a in attempts):
        assert result.deferred == ()
