"""A throwaway certificate authority for scripted TLS servers on loopback."""

from __future__ import annotations

import ssl

import trustme


def tls_contexts(name: str = "localhost") -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context, client context): the server's certificate is for ``name`` (a host
    name or an IP literal), issued by a fresh CA that only the client context trusts."""
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(name).configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    return server_ctx, client_ctx
