"""Waiting for the first of a few futures, at the cost of one waiter.

``asyncio.wait(..., return_when=FIRST_COMPLETED)`` builds sets, a coroutine and, per
future, a callback with a copy of the caller's context; every command and every IDLE wait
of every connection pays for it, and an IDLE connection keeps it for as long as it waits.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Iterable
from typing import Any

__all__ = ["CALLBACKS", "first_done"]

# The context our own wake-up callbacks run in. None of them reads a context variable, and
# a callback added without one copies the caller's context (one more object per callback,
# for each command and for as long as an IDLE wait lasts).
CALLBACKS = contextvars.Context()


async def first_done(futures: Iterable[asyncio.Future[Any]], deadline: float | None) -> None:
    """Wait until one of ``futures`` is done, or the loop's clock reaches ``deadline``
    (``loop.time()`` seconds; None: no bound of its own).

    What ``asyncio.wait(..., return_when=FIRST_COMPLETED)`` does, for what the guard needs
    and no more: one waiter, one wake-up callback per future, one timer; no task, no
    result sets. Returns at once when one is already done. Nothing is cancelled; when the
    caller is cancelled, ``CancelledError`` propagates and the callbacks are removed.
    """
    futures = tuple(futures)
    if any(f.done() for f in futures):
        return
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()

    def wake(_: object = None) -> None:
        if not waiter.done():
            waiter.set_result(None)

    for f in futures:
        f.add_done_callback(wake, context=CALLBACKS)
    timer = loop.call_at(deadline, wake, context=CALLBACKS) if deadline is not None else None
    try:
        await waiter
    finally:
        if timer is not None:
            timer.cancel()
        for f in futures:
            f.remove_done_callback(wake)
