"""One IMAP account: where to connect and how to log in.

Validated in the constructor (a ``ValueError`` naming the field, never its secret value),
frozen so a pool can hold it without copying, and redacting: ``repr()``, ``str()`` and
``to_dict()`` show ``<redacted>`` in place of the password and the token, because an
account ends up in log lines, tracebacks and reports sooner or later.
"""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass
from typing import Any

__all__ = ["IMAPAccount"]

REDACTED = "<redacted>"

# NUL, CR and LF end a command line on the wire: a credential holding one would let the
# server read the rest as a second command.
_CONTROL = re.compile(r"[\x00\r\n]")


def _secret_ok(name: str, value: object) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise ValueError(f"IMAPAccount.{name} must be a str or None, got {type(value).__name__}")
    if not value:
        raise ValueError(f"IMAPAccount.{name} must not be empty (use None for 'not set')")
    if _CONTROL.search(value):
        raise ValueError(f"IMAPAccount.{name} must not contain NUL, CR or LF")


@dataclass(frozen=True, slots=True, repr=False, kw_only=True)
class IMAPAccount:
    """How to reach and log in to one mailbox (keyword arguments only).

    Attributes:
        host: server name or IP address.
        port: TCP port (default 993, implicit TLS; plain IMAP is usually 143).
        username: login name.
        password: for ``LOGIN``; exactly one of ``password`` and ``oauth2_token`` is set.
        oauth2_token: an OAuth 2 access token; when set, the connector authenticates with
            ``AUTHENTICATE XOAUTH2`` instead of ``LOGIN``. Must be ASCII.
        tls: implicit TLS from the first byte (default True). STARTTLS is not supported
            (aioimaplib has none), so ``tls=False`` means a plaintext connection.
        ssl_context: the client TLS context; ``None`` (default) uses
            ``ssl.create_default_context()``: certificate and host name verification ON.
            Pass a context to trust a private CA or, deliberately, to relax verification.
        server_hostname: the name the certificate must match (and SNI), when it differs
            from ``host`` (e.g. connecting by IP address); default ``host``.
    """

    host: str
    username: str
    password: str | None = None
    oauth2_token: str | None = None
    port: int = 993
    tls: bool = True
    ssl_context: ssl.SSLContext | None = None
    server_hostname: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host.strip() or _CONTROL.search(self.host):
            raise ValueError(f"IMAPAccount.host must be a non-empty host name, got {self.host!r}")
        if any(c.isspace() for c in self.host):
            raise ValueError(f"IMAPAccount.host must not contain whitespace, got {self.host!r}")
        if isinstance(self.port, bool) or not isinstance(self.port, int):
            raise ValueError(f"IMAPAccount.port must be an int, got {self.port!r}")
        if not 1 <= self.port <= 65535:
            raise ValueError(f"IMAPAccount.port must be in 1..65535, got {self.port!r}")
        if not isinstance(self.username, str) or not self.username:
            raise ValueError(f"IMAPAccount.username must be a non-empty str, got {self.username!r}")
        if _CONTROL.search(self.username):
            raise ValueError("IMAPAccount.username must not contain NUL, CR or LF")
        _secret_ok("password", self.password)
        _secret_ok("oauth2_token", self.oauth2_token)
        if self.password is None and self.oauth2_token is None:
            raise ValueError("IMAPAccount needs a password or an oauth2_token, got neither")
        if self.password is not None and self.oauth2_token is not None:
            # Falling back from one to the other would be a second login attempt per
            # connect; an account has one way in.
            raise ValueError("IMAPAccount takes a password or an oauth2_token, not both")
        if self.oauth2_token is not None and not self.oauth2_token.isascii():
            raise ValueError("IMAPAccount.oauth2_token must be ASCII")
        if not isinstance(self.tls, bool):
            raise ValueError(f"IMAPAccount.tls must be a bool, got {self.tls!r}")
        if self.ssl_context is not None and not isinstance(self.ssl_context, ssl.SSLContext):
            raise ValueError(
                f"IMAPAccount.ssl_context must be an ssl.SSLContext or None, "
                f"got {type(self.ssl_context).__name__}"
            )
        if self.server_hostname is not None and (
            not isinstance(self.server_hostname, str)
            or not self.server_hostname
            or any(c.isspace() for c in self.server_hostname)
        ):
            raise ValueError(
                f"IMAPAccount.server_hostname must be a non-empty host name or None, "
                f"got {self.server_hostname!r}"
            )
        if not self.tls and (self.ssl_context is not None or self.server_hostname is not None):
            # A context that is silently ignored reads like a secured connection.
            raise ValueError(
                "IMAPAccount.ssl_context and server_hostname need tls=True "
                "(this account connects in plaintext)"
            )

    @property
    def auth_method(self) -> str:
        """``"XOAUTH2"`` or ``"LOGIN"``: what the connector will use."""
        return "XOAUTH2" if self.oauth2_token is not None else "LOGIN"

    def to_dict(self) -> dict[str, Any]:
        """Plain data for logs and reports, secrets replaced by ``<redacted>``."""
        return {
            "host": self.host,
            "port": self.port,
            "username": self.username,
            "password": REDACTED if self.password is not None else None,
            "oauth2_token": REDACTED if self.oauth2_token is not None else None,
            "tls": self.tls,
            "ssl_context": "custom" if self.ssl_context is not None else "default",
            "server_hostname": self.server_hostname,
        }

    def __repr__(self) -> str:
        body = ", ".join(
            f"{k}={v}" if v == REDACTED else f"{k}={v!r}" for k, v in self.to_dict().items()
        )
        return f"IMAPAccount({body})"

    __str__ = __repr__
