"""IMAPAccount: validation names the field, and no secret ever shows in a repr or an error."""

from __future__ import annotations

import dataclasses
import ssl
from typing import Any

import pytest

from guardedpool.imap import IMAPAccount

SECRET = "hunter2-S3CRET"
TOKEN = "ya29.T0KEN-value"


def make(**kw: Any) -> IMAPAccount:
    base: dict[str, Any] = {"host": "imap.example.test", "username": "alice", "password": SECRET}
    base.update(kw)
    return IMAPAccount(**base)


def test_defaults_are_tls_with_verification() -> None:
    account = make()
    assert account.port == 993 and account.tls and account.ssl_context is None
    assert account.auth_method == "LOGIN"
    assert make(password=None, oauth2_token=TOKEN).auth_method == "XOAUTH2"


@pytest.mark.parametrize("render", [repr, str, lambda a: str(a.to_dict())])
def test_secrets_are_redacted(render: Any) -> None:
    for account in (make(), make(password=None, oauth2_token=TOKEN)):
        text = render(account)
        assert SECRET not in text and TOKEN not in text
        assert "<redacted>" in text and "alice" in text


def test_frozen_and_keyword_only() -> None:
    account = make()
    with pytest.raises(dataclasses.FrozenInstanceError):
        account.password = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        IMAPAccount("h", "u", "p")  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"host": ""}, "host"),
        ({"host": "a b"}, "host"),
        ({"host": "a\r\nb"}, "host"),
        ({"port": 0}, "port"),
        ({"port": 65536}, "port"),
        ({"port": True}, "port"),
        ({"port": "993"}, "port"),
        ({"username": ""}, "username"),
        ({"username": "a\nb"}, "username"),
        ({"password": ""}, "password"),
        ({"password": SECRET + "\r\nA1 LOGOUT"}, "password"),
        ({"password": 123}, "password"),
        ({"password": None}, "password or an oauth2_token"),
        ({"oauth2_token": TOKEN}, "not both"),
        ({"password": None, "oauth2_token": TOKEN + "é"}, "oauth2_token"),
        ({"tls": 1}, "tls"),
        ({"ssl_context": "yes"}, "ssl_context"),
        ({"tls": False, "ssl_context": ssl.create_default_context()}, "ssl_context"),
        ({"tls": False, "server_hostname": "x"}, "server_hostname"),
        ({"server_hostname": "a b"}, "server_hostname"),
    ],
)
def test_invalid_values_name_the_field_not_the_secret(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError) as err:
        make(**kwargs)
    assert field in str(err.value)
    assert SECRET not in str(err.value) and TOKEN not in str(err.value)


def test_plaintext_and_custom_context_accepted() -> None:
    assert not make(tls=False, port=143).tls
    ctx = ssl.create_default_context()
    account = make(ssl_context=ctx, server_hostname="mail.example.test")
    assert account.ssl_context is ctx
    assert account.to_dict()["ssl_context"] == "custom"


async def _provider(force_refresh: bool) -> str:
    return TOKEN


def test_token_provider_is_redacted_and_exclusive() -> None:
    account = make(password=None, token_provider=_provider)
    assert account.uses_oauth2 and account.auth_method == "XOAUTH2"
    assert account.to_dict()["token_provider"] == "<redacted>"
    assert "function" not in repr(account) and "token_provider=<redacted>" in repr(account)
    with pytest.raises(ValueError, match="not both"):
        make(token_provider=_provider)
    with pytest.raises(ValueError, match="token_provider"):
        make(password=None, token_provider="not callable")


def test_starttls_client_id_and_compress() -> None:
    account = make(port=143, starttls=True, client_id={"name": "gp", "version": "1"})
    assert account.starttls and not account.tls and account.secured
    assert dict(account.client_id or {}) == {"name": "gp", "version": "1"}
    assert make(compress=True).compress
    with pytest.raises(ValueError, match="tls=True and starttls=True"):
        make(tls=True, starttls=True)
    for bad in ({}, {"name": "é"}, {"x" * 31: "v"}, {"name": "v" * 1025}, {"name": 1}):
        with pytest.raises(ValueError, match="client_id"):
            make(client_id=bad)
    ctx = ssl.create_default_context()
    assert make(starttls=True, ssl_context=ctx).ssl_context is ctx
