"""One entry point to the OS views: ``await scan(backend, known, endpoints)``.

Three backends answer the same question ("which sockets does this process hold, and in
what state?") at very different cost and completeness; see :mod:`.scan_procfs`,
:mod:`.scan_psutil` and :mod:`.scan_lsof`. This module picks one, keeps it from stalling
the event loop, fills psutil's and lsof's blind spot for the pool's own sockets, and adds
the process's fd figures every report carries.
"""

from __future__ import annotations

import asyncio

# asyncio.to_thread imports concurrent.futures.thread on its first call, and an import
# opens a file: imported here, so a first psutil or lsof audit at the fd limit gets past it.
import concurrent.futures.thread  # noqa: F401
import errno
import itertools
import logging
import operator
import os
import resource
import sys
from collections.abc import Callable, Collection, Generator, Set
from typing import Literal, TypeVar

import psutil

from ..config import AuditBackend
from ..errors import PoolError
from ..records import SocketIdentity
from ..sockets import tcp_state
from . import scan_procfs
from .rows import Address, OsSocket, ScanResult
from .scan_lsof import parse_lsof, run_lsof
from .scan_psutil import psutil_rows

__all__ = [
    "Backend",
    "FD_EXHAUSTED",
    "InodeCache",
    "SCAN_TIMEOUT",
    "ScanError",
    "fd_limit",
    "resolve_backend",
    "scan",
]


log = logging.getLogger("guardedpool.audit")

Backend = Literal["procfs", "psutil", "lsof"]

SCAN_TIMEOUT = 10.0
"""Seconds a psutil or lsof scan may take before the audit gives up on it."""

PROBE_BEYOND = 4096
"""Without a listing and without EMFILE's guarantee (ENFILE: the system is out of fds),
fd numbers are probed up to this many past the pool's highest fd."""

CHUNK = 500
"""fds handled between two turns of the event loop (procfs): about 1 ms of work."""

FD_EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE})
"""errnos meaning "no fd left": for this process (EMFILE) or the whole system (ENFILE)."""

T = TypeVar("T")

_INODE: Callable[[SocketIdentity], int] = operator.attrgetter("inode")


class ScanError(PoolError):
    """The OS view could not be read (lsof missing, failed or too slow, procfs absent,
    psutil denied access). Not raised at the fd limit: see :func:`scan`."""


def resolve_backend(name: AuditBackend) -> Backend:
    """``auto`` means procfs where ``/proc/self/fd`` exists (Linux), else psutil."""
    if name == "auto":
        linux = sys.platform.startswith("linux")
        return "procfs" if linux and scan_procfs.available() else "psutil"
    return name


def fd_limit() -> int | None:
    """The ``RLIMIT_NOFILE`` soft limit, or None when unlimited."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return None if soft == resource.RLIM_INFINITY else soft


class InodeCache:
    """The inodes of the pool's socket identities, kept from one audit to the next.

    Reading 10,000 identities for their inodes is ~10% of an audit at 10,000 connections,
    nearly all of it waiting on memory. While a pool's connections do not change, each
    audit hands over the same identity objects in the same order: comparing the lists
    (object identity first, in C) confirms that without reading them, and a
    :class:`~guardedpool.records.SocketIdentity` is frozen, so the same object has the
    same inode. Any change rebuilds the set. Only the pool's books are kept here, never
    the OS's view.
    """

    __slots__ = ("_idents", "_inodes")

    def __init__(self) -> None:
        self._idents: list[SocketIdentity] = []
        self._inodes: frozenset[int] = frozenset()

    def inodes(self, known: list[SocketIdentity]) -> frozenset[int]:
        """The set of ``known``'s inodes (``known`` is kept: do not change it after)."""
        if known != self._idents:
            self._inodes = frozenset(map(_INODE, known))
            self._idents = known
        return self._inodes


async def _drive(steps: Generator[None, None, T]) -> T:
    """Run a chunked scan on the loop, giving other tasks a turn after every chunk.

    Measured against running the same steps in a worker thread (``benchmarks/audit.py``):
    chunks keep the loop's longest stall at the cost of one chunk, while a thread competes
    for the GIL and stalls the loop by up to the interpreter's switch interval each time.
    """
    try:
        while True:
            next(steps)
            await asyncio.sleep(0)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    finally:
        # Cancelled between chunks: close the generator now, so whatever it holds is
        # released here and not whenever the cancelled task's traceback is garbage (a
        # task registry or gather(return_exceptions=True) keeps it).
        steps.close()


def _probe_missing(rows: list[OsSocket], known: Collection[SocketIdentity]) -> list[OsSocket]:
    """Rows for the pool's sockets that psutil/lsof left out but whose fd still holds them.

    Those views skip sockets in state CLOSE, the very stragglers an audit is for; an
    ``fstat`` of the fd the pool recorded (same inode?) finds them without guessing.
    """
    seen = {(r.local, r.remote) for r in rows}
    extra: list[OsSocket] = []
    for ident in known:
        if (ident.local, ident.remote) in seen:
            continue
        try:
            if os.fstat(ident.fd).st_ino != ident.inode:
                continue
        except OSError:
            continue
        family = "inet6" if ":" in ident.local[0] else "inet"
        extra.append(
            OsSocket(ident.fd, ident.inode, family, "stream", None, None, tcp_state(ident.fd))
        )
    return extra


