"""The procfs view (Linux): every fd of this process, without asking anyone else.

Why this is the default: it looks at every fd number below the size of the process's fd
table (``FDSize`` in ``/proc/self/status``: no open fd is at or above it) and ``fstat``s
each open one, so it sees every socket fd the process holds, including a dup'd fd and a
socket whose TCP state is CLOSE (after an RST) -- exactly the dead stragglers psutil, lsof
and ss leave out -- and it costs the same however many sockets the rest of the host has.

Which numbers are open, and which of the pool's sockets have news (peer FIN, hang-up,
error, unread data), come from one ``poll()`` (timeout 0) per chunk of numbers: a closed
number answers ``POLLNVAL``. That replaces listing ``/proc/self/fd`` and a second
``poll()`` of the pool's sockets: with 10,000 sockets in one process (2 vCPU benchmark
machine) listing, ``fstat`` and that poll took 46 ms of CPU (71 ms the first time, while
the kernel builds the listing's entries), the polls over the table and ``fstat`` 31 ms.
Only the pool's sockets with news, and sockets held at more than one fd, get a row with
their ``TCP_INFO`` state and addresses. The rest are returned as ``quiet`` (inode -> fd),
meaning ESTABLISHED: the other states ``poll`` finds quiet are SYN_SENT and a local half-
close (FIN_WAIT*), which a pooled connection is never in while the pool calls it open.
Unknown socket fds are inspected (type, addresses) only when the caller looks for orphans,
and their TCP state only when their peer is a pooled endpoint.

The work is a generator that yields after each chunk of ``chunk`` fd numbers is polled and
again after its ``fstat`` calls (a chunk with no open fd has none), so the caller can hand
the event loop back between the two (see :func:`guardedpool.audit.scan.scan`).

At 10,000 sockets (stop 13, same machine, one process) the scan's CPU is mostly the
kernel's and ``os.fstat``'s: ``fstat`` ~16 ms (~1.3 us per call even on one hot fd, most
of it building the ``stat_result``), ``poll`` ~6 ms. What Python adds per fd is kept small:
the poll objects keep their registered numbers from scan to scan (:class:`_Pollers`),
``fstat`` runs over a chunk in one ``map``, and the table's sockets are sorted once, with dict and
set operations (:meth:`Tally.sort`), unless one of them sits at two fds.
"""

from __future__ import annotations

import collections
import errno
import itertools
import operator
import os
import select
import socket
import stat
import struct
import threading
from collections.abc import Generator, Iterable, Iterator, Sequence, Set

from ..sockets import TCP_STATES, tcp_state
from .rows import Address, OsSocket, normalize_address

__all__ = ["FD_DIR", "STATUS", "available", "peek", "scan_procfs"]

FD_DIR = "/proc/self/fd"
STATUS = "/proc/self/status"

_FAMILIES = {socket.AF_INET: "inet", socket.AF_INET6: "inet6", socket.AF_UNIX: "unix"}
_TYPES = {socket.SOCK_STREAM: "stream", socket.SOCK_DGRAM: "dgram"}
_TCP_INFO = getattr(socket, "TCP_INFO", 11)
# POLLRDHUP (peer sent FIN) is Linux-only; select exposes it there.
_NEWS = select.POLLIN | select.POLLPRI | getattr(select, "POLLRDHUP", 0x2000)

_NONE: frozenset[int] = frozenset()
_MODE = operator.attrgetter("st_mode")
_INO = operator.attrgetter("st_ino")

Quiet = dict[int, int]
ScanSteps = Generator[None, None, tuple[list[OsSocket], Quiet, int, list[str]]]


def available() -> bool:
    return os.path.isdir(FD_DIR)


def _address(raw: object) -> Address | None:
    if isinstance(raw, tuple) and len(raw) >= 2:
        return (str(raw[0]), int(raw[1]))
    return None


def peek(fd: int, inode: int | None, *, with_state: bool) -> OsSocket | None:
    """Family, type, addresses (and TCP state if asked) of the socket at ``fd``.

    Goes through a ``socket.socket`` that borrows the fd and is detached before it can
    close it. The caller must make sure ``socket.getdefaulttimeout()`` is None for fds it
    does not own: otherwise Python sets O_NONBLOCK on the shared file description.
    """
    try:
        s = socket.socket(fileno=fd)
    except OSError:
        return None
    try:
        family = _FAMILIES.get(s.family)
        kind = _TYPES.get(s.type)
        local = remote = state = None
        if family in ("inet", "inet6"):
            try:
                local = _address(s.getsockname())
                remote = _address(s.getpeername())
            except OSError:  # ENOTCONN: listening, never connected, or reset (CLOSE)
                pass
            if kind == "stream" and with_state:
                try:
                    raw = s.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, 8)
                    state = TCP_STATES.get(struct.unpack_from("B", raw)[0], "UNKNOWN")
                except OSError:
                    state = None
        return OsSocket(fd, inode, family, kind, local, remote, state)
    finally:
        s.detach()


