"""Waiting for the first of a few futures, at the cost of one waiter.

``asyncio.wait(..., return_when=FIRST_COMPLETED)`` builds sets, a coroutine and, per
future, a callback with a copy of the caller's context; every command and every IDLE wait
of every connection pays for it, and an IDLE connection keeps it for as long as it waits.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Iterable
from typing import Any

__all__ = ["callbacks_context", "first_done"]

_per_thread = threading.local()


def callbacks_context() -> contextvars.Context:
    """The context our own wake-up callbacks run in, one per thread.

    None of them reads a context variable, and a callback added without a context copies
    the caller's (one more object per callback, for each command and for as long as an
    IDLE wait lasts). One per thread, not one for the process: a context cannot be
    entered twice at once, and event loops in two threads run callbacks at the same time.
    """
    ctx: contextvars.Context | None = getattr(_per_thread, "context", None)
    if ctx is None:
        ctx = _per_thread.context = contextvars.Context()
    return ctx


class _Wake:
    """The wake-up callback of one wait: resolves its waiter, once. One small object, not
    a closure (a function, its cell and the tuple of cells) per wait."""

    __slots__ = ("waiter",)

    def __init__(self, waiter: asyncio.Future[None]) -> None:
        self.waiter = waiter

    def __call__(self, _: object = None) -> None:
        waiter = self.waiter
        if not waiter.done():
            waiter.set_result(None)


async def first_done(futures: Iterable[asyncio.Future[Any]], deadline: float | None) -> None:
    """Wait until one of ``futures`` is done, or the loop's clock reaches ``deadline``
    (``loop.time()`` seconds; None: no bound of its own).

    What ``asyncio.wait(..., return_when=FIRST_COMPLETED)`` does, for what the guard needs
    and no more: one waiter, one wake-up callback per future, one timer; no task, no
    result sets. Returns at once when one is already done. None of ``futures`` is
    cancelled; when the caller is cancelled, ``CancelledError`` propagates and the
    callbacks are removed.
    """
    futures = tuple(futures)
    if any(f.done() for f in futures):
        return
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()
    wake = _Wake(waiter)
    ctx = callbacks_context()
    for f in futures:
        f.add_done_callback(wake, context=ctx)
    timer = loop.call_at(deadline, wake, context=ctx) if deadline is not None else None
    try:
        await waiter
    finally:
        if timer is not None:
            timer.cancel()
        for f in futures:
            f.remove_done_callback(wake)
