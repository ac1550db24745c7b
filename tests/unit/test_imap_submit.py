"""GuardedProtocol.submit (a command without aioimaplib's execute task), IDLE's push_ready
future and queue, and first_done.

No sockets: the protocol gets a transport that records writes, and server lines go in
through ``data_received`` as they would from the wire.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aioimaplib.aioimaplib import Abort, Command
from harness.transports import RecordingTransport

from guardedpool.imap.protocol import GuardedProtocol
from guardedpool.waits import first_done


def _protocol(state: str = "AUTH") -> tuple[GuardedProtocol, RecordingTransport]:
    protocol = GuardedProtocol(asyncio.get_running_loop())
    sink = RecordingTransport()
    protocol.connection_made(sink)
    protocol.state = state
    protocol.capabilities = {"IMAP4REV1", "IDLE"}
    return protocol, sink


async def test_select_is_sent_and_its_tagged_ok_resolves_the_future_and_the_state() -> None:
    protocol, sink = _protocol()
    future = protocol.select_command("INBOX")
    assert len(sink.written) == 1
    tag, _, rest = sink.written[0].partition(b" ")
    assert rest == b"SELECT INBOX\r\n"
    assert not future.done() and protocol.pending_sync_command is not None
    protocol.data_received(b"* 3 EXISTS\r\n* OK [UIDVALIDITY 7] ok\r\n")
    assert not future.done()
    protocol.data_received(tag + b" OK [READ-WRITE] done\r\n")
    response = future.result()
    assert response.result == "OK"
    assert [bytes(x) for x in response.lines] == [
        b"3 EXISTS",
        b"OK [UIDVALIDITY 7] ok",
        b"[READ-WRITE] done",
    ]
    assert protocol.state == "SELECTED"
    assert protocol.pending_sync_command is None


async def test_a_no_leaves_the_state_alone() -> None:
    protocol, sink = _protocol()
    future = protocol.select_command("Nope")
    tag = sink.written[0].split(b" ")[0]
    protocol.data_received(tag + b" NO [NONEXISTENT] no such mailbox\r\n")
    assert future.result().result == "NO"
    assert protocol.state == "AUTH"


async def test_a_command_not_valid_in_the_state_is_refused_unsent() -> None:
    protocol, sink = _protocol(state="NONAUTH")
    future = protocol.select_command("INBOX")
    assert isinstance(future.exception(), Abort)
    assert sink.written == [] and protocol.sent == 0


async def test_a_second_command_while_one_is_pending_is_refused_unsent() -> None:
    protocol, sink = _protocol()
    first = protocol.select_command("INBOX")
    second = protocol.submit(Command("NOOP", protocol.new_tag(), loop=protocol.loop))
    assert isinstance(second.exception(), Abort)
    assert len(sink.written) == 1 and not first.done()


async def test_a_control_character_is_refused_unsent() -> None:
    protocol, sink = _protocol()
    future = protocol.select_command("a\r\nb")
    assert isinstance(future.exception(), ValueError)
    assert sink.written == []


async def test_idle_without_the_capability_is_refused_unsent() -> None:
    protocol, sink = _protocol(state="SELECTED")
    protocol.capabilities = {"IMAP4REV1"}
    assert isinstance(protocol.idle_command().exception(), Abort)
    assert sink.written == []


async def test_idle_pushes_resolve_push_ready_and_done_ends_it() -> None:
    protocol, sink = _protocol(state="SELECTED")
    loop = asyncio.get_running_loop()
    idle = protocol.idle_command()
    tag = sink.written[0].split(b" ")[0]
    ack: asyncio.Future[None] = loop.create_future()
    protocol.idle_ready = ack
    protocol.data_received(b"+ idling\r\n")
    assert ack.done()
    ready: asyncio.Future[None] = loop.create_future()
    protocol.push_ready = ready
    protocol.data_received(b"* OK still here\r\n")
    assert ready.done()
    assert [bytes(x) for x in protocol.idle_queue.get_nowait()] == [b"OK still here"]
    protocol.idle_done()
    assert sink.written[-1] == b"DONE\r\n"
    assert not idle.done()
    protocol.data_received(tag + b" OK IDLE terminated\r\n")
    assert idle.result().result == "OK"
    assert protocol.pending_sync_command is None


async def test_first_done_cancelled_cancels_none_of_the_futures() -> None:
    loop = asyncio.get_running_loop()
    other: asyncio.Future[Any] = loop.create_future()
    waiting = asyncio.ensure_future(first_done((other,), None))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert not other.done()
    other.set_result(1)  # its wake-up callback was removed: nothing resolves twice
    await asyncio.sleep(0)


async def test_a_line_that_cannot_be_encoded_is_raised_unsent_and_leaves_nothing_pending() -> None:
    protocol, sink = _protocol()
    with pytest.raises(UnicodeEncodeError):
        protocol.select_command('"caf\udcfc"')
    assert sink.written == [] and protocol.sent == 0
    assert not protocol.pending()
    future = protocol.select_command("INBOX")  # the next command goes out as usual
    assert len(sink.written) == 1 and not future.done()


async def test_a_write_that_fails_is_a_fault() -> None:
    protocol, sink = _protocol()

    def broken(data: bytes) -> None:
        raise OSError("write on a broken transport")

    sink.write = broken  # type: ignore[method-assign]
    with pytest.raises(OSError):
        protocol.select_command("INBOX")
    assert protocol.fault.done()
    assert "writing a command failed" in str(protocol.fault.result())


async def test_pushes_read_with_the_line_that_ends_idle_reach_the_queue() -> None:
    protocol, sink = _protocol(state="SELECTED")
    idle = protocol.idle_command()
    tag = sink.written[0].split(b" ")[0]
    protocol.data_received(b"+ idling\r\n* 5 EXISTS\r\n" + tag + b" OK IDLE ended by server\r\n")
    assert idle.result().result == "OK"
    assert [bytes(x) for x in protocol.idle_queue.get_nowait()] == [b"5 EXISTS"]