def _table_numbers() -> Sequence[int]:
    """Every fd number below the fd table's size (``FDSize`` in ``/proc/self/status``;
    the kernel never hands out a number at or above it). Reading it takes an fd, for a
    moment: at the fd limit it raises ``OSError`` (``EMFILE``)."""
    with open(STATUS, "rb") as status:
        size = next(
            (int(line.split()[1]) for line in status if line.startswith(b"FDSize:")), None
        )
    if size is None:
        raise OSError(errno.ENOENT, f"no FDSize in {STATUS}")
    return range(size)


def _chunks(numbers: Iterable[int], size: int) -> Iterator[Sequence[int]]:
    """``numbers`` in runs of ``size``: slices of a range, lists of anything else."""
    if isinstance(numbers, range):
        for start in range(0, len(numbers), size):
            yield numbers[start : start + size]
        return
    it = iter(numbers)
    while batch := list(itertools.islice(it, size)):
        yield batch


def _consume(calls: Iterable[object]) -> None:
    """Run every call of a ``map`` in C (a loop of Python calls costs twice as much)."""
    collections.deque(calls, maxlen=0)


def _fstat_each(fds: Iterable[int]) -> tuple[list[int], list[os.stat_result]]:
    """``fstat`` of each of ``fds`` that is still open: (the open ones, their results)."""
    opened: list[int] = []
    stats: list[os.stat_result] = []
    for fd in fds:
        try:
            stats.append(os.fstat(fd))
        except OSError:
            continue
        opened.append(fd)
    return opened, stats


class _Pollers:
    """``poll`` objects with a chunk's fd numbers registered, kept from scan to scan.

    A poll object holds fd numbers, not files: polled again it answers for whatever those
    numbers are now (``POLLNVAL``: closed). Registering the 16,384 numbers of the fd table
    of a process with 10,000 sockets cost ~3 ms of each audit; kept, it costs nothing after
    the first (and ~1.3 MB). Kept per thread (:func:`_kept_pollers`): a poll object must
    not be polled by two threads at once, and scans on one thread poll one at a time.
    At the end of a scan, ranges it did not poll are dropped (:meth:`prune`, given the
    scan's own ranges: scans interleaved on one thread do not drop each other's).
    """

    __slots__ = ("_kept",)

    def __init__(self) -> None:
        self._kept: dict[tuple[int, int], select.poll] = {}

    def poller(self, numbers: Sequence[int], used: set[tuple[int, int]]) -> select.poll:
        """A poll object with ``numbers`` registered (kept when they are a range, whose
        (start, stop) is added to ``used``)."""
        key = (numbers.start, numbers.stop) if isinstance(numbers, range) else None
        poller = self._kept.get(key) if key is not None else None
        if poller is None:
            poller = select.poll()
            _consume(map(poller.register, numbers, itertools.repeat(_NEWS)))
            if key is not None:
                self._kept[key] = poller
        if key is not None:
            used.add(key)
        return poller

    def prune(self, used: set[tuple[int, int]]) -> None:
        """Drop the poll objects of ranges not in ``used`` (the table has grown since)."""
        for key in self._kept.keys() - used:
            del self._kept[key]


_THREAD = threading.local()


def _kept_pollers() -> _Pollers:
    pollers: _Pollers | None = getattr(_THREAD, "pollers", None)
    if pollers is None:
        pollers = _THREAD.pollers = _Pollers()
    return pollers


class Tally:
    """The fd table's sockets, collected chunk after chunk (in fd order), then sorted.

    :meth:`add` collects a chunk's socket fds and inodes; :meth:`sort` sorts them all once
    the table is read, setting ``first``: a known inode -> its first fd; ``dups``: (fd,
    inode) of every further fd of a known inode; ``foreign``: fd -> inode of the sockets
    not known (by fd); ``loud``: known inodes with news (poll events on their first fd) or
    at more than one fd. ``fds_used`` counts the open fds seen, sockets or not.
    """

    __slots__ = ("_fds", "_flagged", "_inodes", "dups", "fds_used", "first", "foreign", "loud")

    def __init__(self) -> None:
        self._fds: list[int] = []
        self._inodes: list[int] = []
        self._flagged: set[int] = set()  # inodes whose fd had poll events
        self.first: dict[int, int] = {}
        self.dups: list[tuple[int, int]] = []
        self.foreign: dict[int, int] = {}  # int-only dicts cost the GC nothing
        self.loud: set[int] = set()
        self.fds_used = 0

    def add(self, fds: Iterable[int], inodes: Iterable[int], flagged: Set[int]) -> None:
        """Collect one chunk's socket fds (ascending, after every fd already added) and
        their inodes; ``flagged``: fds with poll events."""
        if flagged:
            news = zip(fds, inodes, strict=True)
            self._flagged.update(i for fd, i in news if fd in flagged)
        self._fds += fds
        self._inodes += inodes

    def sort(self, known: Set[int]) -> None:
        """Sort what was collected against ``known`` (the pool's inodes). Same result as
        :meth:`sort_each`, in C where the table is the common one: every socket at one fd
        (then each flagged inode's fd is its first)."""
        first = dict(zip(self._inodes, self._fds, strict=True))
        if len(first) != len(self._inodes):
            self.sort_each(known)  # a socket at more than one fd
            return
        strangers = list(itertools.filterfalse(known.__contains__, first))
        self.foreign = dict(sorted((first.pop(inode), inode) for inode in strangers))
        self.loud = {inode for inode in self._flagged if inode in known}
        self.first = first

    def sort_each(self, known: Set[int]) -> None:
        """:meth:`sort`, one fd at a time: the rule as it reads."""
        first = self.first
        flagged = self._flagged
        for fd, inode in zip(self._fds, self._inodes, strict=True):
            if inode not in known:
                self.foreign[fd] = inode
            elif inode in first:
                self.dups.append((fd, inode))
                self.loud.add(inode)
            else:
                first[inode] = fd
                if inode in flagged:
                    self.loud.add(inode)


