"""The audit's short cuts at 10,000 connections decide exactly as its rules do.

Two places settle the common case in bulk instead of one item at a time, and each is held
here against the plain rule it stands for, on generated inputs that sit on both sides of
every threshold:

* ``classify._unsettled`` settles a record that is open, quiet, not overdue and not a leak
  suspect (``leaks.leak_suspect`` written out). Classification with it must equal
  classification where it settles nothing, so every record takes the full look.
* ``scan_procfs.Tally.sort`` sorts the fd table's sockets with dict and set operations when
  every socket sits at one fd; it must leave the tally exactly as ``Tally.sort_each`` (one
  fd at a time) does, whatever the chunks hold: dup'd fds within a chunk or across two,
  foreign sockets, sockets with poll news.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from harness.configs import DEFAULTS, config
from hypothesis import given, settings
from hypothesis import strategies as st

from guardedpool.audit import classify as classify_module
from guardedpool.audit.classify import Classification, classify
from guardedpool.audit.rows import OsSocket
from guardedpool.audit.scan_procfs import Tally
from guardedpool.records import ConnectionRecord, ConnState, SocketIdentity

IDLE_TIMEOUT, LEAK, HOUSEKEEPING = 100.0, 30.0, 1.0
LAG = 2 * HOUSEKEEPING
CFG = config(
    DEFAULTS,
    idle_timeout=IDLE_TIMEOUT,
    max_lifetime=1000.0,
    leak_threshold=LEAK,
    close_timeout=5.0,
    housekeeping_interval=HOUSEKEEPING,
)
ENDPOINT = ("127.0.0.1", 993)
NOW = 500.0
TINY = 1e-9


def around(at: float) -> st.SearchStrategy[float]:
    """Times on, just before and just after a threshold ``at``, or anywhere near it."""
    return st.sampled_from([at, at - TINY, at + TINY]) | st.floats(at - 50, at + 50)


# last_used_at such that the idle timeout falls due (with housekeeping lag) about now
USED = around(NOW - IDLE_TIMEOUT - LAG)
EXPIRES = around(NOW - LAG)
BORROWED = around(NOW - LEAK)


@dataclass
class Case:
    live: list[ConnectionRecord]
    grave: list[ConnectionRecord]
    rows: list[OsSocket]
    quiet: dict[int, int]

    def run(self) -> Classification:
        return classify(
            self.live, self.grave, self.rows, {ENDPOINT}, NOW, CFG, quiet=dict(self.quiet)
        )


@st.composite
def pools(draw: st.DrawFn) -> Case:
    """Mostly open records on quiet sockets, as at scale, with every exception mixed in:
    any state, no socket, two records on one inode, rows instead of a quiet entry, long
    holds and borrows without a borrower, times on each side of each threshold."""
    live: list[ConnectionRecord] = []
    grave: list[ConnectionRecord] = []
    rows: list[OsSocket] = []
    quiet: dict[int, int] = {}
    common = st.sampled_from([ConnState.IDLE, ConnState.IN_USE])
    for n in range(draw(st.integers(0, 12))):
        inode = draw(st.integers(1, 14))  # small: two records may share one
        family = draw(st.sampled_from(["127.0.0.1", "::1"]))
        sock = SocketIdentity(fd=100 + n, inode=inode, local=(family, 40000 + n), remote=ENDPOINT)
        r = ConnectionRecord("inbox", created_at=0.0, expires_at=draw(EXPIRES))
        r.state = draw(common | st.sampled_from(list(ConnState)))
        r.socket = draw(st.just(sock) | st.just(sock) | st.none())
        r.last_used_at = draw(USED)
        if draw(st.booleans()):
            r.borrowed_by, r.borrowed_at = "worker", draw(BORROWED)
            r.borrowed_site = "worker.py:10 in sync"
        else:
            r.borrowed_at = draw(BORROWED)  # a stale time without a borrower
        r.long_hold = draw(st.booleans())
        r.retired_at = draw(st.none() | st.floats(0, NOW))
        (grave if draw(st.integers(0, 5)) == 0 else live).append(r)
        shown = draw(st.sampled_from(["quiet", "quiet", "row", "gone"]))
        if shown == "quiet":
            quiet[inode] = sock.fd
        elif shown == "row":
            state = draw(st.sampled_from(["ESTABLISHED", "CLOSE_WAIT", "CLOSE", None]))
            rows.append(OsSocket(sock.fd, inode, "inet", "stream", sock.local, ENDPOINT, state))
    return Case(live, grave, rows, quiet)


def _settle_nothing(
    records: list[ConnectionRecord], quiet: dict[int, int], now: float, config: object
) -> list[tuple[ConnectionRecord, int | None]]:
    """Every record to the full look, each taking its quiet entry as the short cut does."""
    return [(r, None if r.socket is None else quiet.pop(r.socket.inode, None)) for r in records]


@contextmanager
def full_look_only() -> Iterator[None]:
    short_cut = classify_module._unsettled
    classify_module._unsettled = _settle_nothing  # type: ignore[assignment]
    try:
        yield
    finally:
        classify_module._unsettled = short_cut


@settings(max_examples=500)
@given(pools())
def test_settling_the_common_record_changes_no_decision(case: Case) -> None:
    fast = case.run()
    with full_look_only():
        slow = case.run()
    assert fast == slow


def test_the_short_cut_does_settle_the_common_record() -> None:
    """Not vacuous: a healthy open record on a quiet socket never reaches the full look."""
    sock = SocketIdentity(fd=7, inode=70, local=("127.0.0.1", 40000), remote=ENDPOINT)
    held = ConnectionRecord("inbox", created_at=0.0, expires_at=NOW + 100)
    held.state, held.socket, held.last_used_at = ConnState.IN_USE, sock, NOW - 1
    held.borrowed_by, held.borrowed_at, held.long_hold = "idle-task", NOW - 3600, True
    quiet = {70: 7}
    assert classify_module._unsettled([held], quiet, NOW, CFG) == []
    assert quiet == {}
    held.long_hold = False  # now a leak suspect: the full look reports it
    quiet = {70: 7}
    assert classify_module._unsettled([held], quiet, NOW, CFG) == [(held, 7)]


# --------------------------------------------------------------------------- the scan

INODES = st.integers(1, 30)


@st.composite
def fd_tables(draw: st.DrawFn) -> tuple[list[tuple[list[int], list[int], set[int]]], set[int]]:
    """Chunks of (socket fds ascending, their inodes, fds with poll news), and the known
    inodes: mostly one known socket per fd, with dups, foreign sockets and news mixed in."""
    fds = itertools.count(draw(st.integers(0, 5)))
    known = draw(st.sets(INODES, max_size=30))
    chunks = []
    for _ in range(draw(st.integers(0, 5))):
        size = draw(st.integers(0, 12))
        numbers = [next(fds) for _ in range(size)]
        pool = sorted(known | {31, 32})  # and two foreign sockets
        if draw(st.booleans()):  # each socket at one fd in the chunk (maybe in an earlier one)
            inodes = draw(st.permutations(pool))[:size]
            numbers = numbers[: len(inodes)]
        else:
            inodes = [draw(INODES | st.sampled_from(pool)) for _ in numbers]
        flagged = set(draw(st.sets(st.sampled_from(numbers)))) if numbers else set()
        chunks.append((numbers, list(inodes), flagged))
    return chunks, known


def tallied(
    chunks: list[tuple[list[int], list[int], set[int]]], known: set[int], each: bool
) -> tuple[object, ...]:
    t = Tally()
    for fds, inodes, flagged in chunks:
        t.add(fds, inodes, flagged)
    (t.sort_each if each else t.sort)(known)
    return list(t.first.items()), t.dups, list(t.foreign.items()), t.loud


@settings(max_examples=500)
@given(fd_tables())
def test_sorting_the_table_in_bulk_equals_one_fd_at_a_time(
    table: tuple[list[tuple[list[int], list[int], set[int]]], set[int]],
) -> None:
    chunks, known = table
    assert tallied(chunks, known, each=False) == tallied(chunks, known, each=True)
