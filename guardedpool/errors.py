"""The exceptions users catch.

One hierarchy, rooted at :class:`PoolError`, so a worker can catch everything the pool
raises in one ``except`` and still tell the cases apart. Messages name the key and the
bound that was hit; they never carry credentials (a key is an inbox id, not a secret).

``transient`` on a :class:`ConnectError` is what the reconnect path reads to decide
whether another attempt can help: a refused port or a reset may heal, a wrong password or
an untrusted certificate will not.
"""

from __future__ import annotations

from typing import Any, Self

__all__ = [
    "AuthenticationError",
    "CertificateError",
    "CommandThrottled",
    "ConfigurationError",
    "ConnectError",
    "ConnectTimeout",
    "ConnectionLost",
    "ConnectionPoisoned",
    "IMAPCommandError",
    "OperationTimeout",
    "PoolClosed",
    "PoolError",
    "PoolTimeout",
    "ProtocolError",
    "ServerBusy",
    "ServerBusyClosed",
    "ServerLimit",
    "UnknownKey",
]


class PoolError(Exception):
    """Base class of every error guardedpool raises."""


class PoolClosed(PoolError):
    """The pool is closed (or closing): no connection can be acquired from it."""


class PoolTimeout(PoolError, TimeoutError):
    """No connection for ``key`` could be handed out within ``waited`` seconds.

    ``last_error`` is the most recent connect failure for that key, if any: a timeout
    while the server refuses connections reads very differently from one under load.
    ``failed_check`` says, when it happened, that a pooled connection failed its NOOP check
    before hand-out (and how long that took): the time then went to the check and the
    replacement connect, not to a queue. ``limited_by`` names what the wait was for when it
    was not the pool's own caps (``"the fleet budget"``: no lease was free fleet-wide; the
    server's limits, in words: ``"throttling by the server (no connect or hand-out for
    another 296.1 s; ...)"``, a cap lowered after "too many connections", the login rate,
    see ``guardedpool.limits``); ``None`` otherwise. ``throttled_for`` is how many more
    seconds the server's throttling holds the key back (None: it does not).
    """

    def __init__(
        self,
        key: str,
        waited: float,
        last_error: BaseException | None = None,
        *,
        failed_check: str | None = None,
        limited_by: str | None = None,
        throttled_for: float | None = None,
    ) -> None:
        self.key = key
        self.waited = waited
        self.last_error = last_error
        self.failed_check = failed_check
        self.limited_by = limited_by
        self.throttled_for = throttled_for
        msg = f"no connection for key {key!r} within {waited:.3f} s"
        if failed_check is not None:
            msg += f"; a pooled connection failed its hand-out check ({failed_check})"
        if limited_by is not None:
            msg += f": {limited_by} was the limit"
            if last_error is not None:
                msg += f" ({last_error})"
        elif last_error is not None:
            msg += f" (last connect error: {type(last_error).__name__}: {last_error})"
        super().__init__(msg)


class UnknownKey(PoolError, KeyError):
    """The connector does not know this key (no account for this inbox id)."""

    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(f"unknown key {key!r}")

    def __str__(self) -> str:  # KeyError's str() would repr the message once more
        return str(self.args[0])


class ConnectError(PoolError):
    """Opening a connection failed. ``transient`` says whether a retry may succeed."""

    transient: bool = True


class ConnectTimeout(ConnectError, TimeoutError):
    """Connect, TLS handshake, greeting or login did not finish within ``connect_timeout``."""


class AuthenticationError(ConnectError):
    """The server rejected the credentials. Never retried: retrying locks accounts."""

    transient = False


class CertificateError(ConnectError):
    """The server's TLS certificate was not trusted. Never retried."""

    transient = False


class ConnectionPoisoned(PoolError):
    """The connection hit a fault earlier and was aborted; it is never used again."""


class ConnectionLost(ConnectionPoisoned, ConnectionError):
    """The peer closed or reset the connection while a command was pending."""


class OperationTimeout(ConnectionPoisoned, TimeoutError):
    """A command did not complete within its bound; the connection was aborted."""


class ProtocolError(ConnectionPoisoned):
    """The server said something the client cannot continue from (BYE, garbage, a desync)."""


class IMAPCommandError(PoolError):
    """The server answered NO or BAD. The connection itself is fine and stays usable."""

    def __init__(self, command: str, result: str, text: str) -> None:
        self.command = command
        self.result = result
        self.text = text
        super().__init__(f"{command} failed: {result} {text}".rstrip())


