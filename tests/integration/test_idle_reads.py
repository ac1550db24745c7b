"""Reading an ``idle()`` session with a timeout: a cancelled read ends nothing, loses nothing.

A consumer that reads with ``asyncio.wait_for(it.__anext__(), t)`` sees its read
cancelled whenever nothing came within ``t``. The same iterator must go on with the next
event while the session runs (an async generator would have been closed by the
``CancelledError``), and a read cancelled just as its event arrived must leave that event
for the next read: not lost, not delivered twice.

Against Dovecot for the plain case; against a scripted server for the exact sequence of
pushes (``* n EXISTS`` for n = 1..N, one per trigger), which Dovecot coalesces.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from harness import DovecotServer, make_message
from harness.configs import DEFAULTS, FAST_RETRY, IMAP, config
from harness.scripted import ScriptConn, ScriptedIMAP

from guardedpool import GuardedPool
from guardedpool.imap import IMAPAccount, IMAPClient, IMAPConnector
from guardedpool.imap.idle import IdleEvent, idle

CFG = config(IMAP, op_timeout=0.5, retry=config(FAST_RETRY, max_delay=0.1))


async def test_a_timed_out_read_leaves_the_iterator_reading(
    dovecot: DovecotServer, fresh_user: tuple[str, str]
) -> None:
    account = dovecot.plain_account(*fresh_user)
    pool = GuardedPool(IMAPConnector({"u": account}), CFG)
    async with pool:
        session = idle(pool, "u", renew_after=30.0)
        async with session as pushes:
            await read_after_a_timeout(pool, aiter(pushes))
        # Only the session's end ends an iteration, for every iterator, every read after.
        async with asyncio.timeout(2.0):  # what was queued before the end (RECENT...)
            left = [event async for event in session]
        assert all(event.kind != "CONNECTED" for event in left), left
        for it in (aiter(session), aiter(session)):
            for _ in range(2):
                with pytest.raises(StopAsyncIteration):
                    await asyncio.wait_for(anext(it), 1.0)


async def read_after_a_timeout(pool: GuardedPool[IMAPClient], it: AsyncIterator[IdleEvent]) -> None:
    first = await asyncio.wait_for(anext(it), 3.0)
    assert first.kind == "CONNECTED"
    with pytest.raises(TimeoutError):  # nothing pushed: the read is cancelled
        await asyncio.wait_for(anext(it), 0.2)
    async with pool.acquire("u") as imap:
        await imap.append(make_message(1), mailbox="INBOX")
    for _ in range(10):  # the same iterator: the push, maybe after keepalive OKs
        event = await asyncio.wait_for(anext(it), 3.0)
        if event.kind == "EXISTS":
            break
    assert (event.kind, event.number) == ("EXISTS", 1)


PUSHES = 40  # cancel points swept: 0..39 loop turns after a push is triggered


class PushingServer:
    """A scripted IMAP server that, once in IDLE, writes ``* n EXISTS`` on each trigger
    and answers DONE, so the session ends as it would with any server."""

    def __init__(self) -> None:
        self.triggers: asyncio.Queue[int] = asyncio.Queue()
        self.server = ScriptedIMAP(self.script)

    async def script(self, c: ScriptConn) -> None:
        await c.greet()
        line = await c.serve(until=b"IDLE")
        tag = line.split(b" ", 1)[0]
        await c.send(b"+ idling\r\n")
        done = asyncio.ensure_future(c.line(timeout=30.0))  # DONE, whenever it comes
        try:
            for _ in range(PUSHES + 1):  # bounded: one turn per trigger
                trigger = asyncio.ensure_future(self.triggers.get())
                await asyncio.wait({done, trigger}, timeout=30.0, return_when="FIRST_COMPLETED")
                if not trigger.done():
                    trigger.cancel()
                    break
                await c.send(b"* %d EXISTS\r\n" % trigger.result())
            if (await done).strip().upper() == b"DONE":
                await c.send(tag + b" OK IDLE terminated\r\n")
                await c.serve()  # LOGOUT at the pool's close
        finally:
            done.cancel()


async def test_cancelled_reads_lose_and_duplicate_no_event() -> None:
    """Push n is triggered, a read started and cancelled n - 1 loop turns later: before
    the push arrived, just as it arrived (the read's wake-up already due), or after the
    read returned it. Whichever, push n is read exactly once, in order."""
    srv = PushingServer()
    async with srv.server:
        account = IMAPAccount(
            host="127.0.0.1", port=srv.server.port, username="u", password="pw", tls=False
        )
        pool: GuardedPool[IMAPClient] = GuardedPool(
            IMAPConnector({"k": account}), config(DEFAULTS, op_timeout=2.0, check_after=3600.0)
        )
        async with pool, idle(pool, "k", renew_after=30.0) as pushes:
            it = aiter(pushes)
            assert (await asyncio.wait_for(anext(it), 3.0)).kind == "CONNECTED"
            got: list[IdleEvent] = []
            cancelled = 0
            for n in range(1, PUSHES + 1):
                srv.triggers.put_nowait(n)
                read = asyncio.ensure_future(anext(it))
                for _ in range(n - 1):  # the cancel point: n - 1 loop turns after the trigger
                    await asyncio.sleep(0)
                read.cancel()
                await asyncio.wait({read}, timeout=3.0)
                if read.cancelled():  # then push n is the next read's, however far it got
                    cancelled += 1
                    got.append(await asyncio.wait_for(anext(it), 3.0))
                else:
                    got.append(read.result())  # raises what the read raised
            with contextlib.suppress(TimeoutError):  # and nothing more: no duplicate
                got.append(await asyncio.wait_for(anext(it), 0.3))
        assert [(e.kind, e.number) for e in got] == [("EXISTS", n) for n in range(1, PUSHES + 1)]
        assert 0 < cancelled < PUSHES  # both cases were swept: taken, and cancelled
