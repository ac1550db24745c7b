"""The refusal classifier: a table of real providers' wordings, and its properties.

The table lives in ``tests/harness/wordings.py`` (with its sources), so the scripted
provider server replays exactly what is checked here.
"""

from __future__ import annotations

import math

import pytest
from harness.wordings import WORDINGS, Wording
from hypothesis import assume, given
from hypothesis import strategies as st

from guardedpool.imap.refusals import REDACTED, classify_refusal, parse_delay, redact


@pytest.mark.parametrize("row", WORDINGS, ids=lambda w: w.id)
def test_provider_wording_is_classified_by_meaning(row: Wording) -> None:
    got = classify_refusal(row.text, status=row.status, phase=row.phase)  # type: ignore[arg-type]
    assert got.kind == row.kind, f"{row.provider} ({row.source}): {row.text!r}"
    if row.delay is None:
        assert got.delay is None
    else:
        assert got.delay == pytest.approx(row.delay)
    assert got.transient == (row.kind != "auth")


def test_table_covers_every_provider_and_kind() -> None:
    providers = {w.provider for w in WORDINGS}
    assert {
        "gmail", "office365", "exchange", "yahoo", "icloud", "fastmail", "dovecot", "cyrus",
        "courier",
    } <= providers  # fmt: skip
    assert {w.kind for w in WORDINGS} == {"capacity", "throttled", "auth", "other"}
    for status in ("NO", "BAD", "BYE"):
        assert any(w.status == status for w in WORDINGS)


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("[LIMIT] Maximum number of connections", "LIMIT"),
        ("[UNAVAILABLE] x", "UNAVAILABLE"),
        ("[WEBALERT https://x.example/] Web login required.", "WEBALERT"),
        ("no code here", None),
        ("[] empty", None),
    ],
)
def test_code_is_read_from_the_text(text: str, code: str | None) -> None:
    assert classify_refusal(text).code == code


def test_a_code_given_by_the_caller_wins() -> None:
    got = classify_refusal("Try another time", code="limit", phase="login")
    assert (got.code, got.kind) == ("LIMIT", "capacity")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("Request is throttled. Suggested Backoff Time: 299961 milliseconds", 299.961),
        ("rate limited, try again in 5 minutes", 300.0),
        ("throttled; retry after 30 seconds", 30.0),
        ("throttled; Retry-After: 12", 12.0),
        ("back off for 2 hours", 7200.0),
        ("wait 1.5 s", 1.5),
        ("Already reached per-10 minute limit for logins of 500, try again later", None),
        ("Too many open connections (3 of 3 for user)", None),
        ("Server Unavailable. 15", None),
        ("Suggested Backoff Time: " + "9" * 400 + " milliseconds", None),  # not a float
    ],
)
def test_parse_delay(text: str, seconds: float | None) -> None:
    got = parse_delay(text)
    assert got == (None if seconds is None else pytest.approx(seconds))


def test_delay_is_only_reported_for_limits() -> None:
    # An auth refusal that happens to mention a wait is still no invitation to retry.
    got = classify_refusal("[AUTHENTICATIONFAILED] wait 5 minutes", phase="login")
    assert (got.kind, got.delay) == ("auth", None)


def test_login_refused_without_a_reason_is_auth_and_a_command_refusal_is_other() -> None:
    assert classify_refusal("nope", phase="login").kind == "auth"
    assert classify_refusal("nope", status="BAD", phase="login").kind == "auth"
    assert classify_refusal("bye", status="BYE", phase="login").kind == "other"
    assert classify_refusal("Mailbox doesn't exist: Nope", phase="command").kind == "other"


def test_text_is_redacted_and_bounded() -> None:
    got = classify_refusal(
        'LOGIN "alice" "s3cr3t!" too many connections ' + "x" * 1000,
        phase="login",
        secrets=["s3cr3t!", '"s3cr3t!"'],
    )
    assert "s3cr3t" not in got.text
    assert REDACTED in got.text
    assert len(got.text) <= 303
    assert got.kind == "capacity"


def test_bytes_are_decoded() -> None:
    got = classify_refusal(b"[LIMIT] Rate limit hit. \xff", status="NO", phase="command")
    assert got.kind == "throttled"


# -- properties ---------------------------------------------------------------------------

