"""What ``pool.acquire(key)`` returns: an awaitable and an async context manager in one.

:class:`Acquisition` is both an async context manager (``async with pool.acquire(k) as c``)
and an awaitable (``c = await pool.acquire(k)`` ... ``pool.release(c)``). Leaving the block
releases synchronously, so a cancellation arriving at the exit cannot lose the connection.
"""

from __future__ import annotations

from collections.abc import Generator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from .errors import ConnectionPoisoned

if TYPE_CHECKING:
    from .pool import GuardedPool

__all__ = ["Acquisition", "is_connection_fault"]

C = TypeVar("C")


def is_connection_fault(exc: BaseException) -> bool:
    """An error that came from the connection, so the connection must not be reused."""
    return isinstance(exc, (ConnectionPoisoned, OSError, TimeoutError))


class Acquisition(Generic[C]):
    """``async with pool.acquire(key) as conn`` or ``conn = await pool.acquire(key)``."""

    __slots__ = ("_conn", "_key", "_pool")

    def __init__(self, pool: GuardedPool[C], key: str) -> None:
        self._pool = pool
        self._key = key
        self._conn: C | None = None

    def __await__(self) -> Generator[Any, None, C]:
        # A generator, not a coroutine: when an idle connection is ready no coroutine is
        # created at all (the acquire hot path).
        pool = self._pool
        conn = pool._take_ready(self._key)
        if conn is None:
            conn = yield from pool._acquire_slow(self._key).__await__()
        self._conn = conn
        return conn

    def __aenter__(self) -> Acquisition[C]:
        return self  # awaiting it runs __await__, which keeps the connection for __aexit__

    def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> _Done:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._pool.release(conn, error=exc)
        return _DONE  # release is synchronous: nothing left to await


class _Done:
    """An awaitable that is already finished (and returns None: exceptions propagate)."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        return iter(())  # type: ignore[return-value]


_DONE = _Done()
