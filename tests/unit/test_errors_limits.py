"""The server-limit errors: where they sit in the hierarchy and what they carry."""

from __future__ import annotations

import pytest

from guardedpool import (
    AuthenticationError,
    CommandThrottled,
    ConfigurationError,
    ConnectError,
    ConnectionLost,
    ConnectionPoisoned,
    IMAPCommandError,
    PoolError,
    ServerBusy,
    ServerBusyClosed,
    ServerLimit,
)
from guardedpool.acquisition import is_connection_fault
from guardedpool.policy import is_transient


def test_server_busy_is_a_transient_connect_error_never_an_authentication_error() -> None:
    exc = ServerBusy("key 'k': refused", kind="capacity", delay=None, code="LIMIT", server_text="t")
    assert isinstance(exc, ConnectError) and isinstance(exc, ServerLimit)
    assert not isinstance(exc, AuthenticationError)
    assert exc.transient and is_transient(exc)
    assert (exc.kind, exc.delay, exc.code, exc.server_text) == ("capacity", None, "LIMIT", "t")


def test_server_busy_closed_poisons_like_a_lost_connection_and_keeps_its_delay() -> None:
    exc = ServerBusyClosed("BYE", kind="throttled", delay=2.5, code="OVERQUOTA", server_text="q")
    assert isinstance(exc, ConnectionLost) and isinstance(exc, ConnectionPoisoned)
    assert isinstance(exc, ServerLimit) and is_connection_fault(exc)
    again = exc.retold("FETCH on key 'k' failed: BYE")
    assert type(again) is ServerBusyClosed and str(again) == "FETCH on key 'k' failed: BYE"
    assert (again.kind, again.delay, again.code, again.server_text) == (
        "throttled",
        2.5,
        "OVERQUOTA",
        "q",
    )


def test_command_throttled_leaves_the_connection_usable() -> None:
    exc = CommandThrottled("SELECT", "BAD", "Request is throttled", kind="throttled", delay=1.0)
    assert isinstance(exc, IMAPCommandError) and isinstance(exc, ServerLimit)
    assert not is_connection_fault(exc)
    assert (exc.command, exc.result, exc.text) == ("SELECT", "BAD", "Request is throttled")
    assert exc.server_text == "Request is throttled" and exc.delay == 1.0


def test_configuration_error_is_never_retried() -> None:
    exc = ConfigurationError("key 'k': host name 'x.invalid' does not exist")
    assert isinstance(exc, ConnectError) and not exc.transient and not is_transient(exc)


@pytest.mark.parametrize("cls", [ServerBusy, ServerBusyClosed, CommandThrottled])
def test_one_except_catches_every_server_limit(cls: type[ServerLimit]) -> None:
    assert issubclass(cls, ServerLimit) and issubclass(cls, PoolError)
