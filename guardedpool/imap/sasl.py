"""SASL for OAuth 2 bearer tokens, pure: the mechanism to use and the bytes to send.

Two mechanisms carry a bearer token in IMAP ``AUTHENTICATE``:

* ``OAUTHBEARER`` (RFC 7628), the standard one. Its initial client response is a GS2
  header and key-value pairs separated by ``0x01`` (section 3.1). On failure the server
  sends a JSON error as a challenge, and the client must answer it with a single
  ``0x01`` so that the server can end the exchange with a tagged ``NO`` (section 3.2.3).
* ``XOAUTH2``, Google's and Microsoft's older one: ``user=...^Aauth=Bearer ...^A^A``.
  Its error challenge is answered with an empty response.

Nothing here touches a socket; :class:`~guardedpool.imap.protocol.GuardedProtocol` sends
what these functions build.
"""

from __future__ import annotations

from base64 import b64encode
from collections.abc import Set
from dataclasses import dataclass

__all__ = ["OAuthExchange", "choose_oauth_mechanism", "oauth_exchange"]

OAUTHBEARER = "OAUTHBEARER"
XOAUTH2 = "XOAUTH2"


def choose_oauth_mechanism(capabilities: Set[str]) -> str | None:
    """``"OAUTHBEARER"`` when offered (``AUTH=OAUTHBEARER``), else ``"XOAUTH2"`` when
    offered, else None. ``capabilities`` are upper-case."""
    if f"AUTH={OAUTHBEARER}" in capabilities:
        return OAUTHBEARER
    if f"AUTH={XOAUTH2}" in capabilities:
        return XOAUTH2
    return None


@dataclass(frozen=True, slots=True, repr=False)
class OAuthExchange:
    """What to send for one ``AUTHENTICATE``: never shown in a repr (it holds the token).

    Attributes:
        mechanism: ``"OAUTHBEARER"`` or ``"XOAUTH2"``.
        initial: the base64 initial client response.
        error_reply: the base64 answer to a server error challenge (RFC 7628 section
            3.2.3: ``0x01`` for OAUTHBEARER; empty for XOAUTH2).
        secrets: every form of the token on the wire, for redaction.
    """

    mechanism: str
    initial: str
    error_reply: str
    secrets: tuple[str, ...]

    def __repr__(self) -> str:
        return f"<OAuthExchange {self.mechanism} <redacted>>"


def oauth_exchange(
    mechanism: str, username: str, token: str, host: str, port: int
) -> OAuthExchange:
    """The exchange for ``mechanism`` (see :func:`choose_oauth_mechanism`).

    Raises ValueError for an unknown mechanism, or a username or token that cannot be
    carried (a ``0x01`` or ``,`` would break the framing; a token must be ASCII).
    """
    if not token.isascii() or "\x01" in token or "\x01" in username:
        raise ValueError("an OAuth 2 token must be ASCII without 0x01")
    if mechanism == OAUTHBEARER:
        # RFC 7628 section 3.1 / RFC 5801 section 4: "n,a=<authzid>," with "=" and ","
        # in the authzid escaped as "=3D" and "=2C".
        authzid = username.replace("=", "=3D").replace(",", "=2C")
        raw = f"n,a={authzid},\x01host={host}\x01port={port}\x01auth=Bearer {token}\x01\x01"
        error_reply = b64encode(b"\x01").decode()
    elif mechanism == XOAUTH2:
        raw = f"user={username}\x01auth=Bearer {token}\x01\x01"
        error_reply = ""
    else:
        raise ValueError(f"unknown OAuth 2 SASL mechanism {mechanism!r}")
    initial = b64encode(raw.encode("utf-8")).decode()
    return OAuthExchange(mechanism, initial, error_reply, (token, initial))
