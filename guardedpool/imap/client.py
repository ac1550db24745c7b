"""The guarded IMAP client handed to users: the IMAP commands, each bounded.

The rules every command follows (bounds, poisoning, typed errors) live in
:mod:`guardedpool.imap.guard`; this module is the command surface and IDLE.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import re
from collections.abc import Callable
from typing import Any

from ..errors import CommandThrottled, ConnectionPoisoned, IMAPCommandError, ProtocolError
from ..waits import callbacks_context, first_done
from . import mutf7
from .guard import GuardedSession
from .literals import criteria_pieces
from .mutf7 import WireName
from .parse import Response, parse_enabled
from .protocol import GuardedProtocol, quoted
from .refusals import classify_refusal

__all__ = ["IMAPClient", "WireName"]

log = logging.getLogger("guardedpool.imap")

# A mailbox name that needs no quoting; anything else is sent as a quoted string.
_ATOM = re.compile(r"^[A-Za-z0-9_.&+,/\-]+$")


# CR or LF would end the command line early and smuggle a second, unguarded command onto
# the wire; RFC 3501 allows neither (nor NUL) in a quoted string.
_LINE_BREAK = re.compile(r"[\r\n\x00]")


def _no_line_break(value: str, what: str) -> str:
    if _LINE_BREAK.search(value):
        raise ValueError(f"{what} must not contain CR, LF or NUL, got {value!r}")
    return value


def mailbox_arg(name: str, *, utf8: bool = False) -> str:
    """Mailbox ``name`` as a command argument: its wire form, quoted when it needs it.

    A :class:`~guardedpool.imap.mutf7.WireName` is sent as given. A plain ``str`` is the
    human name: encoded as modified UTF-7 (RFC 3501 §5.1.3), or sent as UTF-8 when
    ``utf8`` (the session enabled ``UTF8=ACCEPT``, RFC 6855 §3). ``""`` (or ``'""'``, the
    spelling of the empty name before names were encoded) is the empty name, as in LIST's
    reference.

    Raises ValueError (nothing is sent) for a name with CR, LF or NUL in it: on the wire
    they would end the command line, and no server allows them in a name even encoded.
    """
    if name == '""' and not isinstance(name, WireName):
        name = ""
    _no_line_break(name, "a mailbox name")
    wire = str(name) if isinstance(name, WireName) or utf8 else mutf7.encode(name)
    if _ATOM.match(wire) and wire.upper() != "NIL":  # NIL as an atom reads as nil
        return wire
    return str(quoted(wire))


# A trailing {n} or {n+} announces a literal: the server would wait for bytes never sent.
_LITERAL = re.compile(r"\{\d+\+?\}$")


def plain_arg(value: str) -> str:
    """A non-mailbox argument, sent as given: one line, no literal, not empty."""
    if not isinstance(value, str):
        raise TypeError(f"command arguments must be str, got {type(value).__name__}")
    if not value:
        raise ValueError("an empty argument would vanish on the wire; send '\"\"' instead")
    if _LITERAL.search(value):
        raise ValueError(f"literals are not supported here, got {value!r}")
    return _no_line_break(value, "a command argument")


# The simple commands :meth:`IMAPClient.command` sends (all in aioimaplib's
# ``simple_commands``), each with how many leading arguments are mailbox names. EXAMINE is
# left to examine(), which keeps ``state`` and ``selected`` right.
_SIMPLE: dict[str, int] = {
    "CHECK": 0,
    "CREATE": 1,
    "DELETE": 1,
    "ENABLE": 0,
    "LIST": 2,
    "LSUB": 2,
    "NOOP": 0,
    "RENAME": 2,
    "STATUS": 1,
    "SUBSCRIBE": 1,
    "UNSUBSCRIBE": 1,
}


# BODY[1.2] / BODY.PEEK[] (a part number or nothing: RFC 3516 section-binary).
_BODY_PART = re.compile(r"\bBODY(\.PEEK)?\[([0-9.]*)\]", re.IGNORECASE)
_CHARSET = re.compile(r"^[A-Za-z0-9_.:\-]+$")


async def _until_done(future: asyncio.Future[Any]) -> Any:
    """``future``'s result, awaited in a task of its own (cancelling it cancels both)."""
    return await future


