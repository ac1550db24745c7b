"""Real-server test harness: throwaway Dovecot, Redis, PostgreSQL; fault proxy; socket counts."""

from .dovecot import DEFAULT_USERS, DovecotError, DovecotServer, make_message
from .postgres import PostgresError, PostgresServer
from .proxy import Fault, FaultProxy, Mode, ProxyConnection, ProxyFactory, ProxyStats
from .redis import RedisError, RedisServer
from .sockets import describe_sockets, socket_fds

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
]