# -- Server limits and settings no retry can fix (issue 13) ------------------------------
#
# A server that refuses because of its own limits (too many connections, throttling, a
# rate limit, a bandwidth or command quota, temporarily unavailable) is telling the client
# to come back later, not that the credentials are wrong. Which refusal is which is decided
# by ``guardedpool.imap.refusals.classify_refusal``; these are the errors it leads to.


class ServerLimit(PoolError):
    """Base of the refusals caused by the server's limits; catch it to handle them all.

    Never raised itself: it is one of :class:`ServerBusy` (at connect/login),
    :class:`ServerBusyClosed` (the server ended a session, ``BYE``) or
    :class:`CommandThrottled` (a command answered ``NO``/``BAD``).

    Attributes:
        kind: ``"capacity"`` (too many connections: holding fewer helps) or
            ``"throttled"`` (a rate, quota or temporary unavailability: waiting helps).
        delay: seconds the server asked the client to wait (e.g. Office 365's
            "Suggested Backoff Time"), or None when it named no time.
        code: the RFC 5530 response code (``"LIMIT"``, ``"UNAVAILABLE"``...), or None.
        server_text: what the server said, secrets redacted, at most 300 characters.
    """

    kind: str = "throttled"
    delay: float | None = None
    code: str | None = None
    server_text: str = ""

    def __init__(
        self,
        message: str,
        *,
        kind: str,
        delay: float | None = None,
        code: str | None = None,
        server_text: str = "",
    ) -> None:
        super().__init__(message)
        self._limit(kind, delay, code, server_text)

    def limit_fields(self) -> dict[str, Any]:
        """``kind``, ``delay``, ``code`` and ``server_text``, as keyword arguments for
        another :class:`ServerLimit` that retells this one."""
        return {
            "kind": self.kind,
            "delay": self.delay,
            "code": self.code,
            "server_text": self.server_text,
        }

    def _limit(self, kind: str, delay: float | None, code: str | None, server_text: str) -> None:
        self.kind = kind
        self.delay = delay
        self.code = code
        self.server_text = server_text


class ServerBusy(ServerLimit, ConnectError):
    """The server refused a new connection because of its limits. Transient.

    Raised at the greeting (``* BYE``), at LOGIN/AUTHENTICATE (tagged ``NO``/``BAD``) or
    when the server hangs up (``BYE``) before the login is through. Never an
    :class:`AuthenticationError`: a capacity limit is not a wrong password.
    See :class:`ServerLimit` for the attributes.
    """

    transient = True


class ServerBusyClosed(ServerLimit, ConnectionLost):
    """The server ended an established session (untagged ``BYE``) because of its limits.

    Mid-session (SELECT, FETCH, IDLE...): the connection is poisoned like any
    :class:`ConnectionLost`, and the attributes of :class:`ServerLimit` say how long to
    stay away, e.g. Gmail's ``* BYE [OVERQUOTA] Account exceeded command or bandwidth
    limits.``
    """

    def retold(self, message: str) -> Self:
        """The same refusal with another message (e.g. naming the command it ended)."""
        return type(self)(message, **self.limit_fields())


class CommandThrottled(ServerLimit, IMAPCommandError):
    """A command was answered ``NO``/``BAD`` because of the server's limits.

    E.g. Office 365's ``BAD Request is throttled. Suggested Backoff Time: 299961
    milliseconds`` or Yahoo's ``NO [LIMIT] Rate limit hit.`` Like any
    :class:`IMAPCommandError` the connection itself stays usable; the attributes of
    :class:`ServerLimit` say how long to wait before the next command.
    """

    def __init__(
        self,
        command: str,
        result: str,
        text: str,
        *,
        kind: str,
        delay: float | None = None,
        code: str | None = None,
    ) -> None:
        # IMAPCommandError's own initialiser: ServerLimit's takes a message and keywords.
        IMAPCommandError.__init__(self, command, result, text)
        self._limit(kind, delay, code, text)


class ConfigurationError(ConnectError):
    """The account's settings cannot work; no retry fixes them. Never retried.

    The message names the likely mistake: a host name that does not exist, TLS spoken to
    a plaintext port ("did you mean tls=False or starttls=True?"), plaintext spoken to a
    TLS port, or an ``ssl_context`` that cannot make a client connection.
    """

    transient = False
