"""A token-introspection server (RFC 7662) on 127.0.0.1 for Dovecot's oauth2 passdb.

Dovecot (``introspection_mode = post``) POSTs ``token=...`` and reads ``active`` and
``username`` from the JSON answer. Tokens are issued here with a short lifetime, so a
test sees a real expiry: the same token that logged in a moment ago is refused with
``NO [AUTHENTICATIONFAILED]`` once it is past its time.

The server runs on its own event loop in a thread, so one server can outlive any test's
loop (module-scoped fixtures) and Dovecot's requests are answered even while a test's
loop is busy. Every wait on that thread is bounded.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from dataclasses import dataclass

from aiohttp import web

__all__ = ["TokenServer"]


@dataclass
class _Grant:
    username: str
    expires_at: float  # time.monotonic()
    revoked: bool = False


class TokenServer:
    """Issues opaque bearer tokens and answers Dovecot's introspection requests.

    Args:
        lifetime: seconds a token stays active; default 3.

    ``start()`` / ``stop()`` block (bounded by ``timeout``); ``url`` is the introspection
    endpoint once started. ``introspections`` counts the requests answered.
    """

    host = "127.0.0.1"

    def __init__(self, lifetime: float = 3.0) -> None:
        if not lifetime > 0:
            raise ValueError(f"lifetime must be > 0, got {lifetime!r}")
        self.lifetime = lifetime
        self.port = 0
        self.introspections = 0
        self.issued = 0
        self._grants: dict[str, _Grant] = {}
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/introspect"

    # -- tokens ----------------------------------------------------------------------

    def issue(self, username: str, lifetime: float | None = None) -> str:
        """A new token for ``username``, active for ``lifetime`` (default the server's)."""
        token = "gp-" + secrets.token_urlsafe(24)
        with self._lock:
            self._grants[token] = _Grant(
                username, time.monotonic() + (self.lifetime if lifetime is None else lifetime)
            )
            self.issued += 1
        return token

    def revoke(self, token: str) -> None:
        with self._lock:
            grant = self._grants.get(token)
            if grant is not None:
                grant.revoked = True

    def active(self, token: str) -> bool:
        with self._lock:
            grant = self._grants.get(token)
            return grant is not None and not grant.revoked and time.monotonic() < grant.expires_at

    # -- HTTP ------------------------------------------------------------------------

    async def _introspect(self, request: web.Request) -> web.Response:
        form = await request.post()
        token = str(form.get("token", ""))
        with self._lock:
            self.introspections += 1
            grant = self._grants.get(token)
        if grant is None or not self.active(token):
            return web.json_response({"active": False})
        return web.json_response(
            {"active": True, "username": grant.username, "token_type": "Bearer"}
        )

    def start(self, timeout: float = 5.0) -> TokenServer:
        ready = threading.Event()
        loop = asyncio.new_event_loop()
        self._loop = loop

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(self._serve())
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._shutdown())
            loop.close()

        self._thread = threading.Thread(target=run, name="token-server", daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise TimeoutError(f"token server did not start within {timeout} s")
        return self

    async def _serve(self) -> None:
        app = web.Application()
        app.router.add_post("/introspect", self._introspect)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def _shutdown(self) -> None:
        if self._runner is not None:
            await asyncio.wait_for(self._runner.cleanup(), timeout=3.0)

    def stop(self, timeout: float = 5.0) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        self._loop = self._thread = None

    def __enter__(self) -> TokenServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
