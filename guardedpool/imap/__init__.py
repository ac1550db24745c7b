"""IMAP on the pool: accounts, the connector, the guarded client and response parsers.

``IMAPConnector(accounts)`` is the pool's connector; the pool hands out ``IMAPClient``
objects whose every command is bounded and which poison themselves on any fault.
"""

from .account import IMAPAccount, TokenProvider
from .client import IMAPClient
from .connector import IMAPConnector
from .parse import (
    FetchItem,
    IdlePush,
    ListEntry,
    ParseError,
    Response,
    SelectInfo,
    parse_appenduid,
    parse_capabilities,
    parse_copyuid,
    parse_fetch,
    parse_idle_push,
    parse_list,
    parse_search,
    parse_select,
    parse_status,
    response_code,
)

__all__ = [
    "FetchItem",
    "IMAPAccount",
    "IMAPClient",
    "IMAPConnector",
    "IdlePush",
    "ListEntry",
    "ParseError",
    "Response",
    "SelectInfo",
    "TokenProvider",
    "parse_appenduid",
    "parse_capabilities",
    "parse_copyuid",
    "parse_fetch",
    "parse_idle_push",
    "parse_list",
    "parse_search",
    "parse_select",
    "parse_status",
    "response_code",
]
