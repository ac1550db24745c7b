"""What a connection must offer the pool: the small protocol every connector implements.

The pool never knows IMAP. It knows how to open a connection for a key (bounded), check
it (bounded), close it gracefully (bounded), abort it (immediate), ask whether it is still
alive (cheap, synchronous), and which OS socket it sits on. The IMAP connector in
:mod:`guardedpool.imap` is one implementation; benchmarks and tests use lighter ones.
"""

from __future__ import annotations

from collections.abc import Set
from typing import TYPE_CHECKING, Protocol, TypeVar

if TYPE_CHECKING:
    from .config import PoolConfig
    from .sockets import SocketLike

__all__ = ["Address", "Connector"]

C = TypeVar("C")

Address = tuple[str, int]


class Connector(Protocol[C]):
    """Opens and closes connections of type ``C`` for keys.

    Contract:
      * ``open`` finishes or raises within ``config.connect_timeout`` (connect, TLS,
        greeting, login all included) and raises :class:`~guardedpool.errors.UnknownKey`
        for a key it has no account for, a :class:`~guardedpool.errors.ConnectError`
        subclass otherwise. On failure it leaves no socket open.
      * ``check`` raises if the connection is not usable; bounded by ``timeout``.
      * ``close`` is a graceful goodbye bounded by ``timeout``; it may raise, the pool
        aborts afterwards in any case.
      * ``abort`` closes the transport at once; idempotent; never raises.
      * ``is_alive`` is cheap and synchronous: False once the connection is poisoned or its
        transport is closing.
      * ``socket_of`` returns the connection's socket (or ``None`` if it has none yet).
      * ``endpoints`` lists the (host, port) pairs, resolved to IP addresses, that this
        connector connects to; the auditor calls a socket to one of them that no record
        owns an orphan.

    Optional: ``logged_out(conn) -> bool``, cheap and synchronous: True when the borrower
    ended the session itself (IMAP LOGOUT). The pool then counts the connection as
    closed ``logged_out`` instead of ``poisoned``. A connector without it never says so.

    Optional: ``farewell(conn) -> None``, synchronous, never raises: write the goodbye
    without waiting for an answer (IMAP: DONE if in IDLE, then LOGOUT); the pool calls
    ``abort`` right after. A closing pool uses it instead of ``close`` so that 10,000
    goodbyes cost no waiting; a connector without it gets ``close``, all at once, bounded
    by ``shutdown_timeout``.
    """

    async def open(self, key: str, config: PoolConfig) -> C: ...

    async def check(self, conn: C, timeout: float) -> None: ...

    async def close(self, conn: C, timeout: float) -> None: ...

    def abort(self, conn: C) -> None: ...

    def is_alive(self, conn: C) -> bool: ...

    def socket_of(self, conn: C) -> SocketLike | None: ...

    def endpoints(self) -> Set[Address]: ...
