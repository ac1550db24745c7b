"""The commands :meth:`GuardedProtocol.submit` sends: SELECT and IDLE on the way to IDLE.

They answer the protocol's line routing as aioimaplib's ``Command`` and ``IdleCommand`` do
(``name``, ``tag``, ``append_to_resp``, ``close``, ``flush``, ``wait_data``,
``response``), and hold only what a command must: its lines and result (and IDLE's pushes
not yet queued). aioimaplib's classes also make, per command, an ``asyncio.Event``, a
placeholder timer handle with a copy of the caller's context, and a literal buffer; an
IDLE connection keeps them for as long as it idles, and each is one more object for every
garbage collection to walk.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any

from aioimaplib.aioimaplib import CONTROL_CHARS, Response

__all__ = ["Call", "IdleCall", "PushQueue"]


class PushQueue(collections.deque[list[Any]]):
    """IDLE's pushes not yet taken, one list of lines per read, oldest first.

    The part of ``asyncio.Queue`` the client uses (``put_nowait``, ``get_nowait``,
    ``empty``), as one object: a ``Queue`` is six (its deques of items, getters and
    putters, and an ``Event`` with its own), kept by every connection for its lifetime.
    Nobody blocks on it: the protocol resolves its ``push_ready`` future instead.
    """

    __slots__ = ()

    def put_nowait(self, item: list[Any]) -> None:
        self.append(item)

    def get_nowait(self) -> list[Any]:
        """The oldest batch; ``asyncio.QueueEmpty`` when there is none."""
        if not self:
            raise asyncio.QueueEmpty
        return self.popleft()

    def empty(self) -> bool:
        return not self


class Call:
    """One command line, ``<tag> <name> <args...>``; its response as aioimaplib shapes it.

    Raises ``ValueError`` (as aioimaplib does) for an argument holding NUL, CR or LF.
    """

    __slots__ = ("args", "future", "lines", "name", "result", "tag", "untagged_resp_name")

    def __init__(self, name: str, tag: str, *args: str) -> None:
        for arg in args:
            if CONTROL_CHARS.search(arg):
                raise ValueError(f"NUL, CR and LF are not allowed in {name} command arguments")
        self.name = name
        self.tag = tag
        self.args = args
        self.untagged_resp_name = name
        self.lines: list[Any] = []
        self.result = "Init"
        self.future: asyncio.Future[Any] | None = None  # set by GuardedProtocol.submit

    def __str__(self) -> str:
        return " ".join((self.tag, self.name, *self.args))

    @property
    def response(self) -> Any:
        """aioimaplib's ``Response(result, lines)``."""
        return Response(self.result, self.lines)

    def append_to_resp(self, line: Any, result: str = "Pending") -> None:
        self.result = result
        self.lines.append(line)

    def close(self, line: bytes, result: str) -> None:
        """The tagged status line (its text) and result: the command is complete."""
        self.append_to_resp(line, result=result)

    def flush(self) -> None:
        pass

    def wait_data(self) -> bool:
        return False  # literals are framed by the protocol, never counted here

    async def wait(self) -> None:
        """Until the command is complete (aioimaplib's ``execute`` waits so for a pending
        command before it sends another). No bound of its own: it is only reached from
        inside a command the client bounds (``op_timeout``), and the client's lock keeps
        a second command from starting while this one is pending."""
        future = self.future
        if future is not None and not future.done():
            await asyncio.wait((future,))


class IdleCall(Call):
    """IDLE (RFC 2177): untagged lines while it runs are pushes, buffered, and put on
    ``queue`` (aioimaplib's ``idle_queue``) as one list per read by :meth:`flush`."""

    __slots__ = ("buffer", "queue")

    def __init__(self, tag: str, queue: PushQueue) -> None:
        super().__init__("IDLE", tag)
        self.queue = queue
        self.buffer: list[Any] | None = None  # made at the first push: most rounds have none

    def append_to_resp(self, line: Any, result: str = "Pending") -> None:
        if result != "Pending":
            super().append_to_resp(line, result)
        elif self.buffer is None:
            self.buffer = [line]
        else:
            self.buffer.append(line)

    def close(self, line: bytes, result: str) -> None:
        """IDLE's tagged completion; pushes read with it reach the queue first (a server
        may send them in the same read as the line that ends IDLE)."""
        self.flush()
        super().close(line, result)

    def flush(self) -> None:
        if self.buffer:
            self.queue.put_nowait(self.buffer)
            self.buffer = None
