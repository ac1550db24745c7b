"""The IMAP connector: opens guarded, logged-in connections for pool keys on aioimaplib.

``open`` builds the connection itself with ``loop.create_connection`` rather than through
aioimaplib's ``IMAP4`` class, which starts connecting in a task of its own: a task the
caller cannot bound, cancel or clean up, so a timed-out connect could leave a socket
behind. Here one ``asyncio.timeout(connect_timeout)`` covers TCP, TLS, greeting and login,
and every failure, cancellation included, aborts the transport before the error leaves.

The steps, each a named stage in errors and logs: connect, tls (implicit TLS, see
:mod:`~guardedpool.imap.starttls`), greeting, starttls, login (LOGIN, or OAUTHBEARER /
XOAUTH2 with a token from the account's provider, see :mod:`~guardedpool.imap.sasl`),
id (:mod:`~guardedpool.imap.rfc2971`), compress (:mod:`~guardedpool.imap.compress`).

Errors are typed for the reconnect path: :class:`ConnectTimeout`; :class:`ConnectError`
(``transient=True``: refused, reset, EOF during TLS, a ``BYE`` greeting, a lost
connection, a token provider that raised, and similar); :class:`ServerBusy`
(``transient=True``: the server refused for its limits -- too many connections, throttled,
a rate limit, temporarily unavailable -- at the greeting, at LOGIN/AUTHENTICATE or with a
``BYE`` before login was through; classified by :mod:`guardedpool.imap.refusals`, carrying
the suggested delay); :class:`CertificateError`, :class:`AuthenticationError` and
:class:`ConfigurationError` (``transient=False``, never worth a retry; the last names the
likely mistake, see :mod:`guardedpool.imap.diagnose`); :class:`ProtocolError` (not a
ConnectError, never retried) when STARTTLS is missing, refused, or followed by injected
bytes. No message carries a password or token: aioimaplib's own exception texts and a
token provider's are never passed through for the login step.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
import socket
import ssl
import weakref
from collections.abc import Awaitable, Callable, Mapping, Set
from typing import TYPE_CHECKING, Any

from ..errors import (
    AuthenticationError,
    CertificateError,
    ConfigurationError,
    ConnectError,
    ConnectionPoisoned,
    ConnectTimeout,
    PoolError,
    ProtocolError,
    ServerBusy,
    ServerLimit,
    UnknownKey,
)
from ..sockets import SocketLike, set_keepalive, socket_tcp_state
from .account import IMAPAccount
from .client import IMAPClient
from .compress import start_compression
from .diagnose import PROBE, context_problem, misconfiguration
from .parse import response_code
from .protocol import GuardedProtocol
from .refusals import Refusal, Status, classify_refusal
from .rfc2971 import send_id
from .sasl import choose_oauth_mechanism, oauth_exchange
from .starttls import starttls, upgrade_tls

if TYPE_CHECKING:
    from ..config import PoolConfig

__all__ = ["AccountSource", "IMAPConnector"]

log = logging.getLogger("guardedpool.imap")

Address = tuple[str, int]
AccountSource = (
    Mapping[str, IMAPAccount]
    | Callable[[str], IMAPAccount]
    | Callable[[str], Awaitable[IMAPAccount]]
)

# A token holding one of these would break the SASL framing or the command line.
_TOKEN_BREAKS = re.compile(r"[\x00-\x1f\x7f]")
# A plaintext connection whose greeting has not begun after this long (seconds, at most
# half of connect_timeout) gets diagnose.PROBE, so a TLS port answers with a TLS alert.
GREETING_PROBE_AFTER = 2.0


def _status_text(response: Any) -> str:
    lines = response.lines
    return bytes(lines[-1]).decode("utf-8", "replace") if lines else ""


class IMAPConnector:
    """Opens :class:`IMAPClient` connections for keys; implements the pool's ``Connector``.

    Args:
        accounts: ``key -> IMAPAccount``: a mapping (read at each open, so it may grow),
            a callable, or an async callable (called at each open, e.g. to read the
            account from a database; its time counts against ``connect_timeout``). A
            ``KeyError`` from any of them means :class:`UnknownKey`.
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
        # endpoints(): the accounts it last read, and their (host, port) pairs
        self._endpoint_accounts: list[IMAPAccount] = []
        self._endpoint_wheres: frozenset[Address] = frozenset()
        self._observed: set[Address] = set()
        self._default_ctx: ssl.SSLContext | None = None
        self._usable_ctx: weakref.WeakSet[ssl.SSLContext] = weakref.WeakSet()

    def __repr__(self) -> str:
        kind = "mapping" if isinstance(self._accounts, Mapping) else "callable"
        return f"<IMAPConnector accounts={kind} seen={len(self._seen)}>"

    # -- accounts ------------------------------------------------------------------------

    def account(self, key: str) -> IMAPAccount:
        """The account for ``key``; :class:`UnknownKey` when there is none.

        Raises TypeError when the accounts source is async: use :meth:`resolve_account`.
        """
        try:
            if isinstance(self._accounts, Mapping):
                account: object = self._accounts[key]
            else:
                account = self._accounts(key)
        except KeyError:
            raise UnknownKey(key) from None
        if inspect.isawaitable(account):
            if inspect.iscoroutine(account):
                account.close()
            raise TypeError("the accounts source is async: use 'await resolve_account(key)'")
        return self._checked(key, account)

    async def resolve_account(self, key: str) -> IMAPAccount:
        """The account for ``key``, awaiting an async accounts source (unbounded here:
        :meth:`open` bounds it by ``connect_timeout``); :class:`UnknownKey` when none."""
        try:
            if isinstance(self._accounts, Mapping):
                account: object = self._accounts[key]
            else:
                account = self._accounts(key)
                if inspect.isawaitable(account):
                    account = await account
        except KeyError:
            raise UnknownKey(key) from None
        return self._checked(key, account)

    @staticmethod
    def _checked(key: str, account: object) -> IMAPAccount:
        if not isinstance(account, IMAPAccount):
            raise TypeError(
                f"accounts gave {type(account).__name__} for key {key!r}, not an IMAPAccount"
            )
        return account

    def _ssl_context(self, account: IMAPAccount) -> ssl.SSLContext | None:
        if not account.secured:
            return None
        if account.ssl_context is not None:
            return account.ssl_context
        if self._default_ctx is None:
            # Loading the system CA store takes milliseconds; one shared context will do.
            self._default_ctx = ssl.create_default_context()
        return self._default_ctx

    # -- Connector -----------------------------------------------------------------------

    async def open(self, key: str, config: PoolConfig) -> IMAPClient:
        """Connect, (STARTTLS,) greet and log in within ``config.connect_timeout``.

        One deadline covers every step: the accounts source (when it is async), DNS, TCP,
        TLS, greeting, STARTTLS, the token provider, login, ID and COMPRESS. See the
        module doc for the errors.
        """
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + config.connect_timeout
        try:
            if isinstance(self._accounts, Mapping):
                account = self._checked(key, self._accounts[key])  # no wait: nothing to bound
            else:
                async with asyncio.timeout_at(deadline):
                    account = await self.resolve_account(key)
        except KeyError:
            raise UnknownKey(key) from None
        except TimeoutError:
            raise ConnectTimeout(
                f"key {key!r}: the accounts source gave no account within "
                f"{config.connect_timeout:.3g} s"
            ) from None
        except (PoolError, TypeError):
            raise  # UnknownKey; a source that returned something else is a bug
        except Exception as exc:
            # A source that failed (a database down, say) may work next time: transient.
            # Its text is the source's own and may quote a secret, so only its type shows.
            raise ConnectError(
                f"key {key!r}: the accounts source raised {type(exc).__name__}"
            ) from None
        self._seen[key] = account
        stage = "resolve"
        made: list[GuardedProtocol] = []
        probed: list[bool] = []

        def factory() -> GuardedProtocol:
            protocol = GuardedProtocol(loop)
            made.append(protocol)
            return protocol

        ctx = self._ssl_context(account)
        hostname = account.server_hostname or account.host
        extra = {"key": key, "host": account.host, "port": account.port}
        try:
            async with asyncio.timeout_at(deadline):
                if ctx is not None:
                    self._check_context(ctx, key, account)
                if (account.host, account.port) not in self._resolved:
                    await self._resolve(account)
                stage = "connect"
                raw = await _connected_socket(loop, account.host, account.port)
                try:
                    transport, _ = await loop.create_connection(factory, sock=raw)
                except BaseException:
                    raw.close()
                    raise
                protocol = made[-1]
                protocol.own_socket(raw, key)
                sock: SocketLike | None = transport.get_extra_info("socket")
                if sock is not None:
                    set_keepalive(
                        sock,
                        config.keepalive_idle,
                        config.keepalive_interval,
                        config.keepalive_count,
                    )
                if account.tls:
                    assert ctx is not None
                    stage = "tls"
                    await upgrade_tls(protocol, ctx, hostname, config.connect_timeout)
                stage = "greeting"
                refusal = await self._greeting(protocol, account, config, probed)
                if refusal is not None:
                    raise self._refused(protocol, key, account, refusal)
                if account.starttls:
                    assert ctx is not None
                    stage = "starttls"
                    await starttls(protocol, ctx, hostname, config.connect_timeout)
                stage = "login"
                await self._authenticate(protocol, key, account)
                if account.client_id is not None:
                    stage = "id"
                    await send_id(protocol, account.client_id)
                if account.compress:
                    stage = "compress"
                    await start_compression(protocol)
        except BaseException as exc:
            for made_protocol in made:
                made_protocol.abort()
            # asyncio closes an aborted transport's socket on the next loop iteration;
            # let it, so no socket outlives a failed open.
            await asyncio.sleep(0)
            first = made[-1].first_bytes if made else b""
            bye = made[-1].refusal if made else None
            error = self._classify(exc, key, account, stage, config, first, bool(probed), bye)
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
        if log.isEnabledFor(logging.DEBUG):
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

    def farewell(self, conn: IMAPClient) -> None:
        """DONE (if in IDLE) and LOGOUT written in one write, no answer awaited: the
        goodbye of a closing pool, which aborts the transport next
        (:meth:`IMAPClient.farewell`)."""
        conn.farewell()

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
        # The audit calls this every time: 10,000 accounts are one comparison of two lists
        # (the same objects in the same order: equal at once, in C) while none changes,
        # and one server's 10,000 accounts one (host, port) to look up.
        if accounts != self._endpoint_accounts:
            self._endpoint_accounts = accounts
            self._endpoint_wheres = frozenset((a.host, a.port) for a in accounts)
        out = set(self._observed)
        for where in self._endpoint_wheres:
            if where not in self._resolved:
                numeric = _numeric(*where)
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
        if account.uses_oauth2:
            mechanism = choose_oauth_mechanism(caps)
            if mechanism is None:
                raise AuthenticationError(
                    f"{where}: server offers neither AUTH=OAUTHBEARER nor AUTH=XOAUTH2"
                )
            token = await self._token(account, where, force_refresh=False)
            response = await self._oauth(protocol, account, mechanism, token)
            if (
                account.token_provider is not None
                and response.result == "NO"
                and response_code(_status_text(response)) == "AUTHENTICATIONFAILED"
            ):
                # Most likely an expired token: one fresh token, one more attempt.
                log.info(
                    "imap token refused, retrying once with a refreshed token",
                    extra={"key": key, "host": account.host, "mechanism": mechanism},
                )
                token = await self._token(account, where, force_refresh=True)
                response = await self._oauth(protocol, account, mechanism, token)
            method = mechanism
        else:
            if "LOGINDISABLED" in caps:
                raise AuthenticationError(
                    f"{where}: server advertises LOGINDISABLED, so LOGIN is not sent "
                    f"(it would carry the password in plaintext); use tls=True or "
                    f"starttls=True"
                )
            assert account.password is not None
            response = await protocol.call(
                protocol.login_quoted(account.username, account.password)
            )
            method = "LOGIN"
        lines = [bytes(line) for line in response.lines]
        if response.result != "OK":
            text = protocol.redact(_status_text(response))
            status: Status = "BAD" if str(response.result) == "BAD" else "NO"
            refusal = classify_refusal(text, status=status, phase="login")
            message = f"{where}: {method} answered {status} {refusal.text}".rstrip()
            if refusal.limited:
                raise ServerBusy(
                    f"{message} (the server's {refusal.kind} limit, not the credentials)",
                    **refusal.limit_fields(),
                )
            if refusal.kind == "auth":
                raise AuthenticationError(message)
            raise ConnectError(message)
        if protocol.adopt_capabilities(lines) is None:
            # No [CAPABILITY] in the OK: ask, since they usually change after login.
            caps_response = await protocol.call(protocol.capability_command())
            protocol.adopt_capability_response([bytes(x) for x in caps_response.lines])

    @staticmethod
    async def _oauth(
        protocol: GuardedProtocol, account: IMAPAccount, mechanism: str, token: str
    ) -> Any:
        exchange = oauth_exchange(mechanism, account.username, token, account.host, account.port)
        return await protocol.call(protocol.oauth_auth(exchange))

    @staticmethod
    async def _token(account: IMAPAccount, where: str, *, force_refresh: bool) -> str:
        """A token from the account: fixed, or from its provider (see TokenProvider)."""
        provider = account.token_provider
        if provider is None:
            assert account.oauth2_token is not None
            return account.oauth2_token
        try:
            token = await provider(force_refresh)
        except AuthenticationError as exc:
            raise AuthenticationError(f"{where}: token provider refused: {exc}") from None
        except ConnectError as exc:
            raise type(exc)(f"{where}: token provider failed: {exc}") from None
        except Exception as exc:
            # Its text is the provider's: it may quote a token or a refresh secret.
            raise ConnectError(
                f"{where}: token provider raised {type(exc).__name__} "
                f"(force_refresh={force_refresh})"
            ) from None
        if (
            not isinstance(token, str)
            or not token
            or not token.isascii()
            or _TOKEN_BREAKS.search(token)
        ):
            raise AuthenticationError(
                f"{where}: token provider returned {type(token).__name__}, "
                f"not a non-empty ASCII token without control characters"
            )
        return token

    async def _greeting(
        self,
        protocol: GuardedProtocol,
        account: IMAPAccount,
        config: PoolConfig,
        probed: list[bool],
    ) -> str | None:
        """Wait for the greeting (bounded by the caller); None when it was OK.

        On a plaintext connection that stays silent, send :data:`~.diagnose.PROBE` once,
        so that a TLS port gives itself away (a TLS alert, or a hang-up) instead of a
        timeout; ``probed`` gets a True when it was sent.
        """
        if not account.tls:
            probe_after = min(GREETING_PROBE_AFTER, config.connect_timeout / 2)
            watched: set[asyncio.Future[Any]] = {protocol.greeting, protocol.fault}
            await asyncio.wait(watched, timeout=probe_after, return_when=asyncio.FIRST_COMPLETED)
            transport = protocol.transport
            silent = not (protocol.greeting.done() or protocol.fault.done() or protocol.first_bytes)
            if silent and transport is not None and not transport.is_closing():
                transport.write(PROBE)
                probed.append(True)
        result: str | None = await protocol.call(protocol.greeting)
        return result

    def _refused(
        self, protocol: GuardedProtocol, key: str, account: IMAPAccount, reason: str
    ) -> ConnectError:
        """The error for a greeting that refused the connection."""
        message = f"{self._where(key, account)}: {reason}"
        refusal = protocol.refusal
        if refusal is not None and refusal.limited:
            return ServerBusy(
                f"{message} (the server's {refusal.kind} limit)",
                **refusal.limit_fields(),
            )
        return ConnectError(message)

    def _check_context(self, ctx: ssl.SSLContext, key: str, account: IMAPAccount) -> None:
        """ConfigurationError when ``ctx`` cannot make a client connection (checked once)."""
        if ctx in self._usable_ctx:
            return
        problem = context_problem(ctx, account.server_hostname or account.host)
        if problem is not None:
            raise ConfigurationError(f"{self._where(key, account)}: {problem}")
        self._usable_ctx.add(ctx)

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
        first_bytes: bytes = b"",
        probed: bool = False,
        bye: Refusal | None = None,
    ) -> PoolError | None:
        """The typed error for a failed open, or None to re-raise ``exc`` unchanged.

        ``bye``: the server's untagged BYE, classified, if one came before the failure.
        """
        where = self._where(key, account)
        if isinstance(exc, ConnectError):
            return exc
        if isinstance(exc, ProtocolError) and stage == "starttls":
            # Not a ConnectError: never retried, a server (or a man in the middle) that
            # breaks STARTTLS will do so again.
            return ProtocolError(f"{where}: {exc}")
        if isinstance(exc, ServerLimit):  # BYE for the server's limits before login was done
            return ServerBusy(
                f"{where}: {exc} (at {stage})",
                **exc.limit_fields(),
            )
        mistake = misconfiguration(
            exc,
            host=account.host,
            tls=account.tls,
            stage=stage,
            first_bytes=first_bytes,
            probed=probed,
        )
        if mistake is not None:
            return ConfigurationError(f"{where}: {mistake}")
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
            if bye is not None and bye.limited:
                # A BYE for the server's limits, then the hang-up: before the first command
                # (a greeting that lists its capabilities needs none) or during login.
                return ServerBusy(
                    f"{where}: {exc} (at {stage}; BYE for the server's {bye.kind} limit)",
                    **bye.limit_fields(),
                )
            return ConnectError(f"{where}: {exc} (at {stage})")
        if isinstance(exc, OSError):
            detail = exc.strerror or str(exc) or type(exc).__name__
            return ConnectError(f"{where}: {type(exc).__name__}: {detail} (at {stage})")
        if isinstance(exc, Exception):
            # aioimaplib's own errors may quote the command line; never pass their text.
            return ConnectError(f"{where}: {type(exc).__name__} at {stage}")
        return None  # CancelledError, KeyboardInterrupt...


