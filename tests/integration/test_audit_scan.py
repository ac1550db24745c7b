"""The auditor against real loopback sockets: OS views, findings, and what is (not) touched.

A tiny :class:`FakeTarget` stands in for the pool: it is the pool's side of the
``AuditTarget`` protocol (records, graveyard, endpoints, and the poison/retire/abort
callbacks), holding records for real sockets. Nothing about the OS is faked.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import resource
import socket
import struct
import threading
import time
from collections.abc import AsyncIterator, Generator, Sequence, Set
from dataclasses import dataclass, field
from typing import TypeVar

import pytest
from harness import wait_for
from harness.configs import DEFAULTS, config

from guardedpool.audit import Action, Kind, OsSocket, run_audit, scan, scan_procfs, verify
from guardedpool.audit.classify import Connecting, connect_bound
from guardedpool.audit.rows import Address
from guardedpool.audit.scan import PROBE_BEYOND, Backend
from guardedpool.audit.scan_lsof import parse_lsof, run_lsof
from guardedpool.audit.scan_psutil import psutil_rows
from guardedpool.config import PoolConfig
from guardedpool.records import ConnectionRecord, ConnState, SocketIdentity
from guardedpool.sockets import identify, tcp_state

HOST = "127.0.0.1"
T = TypeVar("T")
BACKENDS: tuple[Backend, ...] = ("procfs", "psutil", "lsof")


# --------------------------------------------------------------------------- helpers


class Server:
    """An echo server on 127.0.0.1 that can FIN or RST each accepted connection."""

    def __init__(self) -> None:
        self.peers: dict[tuple[str, int], asyncio.Transport] = {}
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def address(self) -> tuple[str, int]:
        return (HOST, self.port)

    async def start(self) -> Server:
        server = self

        class Echo(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                assert isinstance(transport, asyncio.Transport)
                self.transport = transport
                server.peers[transport.get_extra_info("peername")] = transport

            def data_received(self, data: bytes) -> None:
                self.transport.write(data)

        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(Echo, HOST, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def peer_of(self, local: tuple[str, int]) -> asyncio.Transport:
        await wait_for(lambda: local in self.peers)
        return self.peers[local]

    async def fin(self, local: tuple[str, int]) -> None:
        (await self.peer_of(local)).close()

    async def rst(self, local: tuple[str, int]) -> None:
        peer = await self.peer_of(local)
        peer.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
        )
        peer.abort()

    async def stop(self) -> None:
        for peer in self.peers.values():
            peer.abort()
        if self._server is not None:
            self._server.close()
            async with asyncio.timeout(5):
                await self._server.wait_closed()


def drain(steps: Generator[None, None, T]) -> T:
    """Run one of the scan's chunked generators to the end, without an event loop."""
    try:
        while True:
            next(steps)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


def fds_holding(inode: int) -> list[int]:
    """Every fd of this process that holds the socket with ``inode``."""
    out = []
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.stat(f"/proc/self/fd/{name}").st_ino == inode:
                out.append(int(name))
    return out


