"""What a ``UID FETCH`` answer delivered, per UID asked for: a pure function.

A server may answer in any order, send a message's data items in any order or spread over
several FETCH responses (RFC 3501 7.4.2, RFC 9051 7.5.2), mix in unsolicited FETCH
responses for other messages (a flag change made by another session), and -- broken or
cut short -- leave items out. So the answer is read per UID, never by position:

- items of every response carrying the same ``UID`` are merged (a later value wins: the
  server sends them in the order things happened);
- a response without ``UID`` cannot be attributed and is ignored (unsolicited FETCH
  responses carry none), and so is one for a UID that was not asked for;
- what is still missing for a UID asked for -- the whole message, its FLAGS, its body --
  is the caller's to account for: :func:`delivered` only says what arrived.
"""

from __future__ import annotations

from collections.abc import Iterable, Set
from dataclasses import dataclass

from guardedpool.imap import FetchItem

__all__ = ["Delivered", "delivered"]


@dataclass(slots=True)
class Delivered:
    """What arrived for one UID: ``flags``/``body`` None when the server did not send it."""

    flags: tuple[str, ...] | None = None
    body: bytes | None = None


def delivered(items: Iterable[FetchItem], asked: Set[int]) -> dict[int, Delivered]:
    """UID -> what arrived for it, for the UIDs in ``asked`` that any response named."""
    out: dict[int, Delivered] = {}
    for item in items:
        if item.uid is None or item.uid not in asked:
            continue
        got = out.setdefault(item.uid, Delivered())
        if item.flags is not None:
            got.flags = item.flags
        body = item.body
        if body is not None:
            got.body = bytes(body)
    return out