async def _connected_socket(
    loop: asyncio.AbstractEventLoop, host: str, port: int
) -> socket.socket:
    """A connected, non-blocking TCP socket to ``host``:``port``: each address in turn, as
    ``loop.create_connection(host=..., port=...)`` does, but a socket of our own, so that
    the protocol can let go of it when its fd was closed behind its back (see
    :meth:`GuardedProtocol.abort`; asyncio's transport offers no way to).

    An IP literal needs no lookup; a name goes through ``loop.getaddrinfo``. Raises the
    connect's ``OSError`` (one address), or an ``OSError`` naming each one's; the caller
    bounds the wait.
    """
    infos = _numeric_infos(host, port)
    if infos is None:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    errors: list[OSError] = []
    for family, kind, proto, _, address in infos:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, address)
        except OSError as exc:
            sock.close()
            errors.append(exc)
            continue
        except BaseException:
            sock.close()
            raise
        return sock
    if len(errors) == 1:
        raise errors[0]
    if not errors:
        raise OSError(f"no address for {host!r} port {port}")
    raise OSError(f"Multiple exceptions: {', '.join(str(e) for e in errors)}")


def _numeric_infos(host: str, port: int) -> list[Any] | None:
    """``getaddrinfo``'s answer for an IP literal, without any lookup; None for a name."""
    try:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    except (OSError, UnicodeError):
        return None


def _numeric(host: str, port: int) -> frozenset[Address] | None:
    """The address of an IP literal without any lookup, or None for a host name."""
    infos = _numeric_infos(host, port)
    if infos is None:
        return None
    return frozenset((str(info[4][0]), int(info[4][1])) for info in infos)
