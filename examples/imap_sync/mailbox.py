"""One sync pass of one mailbox over one IMAP connection: the algorithm, in order.

What to fetch is always *server minus stored*, never "above a watermark": a pass that
breaks anywhere leaves the store a subset of the server, and the next pass fetches exactly
what is still missing, whatever order the server answered in and wherever it stopped.

1. :func:`select`: ``SELECT mailbox (CONDSTORE)`` when the server offers CONDSTORE, so it
   reports HIGHESTMODSEQ (a plain SELECT if that is refused). No UIDVALIDITY: SyncError.
2. :func:`open_generation`: a UIDVALIDITY other than the stored one voids every stored UID
   (RFC 3501 2.3.1.1): the mailbox is reset and synced from scratch.
3. :func:`unchanged`: same UIDNEXT, same message count and same HIGHESTMODSEQ as recorded
   by the last *verified* pass: stop here, one round trip for an idle mailbox.
4. :func:`server_uids`: ``UID SEARCH ALL``, in whatever order it comes. Stored UIDs it no
   longer lists were expunged and are deleted. (Same UIDNEXT and count: the stored UIDs
   are the server's, no SEARCH needed.)
5. :func:`sync_flags`: ``UID FETCH 1:n (UID FLAGS) (CHANGEDSINCE m)`` under CONDSTORE,
   else every stored message's FLAGS; a stored message the answer should have covered and
   did not is *undelivered*.
6. :func:`fetch_missing`: server UIDs not stored, ascending, in batches of explicit UID
   sets, ``UID FETCH set (UID FLAGS RFC822.SIZE BODY.PEEK[])``. The answer is read per UID
   (:mod:`.fetched`); each batch stores what arrived whole (UID, FLAGS, body) in one
   transaction, run on the store's own thread (see :mod:`.mirror`) so that the loop
   reads other mailboxes meanwhile; the pass waits for it before the next batch. A UID
   asked for that did not arrive whole is *undelivered*.
7. :func:`verify`: every undelivered UID is asked about again, ``UID SEARCH UID set``.
   Still listed: the pass fails (SyncError) and the next one fetches it again. Not
   listed: proven expunged. Then the stored UIDs must equal the server's as of step 4,
   less those proven expunged, or the pass fails.
8. :func:`finish`: the pass's checkpoints (UIDNEXT, HIGHESTMODSEQ as of the SELECT) are
   recorded last and only for a verified pass, so step 3 trusts only a store that equalled
   the server.

Every command is bounded by the pool's ``op_timeout`` (the client enforces it); a fault
poisons the connection and propagates, and the next pass starts over from the store.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from guardedpool import IMAPCommandError, ServerLimit
from guardedpool.imap import IMAPClient, parse_fetch, parse_search, parse_select

from .fetched import delivered
from .store import MailboxState, NewMessage
from .stores import MailStore
from .uids import batches, uid_set

__all__ = ["MailboxResult", "SyncError", "sync_mailbox"]

FETCH_NEW = "(UID FLAGS RFC822.SIZE BODY.PEEK[])"

OnPlan = Callable[[int], None]
"""Called once with the number of new messages this pass will fetch."""
OnBatch = Callable[[int, int], None]
"""Called after each stored batch with (messages, bytes) in it."""


class SyncError(RuntimeError):
    """The server's answers do not allow a safe sync (SELECT without UIDVALIDITY), or the
    pass could not make the store equal the server (a message not delivered)."""


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


@dataclass(frozen=True, slots=True)
class Selected:
    """What SELECT said: the pass's view of the mailbox (``modseq`` None: no CONDSTORE)."""

    uidvalidity: int
    uidnext: int | None
    exists: int
    modseq: int | None


@dataclass(frozen=True, slots=True)
class Target:
    """Where a pass writes: account, mailbox and the UIDVALIDITY generation."""

    store: MailStore
    account: str
    mailbox: str
    uidvalidity: int