def _idle_refusal(
    idle: asyncio.Future[Any], redact: Callable[[str], str]
) -> CommandThrottled | None:
    """IDLE's own NO/BAD, when it is the server's limit (e.g. throttled); else None."""
    if idle.cancelled() or idle.exception() is not None:
        return None
    raw = idle.result()
    result = str(getattr(raw, "result", ""))
    if result not in ("NO", "BAD"):
        return None
    lines = [bytes(line) for line in getattr(raw, "lines", [])]
    text = lines[-1].decode("utf-8", "replace") if lines else ""
    refusal = classify_refusal(redact(text), status="NO" if result == "NO" else "BAD")
    if not refusal.limited:
        return None
    return CommandThrottled(
        "IDLE", result, refusal.text, kind=refusal.kind, delay=refusal.delay, code=refusal.code
    )


class IMAPClient(GuardedSession):
    """One logged-in IMAP connection, guarded. Made by :class:`IMAPConnector`, not by users.

    Args:
        protocol: the connected, authenticated protocol.
        key: the pool key (inbox id) this connection belongs to; shown in every error.
        op_timeout: default bound of each command, seconds (``PoolConfig.op_timeout``).

    Every command takes ``timeout=`` (seconds, > 0) to override ``op_timeout`` for one
    call, e.g. a large FETCH or APPEND. See :mod:`guardedpool.imap.guard` for how a
    command can end.

    Every mailbox argument (SELECT, EXAMINE, STATUS, CREATE, DELETE, RENAME, APPEND,
    COPY/MOVE, LIST/LSUB reference and pattern, SUBSCRIBE) takes the human name,
    ``select("Entwürfe")``, and sends its wire form: modified UTF-7 (``Entw&APw-rfe``,
    RFC 3501 §5.1.3), or UTF-8 once ``ENABLE UTF8=ACCEPT`` succeeded (RFC 6855). A name
    already in wire form, such as a LIST result, is passed as :class:`WireName` and sent
    unchanged; the two cannot be told apart by looking (``&`` is legal in a human name).
    Names are quoted when they need it.
    """

    def __init__(self, protocol: GuardedProtocol, *, key: str, op_timeout: float) -> None:
        super().__init__(protocol, key=key, op_timeout=op_timeout)
        self._idle_command: Any = None  # the IdleCall of the current round (calls.py)
        self._done_sent = False
        self.selected: str | None = None
        """The mailbox selected (or examined) last, None when none is."""
        self.utf8_enabled = False
        """True once ENABLE UTF8=ACCEPT succeeded (RFC 6855): mailbox names then go on
        the wire as UTF-8, and LIST sends them so."""
        self.logged_out = False
        """True once :meth:`logout` was called: the session was ended on purpose."""

    def _mailbox(self, name: str) -> str:
        return mailbox_arg(name, utf8=self.utf8_enabled)

    # -- commands ----------------------------------------------------------------------

    async def capability(self, *, timeout: float | None = None) -> frozenset[str]:
        """Ask the server for its capabilities (and remember them)."""
        p = self._protocol
        resp = await self._run("CAPABILITY", p.capability_command, timeout)
        return p.adopt_capability_response(resp.lines)

    async def noop(self, *, timeout: float | None = None) -> Response:
        """NOOP: the liveness check; its lines carry any unsolicited updates."""
        return await self._run("NOOP", lambda: self._protocol.simple_command("NOOP"), timeout)

    async def select(
        self, mailbox: str = "INBOX", *, condstore: bool = False, timeout: float | None = None
    ) -> Response:
        """SELECT; see :func:`~guardedpool.imap.parse.parse_select` for the counters.

        ``condstore=True`` sends ``SELECT mailbox (CONDSTORE)`` (RFC 7162): the response
        then carries ``HIGHESTMODSEQ`` and CONDSTORE stays enabled for the session, with
        no ENABLE (which is only allowed before the first SELECT). The server must offer
        CONDSTORE; one that does not answers BAD (:class:`IMAPCommandError`).
        """
        return await self._select("SELECT", mailbox, timeout, condstore)

    async def examine(
        self, mailbox: str = "INBOX", *, condstore: bool = False, timeout: float | None = None
    ) -> Response:
        """EXAMINE: SELECT read-only; ``condstore`` as for :meth:`select`."""
        return await self._select("EXAMINE", mailbox, timeout, condstore)

    async def _select(
        self, name: str, mailbox: str, timeout: float | None, condstore: bool
    ) -> Response:
        p = self._protocol
        arg = self._mailbox(mailbox)
        if condstore:
            arg = f"{arg} (CONDSTORE)"
        self.selected = None
        try:
            if name == "SELECT":
                resp = await self._run(name, lambda: p.select_command(arg), timeout)
            else:
                resp = await self._run(name, lambda: p.simple_command("EXAMINE", arg), timeout)
        except IMAPCommandError:
            # RFC 3501: a failed SELECT/EXAMINE leaves no mailbox selected.
            if p.state == "SELECTED":
                p.state = "AUTH"
            raise
        p.state = "SELECTED"  # aioimaplib forgets to after EXAMINE
        self.selected = mailbox
        return resp

    async def status(
        self,
        mailbox: str,
        items: str = "(MESSAGES UIDNEXT UIDVALIDITY UNSEEN)",
        *,
        timeout: float | None = None,
    ) -> Response:
        """STATUS; see :func:`~guardedpool.imap.parse.parse_status`."""
        arg = self._mailbox(mailbox)
        p = self._protocol
        return await self._run("STATUS", lambda: p.simple_command("STATUS", arg, items), timeout)

    async def list(
        self, reference: str = "", pattern: str = "*", *, timeout: float | None = None
    ) -> Response:
        """LIST; see :func:`~guardedpool.imap.parse.parse_list` (pass it ``utf8=``
        :attr:`utf8_enabled`). ``reference`` and ``pattern`` are mailbox names like any
        other (encoded unless :class:`WireName`); ``*`` and ``%`` are the wildcards."""
        ref, pat = self._mailbox(reference), self._mailbox(pattern)
        p = self._protocol
        return await self._run("LIST", lambda: p.simple_command("LIST", ref, pat), timeout)

    async def create(self, mailbox: str, *, timeout: float | None = None) -> Response:
        """CREATE; an existing name is a NO (:class:`IMAPCommandError`)."""
        return await self.command("CREATE", mailbox, timeout=timeout)

    async def delete(self, mailbox: str, *, timeout: float | None = None) -> Response:
        """DELETE; a missing name, INBOX or (on some servers) a name with children is a NO.

        Dovecot ends every session that has the mailbox selected -- this one included --
        with ``BYE`` right after its OK: that connection is poisoned on its next command.
        """
        return await self.command("DELETE", mailbox, timeout=timeout)

    async def rename(self, old: str, new: str, *, timeout: float | None = None) -> Response:
        """RENAME ``old`` to ``new``; renaming INBOX moves its messages (RFC 3501).

        As with :meth:`delete`, Dovecot ends (``BYE``) a session whose selected mailbox
        was renamed.
        """
        return await self.command("RENAME", old, new, timeout=timeout)

    async def command(self, name: str, *args: str, timeout: float | None = None) -> Response:
        """A simple tagged command, bounded and guarded like every other one.

        ``name`` (any case) is one of CHECK, CREATE, DELETE, ENABLE, LIST, LSUB, NOOP,
        RENAME, STATUS, SUBSCRIBE, UNSUBSCRIBE: the commands with no literal and no client
        state of their own. Mailbox-name arguments (the first of CREATE, DELETE, STATUS,
        SUBSCRIBE and UNSUBSCRIBE, the first two of RENAME, LIST and LSUB) are human names,
        encoded and quoted like everywhere else (see :func:`mailbox_arg`); the other
        arguments are sent as given, so they must already be IMAP syntax (an atom, a
        quoted string, a parenthesised list).

        Raises ValueError, before anything is sent, for another command (SELECT, FETCH,
        ... have methods that keep the client's state right), an argument with CR, LF or
        NUL, an empty one, or one ending in a literal ``{n}``. NO/BAD and faults end it as
        any command (see :mod:`guardedpool.imap.guard`).
        """
        cmd = name.upper() if isinstance(name, str) else ""
        mailboxes = _SIMPLE.get(cmd)
        if mailboxes is None:
            raise ValueError(f"command() sends only {', '.join(_SIMPLE)}; got {name!r}")
        sent = tuple(
            self._mailbox(arg) if i < mailboxes else plain_arg(arg) for i, arg in enumerate(args)
        )
        p = self._protocol
        resp = await self._run(cmd, lambda: p.simple_command(cmd, *sent), timeout)
        if cmd == "ENABLE" and "UTF8=ACCEPT" in parse_enabled(resp.lines):
            self.utf8_enabled = True
        return resp

    async def search(
        self, *criteria: str, charset: str | None = None, timeout: float | None = None
    ) -> Response:
        """SEARCH (sequence numbers); see :func:`~guardedpool.imap.parse.parse_search`.

        Criteria are IMAP search syntax (RFC 3501 §6.4.4), sent as written: quote a term
        with spaces, ``search("SUBJECT", '"New York"')``. Words or quoted strings that
        are not ASCII, e.g. ``search("SUBJECT", "Köln", charset="UTF-8")``, go as
        literals in ``charset`` (default UTF-8 then), never as raw 8-bit text; see
        :mod:`~guardedpool.imap.literals`. The wait for each ``+`` counts against the
        bound.
        """
        return await self._search("SEARCH", criteria, charset, timeout, by_uid=False)

    async def uid_search(
        self, *criteria: str, charset: str | None = None, timeout: float | None = None
    ) -> Response:
        """UID SEARCH; as :meth:`search`."""
        return await self._search("UID SEARCH", criteria, charset, timeout, by_uid=True)

    async def _search(
        self,
        name: str,
        criteria: tuple[str, ...],
        charset: str | None,
        timeout: float | None,
        *,
        by_uid: bool,
    ) -> Response:
        p = self._protocol
        if all(c.isascii() for c in criteria):
            return await self._run(
                name, lambda: p.search(*criteria, charset=charset, by_uid=by_uid), timeout
            )
        charset = charset or "UTF-8"
        if not _CHARSET.match(charset):
            raise ValueError(f"charset must be an atom such as UTF-8, got {charset!r}")
        pieces = [f" CHARSET {charset}", *criteria_pieces(criteria, charset)]
        return await self._run(name, lambda: p.search_literals(pieces, by_uid=by_uid), timeout)

    async def fetch(
        self,
        message_set: str,
        items: str,
        *,
        binary: bool = False,
        timeout: float | None = None,
    ) -> Response:
        """FETCH; see :func:`~guardedpool.imap.parse.parse_fetch`. The bound is total.

        ``binary=True`` asks for decoded parts (RFC 3516): each ``BODY[<part>]`` or
        ``BODY.PEEK[<part>]`` with a part number (or empty) becomes ``BINARY[...]`` /
        ``BINARY.PEEK[...]``, so the server undoes the base64 or quoted-printable
        transfer encoding and the section comes back as ``"BINARY[<part>]"`` (as a
        literal8 when it holds NUL). Other sections (``HEADER``, ``TEXT``) are left as
        they are. The server must offer BINARY, else :class:`IMAPCommandError` before
        anything is sent.
        """
        items = self._binary_items(items, "FETCH") if binary else items
        p = self._protocol
        return await self._run("FETCH", lambda: p.fetch(message_set, items, timeout=None), timeout)

    async def uid_fetch(
        self,
        uid_set: str,
        items: str,
        *,
        binary: bool = False,
        timeout: float | None = None,
    ) -> Response:
        """UID FETCH; see :func:`~guardedpool.imap.parse.parse_fetch` and, for ``binary``,
        :meth:`fetch`. The bound is total."""
        items = self._binary_items(items, "UID FETCH") if binary else items
        return await self.uid("FETCH", uid_set, items, timeout=timeout)

    def _binary_items(self, items: str, name: str) -> str:
        if not self.has_capability("BINARY"):
            raise IMAPCommandError(
                name, "BAD", "refused by the client: the server does not offer BINARY (RFC 3516)"
            )
        return _BODY_PART.sub(lambda m: f"BINARY{m.group(1) or ''}[{m.group(2)}]", items)

    async def store(
        self, message_set: str, item: str, flags: str, *, timeout: float | None = None
    ) -> Response:
        """STORE, e.g. ``store("1:3", "+FLAGS.SILENT", r"(\\Seen)")``."""
        p = self._protocol
        return await self._run("STORE", lambda: p.store(message_set, item, flags), timeout)

    async def uid(self, command: str, *args: str, timeout: float | None = None) -> Response:
        """UID FETCH / STORE / COPY / MOVE / EXPUNGE / SEARCH, all bounded.

        ``uid("SEARCH", ...)`` is :meth:`uid_search` (a leading ``"CHARSET", name`` is its
        ``charset``): terms that are not ASCII go as literals.

        aioimaplib puts no timeout at all on UID STORE/COPY/MOVE/EXPUNGE; here they get
        the same bound as everything else.
        """
        p = self._protocol
        cmd = command.upper()
        name = f"UID {cmd}"
        if cmd == "SEARCH":  # as uid_search: a term that is not ASCII goes as a literal
            charset = None
            if len(args) >= 2 and args[0].upper() == "CHARSET":
                charset, args = args[1], args[2:]
            return await self._search(name, args, charset, timeout, by_uid=True)
        if cmd in ("COPY", "MOVE") and args:
            args = (*args[:-1], self._mailbox(args[-1]))
        if cmd == "FETCH":
            if len(args) != 2:
                raise ValueError(f"UID FETCH takes a uid set and items, got {len(args)} args")
            uid_set, items = args
            return await self._run(
                name, lambda: p.fetch(uid_set, items, by_uid=True, timeout=None), timeout
            )
        return await self._run(name, lambda: p.uid(cmd.lower(), *args, timeout=None), timeout)

    async def copy(
        self, message_set: str, mailbox: str, *, timeout: float | None = None
    ) -> Response:
        p = self._protocol
        return await self._run("COPY", lambda: p.copy(message_set, self._mailbox(mailbox)), timeout)

    async def move(
        self, message_set: str, mailbox: str, *, timeout: float | None = None
    ) -> Response:
        """MOVE (RFC 6851; the server must offer it)."""
        p = self._protocol
        return await self._run("MOVE", lambda: p.move(message_set, self._mailbox(mailbox)), timeout)

    async def expunge(self, *, timeout: float | None = None) -> Response:
        return await self._run("EXPUNGE", lambda: self._protocol.expunge(), timeout)

    async def append(
        self,
        message: bytes,
        mailbox: str = "INBOX",
        *,
        flags: str | None = None,
        date: Any = None,
        timeout: float | None = None,
    ) -> Response:
        """APPEND; ``flags`` like ``r"\\Seen"``; the bound covers sending the whole message.

        See :func:`~guardedpool.imap.parse.parse_appenduid` for the new message's UID.
        """
        p = self._protocol
        arg = self._mailbox(mailbox)
        return await self._run(
            "APPEND", lambda: p.append(message, arg, flags, date, timeout=None), timeout
        )

    async def enable(self, capability: str, *, timeout: float | None = None) -> Response:
        """ENABLE (RFC 5161), e.g. ``enable("CONDSTORE")``; only before SELECT.

        ``enable("UTF8=ACCEPT")`` (RFC 6855), when the server confirms it, switches every
        later mailbox argument from modified UTF-7 to UTF-8 (:attr:`utf8_enabled`).
        """
        return await self.command("ENABLE", capability, timeout=timeout)

    async def logout(self, *, timeout: float | None = None) -> Response:
        """End the session: DONE first if IDLE is active, then LOGOUT, then abort.

        One bound covers both. Afterwards the client is closed (``poisoned`` is True with
        reason "logged out"): a logged-out connection is never handed out again.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._bound(timeout)
        self.logged_out = True
        try:
            if self._idle is not None:
                # aioimaplib's logout would queue behind the pending IDLE (bug 5).
                await self.idle_done(timeout=max(deadline - loop.time(), 1e-3))
            self._protocol.logging_out = True
            return await self._run(
                "LOGOUT",
                self._protocol.logout,
                timeout,
                expect_close=True,
                deadline=deadline,
            )
        finally:
            self.abort("logged out")

    def farewell(self) -> None:
        """Say goodbye without waiting for the answer: DONE (if IDLE is active) and LOGOUT,
        written together in one write, and nothing read back; never raises. Afterwards the
        client is closed, like after :meth:`logout`; the caller aborts the transport next
        (what the socket took is on its way, anything it could not take is dropped).

        For a closing pool with thousands of connections: each server still gets its
        LOGOUT (RFC 3501 section 6.1.3, after RFC 2177's DONE), and nobody waits for
        thousands of answers that change nothing. A poisoned connection gets nothing.
        """
        if self.poisoned:
            return
        self.logged_out = True
        p = self._protocol
        try:
            p.logging_out = True
            done = self._idle is not None and not self._idle.done() and not self._done_sent
            self._done_sent = self._done_sent or done
            tag = p.new_tag()
            transport = p.transport
            if transport is not None and not transport.is_closing():
                words = f"DONE\r\n{tag} LOGOUT\r\n" if done else f"{tag} LOGOUT\r\n"
                transport.write(words.encode())
                p.sent += 1
        except Exception as exc:  # a transport already gone: no goodbye to say
            log.debug("imap farewell not written: %s", type(exc).__name__, extra={"key": self.key})
        self._poison = ConnectionPoisoned(f"connection for key {self.key!r} logged out")

    # -- IDLE --------------------------------------------------------------------------

    async def idle_start(self, *, timeout: float | None = None) -> None:
        """Send IDLE and wait (bounded) for the server's ``+``; a mailbox must be selected.

        aioimaplib has no bound on this wait at all (and never returns on a dead
        connection, upstream #110). NO/BAD raise :class:`IMAPCommandError`.
        """
        p = self._protocol
        self._check("IDLE")
        idle_task: asyncio.Future[Any] | None = None
        # One future for the guard to race, no task of its own: resolved by the '+' (see
        # GuardedProtocol.idle_ready), or with IDLE's own outcome when IDLE ends before it
        # (NO/BAD, or refused locally).
        ack: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def settle(task: asyncio.Future[Any]) -> None:
            if ack.done():
                return
            if task.cancelled():
                ack.cancel()
            elif (exc := task.exception()) is not None:
                ack.set_exception(exc)
            else:
                ack.set_result(task.result())

        def start() -> asyncio.Future[Any]:
            nonlocal idle_task
            p.idle_ready = ack
            # A task, as aioimaplib's idle() was: one event-loop teardown cancels (so the
            # session says "cancelled", not "timed out"); one coroutine, not four.
            idle_task = self._track(asyncio.ensure_future(_until_done(p.idle_command())))
            idle_task.add_done_callback(settle, context=callbacks_context())
            return ack

        try:
            await self._run("IDLE", start, timeout)
        except BaseException:
            if idle_task is not None and not idle_task.done():
                idle_task.cancel()
            raise
        finally:
            p.idle_ready = None
            if idle_task is not None:
                idle_task.remove_done_callback(settle)  # the '+' came: nothing left to settle
        if idle_task is not None:
            # Even when IDLE already ended (a server may answer '+', its pushes and a
            # tagged OK in one write, or OK without '+'): wait_server_push hands over the
            # pushes already queued, then reports a server that ended IDLE without DONE
            # (RFC 3501 6.3.10: only the client's DONE ends it), which poisons; idle_done
            # returns OK.
            self._idle = idle_task
            self._idle_command = None if idle_task.done() else p.pending_sync_command
            self._done_sent = False

    async def wait_server_push(
        self, timeout: float | None = None, *, until: asyncio.Future[Any] | None = None
    ) -> builtins.list[bytes]:
        """Wait up to ``timeout`` (default ``op_timeout``) for lines pushed during IDLE,
        or until the future ``until`` (if given) is done, whichever comes first.

        Returns the next batch (see :func:`~guardedpool.imap.parse.parse_idle_push`), or
        ``[]`` when nothing came in time: silence is not a fault. A lost connection or a
        ``BYE`` raises at once (:class:`~guardedpool.errors.ServerBusyClosed` for a ``BYE``
        of the server's limits). A server that ends IDLE itself poisons the connection; when
        it ended it with a ``NO``/``BAD`` of its limits (throttled...),
        :class:`~guardedpool.errors.CommandThrottled` says so. Cancelling this wait does not
        poison the connection. ``until`` (e.g. ``pool.when_closing()``) is only waited on,
        never cancelled; when it ends the wait, the result is ``[]`` as for silence.
        """
        idle = self._idle
        if idle is None:
            raise RuntimeError("wait_server_push() without idle_start()")
        self._check("IDLE", idle_ok=True)
        p = self._protocol
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._bound(timeout)
        while True:
            if not p.idle_queue.empty():  # pushes read: hand them over before anything
                return [bytes(line) for line in p.idle_queue.get_nowait()]
            # A future the protocol resolves when a read queues pushes (no task blocked in
            # a queue's get()); every waiter of this connection shares it.
            ready = p.push_ready
            if ready is None or ready.done():
                ready = p.push_ready = loop.create_future()
            waits = (ready, p.fault, idle) if until is None else (ready, p.fault, idle, until)
            await first_done(waits, deadline)
            if not ready.done() and p.idle_queue.empty():
                break  # not pushes: the deadline, a fault, the end of IDLE or ``until``
            # Pushes (or the end of IDLE with pushes queued): the loop's top hands them
            # over; if another waiter took them first, wait on within the same bound.
        if p.fault.done() or self._poison is not None:
            raise self._poisoned_by(self._fault_error("IDLE"))
        if idle.done() and not self._done_sent:
            ended = self._poisoned_by(
                ProtocolError(f"server ended IDLE on key {self.key!r} without DONE")
            )
            limit = _idle_refusal(idle, self._protocol.redact)
            if limit is not None:
                raise limit from None
            raise ended
        return []

    def pending_pushes(self) -> builtins.list[bytes]:
        """Take every pushed line not yet returned by :meth:`wait_server_push`.

        Lines that arrive around DONE land here rather than being lost; call this after
        :meth:`idle_done` to see them (they are otherwise returned by the next round's
        first ``wait_server_push``).
        """
        out: builtins.list[bytes] = []
        queue = self._protocol.idle_queue
        while not queue.empty():
            out.extend(bytes(line) for line in queue.get_nowait())
        return out

    async def idle_done(self, *, timeout: float | None = None) -> Response:
        """Send DONE and wait (bounded) for IDLE's tagged completion."""
        idle = self._idle
        if idle is None:
            raise RuntimeError("idle_done() without idle_start()")
        p = self._protocol

        async def finish() -> Any:
            if not idle.done():
                self._done_sent = True
                p.idle_done()
            return await idle

        try:
            return await self._run("IDLE DONE", finish, timeout)
        finally:
            self._idle = None
            command, self._idle_command = self._idle_command, None
            if command is not None:
                # aioimaplib only flushes IDLE's buffered pushes while IDLE is pending, so
                # a push read together with IDLE's tagged OK would be dropped.
                command.flush()