async def scan(
    backend: Backend,
    known: Collection[SocketIdentity],
    endpoints: Set[Address],
    *,
    inspect_all: bool = False,
    time_limit: float = SCAN_TIMEOUT,
    inodes: Set[int] | None = None,
) -> ScanResult:
    """The process's sockets as ``backend`` sees them.

    ``known``: the pool's socket identities (live and retired); ``inodes``: their inodes,
    when the caller has them (see :class:`InodeCache`); ``endpoints``: pooled
    (host, port) pairs, so unknown sockets to them can be reported as orphans (empty: do
    not look). ``inspect_all`` (procfs) reads type, addresses and state of every socket.
    psutil and lsof are bounded by ``time_limit`` seconds; procfs does a bounded amount of
    local work (one pass over the fd table) and needs none.

    At the fd limit (``EMFILE``, or ``ENFILE`` for the whole system) no backend can start:
    reading ``/proc/self/status``, psutil's reads and lsof's pipes each need a new fd. The scan
    then calls ``fstat`` on every fd number below the limit (and the pool's own fds) instead,
    which needs none, and returns that view with ``fd_exhausted`` set and the reason in
    ``notes``; it keeps the requested ``backend`` name. Raises :class:`ScanError` (and
    nothing else) when the OS view cannot be read at all.
    """
    limit = fd_limit()
    try:
        if backend == "procfs":
            if not scan_procfs.available():
                raise ScanError(f"procfs backend needs {scan_procfs.FD_DIR}")
            if inodes is None:
                inodes = frozenset(map(_INODE, known))
            rows, quiet, fds_used, notes = await _drive(
                scan_procfs.scan_procfs(inodes, endpoints, inspect_all=inspect_all, chunk=CHUNK)
            )
            return ScanResult("procfs", tuple(rows), fds_used, limit, True, tuple(notes), quiet)
        async with asyncio.timeout(time_limit):
            if backend == "psutil":
                rows, fds_used = await asyncio.to_thread(psutil_rows)
            else:
                text = await run_lsof()
                rows = await _drive(parse_lsof(text))
                fds_used = await asyncio.to_thread(_fds_used)
    except TimeoutError:
        raise ScanError(f"{backend} scan took longer than {time_limit} s") from None
    except FileNotFoundError as exc:
        raise ScanError(f"{backend} backend unavailable: {exc}") from None
    except OSError as exc:
        if exc.errno not in FD_EXHAUSTED:
            raise ScanError(f"{backend} scan failed: {exc}") from None
        return await _scan_without_fd(
            backend, exc, known, inodes, endpoints, limit, inspect_all
        )
    except psutil.Error as exc:  # AccessDenied, NoSuchProcess: not OSErrors
        raise ScanError(f"{backend} scan failed: {type(exc).__name__}: {exc}") from None
    rows.extend(_probe_missing(rows, known))
    return ScanResult(backend, tuple(rows), fds_used, limit, False)


_CANNOT = {
    "procfs": f"could not read {scan_procfs.STATUS}",
    "psutil": "psutil could not read the process's sockets",
    "lsof": "lsof could not start",
}


async def _scan_without_fd(
    backend: Backend,
    exc: OSError,
    known: Collection[SocketIdentity],
    inodes: Set[int] | None,
    endpoints: Set[Address],
    limit: int | None,
    inspect_all: bool,
) -> ScanResult:
    """The procfs scan over ``fstat`` of fd numbers: needs no fd of its own.

    ``EMFILE``: every number below the soft limit is probed, and each one is in use (the
    kernel hands out the lowest free number, and none below the limit was free), so the
    count is exact and costs what a listing would. ``ENFILE`` (the system's table is full,
    this process may hold few fds): numbers up to :data:`PROBE_BEYOND` past the pool's
    highest fd, so a 1,000,000 limit does not mean a million failing ``fstat`` calls.
    The pool's own fds are always probed, wherever they are.
    """
    name = errno.errorcode.get(exc.errno or 0, "?")
    reason = f"{_CANNOT[backend]}: {exc.strerror or exc} ({name})"
    own = {ident.fd for ident in known}
    if exc.errno == errno.EMFILE and limit is not None:
        upto = limit
    else:
        upto = max(own, default=2) + 1 + PROBE_BEYOND
        upto = upto if limit is None else min(upto, limit)
    numbers = itertools.chain(range(upto), sorted(fd for fd in own if fd >= upto))
    if inodes is None:
        inodes = frozenset(map(_INODE, known))
    rows, quiet, fds_used, notes = await _drive(
        scan_procfs.scan_procfs(
            inodes, endpoints, inspect_all=inspect_all, chunk=CHUNK, probe=numbers
        )
    )
    probed = f"probed fds 0-{upto - 1} and the pool's own with fstat instead"
    if upto != limit:
        probed += f" (fds from {upto} on not looked at)"
    used = f"{fds_used} of {limit}" if limit is not None else str(fds_used)
    head = f"no fd left ({used} in use): {reason}; {probed}"
    log.warning(
        "guardedpool audit (%s): %s",
        backend,
        head,
        extra={
            "backend": backend,
            "fds_used": fds_used,
            "fd_limit": limit,
            "error": errno.errorcode.get(exc.errno or 0, "?"),
        },
    )
    return ScanResult(
        backend,
        tuple(rows),
        fds_used,
        limit,
        True,
        (head, *notes),
        quiet,
        fd_exhausted=True,
    )


def _fds_used() -> int:
    return psutil.Process().num_fds()
