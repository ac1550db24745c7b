"""ID (RFC 2971): tell the server who the client is, right after login.

Some providers (NetEase's 163.com and 126.com among them) refuse SELECT until the client
has sent ID; the others log it. The server's answer is advisory both ways: a ``NO`` or
``BAD`` to ID is logged and the connection goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from aioimaplib.aioimaplib import Command

from .protocol import GuardedProtocol, quoted

__all__ = ["id_arguments", "send_id"]

log = logging.getLogger("guardedpool.imap")


def id_arguments(client_id: Mapping[str, str]) -> str:
    """The ID parameter list, ``("name" "x" "version" "1")`` (RFC 2971 section 3.1)."""
    return "(" + " ".join(f"{quoted(k)} {quoted(v)}" for k, v in client_id.items()) + ")"


async def send_id(protocol: GuardedProtocol, client_id: Mapping[str, str]) -> bool:
    """Send ID when the server offers it; True if it answered OK.

    No bound of its own: the connector's ``connect_timeout`` covers it. A lost connection
    raises as any command does.
    """
    if "ID" not in {str(c).upper() for c in protocol.capabilities}:
        return False
    command = Command("ID", protocol.new_tag(), id_arguments(client_id), loop=protocol.loop)
    response = await protocol.call(protocol.execute(command))
    if str(response.result) != "OK":
        log.info(
            "imap server answered ID with %s; going on without it",
            response.result,
            extra={"result": str(response.result)},
        )
        return False
    return True
