"""``/healthz`` and ``/metrics`` over aiohttp, on loopback unless configured otherwise.

``/healthz`` runs a real ``pool.audit()`` per request: the process's sockets held against
the pool's books. 200 with the report as JSON when it is healthy, 503 with the same JSON
when not -- so a load balancer or an orchestrator's liveness probe restarts a worker that
is leaking sockets, not only one that stopped answering. Audits are serialized (an audit
may force-close sockets; two at once would race to do it) and bounded by
``audit_timeout``; an audit that cannot finish is itself a 503.

``/metrics`` renders the collector of :mod:`.metrics` in the Prometheus text format.
Loopback is the default bind because both endpoints describe the process's connections
(keys, addresses, fd numbers) to whoever asks.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CollectorRegistry

from .metrics import CONTENT_TYPE, render

__all__ = ["HealthServer", "listen_socket", "make_app"]

log = logging.getLogger("imap_sync.health")

AUDIT_TIMEOUT = 10.0
"""Seconds a /healthz audit may take before the endpoint answers 503 without a report."""


class _Report(Protocol):
    @property
    def healthy(self) -> bool: ...
    def to_dict(self) -> dict[str, Any]: ...


class Auditable(Protocol):
    """What the endpoint needs of a pool."""

    @property
    def closed(self) -> bool: ...
    async def audit(self) -> _Report: ...


def _json(status: int, body: dict[str, Any]) -> web.Response:
    return web.Response(
        status=status,
        text=json.dumps(body, indent=2, default=str),
        content_type="application/json",
    )


def make_app(
    pool: Auditable, registry: CollectorRegistry, *, audit_timeout: float = AUDIT_TIMEOUT
) -> web.Application:
    """The aiohttp application (separate from serving it, so tests can use a TestClient)."""
    lock = asyncio.Lock()

    async def healthz(request: web.Request) -> web.Response:
        if pool.closed:
            return _json(503, {"healthy": False, "problems": ["pool closed"]})
        try:
            async with asyncio.timeout(audit_timeout):
                async with lock:
                    report = await pool.audit()
        except TimeoutError:
            return _json(
                503,
                {
                    "healthy": False,
                    "problems": [f"audit did not finish within {audit_timeout:g} s"],
                },
            )
        except Exception as exc:  # a scan that failed is no evidence of health
            log.warning("audit failed: %s: %s", type(exc).__name__, exc)
            return _json(
                503, {"healthy": False, "problems": [f"audit failed: {type(exc).__name__}: {exc}"]}
            )
        return _json(200 if report.healthy else 503, report.to_dict())

    async def metrics(request: web.Request) -> web.Response:
        body = render(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    return app


def listen_socket(host: str, port: int) -> socket.socket:
    """A listening, non-blocking TCP socket on ``host:port`` (port 0: any free one).
    Raises OSError (EADDRINUSE: another process has the port); nothing is left open."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(64)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class HealthServer:
    """Serves :func:`make_app` on ``host:port`` (port 0: any free port, see ``address``)."""

    def __init__(
        self,
        app: web.Application,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        sock: socket.socket | None = None,
    ) -> None:
        self._app = app
        self._host = host
        self._port = port
        self._sock = sock  # from listen_socket(): bound before anything else started
        self._runner: web.AppRunner | None = None
        self.address: tuple[str, int] | None = None

    async def start(self) -> tuple[str, int]:
        """Bind (unless given ``sock``) and serve; returns the bound (host, port).
        Raises OSError if taken."""
        sock, self._sock = self._sock, None
        if sock is None:
            sock = listen_socket(self._host, self._port)
        # No access log: a probe every few seconds would bury everything else.
        runner = web.AppRunner(self._app, access_log=None)
        await runner.setup()
        try:
            await web.SockSite(runner, sock).start()
        except BaseException:
            sock.close()
            await runner.cleanup()
            raise
        self._runner = runner
        host, port = sock.getsockname()[:2]
        self.address = (str(host), int(port))
        return self.address

    @property
    def url(self) -> str:
        assert self.address is not None, "start() first"
        host, port = self.address
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> HealthServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
