"""Settings no retry can fix: name the likely mistake from how a connect failed.

Pure functions over an exception and a few facts of the attempt (no I/O; the one check of
an ``ssl.SSLContext`` drives a handshake between in-memory buffers, never a socket). The
connector turns a message from here into a :class:`~guardedpool.errors.ConfigurationError`
(``transient=False``), so the acquire fails at once instead of retrying for the whole
``acquire_timeout``.

What counts as a mistake:

* a host name that does not exist (``EAI_NONAME``, ``EAI_NODATA``); a resolver that failed
  for the moment (``EAI_AGAIN``) is transient, not a mistake;
* TLS spoken to a plaintext port: the "server hello" is the ``* OK`` greeting, which
  OpenSSL reports as ``WRONG_VERSION_NUMBER``;
* plaintext spoken to a TLS port: no greeting, and after the client's probe (see
  :data:`PROBE`) the server answers with a TLS record (an alert, ``0x15 0x03 ...``) or
  hangs up without a byte (Dovecot does). A server that hangs up *before* the probe (a
  per-IP limit such as Courier's ``MAXPERIP``) is not taken for a TLS port;
* an ``ssl_context`` that cannot make a client connection (a server-side context, no
  protocol version left...).
"""

from __future__ import annotations

import socket
import ssl

__all__ = ["PROBE", "context_problem", "looks_like_tls", "misconfiguration"]

# Sent on a plaintext connection whose greeting has not begun after a short wait: a TLS
# server answers these bytes (not a valid record header) with an alert and closes; an IMAP
# server reads empty lines, which it ignores or answers with an untagged BAD.
PROBE = b"\r\n\r\n\r\n"

# Resolver answers that say the name does not exist (not that the resolver failed).
_NO_SUCH_NAME = frozenset(
    code
    for code in (getattr(socket, "EAI_NONAME", None), getattr(socket, "EAI_NODATA", None))
    if code is not None
)

# TLS record content types (RFC 8446 section 5.1): alert, handshake, application data.
_TLS_TYPES = frozenset({0x15, 0x16, 0x17})


def looks_like_tls(data: bytes) -> bool:
    """Whether ``data`` starts like a TLS record: a content type, then version 3.x."""
    return len(data) >= 2 and data[0] in _TLS_TYPES and data[1] == 0x03


def misconfiguration(
    exc: BaseException,
    *,
    host: str,
    tls: bool,
    stage: str,
    first_bytes: bytes = b"",
    probed: bool = False,
) -> str | None:
    """The likely mistake behind a failed connect, or None when a retry may help.

    Args:
        exc: what the attempt raised.
        host: the host name the account gives.
        tls: whether the account asked for implicit TLS.
        stage: where the attempt was: ``"resolve"``, ``"connect"``, ``"tls"``,
            ``"greeting"`` or ``"login"``.
        first_bytes: the first bytes the server sent (a few are enough).
        probed: whether :data:`PROBE` was sent on a silent plaintext connection.
    """
    if isinstance(exc, socket.gaierror) and exc.errno in _NO_SUCH_NAME:
        return f"host name {host!r} does not exist (DNS: {exc.strerror or exc}); check the host"
    if isinstance(exc, ssl.SSLError) and exc.reason == "WRONG_VERSION_NUMBER" and tls:
        return (
            "TLS handshake failed: the server answered in plaintext (WRONG_VERSION_NUMBER), "
            "so this port does not speak implicit TLS; did you mean tls=False or "
            "starttls=True?"
        )
    if not tls and stage == "greeting":
        if looks_like_tls(first_bytes):
            return (
                "no IMAP greeting: the server answered with a TLS record, so this port "
                "speaks implicit TLS; did you mean tls=True?"
            )
        if probed and not first_bytes and not isinstance(exc, TimeoutError):
            return (
                "no IMAP greeting: the server waited silently for the client to speak, then "
                "hung up on plaintext, as a TLS port does; did you mean tls=True?"
            )
    return None


def context_problem(ctx: ssl.SSLContext, server_hostname: str) -> str | None:
    """Why ``ctx`` cannot make a client TLS connection, or None when it can.

    Starts a handshake between two memory buffers: an unusable context fails while
    building the ClientHello, before anything would be sent.
    """
    try:
        obj = ctx.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_hostname=server_hostname)
        obj.do_handshake()
    except ssl.SSLWantReadError:
        return None  # the ClientHello is written and the handshake waits for the server
    except (ssl.SSLError, ValueError) as exc:
        detail = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
        return f"ssl_context cannot make a client TLS connection ({detail})"
    return None  # pragma: no cover - a handshake cannot finish without a peer
