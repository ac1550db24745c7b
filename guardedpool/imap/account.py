"""One IMAP account: where to connect and how to log in.

Validated in the constructor (a ``ValueError`` naming the field, never its secret value),
frozen so a pool can hold it without copying, and redacting: ``repr()``, ``str()`` and
``to_dict()`` show ``<redacted>`` in place of the password and the token, because an
account ends up in log lines, tracebacks and reports sooner or later.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, TypeAlias

__all__ = ["IMAPAccount", "TokenProvider"]

TokenProvider: TypeAlias = Callable[[bool], Awaitable[str]]
"""``async provider(force_refresh: bool) -> str``: an OAuth 2 access token.

Called with ``False`` at each connect (return a cached token if it is still good) and
with ``True`` once after the server answered ``NO [AUTHENTICATIONFAILED]`` (fetch a new
one). Raise :class:`~guardedpool.errors.AuthenticationError` when no token can ever be
had (revoked grant); any other exception is a transient connect error.
"""

# RFC 2971 section 3.3: at most 30 field-value pairs, fields up to 30 octets, values up
# to 1024.
_ID_MAX_PAIRS, _ID_MAX_FIELD, _ID_MAX_VALUE = 30, 30, 1024
_ID_TEXT = re.compile(r"^[\x20-\x7e]*$")

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
        password: for ``LOGIN``. Exactly one of ``password``, ``oauth2_token`` and
            ``token_provider`` is set.
        oauth2_token: a fixed OAuth 2 access token (ASCII); the connector authenticates
            with ``AUTHENTICATE OAUTHBEARER`` (RFC 7628) when the server offers it, else
            ``XOAUTH2``. Tokens expire: prefer ``token_provider``.
        token_provider: ``async provider(force_refresh: bool) -> str`` (see
            :data:`TokenProvider`): called with False at each connect, and once with True
            after ``NO [AUTHENTICATIONFAILED]``, when the login is retried once. Its time
            counts against ``connect_timeout``.
        tls: implicit TLS from the first byte. Default: True unless ``starttls``.
            ``tls=False`` without ``starttls`` is a plaintext connection.
        starttls: connect in plaintext, then upgrade with ``STARTTLS`` (RFC 3501 section
            6.2.1; RFC 9051 section 6.2.1) before anything else is sent; default False.
            The server must offer STARTTLS. ``tls=True`` with ``starttls=True`` is a
            ``ValueError``.
        ssl_context: the client TLS context (implicit TLS or STARTTLS); ``None``
            (default) uses ``ssl.create_default_context()``: certificate and host name
            verification ON. Pass a context to trust a private CA or, deliberately, to
            relax verification.
        server_hostname: the name the certificate must match (and SNI), when it differs
            from ``host`` (e.g. connecting by IP address); default ``host``.
        client_id: ``{"name": ..., "version": ...}`` sent with ``ID`` (RFC 2971) right
            after login when the server offers ID; default None (no ID). Printable ASCII,
            at most 30 pairs, names up to 30 and values up to 1024 characters.
        compress: ask for ``COMPRESS=DEFLATE`` (RFC 4978) after login when the server
            offers it; default False.
    """

    host: str
    username: str
    password: str | None = None
    oauth2_token: str | None = None
    token_provider: TokenProvider | None = None
    port: int = 993
    tls: bool = None  # type: ignore[assignment]  # None until __post_init__ resolves it
    starttls: bool = False
    ssl_context: ssl.SSLContext | None = None
    server_hostname: str | None = None
    client_id: Mapping[str, str] | None = None
    compress: bool = False

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
        if self.token_provider is not None and not callable(self.token_provider):
            raise ValueError(
                f"IMAPAccount.token_provider must be an async callable, "
                f"got {type(self.token_provider).__name__}"
            )
        ways = [self.password, self.oauth2_token, self.token_provider]
        given = sum(way is not None for way in ways)
        if given == 0:
            raise ValueError(
                "IMAPAccount needs a password or an oauth2_token (or a token_provider), "
                "got none"
            )
        if given > 1:
            # Falling back from one to the other would be a second login attempt per
            # connect; an account has one way in.
            raise ValueError(
                "IMAPAccount takes a password or an oauth2_token or a token_provider, "
                "not both"
            )
        if self.oauth2_token is not None and not self.oauth2_token.isascii():
            raise ValueError("IMAPAccount.oauth2_token must be ASCII")
        if not isinstance(self.starttls, bool):
            raise ValueError(f"IMAPAccount.starttls must be a bool, got {self.starttls!r}")
        if self.tls is None:
            object.__setattr__(self, "tls", not self.starttls)
        if not isinstance(self.tls, bool):
            raise ValueError(f"IMAPAccount.tls must be a bool, got {self.tls!r}")
        if self.tls and self.starttls:
            raise ValueError(
                "IMAPAccount.tls=True and starttls=True exclude each other: tls is implicit "
                "TLS from the first byte, starttls upgrades a plaintext connection "
                "(pass one of them)"
            )
        if not isinstance(self.compress, bool):
            raise ValueError(f"IMAPAccount.compress must be a bool, got {self.compress!r}")
        if self.client_id is not None:
            object.__setattr__(self, "client_id", _client_id(self.client_id))
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
        if not self.secured and (self.ssl_context is not None or self.server_hostname is not None):
            # A context that is silently ignored reads like a secured connection.
            raise ValueError(
                "IMAPAccount.ssl_context and server_hostname need tls=True or starttls=True "
                "(this account connects in plaintext)"
            )

    @property
    def secured(self) -> bool:
        """True when the connection is encrypted (implicit TLS or STARTTLS)."""
        return self.tls or self.starttls

    @property
    def uses_oauth2(self) -> bool:
        """True when the login is an OAuth 2 token (fixed or from a provider)."""
        return self.oauth2_token is not None or self.token_provider is not None

    @property
    def auth_method(self) -> str:
        """``"XOAUTH2"`` (any OAuth 2 token: the connector picks OAUTHBEARER or XOAUTH2
        by what the server offers) or ``"LOGIN"``."""
        return "XOAUTH2" if self.uses_oauth2 else "LOGIN"

    def to_dict(self) -> dict[str, Any]:
        """Plain data for logs and reports, secrets replaced by ``<redacted>``."""
        return {
            "host": self.host,
            "port": self.port,
            "username": self.username,
            "password": REDACTED if self.password is not None else None,
            "oauth2_token": REDACTED if self.oauth2_token is not None else None,
            # A provider's repr may hold a token (a partial, a closure's defaults).
            "token_provider": REDACTED if self.token_provider is not None else None,
            "tls": self.tls,
            "starttls": self.starttls,
            "ssl_context": "custom" if self.ssl_context is not None else "default",
            "server_hostname": self.server_hostname,
            "client_id": dict(self.client_id) if self.client_id is not None else None,
            "compress": self.compress,
        }

    def __repr__(self) -> str:
        body = ", ".join(
            f"{k}={v}" if v == REDACTED else f"{k}={v!r}" for k, v in self.to_dict().items()
        )
        return f"IMAPAccount({body})"

    __str__ = __repr__


