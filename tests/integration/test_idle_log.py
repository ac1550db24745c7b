"""The line ``idle()`` logs when it reconnects reads on its own (Dovecot, fault proxy).

With a plain ``logging.basicConfig()`` an operator sees the key, what happened -- the
connection lost, with its id and the error's type and text, or no connection within
``acquire_timeout``, which is not a loss -- and what comes next. The structured ``extra=``
fields carry the same facts; the password appears nowhere.
"""

from __future__ import annotations

import asyncio
import logging
import re

import pytest
from harness import DovecotServer, ProxyFactory
from harness.configs import FAST_RETRY, IMAP, config
from harness.proxy import Mode

from guardedpool import GuardedPool
from guardedpool.imap import IMAPAccount, IMAPClient, IMAPConnector
from guardedpool.imap.idle import IdleEvent, IdleSession, idle

CFG = config(IMAP, op_timeout=0.5, retry=config(FAST_RETRY, max_delay=0.1))
LOGGER = "guardedpool.imap.idle"
NEXT = r"; reconnecting now \(the pool paces failing connects with the key's backoff\)"


async def next_connected(session: IdleSession, within: float) -> IdleEvent:
    async with asyncio.timeout(within):
        async for event in session:
            if event.kind == "CONNECTED":
                return event
    raise AssertionError("session ended before a CONNECTED event")


def reconnect_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.INFO]


async def until_logged(caplog: pytest.LogCaptureFixture, count: int, within: float) -> None:
    """Wait (bounded) until the idle logger has written ``count`` INFO lines."""
    for _ in range(int(within / 0.05)):
        if len(reconnect_records(caplog)) >= count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"fewer than {count} reconnect lines within {within} s")


def pool_via(port: int, user: tuple[str, str], **changes: object) -> GuardedPool[IMAPClient]:
    account = IMAPAccount(
        host="127.0.0.1", port=port, username=user[0], password=user[1], tls=False
    )
    return GuardedPool(IMAPConnector({"u": account}), config(CFG, **changes))


async def test_a_lost_connection_is_logged_with_key_connection_and_error(
    dovecot: DovecotServer,
    fault_proxy: ProxyFactory,
    fresh_user: tuple[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    proxy = await fault_proxy()
    pool = pool_via(proxy.port, fresh_user)
    async with pool, idle(pool, "u", renew_after=30.0) as pushes:
        await next_connected(pushes, 3.0)
        proxy.reset_all()
        assert (await next_connected(pushes, 3.0)).resumed
    [record] = reconnect_records(caplog)
    line = record.getMessage()
    assert re.fullmatch(
        r"guardedpool: IDLE on key 'u' lost connection \d+: \w+: .+" + NEXT, line
    ), line
    fields = record.__dict__
    assert fields["key"] == "u"
    assert f"lost connection {fields['conn_id']}: {fields['error']};" in line
    assert fields["error"].startswith(fields["error_type"] + ": ")
    assert fresh_user[1] not in caplog.text


async def test_no_connection_within_acquire_timeout_is_not_called_lost(
    dovecot: DovecotServer,
    fault_proxy: ProxyFactory,
    fresh_user: tuple[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    proxy = await fault_proxy()
    pool = pool_via(proxy.port, fresh_user, acquire_timeout=0.3, connect_timeout=1.0)
    async with pool, idle(pool, "u", renew_after=30.0) as pushes:
        await next_connected(pushes, 3.0)
        proxy.set_mode(Mode.NEVER_GREET)  # new connections: accepted, never a greeting
        proxy.reset_all()
        await until_logged(caplog, 2, within=5.0)  # the loss, then the first timeout
        proxy.set_mode(Mode.PASS)
        assert (await next_connected(pushes, 5.0)).resumed
    lost, timed_out = reconnect_records(caplog)[:2]
    assert lost.getMessage().startswith("guardedpool: IDLE on key 'u' lost connection ")
    line = timed_out.getMessage()
    assert re.fullmatch(
        r"guardedpool: IDLE on key 'u' got no connection within acquire_timeout \(0\.3 s\): "
        r"PoolTimeout: no connection for key 'u' within [\d.]+ s.*" + NEXT,
        line,
    ), line
    assert "lost" not in line
    fields = timed_out.__dict__
    assert (fields["key"], fields["conn_id"], fields["error_type"]) == ("u", None, "PoolTimeout")
    assert fresh_user[1] not in caplog.text