async def sync_mailbox(
    imap: IMAPClient,
    store: MailStore,
    account: str,
    mailbox: str,
    *,
    batch_size: int,
    on_plan: OnPlan | None = None,
    on_batch: OnBatch | None = None,
) -> MailboxResult:
    """Bring the stored copy of ``mailbox`` up to date; see the module docstring.

    Returns only when the store equals the server's mailbox as of this pass (bytes and
    flags). Raises SyncError when it could not (the next pass picks up from the store),
    and whatever the connection raised (IMAPCommandError, a pool error) on a fault.
    """
    result = MailboxResult(account, mailbox)
    sel = await select(imap, mailbox)  # 1
    result.condstore = sel.modseq is not None
    state = open_generation(store, account, mailbox, sel.uidvalidity, result)  # 2
    at = Target(store, account, mailbox, sel.uidvalidity)
    stored = store.uids(account, mailbox, sel.uidvalidity)
    if unchanged(state, sel, stored):  # 3
        result.unchanged = True
    else:
        server = await server_uids(imap, at, state, sel, stored, result)  # 4
        kept = [uid for uid in stored if uid in server]
        undelivered = await sync_flags(imap, at, state, sel, kept, result)  # 5
        missing = sorted(server.difference(kept))
        if on_plan is not None:
            on_plan(len(missing))
        undelivered |= await fetch_missing(imap, at, missing, batch_size, result, on_batch)  # 6
        await verify(imap, at, server, undelivered, result)  # 7
    finish(at, sel)  # 8
    return result


async def select(imap: IMAPClient, mailbox: str) -> Selected:
    """Step 1: SELECT, with CONDSTORE where offered; SyncError without UIDVALIDITY."""
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
    return Selected(info.uidvalidity, info.uidnext, info.exists or 0, info.highestmodseq)


def open_generation(
    store: MailStore, account: str, mailbox: str, uidvalidity: int, result: MailboxResult
) -> MailboxState:
    """Step 2: the stored state, reset first if the server's UIDVALIDITY is another one."""
    state = store.mailbox(account, mailbox)
    if state.uidvalidity != uidvalidity:
        result.reset = state.uidvalidity is not None
        result.dropped = store.reset_mailbox(account, mailbox, uidvalidity)
        state = store.mailbox(account, mailbox)
    return state


def same_uids(state: MailboxState, sel: Selected, stored: Collection[int]) -> bool:
    """Nothing added (UIDNEXT) and nothing removed (count) since the last verified pass,
    which left the store equal to the server: the stored UIDs are the server's."""
    return state.uidnext is not None and state.uidnext == sel.uidnext and sel.exists == len(stored)


def unchanged(state: MailboxState, sel: Selected, stored: Collection[int]) -> bool:
    """Step 3: same UIDs and, under CONDSTORE, the same HIGHESTMODSEQ (RFC 7162 3.1.2)."""
    return (
        same_uids(state, sel, stored)
        and sel.modseq is not None
        and sel.modseq == state.highestmodseq
    )


async def server_uids(
    imap: IMAPClient,
    at: Target,
    state: MailboxState,
    sel: Selected,
    stored: Sequence[int],
    result: MailboxResult,
) -> set[int]:
    """Step 4: the server's UIDs (any order); stored ones it lacks are deleted."""
    if same_uids(state, sel, stored):
        return set(stored)
    server = set(parse_search((await imap.uid_search("ALL")).lines)) if sel.exists else set()
    gone = [uid for uid in stored if uid not in server]
    if gone:
        result.expunged += at.store.expunge(at.account, at.mailbox, at.uidvalidity, gone)
    return server


async def sync_flags(
    imap: IMAPClient,
    at: Target,
    state: MailboxState,
    sel: Selected,
    kept: Sequence[int],
    result: MailboxResult,
) -> set[int]:
    """Step 5: update the flags of the stored messages ``kept``; returns the undelivered.

    Under CONDSTORE with a known, not lower, HIGHESTMODSEQ only what changed is asked for
    (RFC 7162 3.1.4) and only an item without FLAGS counts as undelivered; otherwise every
    kept message must come back with its FLAGS.
    """
    if not kept:
        return set()
    old = state.highestmodseq
    if sel.modseq is not None and old is not None and sel.modseq >= old:
        # Lower: the server lost history (RFC 7162 3.1.2.1); trust nothing, fetch all.
        if sel.modseq == old:
            return set()
        query, expected = f"(UID FLAGS) (CHANGEDSINCE {old})", set[int]()
    else:
        query, expected = "(UID FLAGS)", set(kept)
    wanted = set(kept)
    resp = await imap.uid_fetch(f"1:{max(kept)}", query)
    got = delivered(parse_fetch(resp.lines), wanted)
    flags = {uid: d.flags for uid, d in got.items() if d.flags is not None}
    result.flags_changed += at.store.update_flags(at.account, at.mailbox, at.uidvalidity, flags)
    return (expected | got.keys()) - flags.keys()


