"""TLS on our own transport: implicit TLS and STARTTLS through one path.

Both run :mod:`guardedpool.imap.tls` (``ssl.SSLObject`` on memory BIOs, no 256 KiB read
buffer per connection) over the plain TCP transport the connector made, so the socket
the pool identified (fd and inode) is the socket that carries TLS; the TLS transport's
``get_extra_info("socket")`` is that same socket, and aborting it aborts the TCP one.

STARTTLS (RFC 3501 section 6.2.1, RFC 9051 section 6.2.1) adds three rules:

* The server must offer ``STARTTLS``; without it the connection is refused rather than
  carried on in plaintext.
* Nothing may follow the tagged ``OK`` before the handshake. Bytes there were either
  buffered by a man in the middle to be read as if they came over TLS (the STARTTLS
  command-injection hole, CVE-2011-0411 and its IMAP cousins), or the server is broken.
  Either way: :class:`~guardedpool.errors.ProtocolError`, socket aborted.
* The capabilities from before the handshake are forgotten and asked for again over TLS
  (an attacker could have stripped ``LOGINDISABLED`` or added a mechanism).

Every wait here is bounded by the caller's ``connect_timeout``; the TLS handshake also
gets it as its own bound.
"""

from __future__ import annotations

import asyncio
import ssl

from ..errors import ConnectionLost, ProtocolError
from .protocol import GuardedProtocol
from .tls import TLSTransport, open_tls

__all__ = ["starttls", "upgrade_tls"]


async def upgrade_tls(
    protocol: GuardedProtocol,
    context: ssl.SSLContext,
    server_hostname: str,
    handshake_timeout: float,
    *,
    after_starttls: bool = False,
) -> None:
    """Run the TLS handshake on ``protocol``'s transport and make the TLS transport its own.

    ``after_starttls``: bytes from the server that do not open a TLS record are refused
    with :class:`~guardedpool.errors.ProtocolError` (see :mod:`.tls`).

    Raises ``ssl.SSLError`` (``SSLCertVerificationError`` for an untrusted certificate or
    a wrong host name), ``ConnectionError`` or ``TimeoutError`` (after
    ``handshake_timeout`` seconds); the plain transport is aborted then.
    """
    transport = protocol.transport
    if transport is None or transport.is_closing():
        raise ConnectionLost("connection closed before the TLS handshake")
    assert isinstance(transport, asyncio.Transport)

    def attach(secured: TLSTransport) -> None:
        protocol.transport = secured

    await open_tls(
        transport,
        protocol,
        context,
        server_hostname,
        attach,
        handshake_timeout,
        after_starttls=after_starttls,
    )


async def starttls(
    protocol: GuardedProtocol,
    context: ssl.SSLContext,
    server_hostname: str,
    handshake_timeout: float,
) -> frozenset[str]:
    """STARTTLS, the handshake, and the capabilities read again over TLS (returned).

    Raises :class:`~guardedpool.errors.ProtocolError` when the server does not offer
    STARTTLS, refuses it, or sends anything between its tagged OK and the handshake;
    otherwise as :func:`upgrade_tls`. The caller aborts the transport on any error.
    """
    offered = {str(c).upper() for c in protocol.capabilities}
    if "STARTTLS" not in offered:
        raise ProtocolError(
            "server does not offer STARTTLS; refusing to go on in plaintext "
            "(use tls=True for implicit TLS, or the server's TLS port)"
        )
    result, text = await protocol.call(protocol.switch("STARTTLS"))
    # No await between taking the held bytes and start_tls pausing the reads: every byte
    # that arrived before the handshake is in ``rest``.
    rest = protocol.end_switch()
    if result != "OK":
        raise ProtocolError(f"server answered STARTTLS with {result} {text[:200]}".rstrip())
    if rest:
        raise ProtocolError(
            f"server sent {len(rest)} bytes after STARTTLS's OK, before the TLS handshake "
            f"(possible command injection); connection aborted"
        )
    await upgrade_tls(protocol, context, server_hostname, handshake_timeout, after_starttls=True)
    protocol.capabilities = set()
    response = await protocol.call(protocol.capability_command())
    if str(response.result) != "OK":
        raise ProtocolError(f"CAPABILITY after STARTTLS answered {response.result}")
    return protocol.adopt_capability_response([bytes(x) for x in response.lines])
