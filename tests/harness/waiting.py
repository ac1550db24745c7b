"""The one way tests wait for a condition they cannot await: poll it, bounded."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

__all__ = ["wait_for"]


async def wait_for(
    condition: Callable[[], object],
    timeout: float = 5.0,
    *,
    what: str = "condition",
    pause: float = 0.01,
) -> float:
    """Poll ``condition()`` until it is true; return the seconds it took.

    ``pause`` is the sleep between polls (0 gives the event loop exactly one turn each
    time, for sweeps that count loop iterations). Raises ``TimeoutError`` naming ``what``
    once ``timeout`` seconds have passed without it. For things with no event to await:
    socket states, fd tables, counters another task updates.
    """
    start = time.monotonic()
    while not condition():
        waited = time.monotonic() - start
        if waited > timeout:
            raise TimeoutError(f"not within {timeout} s: {what}")
        await asyncio.sleep(pause)
    return time.monotonic() - start
