"""The exceptions users catch.

One hierarchy, rooted at :class:`PoolError`, so a worker can catch everything the pool
raises in one ``except`` and still tell the cases apart. Messages name the key and the
bound that was hit; they never carry credentials (a key is an inbox id, not a secret).

``transient`` on a :class:`ConnectError` is what the reconnect path reads to decide
whether another attempt can help: a refused port or a reset may heal, a wrong password or
an untrusted certificate will not.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "CertificateError",
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
    replacement connect, not to a queue.
    """

    def __init__(
        self,
        key: str,
        waited: float,
        last_error: BaseException | None = None,
        *,
        failed_check: str | None = None,
    ) -> None:
        self.key = key
        self.waited = waited
        self.last_error = last_error
        self.failed_check = failed_check
        msg = f"no connection for key {key!r} within {waited:.3f} s"
        if failed_check is not None:
            msg += f"; a pooled connection failed its hand-out check ({failed_check})"
        if last_error is not None:
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
