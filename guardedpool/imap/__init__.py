"""IMAP on the pool: accounts, the connector, the guarded client and response parsers.

``IMAPConnector(accounts)`` is the pool's connector; the pool hands out ``IMAPClient``
objects whose every command is bounded and which poison themselves on any fault.
Mailbox names are human names (``"Entwürfe"``), encoded on the wire (:mod:`.mutf7`);
:class:`WireName` marks a name already in wire form.
"""

from .account import IMAPAccount, TokenProvider
from .client import IMAPClient
from .connector import IMAPConnector
from .mutf7 import WireName
from .parse import (
    SPECIAL_USE,
    FetchItem,
    IdlePush,
    ListEntry,
    ParseError,
    Response,
    SelectInfo,
    parse_appenduid,
    parse_capabilities,
    parse_copyuid,
    parse_enabled,
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
    "SPECIAL_USE",
    "SelectInfo",
    "TokenProvider",
    "WireName",
    "parse_appenduid",
    "parse_capabilities",
    "parse_copyuid",
    "parse_enabled",
    "parse_fetch",
    "parse_idle_push",
    "parse_list",
    "parse_search",
    "parse_select",
    "parse_status",
    "response_code",
]
