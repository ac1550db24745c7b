"""The IMAP connector: opens guarded, logged-in connections for pool keys on aioimaplib.

``open`` builds the connection itself with ``loop.create_connection`` rather than through
aioimaplib's ``IMAP4`` class, which starts connecting in a task of its own: a task the
caller cannot bound, cancel or clean up, so a timed-out connect could leave a socket
behind. Here one ``asyncio.timeout(connect_timeout)`` covers TCP, TLS, greeting and login,
and every failure, cancellation included, aborts the transport before the error leaves.

Errors are typed for the reconnect path: :class:`ConnectTimeout`; :class:`ConnectError`
(``transient=True``: refused, reset, EOF during TLS, a ``BYE`` greeting, a lost
connection, LOGIN answered ``NO [UNAVAILABLE]`` and similar); :class:`CertificateError`
and :class:`AuthenticationError` (``transient=False``, never worth a retry). No message
carries a password or token: aioimaplib's own exception texts are never passed through
for the login step.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable, Mapping, Set
from typing import TYPE_CHECKING

from ..errors import (
    AuthenticationError,
    CertificateError,
    ConnectError,
    ConnectionPoisoned,
    ConnectTimeout,
    UnknownKey,
)
from ..sockets import SocketLike, set_keepalive, socket_tcp_state
from .account import IMAPAccount
from .client import IMAPClient
from .parse import response_code
from .protocol import GuardedProtocol

if TYPE_CHECKING:
    from ..config import PoolConfig

__all__ = ["AccountSource", "IMAPConnector"]

log = logging.getLogger("guardedpool.imap")

Address = tuple[str, int]
AccountSource = Mapping[str, IMAPAccount] | Callable[[str], IMAPAccount]

# LOGIN answered NO with one of these codes (RFC 5530) is the server's trouble, not the
# credentials': worth another attempt later.
_TRANSIENT_CODES = frozenset({"UNAVAILABLE", "INUSE", "LIMIT", "SERVERBUG"})


class IMAPConnector:
    """Opens :class:`IMAPClient` connections for keys; implements the pool's ``Connector``.

    Args:
        accounts: ``key -> IMAPAccount``, either a mapping (read at each open, so it may
            grow) or a synchronous callable (called at each open, so credentials such as
            OAuth tokens can be refreshed); a ``KeyError`` from either means
            :class:`UnknownKey`.
    """

    def __init__(self, accounts: AccountSource) -> None:
        if not isinstance(accounts, Mapping) and not callable(accounts):
            raise ValueError(
                f"accounts must be a Mapping[str, IMAPAccount] or a callable, "
                f"got {type(accounts).__name__}"
            )
        self._accounts = accounts
        self._seen: dict[str, IMAPAccount] = {}
        self._resolved: dict[Address, frozenset[Address]] = {}
        self._observed: set[Address] = set()
        self._default_ctx: ssl.SSLContext | None = None

    def __repr__(self) -> str:
        kind = "mapping" if isinstance(self._accounts, Mapping) else "callable"
        return f"<IMAPConnector accounts={kind} seen={len(self._seen)}>"

    # -- accounts ------------------------------------------------------------------------

    def account(self, key: str) -> IMAPAccount:
        """The account for ``key``; :class:`UnknownKey` when there is none."""
        try:
            if isinstance(self._accounts, Mapping):
                account = self._accounts[key]
            else:
                account = self._accounts(key)
        except KeyError:
            raise UnknownKey(key) from None
        if not isinstance(account, IMAPAccount):
            raise TypeError(
                f"accounts gave {type(account).__name__} for key {key!r}, not an IMAPAccount"
            )
        return account

    def _ssl_context(self, account: IMAPAccount) -> ssl.SSLContext | None:
        if not account.tls:
            return None
        if account.ssl_context is not None:
            return account.ssl_context
        if self._default_ctx is None:
            # Loading the system CA store takes milliseconds; one shared context will do.
            self._default_ctx = ssl.create_default_context()
        return self._default_ctx

    # -- Connector -----------------------------------------------------------------------

    async def open(self, key: str, config: PoolConfig) -> IMAPClient:
        """Connect, greet and log in within ``config.connect_timeout``; see the module doc."""
        account = self.account(key)
        self._seen[key] = account
        loop = asyncio.get_running_loop()
        started = loop.time()
        stage = "resolve"
        made: list[GuardedProtocol] = []

        def factory() -> GuardedProtocol:
            nonlocal stage
            stage = "tls" if account.tls else "greeting"
            protocol = GuardedProtocol(loop)
            made.append(protocol)
            return protocol

        ctx = self._ssl_context(account)
        extra = {"key": key, "host": account.host, "port": account.port}
        try:
            async with asyncio.timeout(config.connect_timeout):
                await self._resolve(account)
                stage = "connect"
                if ctx is not None:
                    transport, _ = await loop.create_connection(
                        factory,
                        account.host,
                        account.port,
                        ssl=ctx,
                        server_hostname=account.server_hostname or account.host,
                        ssl_handshake_timeout=config.connect_timeout,
                    )
                else:
                    transport, _ = await loop.create_connection(factory, account.host, account.port)
                protocol = made[-1]
                sock: SocketLike | None = transport.get_extra_info("socket")
                if sock is not None:
                    set_keepalive(
                        sock,
                        config.keepalive_idle,
                        config.keepalive_interval,
                        config.keepalive_count,
                    )
                stage = "greeting"
                refusal = await protocol.call(protocol.greeting)
                if refusal is not None:
                    raise ConnectError(f"{self._where(key, account)}: {refusal}")
                stage = "login"
                await self._authenticate(protocol, key, account)
        except BaseException as exc:
            for protocol in made:
                protocol.abort()
            # asyncio closes an aborted transport's socket on the next loop iteration;
            # let it, so no socket outlives a failed open.
            await asyncio.sleep(0)
            error = self._classify(exc, key, account, stage, config)
            if error is None:
                raise
            log.info(
                "imap connect failed: %s",
                error,
                extra={
                    **extra,
                    "stage": stage,
                    "error": type(error).__name__,
                    "elapsed": loop.time() - started,
                },
            )
            raise error from None
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self._observed.add((str(peer[0]), int(peer[1])))
        log.debug("imap connected", extra={**extra, "elapsed": loop.time() - started})
        return IMAPClient(protocol, key=key, op_timeout=config.op_timeout)

    async def check(self, conn: IMAPClient, timeout: float) -> None:
        """A bounded NOOP; raises (and poisons the client) when the connection is not usable."""
        await conn.noop(timeout=timeout)

    async def close(self, conn: IMAPClient, timeout: float) -> None:
        """LOGOUT (DONE first if IDLE is active) bounded by ``timeout``, then abort.

        Skips the goodbye on a poisoned connection. Returns once the socket is closed.
        """
        try:
            if not conn.poisoned:
                await conn.logout(timeout=timeout)
        finally:
            conn.abort("closed")
            await asyncio.sleep(0)

    def abort(self, conn: IMAPClient) -> None:
        """Abort the transport now; idempotent, never raises."""
        conn.abort("aborted")

    def logged_out(self, conn: IMAPClient) -> bool:
        """Whether the borrower ended the session with LOGOUT (the pool's close reason)."""
        return conn.logged_out

    def is_alive(self, conn: IMAPClient) -> bool:
        """Not poisoned, not closing, not mid-IDLE, and the kernel says ESTABLISHED.

        The TCP state catches a server that closed while the connection sat in the pool
        (CLOSE_WAIT) before the event loop has read the EOF. A connection left in IDLE
        cannot serve a command, so it is not "alive" for the pool's purposes either.
        """
        try:
            if conn.poisoned or conn.transport_closing or conn.idling:
                return False
            sock = conn.socket
            if sock is None:
                return False
            if sock.fileno() < 0:
                return False
            state = socket_tcp_state(sock)
            return state is None or state == "ESTABLISHED"
        except Exception:
            return False

    def socket_of(self, conn: IMAPClient) -> SocketLike | None:
        return conn.socket

    def endpoints(self) -> Set[Address]:
        """(ip, port) of every account known so far: for a mapping all of them, for a
        callable those opened so far; plus every peer address actually connected to.

        Never blocks: IP literals are read as they are, host names are resolved (and
        cached) by ``open`` through the loop's resolver.
        """
        accounts = (
            list(self._accounts.values())
            if isinstance(self._accounts, Mapping)
            else list(self._seen.values())
        )
        out = set(self._observed)
        for account in accounts:
            where = (account.host, account.port)
            if where not in self._resolved:
                numeric = _numeric(account.host, account.port)
                if numeric is not None:
                    self._resolved[where] = numeric
            out |= self._resolved.get(where, frozenset())
        return frozenset(out)

    # -- internals -----------------------------------------------------------------------

    async def _resolve(self, account: IMAPAccount) -> None:
        where = (account.host, account.port)
        if where in self._resolved:
            return
        numeric = _numeric(account.host, account.port)
        if numeric is not None:
            self._resolved[where] = numeric
            return
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                account.host, account.port, type=socket.SOCK_STREAM
            )
        except OSError:
            return  # create_connection will report it
        self._resolved[where] = frozenset((str(info[4][0]), int(info[4][1])) for info in infos)

    async def _authenticate(
        self, protocol: GuardedProtocol, key: str, account: IMAPAccount
    ) -> None:
        if protocol.state == "AUTH":  # PREAUTH greeting
            return
        caps = {str(c).upper() for c in protocol.capabilities}
        where = self._where(key, account)
        if account.oauth2_token is not None:
            if "AUTH=XOAUTH2" not in caps:
                raise AuthenticationError(f"{where}: server does not offer AUTH=XOAUTH2")
            response = await protocol.call(
                protocol.xoauth2_auth(account.username, account.oauth2_token)
            )
        else:
            if "LOGINDISABLED" in caps:
                raise AuthenticationError(f"{where}: server has LOGIN disabled (LOGINDISABLED)")
            assert account.password is not None
            response = await protocol.call(
                protocol.login_quoted(account.username, account.password)
            )
        lines = [bytes(line) for line in response.lines]
        if response.result != "OK":
            text = protocol.redact(lines[-1].decode("utf-8", "replace") if lines else "")[:200]
            message = f"{where}: {account.auth_method} answered {response.result} {text}".rstrip()
            if response_code(text) in _TRANSIENT_CODES:
                raise ConnectError(message)
            raise AuthenticationError(message)
        if protocol.adopt_capabilities(lines) is None:
            # No [CAPABILITY] in the OK: ask, since they usually change after login.
            caps = await protocol.call(protocol.capability_command())
            protocol.adopt_capability_response([bytes(x) for x in caps.lines])

    @staticmethod
    def _where(key: str, account: IMAPAccount) -> str:
        return f"key {key!r} ({account.host}:{account.port})"

    def _classify(
        self,
        exc: BaseException,
        key: str,
        account: IMAPAccount,
        stage: str,
        config: PoolConfig,
    ) -> ConnectError | None:
        """The typed error for a failed open, or None to re-raise ``exc`` unchanged."""
        where = self._where(key, account)
        if isinstance(exc, ConnectError):
            return exc
        if isinstance(exc, TimeoutError):
            return ConnectTimeout(
                f"{where}: connect did not finish within {config.connect_timeout:.3g} s "
                f"(stuck at {stage})"
            )
        if isinstance(exc, ssl.SSLCertVerificationError):
            return CertificateError(
                f"{where}: TLS certificate not trusted ({exc.verify_message or exc.reason})"
            )
        if isinstance(exc, ssl.SSLError):
            return ConnectError(f"{where}: TLS failed ({exc.reason or type(exc).__name__})")
        if isinstance(exc, ConnectionPoisoned):  # lost or garbled during greeting/login
            return ConnectError(f"{where}: {exc} (at {stage})")
        if isinstance(exc, OSError):
            detail = exc.strerror or str(exc) or type(exc).__name__
            return ConnectError(f"{where}: {type(exc).__name__}: {detail} (at {stage})")
        if isinstance(exc, Exception):
            # aioimaplib's own errors may quote the command line; never pass their text.
            return ConnectError(f"{where}: {type(exc).__name__} at {stage}")
        return None  # CancelledError, KeyboardInterrupt...


def _numeric(host: str, port: int) -> frozenset[Address] | None:
    """The address of an IP literal without any lookup, or None for a host name."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    except (OSError, UnicodeError):
        return None
    return frozenset((str(info[4][0]), int(info[4][1])) for info in infos)
