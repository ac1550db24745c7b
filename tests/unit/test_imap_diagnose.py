"""Naming the mistake behind a failed connect: pure checks, no socket."""

from __future__ import annotations

import socket
import ssl

import pytest
from hypothesis import given
from hypothesis import strategies as st

from guardedpool.errors import ConnectionLost
from guardedpool.imap.diagnose import context_problem, looks_like_tls, misconfiguration


def gaierror(name: str) -> socket.gaierror:
    code = getattr(socket, name)
    return socket.gaierror(code, f"resolver said {name}")


@pytest.mark.parametrize("name", ["EAI_NONAME", "EAI_NODATA"])
def test_a_name_that_does_not_exist_is_a_mistake(name: str) -> None:
    if not hasattr(socket, name):
        pytest.skip(f"no {name} on this platform")
    got = misconfiguration(gaierror(name), host="imap.nope.invalid", tls=True, stage="connect")
    assert got is not None and "'imap.nope.invalid' does not exist" in got


@pytest.mark.parametrize("name", ["EAI_AGAIN", "EAI_FAIL"])
def test_a_resolver_that_failed_for_now_is_not_a_mistake(name: str) -> None:
    got = misconfiguration(gaierror(name), host="imap.example.org", tls=True, stage="connect")
    assert got is None


def wrong_version() -> ssl.SSLError:
    exc = ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number")
    exc.reason = "WRONG_VERSION_NUMBER"  # as OpenSSL's errors carry it
    return exc


def test_tls_to_a_plaintext_port() -> None:
    got = misconfiguration(wrong_version(), host="h", tls=True, stage="tls")
    assert got is not None and "did you mean tls=False or starttls=True?" in got


def test_plaintext_to_a_tls_port_answered_with_a_tls_alert() -> None:
    alert = b"\x15\x03\x03\x00\x02\x02\x32"
    lost = ConnectionLost("connection lost")
    got = misconfiguration(lost, host="h", tls=False, stage="greeting", first_bytes=alert)
    assert got is not None and "did you mean tls=True?" in got
    # The same bytes on a TLS account, or after the greeting, mean something else.
    assert misconfiguration(lost, host="h", tls=True, stage="greeting", first_bytes=alert) is None
    assert misconfiguration(lost, host="h", tls=False, stage="login", first_bytes=alert) is None


def test_plaintext_to_a_tls_port_that_hangs_up_on_the_probe() -> None:
    lost = ConnectionLost("connection lost")
    got = misconfiguration(lost, host="h", tls=False, stage="greeting", probed=True)
    assert got is not None and "tls=True" in got
    # A hang-up before the probe is a per-IP limit (Courier's MAXPERIP), not TLS; a
    # timeout after it is just a silent server.
    assert misconfiguration(lost, host="h", tls=False, stage="greeting") is None
    timeout = TimeoutError()
    assert misconfiguration(timeout, host="h", tls=False, stage="greeting", probed=True) is None


@pytest.mark.parametrize(
    "exc",
    [ConnectionRefusedError(111, "refused"), TimeoutError(), OSError(104, "reset"), ValueError()],
)
def test_network_trouble_is_not_a_mistake(exc: BaseException) -> None:
    for stage in ("connect", "tls", "greeting", "login"):
        assert misconfiguration(exc, host="h", tls=True, stage=stage) is None


@pytest.mark.parametrize(
    ("data", "tls"),
    [
        (b"\x15\x03\x03\x00\x02", True),
        (b"\x16\x03\x01\x02\x00", True),
        (b"* OK ready", False),
        (b"\x15", False),
        (b"", False),
    ],
)
def test_looks_like_tls(data: bytes, tls: bool) -> None:
    assert looks_like_tls(data) is tls


@given(st.binary(max_size=8))
def test_an_imap_greeting_never_looks_like_tls(tail: bytes) -> None:
    assert not looks_like_tls(b"* " + tail)


def test_context_problem() -> None:
    assert context_problem(ssl.create_default_context(), "imap.example.org") is None
    server_side = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    assert "cannot make a client TLS connection" in str(context_problem(server_side, "x"))
    ctx = ssl.create_default_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    assert "NO_PROTOCOLS_AVAILABLE" in str(context_problem(ctx, "x"))