def _client_id(value: object) -> Mapping[str, str]:
    """The validated, read-only ``client_id`` (RFC 2971 section 3.3 limits)."""
    if not isinstance(value, Mapping):
        raise ValueError(
            f"IMAPAccount.client_id must be a mapping of str to str, got {type(value).__name__}"
        )
    if not 0 < len(value) <= _ID_MAX_PAIRS:
        raise ValueError(
            f"IMAPAccount.client_id must have 1..{_ID_MAX_PAIRS} fields, got {len(value)}"
        )
    out: dict[str, str] = {}
    for name, field_value in value.items():
        if not isinstance(name, str) or not 0 < len(name) <= _ID_MAX_FIELD:
            raise ValueError(
                f"IMAPAccount.client_id field names must be str of 1..{_ID_MAX_FIELD} "
                f"characters, got {name!r}"
            )
        if not isinstance(field_value, str) or len(field_value) > _ID_MAX_VALUE:
            raise ValueError(
                f"IMAPAccount.client_id[{name!r}] must be a str of at most {_ID_MAX_VALUE} "
                f"characters"
            )
        if not (_ID_TEXT.match(name) and _ID_TEXT.match(field_value)):
            raise ValueError(
                f"IMAPAccount.client_id[{name!r}] must be printable ASCII (RFC 2971 strings "
                f"are sent quoted here)"
            )
        out[name] = field_value
    return MappingProxyType(out)