def scan_procfs(
    known: Set[int],
    endpoints: Set[Address],
    *,
    inspect_all: bool = False,
    chunk: int = 1000,
    probe: Iterable[int] | None = None,
) -> ScanSteps:
    """Every socket fd of this process; see the module docstring for what is read.

    ``known`` holds the pool's socket inodes (live and retired); ``endpoints`` are the
    pooled (host, port) pairs (orphans are sockets to them). ``inspect_all`` reads type,
    addresses and state of every socket (for tests and cross-checks; slower).
    ``probe``: look at these fd numbers instead of the fd table's (``FDSize``) -- the
    scan that needs no new fd, for when the process has none left (see
    :func:`guardedpool.audit.scan.scan`); it works wherever ``fstat`` does, not only on
    Linux.

    Returns (rows, quiet, fds_used, notes). ``quiet`` maps inode -> fd for the pool's
    sockets that sit at one fd with nothing to report (ESTABLISHED); they get no row
    because at 10,000 connections building one each costs as much as the rest of the scan.
    """
    notes: list[str] = []
    t = Tally()
    nval = select.POLLNVAL
    pollers = _kept_pollers() if probe is None else _Pollers()
    used: set[tuple[int, int]] = set()  # this scan's ranges
    for numbers in _chunks(_table_numbers() if probe is None else probe, chunk):
        news = pollers.poller(numbers, used).poll(0)
        closed = {fd for fd, events in news if events & nval}
        flagged = {fd for fd, events in news if not events & nval} if news else _NONE
        del news  # up to ``chunk`` tuples: not kept through the fstat calls
        yield  # the poll and the fstat calls are a turn of work each
        if len(closed) == len(numbers):  # past the highest fd (most of a large table)
            continue
        fds = list(itertools.filterfalse(closed.__contains__, numbers)) if closed else numbers
        try:
            stats = list(map(os.fstat, fds))
        except OSError:  # one closed since the poll: one at a time
            fds, stats = _fstat_each(fds)
        t.fds_used += len(stats)
        socks = list(map(stat.S_ISSOCK, map(_MODE, stats)))
        inos = list(map(_INO, stats))
        if not all(socks):
            fds = list(itertools.compress(fds, socks))
            inos = list(itertools.compress(inos, socks))
        t.add(fds, inos, flagged)
        yield
    pollers.prune(used)
    t.sort(known)
    yield  # sorting 10,000 sockets is a turn of work: not in the same one as the caller's
    first, dups, foreign, loud = t.first, t.dups, t.foreign, t.loud
    fds_used = t.fds_used
    # Whatever is not flagged, dup'd or inspected stays in ``first``: that is ``quiet``.
    if inspect_all:
        loud.update(first)
    loud_fds = [(first.pop(inode), inode) for inode in loud] + dups
    rows: list[OsSocket] = []
    for i, (fd, inode) in enumerate(loud_fds, 1):
        row = peek(fd, inode, with_state=True)
        if row is not None:
            rows.append(row)
        if i % chunk == 0:
            yield

    look = inspect_all or bool(endpoints)
    if look and socket.getdefaulttimeout() is not None:
        # Borrowing someone else's blocking socket would flip it to non-blocking.
        notes.append("other sockets not inspected: socket.setdefaulttimeout() is set")
        look = False
    wanted = {normalize_address(e) for e in endpoints}
    for i, (fd, inode) in enumerate(foreign.items(), 1):
        row = peek(fd, inode, with_state=inspect_all) if look else None
        if row is None:
            row = OsSocket(fd, inode, None, None, None, None, None)  # seen, not inspected
        elif (
            row.state is None
            and row.is_tcp
            and row.remote is not None
            and normalize_address(row.remote) in wanted
        ):
            row = OsSocket(fd, inode, row.family, row.type, row.local, row.remote, tcp_state(fd))
        rows.append(row)
        if i % chunk == 0:
            yield
    return rows, first, fds_used, notes
