"""Real-server test harness: a throwaway Dovecot, a fault-injecting proxy, socket counting."""

from .dovecot import DEFAULT_USERS, DovecotError, DovecotServer, make_message
from .proxy import Fault, FaultProxy, Mode, ProxyConnection, ProxyFactory, ProxyStats
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
    "describe_sockets",
    "make_message",
    "socket_fds",
]
