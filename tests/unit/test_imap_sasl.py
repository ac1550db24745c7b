"""SASL for bearer tokens: the mechanism chosen and the exact bytes (RFC 7628, XOAUTH2)."""

from __future__ import annotations

from base64 import b64decode

import pytest

from guardedpool.imap.sasl import choose_oauth_mechanism, oauth_exchange


def test_oauthbearer_is_preferred_when_offered() -> None:
    assert choose_oauth_mechanism({"AUTH=XOAUTH2", "AUTH=OAUTHBEARER"}) == "OAUTHBEARER"
    assert choose_oauth_mechanism({"AUTH=XOAUTH2"}) == "XOAUTH2"
    assert choose_oauth_mechanism({"AUTH=PLAIN"}) is None


def test_oauthbearer_initial_response_rfc7628() -> None:
    ex = oauth_exchange("OAUTHBEARER", "a,b=c@x", "tok", "imap.example.test", 993)
    raw = b64decode(ex.initial)
    # RFC 7628 section 3.1 / RFC 5801: gs2 header with "," and "=" escaped in the authzid.
    assert raw == (
        b"n,a=a=2Cb=3Dc@x,\x01host=imap.example.test\x01port=993\x01auth=Bearer tok\x01\x01"
    )
    assert b64decode(ex.error_reply) == b"\x01"


def test_xoauth2_initial_response() -> None:
    ex = oauth_exchange("XOAUTH2", "u@x", "tok", "h", 993)
    assert b64decode(ex.initial) == b"user=u@x\x01auth=Bearer tok\x01\x01"
    assert ex.error_reply == ""


def test_the_exchange_never_shows_its_token() -> None:
    ex = oauth_exchange("XOAUTH2", "u@x", "ya29.SECRET", "h", 993)
    assert "SECRET" not in repr(ex) and ex.initial not in repr(ex)
    assert set(ex.secrets) == {"ya29.SECRET", ex.initial}


@pytest.mark.parametrize("token", ["é", "a\x01b"])
def test_unframeable_tokens_are_refused(token: str) -> None:
    with pytest.raises(ValueError) as err:
        oauth_exchange("OAUTHBEARER", "u", token, "h", 1)
    assert token not in str(err.value)
    with pytest.raises(ValueError):
        oauth_exchange("PLAIN", "u", "t", "h", 1)
