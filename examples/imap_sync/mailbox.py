"""One sync pass of one mailbox over one IMAP connection: the algorithm, in order.

1. SELECT, as ``SELECT mailbox (CONDSTORE)`` when the server offers CONDSTORE, so it
   reports HIGHESTMODSEQ (and works on any pooled connection: ENABLE would only be
   allowed before its first SELECT). A UIDVALIDITY other than the stored one voids every
   stored UID: the mailbox is reset and synced from scratch.
2. Nothing changed (same UIDNEXT, same message count, same HIGHESTMODSEQ under CONDSTORE):
   stop here. This is what makes an idle inbox cost one round trip.
3. ``UID SEARCH ALL``: the UIDs the server has. Stored UIDs missing from it were expunged.
4. Flags of stored messages: ``UID FETCH 1:last (UID FLAGS) (CHANGEDSINCE m)`` under
   CONDSTORE (only what changed), else ``UID FETCH 1:last (UID FLAGS)``.
5. New messages (UIDs above the checkpoint) in batches of explicit UID sets, each
   ``UID FETCH set (UID FLAGS RFC822.SIZE BODY.PEEK[])`` stored with its checkpoint in one
   transaction. Explicit sets rather than ``last+1:*`` windows because the UIDs are
   known from step 3: no empty round trips over sparse UIDs, and no trap of ``n:*``
   returning the last message when ``n`` is above every UID.
6. The pass's checkpoints (UIDNEXT, HIGHESTMODSEQ as of the SELECT) are recorded last, so
   a pass cut short anywhere is simply redone from the previous ones.

Every command is bounded by the pool's ``op_timeout`` (the client enforces it); a fault
poisons the connection and propagates, and the next pass starts over from the store.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from guardedpool import IMAPCommandError, ServerLimit
from guardedpool.imap import IMAPClient, parse_fetch, parse_search, parse_select

from .store import NewMessage, Store
from .uids import batches, uid_set

__all__ = ["MailboxResult", "SyncError", "sync_mailbox"]

FETCH_NEW = "(UID FLAGS RFC822.SIZE BODY.PEEK[])"

OnPlan = Callable[[int], None]
"""Called once with the number of new messages this pass will fetch."""
OnBatch = Callable[[int, int], None]
"""Called after each stored batch with (messages, bytes) in it."""


class SyncError(RuntimeError):
    """The server's answers do not allow a safe sync (e.g. SELECT without UIDVALIDITY)."""


@dataclass(slots=True)
class MailboxResult:
    """What one pass did. ``reset``: UIDVALIDITY changed and ``dropped`` messages went."""

    account: str
    mailbox: str
    new: int = 0
    bytes: int = 0
    flags_changed: int = 0
    expunged: int = 0
    reset: bool = False
    dropped: int = 0
    unchanged: bool = False
    condstore: bool = False


async def _select(imap: IMAPClient, mailbox: str) -> tuple[int, int | None, int, int | None]:
    """(uidvalidity, uidnext, exists, highestmodseq) of a freshly selected mailbox."""
    condstore = imap.has_capability("CONDSTORE")
    try:
        resp = await imap.select(mailbox, condstore=condstore)
    except IMAPCommandError as exc:
        if not condstore or exc.result != "BAD" or isinstance(exc, ServerLimit):
            raise  # NO: the mailbox itself is the problem; a throttled BAD: not CONDSTORE
        # A server that lists CONDSTORE but rejects the parameter only costs the fast
        # path: without HIGHESTMODSEQ the pass falls back to fetching all flags.
        resp = await imap.select(mailbox)
    info = parse_select(resp.lines)
    if info.uidvalidity is None:
        raise SyncError(f"SELECT {mailbox!r} on key {imap.key!r} reported no UIDVALIDITY")
    return info.uidvalidity, info.uidnext, info.exists or 0, info.highestmodseq


async def sync_mailbox(
    imap: IMAPClient,
    store: Store,
    account: str,
    mailbox: str,
    *,
    batch_size: int,
    on_plan: OnPlan | None = None,
    on_batch: OnBatch | None = None,
) -> MailboxResult:
    """Bring the stored copy of ``mailbox`` up to date; see the module docstring."""
    result = MailboxResult(account, mailbox)
    uidvalidity, uidnext, exists, modseq = await _select(imap, mailbox)
    result.condstore = modseq is not None
    state = store.mailbox(account, mailbox)
    if state.uidvalidity != uidvalidity:
        result.reset = state.uidvalidity is not None
        result.dropped = store.reset_mailbox(account, mailbox, uidvalidity)
        state = store.mailbox(account, mailbox)
    stored = store.uids(account, mailbox, uidvalidity)

    same_uids = state.uidnext is not None and state.uidnext == uidnext and exists == len(stored)
    if same_uids and modseq is not None and modseq == state.highestmodseq:
        result.unchanged = True
        store.finish_pass(account, mailbox, uidvalidity, uidnext=uidnext, highestmodseq=modseq)
        return result

    if same_uids:
        # Nothing added (UIDNEXT), nothing removed (count): the stored UIDs are the server's.
        server = stored
    else:
        server = parse_search((await imap.uid_search("ALL")).lines) if exists else []
        on_server = set(server)
        gone = [uid for uid in stored if uid not in on_server]
        if gone:
            result.expunged = store.expunge(account, mailbox, uidvalidity, gone)

    if state.last_uid and len(stored) > result.expunged:
        if (
            modseq is not None
            and state.highestmodseq is not None
            and (
                modseq >= state.highestmodseq  # lower: the server lost history; trust nothing
            )
        ):
            query = f"(UID FLAGS) (CHANGEDSINCE {state.highestmodseq})"
            ask = modseq != state.highestmodseq
        else:
            query, ask = "(UID FLAGS)", True
        if ask:
            resp = await imap.uid_fetch(f"1:{state.last_uid}", query)
            flags = {
                item.uid: item.flags
                for item in parse_fetch(resp.lines)
                if item.uid is not None and item.flags is not None and item.uid <= state.last_uid
            }
            result.flags_changed = store.update_flags(account, mailbox, uidvalidity, flags)

    new = [uid for uid in server if uid > state.last_uid]
    if on_plan is not None:
        on_plan(len(new))
    for batch in batches(new, batch_size):
        wanted = set(batch)
        resp = await imap.uid_fetch(uid_set(batch), FETCH_NEW)
        messages = [
            NewMessage(item.uid, item.flags or (), bytes(body))
            for item in parse_fetch(resp.lines)
            if item.uid in wanted and (body := item.body) is not None
        ]
        inserted = store.store_batch(account, mailbox, uidvalidity, messages, checkpoint=batch[-1])
        size = sum(len(m.raw) for m in messages)
        result.new += inserted
        result.bytes += size
        if on_batch is not None:
            on_batch(len(messages), size)

    store.finish_pass(account, mailbox, uidvalidity, uidnext=uidnext, highestmodseq=modseq)
    return result
