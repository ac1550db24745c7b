"""A scripted provider: replays one refusal wording at a chosen point of a session.

Built on :class:`harness.scripted.ScriptedIMAP` (same loopback server, same clean-up), for
what no local server produces on demand: Gmail's, Office 365's, Yahoo's... exact refusals
(see :mod:`harness.wordings`). The bytes are written the way the providers send them:

* ``"greeting"``: ``* BYE <text>`` instead of the greeting, then the server hangs up.
* ``"login"``: LOGIN answered ``<tag> NO|BAD <text>``, or ``* BYE <text>`` and a hang-up.
* ``"select"``: the same in answer to SELECT.
* ``"fetch"``: one ``* n FETCH`` response first, then the refusal (mid-FETCH).
* ``"idle"``: IDLE is accepted (``+ idling``), one ``* n EXISTS`` is pushed, then the
  refusal: ``* BYE <text>``, or IDLE ended by the server with ``<tag> NO|BAD <text>``.

After a tagged ``NO``/``BAD`` the server keeps serving (the connection is usable), unless
``then_bye`` is set, as Office 365 and Yahoo do: ``* BYE`` follows and the server hangs up.
``times`` limits how many connections are refused; later ones are served normally, so a
test can watch a client recover.
"""

from __future__ import annotations

import asyncio
from typing import Literal

from .scripted import CAPS, ScriptConn, ScriptedIMAP

__all__ = ["Point", "ProviderIMAP", "serve_with_idle"]

Point = Literal["greeting", "login", "select", "fetch", "idle"]

_VERB = {"login": b"LOGIN", "select": b"SELECT", "fetch": b"FETCH", "idle": b"IDLE"}


class ProviderIMAP(ScriptedIMAP):
    """``async with ProviderIMAP("NO", "[LIMIT] Rate limit hit.", at="select") as srv``.

    Args:
        status: ``"NO"``, ``"BAD"`` or ``"BYE"``.
        text: the status text, sent as it is.
        at: where the refusal comes (module doc).
        then_bye: after a tagged NO/BAD, also send ``* BYE`` and hang up.
        times: refuse this many connections, serve later ones normally (None: all).
    """

    def __init__(
        self,
        status: str,
        text: str,
        *,
        at: Point,
        then_bye: bool = False,
        times: int | None = None,
    ) -> None:
        super().__init__(self._script)
        if status not in ("NO", "BAD", "BYE"):
            raise ValueError(f"status must be NO, BAD or BYE, got {status!r}")
        if at == "greeting" and status != "BYE":
            raise ValueError("a greeting can only refuse with BYE")
        self.status = status
        self.text = text.encode()
        self.at = at
        self.then_bye = then_bye
        self.times = times
        self.refused = 0

    async def _script(self, c: ScriptConn) -> None:
        if self.times is not None and self.refused >= self.times:
            await c.greet()
            await serve_with_idle(c)
            return
        self.refused += 1
        if self.at == "greeting":
            await c.send(b"* BYE " + self.text + b"\r\n")
            return
        await c.greet()
        line = await c.serve(until=_VERB[self.at])
        tag = line.split(b" ", 1)[0]
        if self.at == "fetch":
            await c.send(b"* 1 FETCH (UID 1 FLAGS (\\Seen))\r\n")
        elif self.at == "idle":
            await c.send(b"+ idling\r\n")
            await asyncio.sleep(0.05)  # let the client settle into IDLE first
            await c.send(b"* 2 EXISTS\r\n")
            await asyncio.sleep(0.05)
        if self.status == "BYE":
            await c.send(b"* BYE " + self.text + b"\r\n")
            return  # and hang up
        await c.send(tag + b" " + self.status.encode() + b" " + self.text + b"\r\n")
        if self.then_bye:
            await c.send(b"* BYE Connection closed.\r\n")
            return
        await serve_with_idle(c)


async def serve_with_idle(c: ScriptConn, idle_for: float = 10.0) -> None:
    """:meth:`ScriptConn.serve`, plus IDLE: ``+ idling``, then ``OK`` after DONE.

    Each IDLE waits at most ``idle_for`` seconds for DONE; the connection ends with the
    client (or LOGOUT).
    """
    while True:
        line = await c.serve(until=b"IDLE", caps=CAPS)
        if b"LOGOUT" in line.upper():
            return
        tag = line.split(b" ", 1)[0]
        await c.send(b"+ idling\r\n")
        done = await c.line(timeout=idle_for)
        if done.strip().upper() != b"DONE":
            return
        await c.send(tag + b" OK IDLE terminated\r\n")
