"""guardedpool.waits.first_done, and the IDLE session's bounded backlog of events.

No sockets: futures on the running loop, and an IdleSession whose task is never started.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from guardedpool import GuardedPool, PoolConfig
from guardedpool.imap.idle import IdleEvent, IdleSession
from guardedpool.testing import MemoryConnector
from guardedpool.waits import callbacks_context, first_done


async def test_first_done_returns_when_one_future_completes() -> None:
    loop = asyncio.get_running_loop()
    a: asyncio.Future[Any] = loop.create_future()
    b: asyncio.Future[Any] = loop.create_future()
    loop.call_soon(b.set_result, 1)
    await asyncio.wait_for(first_done((a, b), None), 5)
    assert b.done() and not a.done()
    a.set_result(2)  # its wake-up callback was removed: nothing left to run
    await asyncio.sleep(0)


async def test_first_done_returns_at_the_deadline_with_nothing_done() -> None:
    loop = asyncio.get_running_loop()
    a: asyncio.Future[Any] = loop.create_future()
    await asyncio.wait_for(first_done((a,), loop.time() + 0.01), 5)
    assert not a.done() and not a.cancelled()


async def test_first_done_returns_at_once_when_one_is_already_done() -> None:
    loop = asyncio.get_running_loop()
    a: asyncio.Future[Any] = loop.create_future()
    a.set_result(None)
    await first_done((a, loop.create_future()), None)


async def test_cancelling_first_done_cancels_none_of_the_futures() -> None:
    loop = asyncio.get_running_loop()
    a: asyncio.Future[Any] = loop.create_future()
    waiting = asyncio.ensure_future(first_done((a,), None))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert not a.done()
    a.set_result(1)
    await asyncio.sleep(0)


def _session(queue_size: int) -> IdleSession:
    pool: GuardedPool[Any] = GuardedPool(MemoryConnector(), PoolConfig())
    return IdleSession(pool, "k", queue_size=queue_size)


async def _take(session: IdleSession, n: int) -> list[IdleEvent]:
    out: list[IdleEvent] = []
    async for event in session:
        out.append(event)
        if len(out) == n:
            break
    return out


def test_event_loops_in_two_threads_run_our_callbacks_at_the_same_time() -> None:
    # A context cannot be entered twice at once: one shared by every thread made a
    # callback of a second thread's loop fail while the first ran one of its own.
    inside, leave = threading.Event(), threading.Event()
    failures: list[BaseException] = []

    def first() -> None:
        callbacks_context().run(lambda: (inside.set(), leave.wait(timeout=10)))

    def second() -> None:
        try:
            callbacks_context().run(lambda: None)
        except BaseException as exc:
            failures.append(exc)

    a = threading.Thread(target=first)
    a.start()
    try:
        assert inside.wait(timeout=10)
        b = threading.Thread(target=second)
        b.start()
        b.join(timeout=10)
    finally:
        leave.set()
        a.join(timeout=10)
    assert failures == []


async def test_events_reach_a_waiting_consumer_in_order() -> None:
    session = _session(4)
    consumer = asyncio.ensure_future(_take(session, 2))
    await asyncio.sleep(0)  # the consumer now waits on an empty backlog
    session._emit(IdleEvent("EXISTS", 1))
    session._emit(IdleEvent("EXPUNGE", 2))
    got = await asyncio.wait_for(consumer, 5)
    assert [(e.kind, e.number) for e in got] == [("EXISTS", 1), ("EXPUNGE", 2)]


async def test_a_consumer_behind_by_more_than_queue_size_gets_one_overflow() -> None:
    session = _session(2)
    for n in range(5):
        session._emit(IdleEvent("EXISTS", n))
    session._finish(None)
    got = await asyncio.wait_for(_take(session, 10), 5)
    assert [e.kind for e in got] == ["OVERFLOW"]


async def test_pushes_after_the_overflow_is_taken_reach_the_consumer() -> None:
    # OVERFLOW says "resync"; what is pushed once the consumer has it is news again (it
    # was dropped until the next reconnect, possibly max_lifetime away).
    session = _session(2)
    for n in range(3):
        session._emit(IdleEvent("EXISTS", n))
    got = await asyncio.wait_for(_take(session, 1), 5)
    assert [e.kind for e in got] == ["OVERFLOW"]
    session._emit(IdleEvent("EXISTS", 99))
    got = await asyncio.wait_for(_take(session, 1), 5)
    assert [(e.kind, e.number) for e in got] == [("EXISTS", 99)]


async def test_the_end_marker_makes_room_and_raises_the_sessions_error() -> None:
    session = _session(2)
    session._emit(IdleEvent("EXISTS", 1))
    session._emit(IdleEvent("EXISTS", 2))
    session._finish(RuntimeError("gave up"))
    seen: list[IdleEvent] = []
    with pytest.raises(RuntimeError, match="gave up"):
        async for event in session:
            seen.append(event)
    assert [e.number for e in seen] == [2]