CAPACITY_PHRASES = [
    "Too many simultaneous connections",
    "too many connections",
    "Too many open connections (3 of 3)",
    "Maximum number of connections from user+IP exceeded",
    "too many concurrent sessions",
    "connection limit reached",
]
THROTTLE_PHRASES = [
    "Request is throttled",
    "Rate limit hit",
    "Account exceeded command or bandwidth limits",
    "bandwidth quota exceeded",
    "Suggested Backoff Time: 5000 milliseconds",
]
AUTH_PHRASES = [
    "[AUTHENTICATIONFAILED] Invalid credentials",
    "[AUTHENTICATIONFAILED] Authentication failed.",
    "[AUTHORIZATIONFAILED] not allowed",
    "[EXPIRED] password expired",
    "LOGIN failed.",
    "Invalid credentials (Failure)",
    "Application-specific password required",
    "Web login required",
]
# Words that say nothing about load or credentials.
NEUTRAL = st.lists(
    st.sampled_from(
        ["please", "the", "account", "server", "imap", "(Failure)", "12", "x", "[ALERT]", ".",
         "mail.example", "for", "user", "now", "-", "ok"]
    ),
    max_size=6,
).map(" ".join)  # fmt: skip
STATUS = st.sampled_from(["NO", "BAD", "BYE"])
PHASE = st.sampled_from(["login", "command"])
CODES = st.sampled_from(
    [None, "ALERT", "UNAVAILABLE", "AUTHENTICATIONFAILED", "AUTHORIZATIONFAILED", "EXPIRED",
     "LIMIT", "OVERQUOTA", "INUSE", "SERVERBUG", "CONTACTADMIN", "PRIVACYREQUIRED"]
)  # fmt: skip


@given(st.sampled_from(CAPACITY_PHRASES + THROTTLE_PHRASES), st.text(), st.text(), STATUS,
       PHASE, CODES)  # fmt: skip
def test_a_capacity_or_throttling_wording_is_never_auth(
    phrase: str, before: str, after: str, status: str, phase: str, code: str | None
) -> None:
    text = f"{before} {phrase} {after}"
    got = classify_refusal(text, status=status, phase=phase, code=code)  # type: ignore[arg-type]
    assert got.kind in ("capacity", "throttled")
    assert got.transient and got.limited


@given(st.sampled_from(AUTH_PHRASES), NEUTRAL, NEUTRAL, STATUS, PHASE)
def test_an_auth_failure_wording_never_becomes_a_limit(
    phrase: str, before: str, after: str, status: str, phase: str
) -> None:
    # A response code is only a code at the start of the text (RFC 3501 section 7.1).
    text = f"{phrase} {after}" if phrase.startswith("[") else f"{before} {phrase} {after}"
    got = classify_refusal(text, status=status, phase=phase)  # type: ignore[arg-type]
    assert got.kind == "auth"
    assert not got.transient and got.delay is None


@given(
    st.text(min_size=1).filter(lambda s: "<" not in s and ">" not in s),
    st.text(),
    st.text(),
    STATUS,
    PHASE,
)
def test_any_text_containing_the_password_is_redacted(
    password: str, before: str, after: str, status: str, phase: str
) -> None:
    assume(password not in REDACTED)
    text = before + password + after
    got = classify_refusal(text, status=status, phase=phase, secrets=[password])  # type: ignore[arg-type]
    assert password not in got.text


@given(st.text(), st.text())
def test_the_password_cannot_change_the_classification(text: str, password: str) -> None:
    # The classification is made on the redacted text: a password reading "throttled"
    # or "too many connections" is not the server's word.
    assume(password.strip() and "<" not in password and ">" not in password)
    echoed = f"{text} {password}"
    assert (
        classify_refusal(echoed, phase="login", secrets=[password]).kind
        == classify_refusal(redact(echoed, [password]), phase="login").kind
    )


@given(st.text() | st.binary(), STATUS, PHASE, CODES)
def test_never_raises_and_the_delay_is_a_finite_non_negative_number(
    text: str | bytes, status: str, phase: str, code: str | None
) -> None:
    got = classify_refusal(text, status=status, phase=phase, code=code)  # type: ignore[arg-type]
    assert got.kind in ("capacity", "throttled", "auth", "other")
    assert got.delay is None or (math.isfinite(got.delay) and got.delay >= 0)
    assert len(got.text) <= 303