async def fetch_missing(
    imap: IMAPClient,
    at: Target,
    missing: Sequence[int],
    batch_size: int,
    result: MailboxResult,
    on_batch: OnBatch | None,
) -> set[int]:
    """Step 6: fetch and store ``missing`` (ascending) in batches; returns the undelivered.

    Each batch's messages that arrived whole (UID, FLAGS and body) are stored in one
    transaction; the store raises its ``last_uid`` from those messages alone. The
    transaction runs on the store's thread and the pass awaits it before the next batch:
    a pass cancelled meanwhile leaves it to commit whole or not at all, like any other.
    """
    undelivered: set[int] = set()
    for batch in batches(missing, batch_size):
        done = await fetch_batch(imap, at, batch)
        undelivered |= done.undelivered
        result.new += done.new
        result.bytes += done.bytes
        if on_batch is not None:
            on_batch(done.stored, done.bytes)
    return undelivered


@dataclass(frozen=True, slots=True)
class BatchDone:
    """What one batch did: messages ``stored`` (``new`` of them not stored before),
    their ``bytes``, and the UIDs asked for that did not arrive whole."""

    stored: int
    new: int
    bytes: int
    undelivered: set[int]


async def fetch_batch(imap: IMAPClient, at: Target, batch: Sequence[int]) -> BatchDone:
    """One batch of step 6: ``UID FETCH``, then one transaction on the store's thread.

    Only counts come back, so that no body outlives its batch: the answer is dropped
    before the transaction runs, the messages when it is done.
    """
    messages = await fetch_whole(imap, batch)
    inserted = await asyncio.get_running_loop().run_in_executor(
        at.store.executor, at.store.store_batch, at.account, at.mailbox, at.uidvalidity, messages
    )
    return BatchDone(
        stored=len(messages),
        new=inserted,
        bytes=sum(len(m.raw) for m in messages),
        undelivered=set(batch) - {m.uid for m in messages},
    )


async def fetch_whole(imap: IMAPClient, batch: Sequence[int]) -> list[NewMessage]:
    """``UID FETCH`` ``batch``: the messages that arrived whole (UID, FLAGS, body)."""
    resp = await imap.uid_fetch(uid_set(batch), FETCH_NEW)
    got = delivered(parse_fetch(resp.lines), set(batch))
    return [
        NewMessage(uid, d.flags, d.body)
        for uid in batch
        if (d := got.get(uid)) is not None and d.flags is not None and d.body is not None
    ]


async def verify(
    imap: IMAPClient, at: Target, server: set[int], undelivered: set[int], result: MailboxResult
) -> None:
    """Step 7: prove every undelivered UID expunged, then check store == server.

    Raises SyncError naming the UIDs still on the server (the pass failed; the next one
    fetches them again), or the difference if the store does not equal the server.
    """
    gone: set[int] = set()
    if undelivered:
        listed = parse_search((await imap.uid_search("UID", uid_set(undelivered))).lines)
        still = undelivered.intersection(listed)
        if still:
            raise SyncError(
                f"{at.account}/{at.mailbox}: the server did not deliver UIDs {uid_set(still)} "
                "it still lists; the next pass fetches them again"
            )
        gone = undelivered
        result.expunged += at.store.expunge(at.account, at.mailbox, at.uidvalidity, gone)
    stored = set(at.store.uids(at.account, at.mailbox, at.uidvalidity))
    if stored != server - gone:
        extra, lacking = stored - server, server - gone - stored
        raise SyncError(
            f"{at.account}/{at.mailbox}: store differs from the server after the pass "
            f"(stored, not on server: {sorted(extra)[:10]}; missing: {sorted(lacking)[:10]})"
        )


def finish(at: Target, sel: Selected) -> None:
    """Step 8: record the pass's UIDNEXT and HIGHESTMODSEQ (as of its SELECT)."""
    at.store.finish_pass(
        at.account, at.mailbox, at.uidvalidity, uidnext=sel.uidnext, highestmodseq=sel.modseq
    )