@dataclass(eq=False)  # hashable: the auditor keeps per-target state weakly
class FakeTarget:
    """The pool's side of the audit, for real sockets the test opened."""

    config: PoolConfig
    addresses: Set[tuple[str, int]]
    live: list[ConnectionRecord] = field(default_factory=list)
    grave: list[ConnectionRecord] = field(default_factory=list)
    held: dict[int, asyncio.BaseTransport] = field(default_factory=dict)
    poisoned: list[ConnectionRecord] = field(default_factory=list)
    retired: list[ConnectionRecord] = field(default_factory=list)
    aborted: list[ConnectionRecord] = field(default_factory=list)
    skew: float = 0.0  # added to the clock: time passing without waiting for it

    def now(self) -> float:
        return time.monotonic() + self.skew

    def records(self) -> Sequence[ConnectionRecord]:
        return self.live

    def graveyard(self) -> Sequence[ConnectionRecord]:
        return self.grave

    def endpoints(self) -> Set[tuple[str, int]]:
        return self.addresses

    def poison(self, record: ConnectionRecord) -> None:
        self.poisoned.append(record)

    def retire(self, record: ConnectionRecord) -> None:
        self.retired.append(record)

    def foreign(self) -> tuple[frozenset[int], tuple[Connecting, ...]]:
        return frozenset(), ()

    def connecting(self) -> Connecting | None:
        """As the pool's: its records' attempts under way (OPENING, started, no socket)."""
        starts = [
            r.attempt_at
            for r in self.live
            if r.attempt_at is not None and r.socket is None and r.state is ConnState.OPENING
        ]
        return Connecting(min(starts), connect_bound(self.config)) if starts else None

    def abort(self, record: ConnectionRecord) -> bool:
        transport = self.held.pop(record.id, None)
        if transport is None:
            return False
        self.aborted.append(record)
        transport.abort()  # type: ignore[attr-defined]
        return True

    def add(
        self,
        sock: SocketIdentity,
        state: ConnState = ConnState.IDLE,
        *,
        holding: asyncio.BaseTransport | None = None,
        borrowed_for: float | None = None,
        idle_for: float = 0.0,
    ) -> ConnectionRecord:
        """A record for ``sock``: live in ``state``, or retired 10 s ago if CLOSED."""
        now = time.monotonic()
        r = ConnectionRecord("inbox-1", created_at=now - 60, expires_at=now + 3600)
        r.socket, r.state, r.last_used_at = sock, state, now - idle_for
        if borrowed_for is not None:
            r.borrowed_by, r.borrowed_at = "sync-inbox-1", now - borrowed_for
            r.borrowed_site = "worker.py:42 in sync"
        if state is ConnState.CLOSED:
            r.retired_at = r.closed_at = now - 10
            self.grave.append(r)
        else:
            self.live.append(r)
        if holding is not None:
            self.held[r.id] = holding
        return r


class Sockets:
    """Opens client sockets and closes every one at the end of the test."""

    def __init__(self) -> None:
        self._stack = contextlib.ExitStack()
        self.transports: list[asyncio.BaseTransport] = []

    def raw(self, address: tuple[str, int]) -> socket.socket:
        return self._stack.enter_context(socket.create_connection(address, timeout=5))

    def keep(self, sock: socket.socket) -> socket.socket:
        return self._stack.enter_context(sock)

    def fd(self, fd: int) -> int:
        self._stack.callback(lambda: os.close(fd) if fds_exists(fd) else None)
        return fd

    async def transport(self, address: tuple[str, int]) -> asyncio.Transport:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_connection(asyncio.Protocol, *address)
        self.transports.append(transport)
        return transport

    async def stream(self, address: tuple[str, int]) -> asyncio.StreamWriter:
        _, writer = await asyncio.open_connection(*address)
        self.transports.append(writer.transport)
        return writer

    async def close(self) -> None:
        for t in self.transports:
            t.abort()  # type: ignore[attr-defined]
        self._stack.close()
        await asyncio.sleep(0.02)  # transports release their fds from loop callbacks


