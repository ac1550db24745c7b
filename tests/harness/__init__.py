"""Real-server test harness: throwaway Dovecot and Redis, a fault proxy, socket counting."""

from .dovecot import DEFAULT_USERS, DovecotError, DovecotServer, make_message
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
    "ProxyConnection",
    "ProxyFactory",
    "ProxyStats",
    "RedisError",
    "RedisServer",
    "describe_sockets",
    "make_message",
    "socket_fds",
]
