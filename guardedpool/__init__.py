"""guardedpool: a bounded, self-auditing pool of long-lived IMAP connections.

The public API is what this module exports; everything else is internal.
"""

from .config import AuditPolicy, PoolConfig, RetryPolicy
from .connector import Connector
from .errors import (
    AuthenticationError,
    CertificateError,
    CommandThrottled,
    ConfigurationError,
    ConnectError,
    ConnectionLost,
    ConnectionPoisoned,
    ConnectTimeout,
    IMAPCommandError,
    OperationTimeout,
    PoolClosed,
    PoolError,
    PoolTimeout,
    ProtocolError,
    ServerBusy,
    ServerBusyClosed,
    ServerLimit,
    UnknownKey,
)
from .leaks import Borrow
from .pool import GuardedPool
from .records import (
    CloseReason,
    ConnectionRecord,
    ConnState,
    Event,
    LifecycleEvent,
    SocketIdentity,
)

__all__ = [
    "AuditPolicy",
    "AuthenticationError",
    "Borrow",
    "CertificateError",
    "CloseReason",
    "ConnState",
    "ConnectError",
    "ConnectTimeout",
    "ConnectionLost",
    "ConnectionPoisoned",
    "ConnectionRecord",
    "Connector",
    "Event",
    "GuardedPool",
    "IMAPCommandError",
    "LifecycleEvent",
    "OperationTimeout",
    "PoolClosed",
    "PoolConfig",
    "PoolError",
    "PoolTimeout",
    "ProtocolError",
    "RetryPolicy",
    "SocketIdentity",
    "UnknownKey",
    # Server limits and settings no retry can fix (issue 13).
    "CommandThrottled",
    "ConfigurationError",
    "ServerBusy",
    "ServerBusyClosed",
    "ServerLimit",
]

__version__ = "0.1.0"