def fds_exists(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    srv = await Server().start()
    yield srv
    await srv.stop()
    await asyncio.sleep(0.02)


@pytest.fixture
async def sockets() -> AsyncIterator[Sockets]:
    s = Sockets()
    yield s
    await s.close()


def target_for(server: Server, **audit: object) -> FakeTarget:
    cfg = config(
        DEFAULTS,
        idle_timeout=100.0,
        leak_threshold=30.0,
        housekeeping_interval=0.1,
        audit=config(DEFAULTS.audit, **audit),
    )
    return FakeTarget(cfg, frozenset({server.address}))


# --------------------------------------------------------------------------- OS views


async def test_backends_agree_on_live_sockets(server: Server, sockets: Sockets) -> None:
    clients = [sockets.raw(server.address) for _ in range(3)]
    known = [identify(c) for c in clients]
    await wait_for(lambda: len(server.peers) == 3)

    def ours(rows: Sequence[OsSocket]) -> set[tuple[int | None, Address, Address | None, str]]:
        out = set()
        for r in rows:
            if not r.is_tcp or r.local is None or r.state is None:
                continue
            if server.port in (r.local[1], r.remote[1] if r.remote else None):
                out.add((r.fd, r.local, r.remote, r.state))
        return out

    views = {}
    for backend in BACKENDS:
        view = await scan(backend, known, {server.address}, inspect_all=True)
        views[backend] = ours(view.sockets)
    assert views["procfs"] == views["lsof"] == views["psutil"]
    states = sorted(state for *_, state in views["procfs"])
    assert states == ["ESTABLISHED"] * 6 + ["LISTEN"]
    for ident in known:
        assert (ident.fd, ident.local, ident.remote, "ESTABLISHED") in views["lsof"]


async def test_procfs_default_scan_reports_pool_sockets_quietly(
    server: Server, sockets: Sockets
) -> None:
    clients = [sockets.raw(server.address) for _ in range(3)]
    known = [identify(c) for c in clients]
    # The server (on this loop) accepts while the scan gives the loop a turn: let it
    # accept first, so no fd appears mid-scan.
    await wait_for(lambda: len(server.peers) == 3)
    view = await scan("procfs", known, {server.address})
    assert view.full_view
    assert {i.inode: i.fd for i in known}.items() <= dict(view.quiet).items()
    assert view.fds_used == len(os.listdir("/proc/self/fd")) - 1  # the listing's own fd
    assert view.fd_limit == resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def test_procfs_scan_gives_the_loop_a_turn_every_chunk_of_fd_numbers() -> None:
    """Most numbers probed are closed (an fd table mostly empty, or probing up to the
    limit): the scan still yields after every ``chunk`` numbers, not only after ``chunk``
    open ones."""
    steps = scan_procfs.scan_procfs(set(), frozenset(), chunk=100, probe=range(1000))
    turns = 0
    with pytest.raises(StopIteration):
        for _ in range(10_000):
            next(steps)
            turns += 1
    assert turns >= 10


def test_scans_interleaved_on_one_thread_keep_the_poll_objects_kept() -> None:
    """Two audits at once on one thread (two pools, or a probe's audit beside the periodic
    one) step their scans in turn: neither may drop the other's kept poll objects (the
    first to finish dropped every range, and the next audit registered them all again)."""
    table = scan_procfs._table_numbers()
    ranges = {(r.start, r.stop) for r in scan_procfs._chunks(table, 100)}
    kept = scan_procfs._kept_pollers()
    scans = [scan_procfs.scan_procfs(set(), frozenset(), chunk=100) for _ in range(2)]
    for _ in range(100_000):  # bounded: each scan ends after a few steps per chunk
        if not scans:
            break
        for steps in list(scans):
            try:
                next(steps)
            except StopIteration:
                scans.remove(steps)
    assert not scans
    assert ranges <= kept._kept.keys()


async def test_rst_socket_is_close_in_procfs_and_missed_by_psutil(
    server: Server, sockets: Sockets
) -> None:
    client = sockets.raw(server.address)
    ident = identify(client)
    await server.rst(ident.local)
    await wait_for(lambda: tcp_state(ident.fd) == "CLOSE")

    procfs = await scan("procfs", [ident], {server.address})
    assert [r.state for r in procfs.sockets if r.inode == ident.inode] == ["CLOSE"]
    assert ident.inode not in procfs.quiet
    # psutil's and lsof's own views have no row for it (they read the kernel's
    # connection tables, which drop a socket in CLOSE) ...
    raw, _ = psutil_rows()
    assert not [r for r in raw if r.fd == ident.fd]
    lsof_rows = drain(parse_lsof(await run_lsof()))
    assert [r.fd for r in lsof_rows if r.fd == ident.fd] == []
    assert lsof_rows  # it does list the others
    # ... so the scan fills the gap by probing the pool's own fds.
    slow: tuple[Backend, ...] = ("psutil", "lsof")
    for backend in slow:
        view = await scan(backend, [ident], {server.address})
        assert [(r.fd, r.inode, r.state) for r in view.sockets if r.fd == ident.fd] == [
            (ident.fd, ident.inode, "CLOSE")
        ]


async def test_system_out_of_fds_probes_near_the_pools_fds_only(
    server: Server, sockets: Sockets, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENFILE (the whole system's file table is full) cannot be made here without starving
    every other process, so reading the fd table's size is made to fail with it; the rest
    is real. The EMFILE case, real, is in test_audit_fd_limit.py."""

    def enfile() -> Generator[int, None, None]:
        raise OSError(errno.ENFILE, os.strerror(errno.ENFILE), "/proc/self/status")
        yield 0  # a generator, like the fd table's numbers it stands for

    monkeypatch.setattr(scan_procfs, "_table_numbers", enfile)
    pooled = sockets.raw(server.address)
    beside = sockets.raw(server.address)
    ident = identify(pooled)
    # The server (on this loop) accepts while the scan gives the loop a turn between
    # chunks: let it accept first, so no fd appears mid-scan.
    await wait_for(lambda: len(server.peers) == 2)
    view = await scan("procfs", [ident], {server.address})

    upto = ident.fd + 1 + PROBE_BEYOND
    assert view.fd_exhausted and view.full_view
    assert "(ENFILE)" in view.notes[0]
    assert f"probed fds 0-{upto - 1} and the pool's own" in view.notes[0]
    assert f"(fds from {upto} on not looked at)" in view.notes[0]
    assert dict(view.quiet) == {ident.inode: ident.fd}
    assert [r.fd for r in view.sockets if r.local == beside.getsockname()] == [beside.fileno()]
    assert view.fds_used == len(os.listdir("/proc/self/fd")) - 1  # the listing's own fd


# --------------------------------------------------------------------------- stragglers


@pytest.mark.parametrize("backend", BACKENDS)
async def test_straggler_is_force_closed_and_gone(
    server: Server, sockets: Sockets, backend: Backend
) -> None:
    """A connector's close left the socket open in a transport nobody will close."""
    transport = await sockets.transport(server.address)
    ident = identify(transport.get_extra_info("socket"))
    target = target_for(server, backend=backend)
    record = target.add(ident, ConnState.CLOSED)

    report = await run_audit(target)

    (f,) = report.findings
    assert (f.kind, f.action, f.fd, f.inode) == (
        Kind.STRAGGLER,
        Action.FORCE_CLOSED,
        ident.fd,
        ident.inode,
    )
    assert f.record_state == "closed" and f.retired_at is not None
    assert fds_holding(ident.inode) == []
    assert report.healthy
    assert record.os_closed is True and record.history[-1].event == "verified"


@pytest.mark.parametrize("backend", BACKENDS)
async def test_straggler_in_a_stream_nobody_closes_is_shut_down_and_reported(
    server: Server, sockets: Sockets, backend: Backend
) -> None:
    """A leaked StreamWriter keeps its transport open after EOF (StreamReaderProtocol stays
    half-open), and asyncio offers no public way to reach a transport by its fd: the audit
    shuts the socket down (no byte can cross it any more) and says truthfully that an fd
    the pool does not own still holds it."""
    writer = await sockets.stream(server.address)  # kept: a dropped writer closes itself
    ident = identify(writer.transport.get_extra_info("socket"))
    target = target_for(server, backend=backend)
    target.add(ident, ConnState.CLOSED)

    report = await run_audit(target)

    (f,) = report.findings
    assert (f.kind, f.action, f.fd, f.inode) == (
        Kind.STRAGGLER,
        Action.CLOSE_FAILED,
        ident.fd,
        ident.inode,
    )
    assert "shut down via dup" in f.detail and f"fd {ident.fd} still holds it" in f.detail
    assert fds_holding(ident.inode) == [ident.fd]
    assert tcp_state(ident.fd) != "ESTABLISHED"
    assert not report.healthy
    writer.close()  # its owner finally lets go


async def test_straggler_the_pool_still_holds_is_aborted(server: Server, sockets: Sockets) -> None:
    transport = await sockets.transport(server.address)
    ident = identify(transport.get_extra_info("socket"))
    target = target_for(server)
    record = target.add(ident, ConnState.CLOSED, holding=transport)

    report = await run_audit(target)

    (f,) = report.findings
    assert f.action is Action.FORCE_CLOSED and "pool aborted" in f.detail
    assert target.aborted == [record]
    assert fds_holding(ident.inode) == []


async def test_dupd_fd_of_a_retired_socket_is_found_and_left_to_its_holder(
    server: Server, sockets: Sockets, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(verify, "VERIFY_WAIT", 2.0)  # so the second audit surely overlaps
    client = sockets.raw(server.address)
    ident = identify(client)
    dup = sockets.fd(os.dup(ident.fd))
    client.close()  # the pool closed its fd; a dup it never knew about lives on
    target = target_for(server)
    record = target.add(ident, ConnState.CLOSED)

    report = await run_audit(target)

    (f,) = report.findings
    assert (f.kind, f.action, f.fds) == (Kind.STRAGGLER, Action.CLOSE_FAILED, (dup,))
    assert f"fd {dup} still holds it" in f.detail and "in the background" in f.detail
    assert not report.healthy
    # Shut down (the peer saw the connection end), but the fd number stays with its holder.
    assert os.fstat(dup).st_ino == ident.inode
    assert tcp_state(dup) != "ESTABLISHED"
    assert record.os_closed is None  # the report went out before the verdict

    # An audit while that check runs does not start another one.
    (again,) = (await run_audit(target)).findings
    assert again.action is Action.CLOSE_FAILED and "still being verified" in again.detail

    await wait_for(lambda: record.os_closed is not None, 10.0)
    assert record.os_closed is False and record.history[-1].event == "verified"
    later = await run_audit(target)
    (v,) = later.verifications
    assert (v.kind, v.action, v.record_id, v.fds, v.still) == (
        Kind.STRAGGLER,
        Action.CLOSE_FAILED,
        record.id,
        (dup,),
        (dup,),
    )
    assert v.after >= 2.0
    assert later.to_dict()["verifications"][0]["still"] == [dup]
    assert "verified since last audit: straggler" in str(later)
    assert (await run_audit(target)).verifications == ()  # each verdict is reported once


async def test_a_socket_that_leaves_after_the_report_is_verified_in_the_next_one(
    server: Server,
    sockets: Sockets,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Its holder (a thread) closes it only after the audit has reported: the report says
    close_failed, the background check sees it go, and the next report says so."""
    monkeypatch.setattr(verify, "VERIFY_WAIT", 10.0)  # the check outlasts any scheduling lag
    client = sockets.raw(server.address)
    ident = identify(client)
    target = target_for(server)
    record = target.add(ident, ConnState.CLOSED)
    may_close = threading.Event()

    def holder() -> None:
        client.recv(1)  # returns b"" when the audit shuts the socket down
        may_close.wait(10)
        client.close()

    thread = threading.Thread(target=holder, daemon=True)
    thread.start()
    try:
        report = await run_audit(target)
    finally:
        may_close.set()
    (f,) = report.findings
    assert (f.kind, f.action) == (Kind.STRAGGLER, Action.CLOSE_FAILED)
    assert not report.healthy

    with caplog.at_level(logging.INFO, logger="guardedpool.audit"):
        await wait_for(lambda: record.os_closed is not None, 10.0)
    await asyncio.to_thread(thread.join, 5)
    assert record.os_closed is True
    (line,) = [r for r in caplog.records if getattr(r, "action", None) == "force_closed"]
    assert line.levelno == logging.INFO
    assert line.getMessage().startswith(
        f"guardedpool audit: straggler conn {record.id} key 'inbox-1' fd {ident.fd} "
        f"inode {ident.inode} verified gone "
    )
    assert (line.conn_id, line.fd, line.inode) == (record.id, ident.fd, ident.inode)  # type: ignore[attr-defined]
    assert record.history[-1].event == "verified" and "gone" in record.history[-1].detail
    later = await run_audit(target)
    assert later.healthy and later.findings == ()
    (v,) = later.verifications
    assert (v.action, v.record_id, v.still, v.inode) == (
        Action.FORCE_CLOSED,
        record.id,
        (),
        ident.inode,
    )


async def test_each_action_is_logged_as_a_line_that_reads_on_its_own(
    server: Server, sockets: Sockets, caplog: pytest.LogCaptureFixture
) -> None:
    transport = await sockets.transport(server.address)
    ident = identify(transport.get_extra_info("socket"))
    target = target_for(server)
    record = target.add(ident, ConnState.CLOSED)

    with caplog.at_level(logging.DEBUG, logger="guardedpool.audit"):
        (f,) = (await run_audit(target)).findings

    (line,) = [r for r in caplog.records if r.name == "guardedpool.audit"]
    text = line.getMessage()
    assert line.levelno == logging.WARNING
    for fact in (
        "straggler",
        f"conn {record.id}",
        "key 'inbox-1'",
        f"fd {ident.fd}",
        f"inode {ident.inode}",
        f"{ident.local[0]}:{ident.local[1]} -> {HOST}:{server.port}",
        "force_closed",
        "shut down via dup",
    ):
        assert fact in text, (fact, text)
    assert text == f"guardedpool audit: {f.summary()}"
    fields = {k: getattr(line, k) for k in ("kind", "action", "key", "conn_id", "fd", "inode")}
    assert fields == {
        "kind": "straggler",
        "action": "force_closed",
        "key": "inbox-1",
        "conn_id": record.id,
        "fd": ident.fd,
        "inode": ident.inode,
    }


async def test_straggler_reported_only_when_force_close_is_off(
    server: Server, sockets: Sockets
) -> None:
    client = sockets.raw(server.address)
    ident = identify(client)
    target = target_for(server, force_close_stragglers=False)
    target.add(ident, ConnState.CLOSED)

    (f,) = (await run_audit(target)).findings
    assert (f.kind, f.action) == (Kind.STRAGGLER, Action.REPORTED)
    assert tcp_state(ident.fd) == "ESTABLISHED"


# --------------------------------------------------------------------------- half-open


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("how", "os_state"), [("fin", "CLOSE_WAIT"), ("rst", "CLOSE")])
async def test_half_open_is_poisoned(
    server: Server, sockets: Sockets, backend: Backend, how: str, os_state: str
) -> None:
    client = sockets.raw(server.address)
    ident = identify(client)
    await (server.fin if how == "fin" else server.rst)(ident.local)
    await wait_for(lambda: tcp_state(ident.fd) == os_state)
    target = target_for(server, backend=backend)
    record = target.add(ident, ConnState.IDLE)

    report = await run_audit(target)

    (f,) = report.findings
    assert (f.kind, f.action, f.os_state) == (Kind.HALF_OPEN, Action.POISONED, os_state)
    assert target.poisoned == [record]
    assert not report.healthy
    assert os.fstat(ident.fd).st_ino == ident.inode  # poisoning is the pool's job


async def test_half_open_when_the_socket_is_gone(server: Server, sockets: Sockets) -> None:
    client = sockets.raw(server.address)
    ident = identify(client)
    client.close()
    target = target_for(server)
    record = target.add(ident, ConnState.IN_USE, borrowed_for=1.0)

    (f,) = (await run_audit(target)).findings
    assert (f.kind, f.action, f.fds, f.os_state) == (Kind.HALF_OPEN, Action.POISONED, (), None)
    assert target.poisoned == [record]


async def test_next_audit_sees_another_socket_at_a_records_fd(
    server: Server, sockets: Sockets
) -> None:
    """Between two audits of one target the auditor keeps only the set of the pool's
    socket inodes (its books); the OS view is read afresh: a record's fd that now holds
    another socket is found half-open, and a socket whose record left the books is an
    orphan."""
    client = sockets.raw(server.address)
    kept = sockets.raw(server.address)
    await wait_for(lambda: len(server.peers) == 2)
    ident = identify(client)
    target = target_for(server)
    record = target.add(ident, ConnState.IN_USE, borrowed_for=1.0)
    gone = target.add(identify(kept), ConnState.IN_USE, borrowed_for=1.0)
    assert not (await run_audit(target)).findings

    other = sockets.keep(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    client.close()
    os.dup2(other.fileno(), sockets.fd(ident.fd))  # the same number, another socket
    (f,) = (await run_audit(target)).findings
    assert (f.kind, f.action, f.fds) == (Kind.HALF_OPEN, Action.POISONED, ())
    assert target.poisoned == [record]

    target.live.remove(record)
    target.live.remove(gone)  # out of the books, its socket still open
    (f,) = (await run_audit(target)).findings
    assert (f.kind, f.action, f.fd) == (Kind.ORPHAN, Action.REPORTED, kept.fileno())


# --------------------------------------------------------------------------- orphans


@pytest.mark.parametrize("backend", BACKENDS)
async def test_orphan_is_reported_and_left_open(
    server: Server, sockets: Sockets, backend: Backend
) -> None:
    pooled = sockets.raw(server.address)
    beside = sockets.raw(server.address)  # opened beside the pool: no record owns it
    target = target_for(server, backend=backend)
    target.add(identify(pooled))

    report = await run_audit(target)

    (f,) = report.findings
    assert (f.kind, f.action, f.key, f.record_id) == (Kind.ORPHAN, Action.REPORTED, None, None)
    assert f.local == beside.getsockname() and f.fd == beside.fileno()
    assert tcp_state(beside.fileno()) == "ESTABLISHED"
    assert not report.healthy


async def test_orphan_is_closed_when_asked(server: Server, sockets: Sockets) -> None:
    beside = await sockets.transport(server.address)
    ident = identify(beside.get_extra_info("socket"))
    target = target_for(server, close_orphans=True)

    (f,) = (await run_audit(target)).findings
    assert (f.kind, f.action) == (Kind.ORPHAN, Action.FORCE_CLOSED)
    assert fds_holding(ident.inode) == []


def connecting(target: FakeTarget, key: str = "inbox-2") -> ConnectionRecord:
    """An OPENING record in a connect attempt that started now (no socket identity yet)."""
    now = target.now()
    record = ConnectionRecord(key, now, now + 60)
    record.attempt_at = now
    target.live.append(record)
    return record


async def test_orphans_wait_while_a_connect_is_in_flight(server: Server, sockets: Sockets) -> None:
    sockets.raw(server.address)
    target = target_for(server)
    connecting(target)

    report = await run_audit(target)
    assert report.findings == () and report.orphans_deferred == 1


async def test_a_connect_between_attempts_defers_nothing(server: Server, sockets: Sockets) -> None:
    sockets.raw(server.address)
    target = target_for(server)
    connecting(target).attempt_at = None  # OPENING, sleeping in backoff: no socket

    report = await run_audit(target)
    assert [f.kind for f in report.findings] == [Kind.ORPHAN] and report.orphans_deferred == 0


@dataclass(eq=False)
class EndsDuringTheScan(FakeTarget):
    """A target whose one connect attempt ends (fails, its record back in backoff) as the
    OS listing starts -- the auditor reads the clock then -- as one can while psutil or
    lsof run for tens of milliseconds."""

    def now(self) -> float:
        for record in self.live:
            record.attempt_at = None
        return super().now()


@pytest.mark.parametrize("backend", ["procfs", "psutil", "lsof"])
async def test_an_attempt_that_ends_during_the_scan_still_covers_its_socket(
    server: Server, sockets: Sockets, backend: Backend
) -> None:
    # Found by a review: with psutil and lsof, the pool's own hung connects were reported
    # as orphans now and then, when an attempt listed in flight had failed by the time the
    # records were read after the scan.
    sockets.raw(server.address)  # the attempt's socket, as the listing saw it
    base = target_for(server, backend=backend)
    target = EndsDuringTheScan(base.config, base.addresses)
    connecting(target)

    report = await run_audit(target)
    assert report.findings == () and report.orphans_deferred == 1


async def test_a_deferred_orphan_is_reported_once_no_attempt_could_own_it(
    server: Server, sockets: Sockets
) -> None:
    beside = sockets.raw(server.address)
    target = target_for(server)
    record = connecting(target)
    assert (await run_audit(target)).orphans_deferred == 1

    # That attempt failed and the next one started: it cannot own a socket seen before it.
    target.skew += 0.5
    record.attempt_at = target.now()
    report = await run_audit(target)
    (f,) = report.findings
    assert (f.kind, f.fd, report.orphans_deferred) == (Kind.ORPHAN, beside.fileno(), 0)
    assert not report.healthy


async def test_a_deferred_orphan_is_closed_once_the_connect_bound_passes(
    server: Server, sockets: Sockets
) -> None:
    beside = await sockets.transport(server.address)  # closes its fd when shut down
    inode = identify(beside.get_extra_info("socket")).inode
    target = target_for(server, close_orphans=True)
    connecting(target)  # hangs for good: its attempt_at never changes
    assert (await run_audit(target)).orphans_deferred == 1

    target.skew += connect_bound(target.config) - 1.0
    assert (await run_audit(target)).orphans_deferred == 1  # it could still be the attempt's

    target.skew += 1.5
    report = await run_audit(target)
    (f,) = report.findings
    assert (f.kind, f.action, report.orphans_deferred) == (Kind.ORPHAN, Action.FORCE_CLOSED, 0)
    assert fds_holding(inode) == []


# --------------------------------------------------------------------------- hands off


async def test_unrelated_sockets_are_never_touched(server: Server, sockets: Sockets) -> None:
    other = await Server().start()
    try:
        unrelated = [
            sockets.raw(other.address),  # another port on the same host
            *(sockets.keep(s) for s in socket.socketpair()),  # UNIX
        ]
        udp = sockets.keep(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        udp.connect(server.address)  # "to" a pooled endpoint, but not TCP
        unrelated.append(udp)
        straggler = await sockets.transport(server.address)
        target = target_for(server, close_orphans=True)
        target.add(identify(straggler.get_extra_info("socket")), ConnState.CLOSED)
        before = {s.fileno(): os.fstat(s.fileno()).st_ino for s in unrelated}

        report = await run_audit(target)

        assert [f.kind for f in report.findings] == [Kind.STRAGGLER]
        assert {s.fileno(): os.fstat(s.fileno()).st_ino for s in unrelated} == before
        tcp = unrelated[0]
        tcp.sendall(b"ping")
        assert await asyncio.to_thread(tcp.recv, 4) == b"ping"  # the server is on this loop
        a, b = unrelated[1], unrelated[2]
        a.sendall(b"x")
        assert b.recv(1) == b"x"
    finally:
        await other.stop()


# --------------------------------------------------------------------------- leaks, overdue


async def test_leak_suspect_has_task_and_stack(server: Server, sockets: Sockets) -> None:
    ident = identify(sockets.raw(server.address))
    target = target_for(server)
    target.add(ident, ConnState.IN_USE, borrowed_for=31.0)

    report = await run_audit(target)

    (f,) = report.findings
    assert (f.kind, f.action) == (Kind.LEAK_SUSPECT, Action.REPORTED)
    assert f.task == "sync-inbox-1" and f.stack == ("worker.py:42 in sync",)
    assert f.borrowed_at is not None and abs(f.borrowed_at - (time.time() - 31.0)) < 2.0
    assert f.should_have_closed_at is not None
    assert not report.healthy
    data = json.loads(json.dumps(report.to_dict()))
    assert data["findings"][0]["stack"] == ["worker.py:42 in sync"]
    assert "leak_suspect" in str(report)


async def test_overdue_idle_connection_is_retired(server: Server, sockets: Sockets) -> None:
    ident = identify(sockets.raw(server.address))
    target = target_for(server)
    record = target.add(ident, ConnState.IDLE, idle_for=150.0)

    report = await run_audit(target)

    (f,) = report.findings
    assert (f.kind, f.action) == (Kind.OVERDUE, Action.RETIRED)
    assert target.retired == [record]
    assert report.healthy


async def test_clean_pool_is_healthy_with_process_figures(server: Server, sockets: Sockets) -> None:
    target = target_for(server)
    for _ in range(3):
        target.add(identify(sockets.raw(server.address)))
    await wait_for(lambda: len(server.peers) == 3)
    report = await run_audit(target)
    assert report.healthy and report.findings == ()
    assert report.backend == "procfs" and report.records_checked == 3
    assert report.sockets_seen >= 7  # 3 clients, their 3 peers, the listener
    assert report.fds_used > 6 and report.fd_limit is not None
    assert abs(report.checked_at - time.time()) < 5
    json.dumps(report.to_dict())


def test_identities_share_the_peer_address_tuple() -> None:
    # Thousands of pooled sockets talk to a handful of servers: one remote tuple per peer.
    with socket.create_server(("127.0.0.1", 0)) as listener:
        peer = listener.getsockname()
        with (
            socket.create_connection(peer, timeout=5) as a,
            socket.create_connection(peer, timeout=5) as b,
        ):
            ia, ib = identify(a), identify(b)
            assert ia.remote == ib.remote == peer
            assert ia.remote is ib.remote
            assert ia.local != ib.local and ia.inode != ib.inode
