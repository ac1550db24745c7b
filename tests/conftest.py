"""Shared fixtures: the session Dovecot, fault proxies, and the per-module socket-leak check.

The harness lives in ``tests/harness`` (importable as ``harness`` because pytest puts this
directory on ``sys.path`` for a rootdir conftest without ``__init__.py``). The Dovecot
harness (and ``trustme``, which it needs) is imported only by the fixtures that start a
server, so the unit tests run on a machine without Dovecot or ``trustme``.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import inspect
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import pytest
from harness.sockets import describe_sockets, socket_fds

if TYPE_CHECKING:
    from harness.dovecot import DovecotServer
    from harness.postgres import PostgresServer
    from harness.proxy import FaultProxy, Mode, ProxyFactory
    from harness.redis import RedisServer

# How long sockets may take to close after a module's last test before they count as leaked
# (the event loop of the last test is closed by then; this covers stragglers in threads).
SOCKET_GRACE = 0.5

# An async test's own deadline, this much inside its pytest-timeout: pytest-timeout's
# SIGALRM raises wherever the main thread is, and inside an asyncio task's step the task
# swallows it (the test then hangs on); a cancelled test task fails where it waited.
ASYNC_MARGIN = 3.0


def _bounded(test: Callable[..., Awaitable[Any]], limit: float) -> Callable[..., Any]:
    @functools.wraps(test)
    async def run(*args: Any, **kwargs: Any) -> Any:
        async with asyncio.timeout(limit):
            return await test(*args, **kwargs)

    return run


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> None:
    if isinstance(item, pytest.Function) and inspect.iscoroutinefunction(item.obj):
        marker = item.get_closest_marker("timeout")
        limit = float(marker.args[0] if marker and marker.args else item.config.getini("timeout"))
        if limit > ASYNC_MARGIN:
            item.obj = _bounded(item.obj, limit - ASYNC_MARGIN)


class _Server(Protocol):
    def start(self) -> object: ...
    def stop(self) -> object: ...


S = TypeVar("S", bound=_Server)


def _running(server: S) -> Iterator[S]:
    """A fixture's body for one server: started, yielded, stopped however the test ended."""
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _starting(kind: Callable[..., S]) -> Iterator[Callable[..., S]]:
    """A fixture's body for servers a test starts itself (``kind``'s keyword arguments);
    every one is stopped at test end."""
    servers: list[S] = []

    def make(**kwargs: Any) -> S:
        server = kind(**kwargs)
        servers.append(server)
        server.start()
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def dovecot() -> Iterator[DovecotServer]:
    """One real Dovecot for the whole session: plain + TLS ports, users alice..erin.

    Tests that change a mailbox should use ``fresh_user`` so they do not see each other's
    mail; tests that need odd server settings or a restart should use ``dovecot_factory``.
    """
    from harness.dovecot import DovecotServer

    yield from _running(DovecotServer())


@pytest.fixture
def dovecot_factory() -> Iterator[Callable[..., DovecotServer]]:
    """Start extra Dovecots for one test: ``dovecot_factory(max_userip_connections=2)``.

    Takes the ``DovecotServer`` keyword arguments; every server is stopped at test end
    (about 1 s each: Dovecot's master sleeps 1 s on shutdown).
    """
    from harness.dovecot import DovecotServer

    yield from _starting(DovecotServer)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One real redis-server for the session (AOF on). Tests keep apart by ``prefix``
    (see ``fleet_prefix``); a test that restarts or stops Redis uses ``redis_factory``."""
    from harness.redis import RedisServer

    yield from _running(RedisServer())


@pytest.fixture
def redis_factory() -> Iterator[Callable[..., RedisServer]]:
    """Start extra redis-servers for one test (to restart, kill or stop); all stopped at
    test end."""
    from harness.redis import RedisServer

    yield from _starting(RedisServer)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One real PostgreSQL for the session (started on first use, ~1.5 s): ``.dsn``."""
    from harness.postgres import PostgresServer

    yield from _running(PostgresServer())


@pytest.fixture
def fleet_prefix() -> str:
    """A Redis key prefix of this test's own."""
    return f"gpt-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def fresh_user(dovecot: DovecotServer) -> tuple[str, str]:
    """A new user on the session Dovecot with an empty mailbox: (username, password)."""
    name = f"u{uuid.uuid4().hex[:12]}"
    return name, dovecot.add_user(name)


@pytest.fixture
async def fault_proxy(dovecot: DovecotServer) -> AsyncIterator[ProxyFactory]:
    """Factory for started ``FaultProxy`` objects, all stopped at the end of the test."""
    from harness.proxy import FaultProxy, Mode

    proxies: list[FaultProxy] = []

    async def make(
        *,
        tls: bool = False,
        upstream: tuple[str, int] | None = None,
        mode: Mode = Mode.PASS,
        **params: Any,
    ) -> FaultProxy:
        host, port = upstream or (dovecot.host, dovecot.tls_port if tls else dovecot.port)
        proxy = FaultProxy(host, port)
        proxy.set_mode(mode, **params)
        proxies.append(proxy)
        return await proxy.start()

    yield make
    for proxy in proxies:
        await proxy.stop()


@pytest.fixture(scope="module", autouse=True)
def _no_socket_leaks(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a module that ends holding more sockets than it started with.

    The baseline is taken when the module's first test starts, after any session fixture
    that test uses; a session fixture first used later in a module must not hold sockets
    in this process (the Dovecot fixture holds none: Dovecot is a child process).
    """
    before = socket_fds()
    yield
    deadline = time.monotonic() + SOCKET_GRACE
    after = socket_fds()
    while len(after) > len(before) and time.monotonic() < deadline:
        time.sleep(0.02)
        after = socket_fds()
    if len(after) <= len(before):
        return
    new = {fd: ino for fd, ino in after.items() if before.get(fd) != ino}
    details = describe_sockets(set(new.values()))
    lines = [f"  fd {fd}: {details[ino]} (inode {ino})" for fd, ino in sorted(new.items())]
    gc.collect()
    unreferenced = len(after) - len(socket_fds())
    hint = (
        f"\n{unreferenced} of them were unreferenced but never closed (freed by gc.collect())"
        if unreferenced > 0
        else ""
    )
    pytest.fail(
        f"{request.module.__name__} leaked sockets: {len(before)} at start, {len(after)} at "
        f"end{hint}\n" + "\n".join(lines),
        pytrace=False,
    )
