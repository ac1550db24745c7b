"""Error texts in log lines: credentials masked, length bounded, the type always named."""

from __future__ import annotations

import pytest

from guardedpool.errors import AuthenticationError
from guardedpool.logs import error_text, redact


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("A1 LOGIN alice hunter2", "hunter2"),
        ('A1 LOGIN "alice" "s3cr3t pw" failed', "s3cr3t pw"),
        ("AUTHENTICATE PLAIN AGFsaWNlAGh1bnRlcjI=", "AGFsaWNlAGh1bnRlcjI="),
        ("AUTHENTICATE XOAUTH2 dXNlcj1hbGljZQFhdXRoPUJlYXJlciB0b2sBAQ==", "dXNlcj1hbGljZQ"),
        ("connect failed: password=hunter2", "hunter2"),
        ("token: ya29.a0AfH6SM", "ya29.a0AfH6SM"),
    ],
)
def test_credentials_are_masked(text: str, secret: str) -> None:
    out = redact(text)
    assert secret not in out and "***" in out


@pytest.mark.parametrize(
    "text",
    [
        "LOGIN failed: NO [AUTHENTICATIONFAILED] Authentication failed.",
        "LOGIN rejected: NO",
        "[Errno 111] Connection refused",
    ],
)
def test_plain_errors_are_left_alone(text: str) -> None:
    assert redact(text) == text


def test_error_text_names_the_type_and_is_bounded() -> None:
    assert error_text(AuthenticationError("LOGIN rejected")) == (
        "AuthenticationError: LOGIN rejected"
    )
    assert error_text(TimeoutError()) == "TimeoutError"
    long = error_text(OSError("x" * 10_000))
    assert long.startswith("OSError: xxx") and long.endswith("...") and len(long) < 400
