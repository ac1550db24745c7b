"""Event-loop teardown without ``pool.close()``: a cancellation is reported as one.

``asyncio.run()`` cancels every task still running when its coroutine returns. An IDLE
session's clean-up then sends DONE, whose command task was cancelled with the rest; the
client used to call that "did not complete within 2 s" one millisecond after teardown
began (issue 12 §5).
"""

from __future__ import annotations

import asyncio
import logging

import pytest
from harness import DovecotServer
from harness.configs import DEFAULTS, config

from guardedpool import GuardedPool
from guardedpool.imap import IMAPConnector
from guardedpool.imap.idle import idle


def test_teardown_without_close_says_cancelled_not_timed_out(
    dovecot: DovecotServer, fresh_user: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    account = dovecot.plain_account(*fresh_user)

    async def main() -> None:
        pool = GuardedPool(IMAPConnector({"u": account}), config(DEFAULTS, op_timeout=2.0))
        session = idle(pool, "u")
        await session.__aenter__()
        async with asyncio.timeout(10):
            async for event in session:
                if event.kind == "CONNECTED":
                    break
        # Returns with the session in IDLE and the pool open: asyncio.run() cancels them.

    with caplog.at_level(logging.DEBUG, logger="guardedpool"):
        asyncio.run(main())

    messages = [r.getMessage() for r in caplog.records if r.name.startswith("guardedpool")]
    assert not [m for m in messages if "did not complete within" in m], messages
    assert [m for m in messages if "IDLE DONE on key 'u' was cancelled" in m], messages
