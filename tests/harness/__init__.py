"""Real-server test harness: throwaway Dovecot, Redis and PostgreSQL servers, a
fault-injecting proxy, socket counting, and one way to wait for a condition. The pool
configurations tests start from live in ``harness.configs`` (``from harness.configs import
IMAP, config``).

Names are imported on first use (PEP 562), so a test that needs no Dovecot (every unit
test, and ``conftest.py``'s socket-leak check) runs without Dovecot or ``trustme``
installed: only ``harness.dovecot`` needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .dovecot import DEFAULT_USERS, DovecotError, DovecotServer, make_message
    from .postgres import PostgresError, PostgresServer
    from .proxy import Fault, FaultProxy, Mode, ProxyConnection, ProxyFactory, ProxyStats
    from .redis import RedisError, RedisServer
    from .sockets import describe_sockets, socket_fds
    from .waiting import wait_for

_HOME = {
    "DEFAULT_USERS": "dovecot",
    "DovecotError": "dovecot",
    "DovecotServer": "dovecot",
    "make_message": "dovecot",
    "Fault": "proxy",
    "FaultProxy": "proxy",
    "Mode": "proxy",
    "ProxyConnection": "proxy",
    "ProxyFactory": "proxy",
    "ProxyStats": "proxy",
    "PostgresError": "postgres",
    "PostgresServer": "postgres",
    "RedisError": "redis",
    "RedisServer": "redis",
    "describe_sockets": "sockets",
    "socket_fds": "sockets",
    "wait_for": "waiting",
}

__all__ = [
    "DEFAULT_USERS",
    "DovecotError",
    "DovecotServer",
    "Fault",
    "FaultProxy",
    "Mode",
    "PostgresError",
    "PostgresServer",
    "ProxyConnection",
    "ProxyFactory",
    "ProxyStats",
    "RedisError",
    "RedisServer",
    "describe_sockets",
    "make_message",
    "socket_fds",
    "wait_for",
]


def __getattr__(name: str) -> Any:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
