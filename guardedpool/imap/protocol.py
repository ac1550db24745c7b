"""The aioimaplib edge: its client protocol with the known bugs made harmless.

This is where aioimaplib (2.0.x, pinned below 3) is used; elsewhere only its ``Command``
class (``rfc2971.py``), its ``Response`` shape and a module constant (``calls.py``) are
imported. It uses only aioimaplib's public names: its command objects (``Command``, their
``append_to_resp``, ``close``, ``wait``), the protocol's public methods and attributes
(``execute``, ``welcome``, ``login``, ``pending_sync_command``, ``pending_async_commands``,
``literal_data``, ``tasks``...) and its module constants. It overrides none of aioimaplib's
private methods: server data reaches commands through our own framing and line routing
(:meth:`GuardedProtocol._route_line`), which is aioimaplib's dispatch re-stated with the
fixes below. What it changes:

* A dropped connection, an untagged ``BYE`` outside LOGOUT and any exception while
  parsing server data set :attr:`GuardedProtocol.fault` (and abort the transport at once)
  instead of leaving pending commands to wait forever (aioimaplib bugs 1 and 3).
* The greeting outcome is a future: a ``BYE`` or garbage greeting fails fast instead of
  leaving ``wait_hello_from_server`` to time out.
* OAuth 2 SASL (OAUTHBEARER, XOAUTH2) is done here: an error challenge
  (``+ <base64 json>``) is answered (see :mod:`guardedpool.imap.sasl`) so the server sends
  its tagged ``NO`` (bug 4), and servers without SASL-IR get the initial response after
  their first ``+``.
* STARTTLS and COMPRESS change the byte stream right after their tagged ``OK``; they run
  through :meth:`GuardedProtocol.switch`, which reads the tagged reply itself and holds
  back every byte after it (see :mod:`guardedpool.imap.starttls`).
* Nothing that carries a credential is logged: aioimaplib's own scrubbing misses the
  quoted password (any ``"`` or ``\\`` in it) and the base64 XOAUTH2 string.
* Untagged lines lose only their ``* `` prefix (aioimaplib deletes every ``"* "`` in the
  line, corrupting e.g. a subject ``"a * b"``).
* Server data is cut into lines and literals by our own :mod:`~guardedpool.imap.framing`
  instead of aioimaplib's ``_handle_responses``, which recursed once per line (one large
  read of short lines overflowed the stack), copied the rest of a read at every line,
  and recounted every line of a FETCH response at each line (quadratic in a batch).
  Lines are routed as aioimaplib routed them (greeting, tagged completion, continued
  command, untagged response, continuation request); literals are appended to their
  command as ``bytes``.
* The ``+`` that acknowledges IDLE resolves :attr:`GuardedProtocol.idle_ready`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import weakref
import zlib
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

from aioimaplib.aioimaplib import (
    AUTH,
    CONNECTED,
    NONAUTH,
    SELECTED,
    Abort,
    AllowedVersions,
    Command,
    Commands,
    Error,
    Exec,
    FetchCommand,
    IMAP4ClientProtocol,
    message_data_re,
    quoted,
)

from ..errors import ConnectionLost, ConnectionPoisoned, ProtocolError, ServerBusyClosed
from ..waits import first_done
from .calls import Call, IdleCall, PushQueue
from .framing import Framer
from .literals import Piece, command_chunks, nonsync_limit
from .parse import parse_capabilities
from .refusals import Phase, Refusal, classify_refusal
from .sasl import OAuthExchange

__all__ = ["GuardedProtocol", "quoted"]

log = logging.getLogger("guardedpool.imap")
wire_log = logging.getLogger("guardedpool.imap.wire")

_BYE = re.compile(rb"^\* BYE\b", re.IGNORECASE)
# A tagged status line: one of our tags (aioimaplib's: upper-case letters and digits), then
# OK, NO or BAD in any case (RFC 3501 section 9: keywords are case-insensitive; aioimaplib's
# own pattern takes upper case only, so a server's "a1 ok" left the command waiting).
_TAGGED_STATUS = re.compile(rb"[A-Z0-9]+ (?i:OK|NO|BAD)")

# Protocols whose credentials are on the wire right now (LOGIN or AUTHENTICATE pending).
_AUTHENTICATING: weakref.WeakSet[GuardedProtocol] = weakref.WeakSet()


class _RedactAioimaplib(logging.Filter):
    """Cuts credentials out of aioimaplib's own log records.

    aioimaplib formats server lines into its DEBUG/INFO messages (``tagged status ...``,
    ``unknown data received ...``) inside code we do not override; a server that echoes
    the LOGIN line in its answer would put the password there. Only protocols that are
    authenticating are consulted, so the cost is nil outside logins (and nothing at all
    unless aioimaplib's logger is enabled: filters run after the level check).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if _AUTHENTICATING:
            try:
                text = record.getMessage()
            except Exception:  # a malformed record is logging's problem, not ours
                return True
            redacted = text
            for protocol in list(_AUTHENTICATING):
                redacted = protocol.redact(redacted)
            if redacted != text:
                record.msg, record.args = redacted, None
        return True


logging.getLogger("aioimaplib.aioimaplib").addFilter(_RedactAioimaplib())
# aioimaplib's FetchCommand.FETCH_MESSAGE_DATA_RE: where a FETCH response starts.
_FETCH_START = re.compile(rb"[0-9]+ FETCH \(")
_MAX_TEXT = 200


# A STARTTLS/COMPRESS reply longer than this without its tagged line is not a reply.
_SWITCH_MAX = 64 * 1024
_INFLATE_PIECE = 256 * 1024


@dataclass(slots=True)
class _Switch:
    """A STARTTLS or COMPRESS in flight: its tag, its tagged reply, the bytes after it."""

    tag: bytes
    reply: asyncio.Future[tuple[str, str]]
    buf: bytes = b""
    rest: bytearray = field(default_factory=bytearray)


def _text(data: bytes | str) -> str:
    s = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    return s if len(s) <= _MAX_TEXT else s[:_MAX_TEXT] + "..."


class GuardedProtocol(IMAP4ClientProtocol):  # type: ignore[misc]  # aioimaplib is untyped
    """An ``IMAP4ClientProtocol`` that reports faults instead of hanging.

    Attributes:
        fault: resolves (with a :class:`ConnectionPoisoned` instance as its *result*, so an
            unobserved fault never logs "exception was never retrieved") when the connection
            can no longer be trusted. Everything that waits on the server races it.
        greeting: resolves with None once the server greeted and answered CAPABILITY, or
            with a reason string when the greeting was a refusal or unusable.
        sent: number of lines written; lets the client tell a command aioimaplib refused
            locally (nothing sent) from one that failed on the wire.
        logging_out: set before LOGOUT, so the ``BYE`` that follows is not a fault.
        refusal: the classified ``BYE`` that refused the greeting or ended the session,
            if any (see :mod:`guardedpool.imap.refusals`).
        first_bytes: the first few bytes the server sent (to recognise a TLS record on
            a connection meant to be plaintext).
        idle_ready: None, or a future the sender of IDLE puts here before sending it;
            resolved (None) when the server answers with its ``+`` continuation request
            (RFC 2177). A future per IDLE, not an Event per connection.
        push_ready: None, or a future the waiters for IDLE pushes share; resolved (None)
            once a read has put pushes in ``idle_queue`` (pushes read together with the
            line that ends IDLE are queued too; the end of IDLE wakes the waiters). A
            future per round of waiting, not a task blocked in ``idle_queue.get()``.
    """

    # aioimaplib's public attributes that this class assigns (aioimaplib is untyped)
    pending_sync_command: Any  # the synchronous command in flight, if any
    literal_data: bytes | None  # APPEND's message, until the server's "+" asks for it
    idle_queue: PushQueue  # IDLE's pushes, one list per read

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop, None)
        # IDLE's pushes (aioimaplib's public idle_queue): one deque, not an asyncio.Queue
        # (six objects per connection); only IdleCall fills it (see calls.PushQueue).
        self.idle_queue = PushQueue()
        self.fault: asyncio.Future[ConnectionPoisoned] = loop.create_future()
        self.greeting: asyncio.Future[str | None] = loop.create_future()
        self.sent = 0
        self.logging_out = False
        self.refusal: Refusal | None = None
        self.first_bytes = b""
        self.idle_ready: asyncio.Future[None] | None = None
        self.push_ready: asyncio.Future[None] | None = None
        self._socket: socket.socket | None = None  # see own_socket
        self._socket_inode = 0
        self._key = ""
        # The command sent by submit() and not yet completed: it, its future, and the
        # state an OK moves to.
        self._submitted: tuple[Any, asyncio.Future[Any], str | None] | None = None
        self._secrets: tuple[str, ...] = ()
        self._sasl_initial: str | None = None
        self._sasl_error_reply = ""
        self._switch: _Switch | None = None
        self._inflate: Any = None  # zlib decompressobj once COMPRESS=DEFLATE is on
        self._literal_chunks: list[bytes] = []  # sent one per '+' continuation
        self._framer = Framer(self._on_line, self._on_literal)
        self._cont: Any = None  # the command the next line continues, if any
        self._fetch_cmd: Any = None  # the FETCH whose parentheses are open, and how deep
        self._fetch_depth = 0

    # -- faults ----------------------------------------------------------------------

    def fail(self, exc: ConnectionPoisoned) -> None:
        """Record the first fault and abort the transport at once; later faults are moot."""
        if not self.fault.done():
            self.fault.set_result(exc)
            log.debug("imap connection fault: %s", exc, extra={"reason": str(exc)})
        self.abort()

    def own_socket(self, sock: socket.socket, key: str) -> None:
        """Keep the connected socket under the transport (the connector made it for pool
        key ``key``), and its inode, so that :meth:`abort` can tell whether its fd number
        still holds it."""
        self._socket = sock
        self._socket_inode = os.fstat(sock.fileno()).st_ino
        self._key = key

    def abort(self) -> None:
        """Abort the transport (RST, no flush) and stop aioimaplib's helper tasks.

        If the connection's fd number no longer holds its socket (someone closed the fd
        behind the pool's back, and the number may now be another socket's), the socket
        is let go of first (``socket.detach()``), so that closing the transport closes
        nothing: closing that number would close whatever sits there now.
        """
        self._let_go_if_not_ours()
        transport = self.transport
        if transport is not None:
            transport.abort()
        for task in list(self.tasks):
            task.cancel()

    def _let_go_if_not_ours(self) -> None:
        sock = self._socket
        if sock is None:
            return
        fd = sock.fileno()
        if fd < 0:
            return  # closed or let go already
        try:
            ours = os.fstat(fd).st_ino == self._socket_inode
        except OSError:
            ours = False  # closed: the number is free, and may be taken any moment
        if not ours:
            sock.detach()
            log.warning(
                "imap connection for key %r: its fd %d no longer holds its socket (inode "
                "%d), which was closed behind the connection's back; letting go of the fd "
                "number without closing it, so that whatever holds it now stays open",
                self._key,
                fd,
                self._socket_inode,
                extra={"key": self._key, "fd": fd, "inode": self._socket_inode},
            )

    @property
    def closing(self) -> bool:
        """True once the transport is closing (or was never made)."""
        return self.transport is None or bool(self.transport.is_closing())

    def set_secrets(self, *secrets: str) -> None:
        """Credentials (in every form they take on the wire) to cut out of any message.

        Until :meth:`secrets_sent` they are also cut out of aioimaplib's own log records,
        which quote server lines (a server may echo the LOGIN line in its answer).
        """
        forms: set[str] = set()
        for secret in secrets:
            if secret:
                # As sent, and as a repr of the str or of the bytes quotes it in a message
                # (aioimaplib logs ``b'...'`` reprs, which double every backslash).
                forms |= {secret, repr(secret)[1:-1], repr(secret.encode())[2:-1]}
        # Longest first, so no shorter form breaks up a longer one before it is matched.
        self._secrets = tuple(sorted(forms, key=len, reverse=True))
        if self._secrets:
            _AUTHENTICATING.add(self)

    def secrets_sent(self) -> None:
        """Authentication is over (either way): aioimaplib's records need no more care."""
        _AUTHENTICATING.discard(self)

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "<redacted>")
        return text

    async def call(self, coro: Awaitable[Any]) -> Any:
        """Await ``coro`` unless the connection faults first; raise the fault then.

        No bound of its own: callers wrap it in their timeout. On cancellation the inner
        task is cancelled too, so nothing keeps waiting on a dead connection.
        """
        task = asyncio.ensure_future(coro)
        try:
            await first_done((task, self.fault), None)
        except BaseException:
            task.cancel()
            raise
        if task.done():
            return task.result()
        task.cancel()
        raise self.fault.result()

    # -- asyncio.Protocol ------------------------------------------------------------

    def connection_lost(self, exc: Exception | None) -> None:
        detail = f": {type(exc).__name__}: {_text(str(exc))}" if exc is not None else ""
        self.fail(ConnectionLost(f"connection lost{detail}"))

    def data_received(self, data: bytes) -> None:
        # Not aioimaplib's data_received: it formats every chunk for a DEBUG log line
        # even when DEBUG is off (a repr of each megabyte of a large FETCH).
        if self.fault.done():
            return
        if len(self.first_bytes) < 8:
            self.first_bytes += data[: 8 - len(self.first_bytes)]
        if self._switch is not None:
            self._switch_data(data)
            return
        if self._inflate is not None:
            self._inflated(data)
            return
        self._received(data)

    @property
    def compressing(self) -> bool:
        """True once COMPRESS=DEFLATE is active."""
        return self._inflate is not None

    def start_inflate(self, rest: bytes) -> None:
        """Inflate (RFC 1951 raw deflate) all server data from now on, ``rest`` first."""
        self._inflate = zlib.decompressobj(-15)
        if rest:
            self._inflated(rest)

    def _inflated(self, data: bytes) -> None:
        try:
            # Bounded pieces: a small compressed read can inflate to a lot.
            piece = self._inflate.decompress(data, _INFLATE_PIECE)
            while piece:
                self._received(piece)
                if self.fault.done():
                    return
                tail = self._inflate.unconsumed_tail
                piece = self._inflate.decompress(tail, _INFLATE_PIECE) if tail else b""
        except zlib.error as exc:
            self.fail(ProtocolError(f"corrupt COMPRESS=DEFLATE stream from server ({exc})"))

    def _received(self, data: bytes) -> None:
        try:
            self._framer.feed(data)
            if self.pending_sync_command is not None:
                # IDLE's buffered pushes reach its queue once per read, as in aioimaplib.
                self.pending_sync_command.flush()
                ready = self.push_ready
                if ready is not None and not ready.done() and not self.idle_queue.empty():
                    ready.set_result(None)
        except Exception as exc:  # anything the parser chokes on, e.g. aioimaplib's Abort
            self.fail(
                ProtocolError(
                    f"unexpected data from server ({type(exc).__name__}: "
                    f"{_text(self.redact(str(exc)))})"
                )
            )

    def _on_line(self, line: bytes, literal: int | None) -> None:
        """One line from the framer, dispatched as aioimaplib's ``_handle_responses`` did.

        ``_cont`` is the command the line continues: the one whose literal came just
        before, or a FETCH whose parentheses are still open (aioimaplib's rule, kept).
        """
        cont = self._cont
        cmd = self._route_line(line, cont)
        fetch_open = isinstance(cmd, FetchCommand) and self._fetch_open(cmd, line, cont)
        if literal is not None:
            # aioimaplib files a literal nobody claims under a throwaway command.
            self._cont = cmd if cmd is not None else Command("NIL", "unused", loop=self.loop)
        elif cmd is None or isinstance(cmd, FetchCommand):
            self._cont = cmd if fetch_open else None
        else:
            self._cont = cmd if cmd.wait_data() else None

    def _on_literal(self, data: bytes) -> None:
        cmd = self._cont
        if cmd is not None:
            cmd.append_to_resp(data)

    def _fetch_open(self, cmd: Any, line: bytes, cont: Any) -> bool:
        """aioimaplib's ``FetchCommand.wait_data`` kept up as lines come, not recounted.

        Its rule: the parentheses of the command's lines since its last line starting
        ``N FETCH (`` do not balance (literals not counted). It recounted every line of the
        response on each call, quadratic in a batch.
        """
        # The line as aioimaplib filed it: an untagged line loses its "* ".
        filed = line[2:] if cont is None and line.startswith(b"* ") else line
        depth = filed.count(b"(") - filed.count(b")")
        if cmd is self._fetch_cmd and not _FETCH_START.match(filed):
            depth += self._fetch_depth
        if depth:
            self._fetch_cmd, self._fetch_depth = cmd, depth
            return True
        self._fetch_cmd, self._fetch_depth = None, 0
        return False

    # -- STARTTLS / COMPRESS ------------------------------------------------------------

    async def switch(self, name: str) -> tuple[str, str]:
        """Send ``name`` (STARTTLS, COMPRESS DEFLATE) and return its tagged ``(result, text)``.

        Until :meth:`end_switch`, the protocol reads the reply itself rather than through
        aioimaplib: every byte after the tagged line is held back, never parsed, because
        after that line the stream is TLS or deflate (or, if it arrives before the TLS
        handshake, an attacker's injected plaintext). Untagged lines before the reply are
        ignored; a ``BYE`` faults. No bound of its own: the caller's timeout covers it.
        """
        if self._switch is not None or self._framer.pending or self.pending_sync_command:
            raise RuntimeError(f"{name} needs an idle connection")
        tag = self.new_tag()
        self._switch = _Switch(tag.encode("ascii"), self.loop.create_future())
        self.send(f"{tag} {name}")
        return await self._switch.reply

    def end_switch(self) -> bytes:
        """Stop holding bytes; return those that came after the tagged reply."""
        switch, self._switch = self._switch, None
        return bytes(switch.rest) if switch is not None else b""

    def _switch_data(self, data: bytes) -> None:
        switch = self._switch
        assert switch is not None
        if switch.reply.done():
            switch.rest += data
            return
        buf = switch.buf + data
        while True:
            line, sep, tail = buf.partition(b"\r\n")
            if not sep:
                break
            buf = tail
            if line.startswith(switch.tag + b" "):
                result, _, text = line[len(switch.tag) + 1 :].partition(b" ")
                switch.rest += buf
                switch.buf = b""
                switch.reply.set_result(
                    (result.decode("ascii", "replace").upper(), text.decode("utf-8", "replace"))
                )
                return
            if _BYE.match(line):
                self.fail(ProtocolError(f"server said {_text(line[2:])}"))
                return
            wire_log.debug("ignored line before the tagged reply %r", line[:_MAX_TEXT])
        if len(buf) > _SWITCH_MAX:
            self.fail(ProtocolError("no tagged reply within 64 KiB of server data"))
            return
        switch.buf = buf

    # -- aioimaplib's public methods, overridden ----------------------------------------

    def send(self, line: str, scrub: str | None = None) -> None:
        self.write_line(self.encode_line(line), line, scrub)

    @staticmethod
    def encode_line(line: str) -> bytes:
        """``line`` as sent (UTF-8, CRLF); ``UnicodeEncodeError`` for a line that has no
        encoding (a lone surrogate), before anything is written."""
        return f"{line}\r\n".encode()

    def write_line(self, data: bytes, line: str, scrub: str | None = None) -> None:
        """Write one encoded command line (``line``: its text, for the wire log; redacted
        when it holds a secret or ``scrub`` is given). A write that raises (a TLS error,
        a closed transport) is a fault: the connection's state is unknown from there."""
        if scrub is not None or (self._secrets and any(s in line for s in self._secrets)):
            # Log the tag and the command name only: the rest is a credential.
            wire_log.debug("send %s <credentials redacted>", " ".join(line.split(" ", 2)[:2]))
        elif wire_log.isEnabledFor(logging.DEBUG):
            wire_log.debug("send %r", data[:_MAX_TEXT])
        try:
            self.transport.write(data)
        except Exception as exc:
            self.fail(
                ProtocolError(
                    f"writing a command failed: {type(exc).__name__}: "
                    f"{self.redact(str(exc))[:200]}"
                )
            )
            raise
        self.sent += 1

    # -- routing server lines (RFC 3501 section 7) -------------------------------------

    def _route_line(self, line: bytes, current_cmd: Any) -> Any:
        """Send one server line where it belongs; return the command it was filed under.

        In order: the greeting (while CONNECTED); an untagged ``BYE`` outside LOGOUT (a
        fault, classified: a server limit is :class:`ServerBusyClosed`); a tagged status
        (RFC 3501 section 7.1) completes its command; a line that continues
        ``current_cmd`` (after its literal, or inside an open FETCH) is appended to it; an
        untagged response (section 7) goes to the command that asked for it; a
        continuation request (section 7.5) to :meth:`_continue_request`. The same order as
        aioimaplib 2.0's own dispatch, which is not called. Raises aioimaplib's ``Abort``
        for a tagged line no command is waiting for (the caller turns it into a fault).
        """
        if not line:
            return None
        if self.state == CONNECTED:
            if not _BYE.match(line) and self._adopt_greeting_capabilities(line):
                self._greeted(None)  # what welcome() would do, without a task per connect
                return None
            task = asyncio.ensure_future(self.welcome(line))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
            return None
        if not self.logging_out and _BYE.match(line):
            # A server that hangs up on LOGIN may quote it: redact before anything quotes us.
            said = self.redact(line[2:].decode("utf-8", "replace"))
            refusal = self.classify_bye(line)
            if refusal.limited:
                self.fail(
                    ServerBusyClosed(
                        f"server closed the session for its limits ({refusal.kind}): {_text(said)}",
                        **refusal.limit_fields(),
                    )
                )
            else:
                self.fail(ProtocolError(f"server said {_text(said)}"))
            return None
        if _TAGGED_STATUS.match(line):
            self._tagged_done(line)
            return None
        if current_cmd is not None:
            current_cmd.append_to_resp(line)
            return current_cmd
        if line.startswith(b"*"):
            return self._untagged(line)
        if line.startswith(b"+"):
            self._continue_request(line)
            return None
        wire_log.debug("ignored line of unknown kind %r", line[:_MAX_TEXT])
        return None

    def _tagged_done(self, line: bytes) -> None:
        """A tagged status line: complete the command with that tag (RFC 3501 section 7.1)."""
        tag_bytes, _, response = line.partition(b" ")
        tag = tag_bytes.decode("ascii", "replace")
        sync = self.pending_sync_command
        if sync is not None:
            if sync.tag != tag:
                raise Abort(
                    f"tagged response {_text(line)!r} while {sync.name} {sync.tag} is pending"
                )
            command = sync
            self.pending_sync_command = None
        else:
            waiting = [
                (name, c)
                for name, c in self.pending_async_commands.items()
                if c is not None and c.tag == tag
            ]
            if not waiting:
                raise Abort(f"tagged response {_text(line)!r} for no pending command")
            if len(waiting) > 1:
                raise Error(f"two pending commands share the tag {tag}")
            name, command = waiting[0]
            del self.pending_async_commands[name]
        result, _, text = response.partition(b" ")
        command.close(text, result=result.decode("ascii", "replace").upper())
        submitted = self._submitted
        if submitted is not None and submitted[0] is command:
            self._submitted = None
            _, future, ok_state = submitted
            response = command.response
            if ok_state is not None and response.result == "OK":
                self.state = ok_state
            if not future.done():
                future.set_result(response)

    def classify_bye(self, line: bytes) -> Refusal:
        """Classify an untagged ``BYE`` line (remembered as :attr:`refusal`)."""
        text = self.redact(line.decode("utf-8", "replace"))
        text = re.sub(r"^\*\s+BYE\b\s*", "", text, flags=re.IGNORECASE).rstrip("\r\n")
        phase: Phase = "command" if self.state in (AUTH, SELECTED) else "login"
        self.refusal = classify_refusal(text, status="BYE", phase=phase)
        return self.refusal

    def _untagged(self, line: bytes) -> Any:
        """An untagged response (RFC 3501 section 7): filed, without its ``* `` prefix
        only, under the pending synchronous command, else under the asynchronous command
        its name belongs to, else (unsolicited) under a pending NOOP, as aioimaplib does."""
        if line.startswith(b"* "):
            line = line[2:]
        if self.pending_sync_command is not None:
            self.pending_sync_command.append_to_resp(line)
            return self.pending_sync_command
        match = message_data_re.match(line)
        if match:
            cmd_name, text = match.group(1), line
        else:
            cmd_name, _, text = line.partition(b" ")
        command = self.pending_async_commands.get(cmd_name.decode("ascii", "replace").upper())
        if command is not None:
            command.append_to_resp(text)
            return command
        # Unsolicited data goes to a pending NOOP, as in aioimaplib.
        command = self.pending_async_commands.get("NOOP")
        if command is not None:
            command.append_to_resp(line)
        else:
            wire_log.debug("ignored untagged response %r", line[:_MAX_TEXT])
        return command

    def _continue_request(self, line: bytes) -> None:
        """A continuation request (RFC 3501 section 7.5): the next literal, the SASL
        answer, the APPEND message, IDLE's acknowledgement (:attr:`idle_ready`), or a
        line of the pending command."""
        if self._literal_chunks:
            # The server is ready for a synchronising literal (RFC 3501 section 7.5).
            self.transport.write(self._literal_chunks.pop(0))
            self.sent += 1
            return
        cmd = self.pending_sync_command
        name = cmd.name if cmd is not None else None
        if name == "AUTHENTICATE":
            if self._sasl_initial is not None:
                response, self._sasl_initial = self._sasl_initial, None
            else:
                # An error challenge: this answer ends the exchange with a tagged NO.
                response = self._sasl_error_reply
            self.transport.write(f"{response}\r\n".encode())
            self.sent += 1
            return
        if name == "LOGIN":
            # aioimaplib would log the LOGIN command (with the password) here.
            self.fail(ProtocolError("server sent a continuation request during LOGIN"))
            return
        if cmd is None:
            wire_log.debug("ignored continuation request %r: no command pending", line[:_MAX_TEXT])
        elif name == "APPEND":
            if self.literal_data is None:
                self.fail(ProtocolError("server asked for APPEND's message twice"))
                return
            self.transport.write(self.literal_data)
            self.transport.write(b"\r\n")
            self.literal_data = None
        elif name == "IDLE":
            ready = self.idle_ready
            if ready is not None and not ready.done():
                ready.set_result(None)
        else:
            cmd.append_to_resp(line)
            cmd.flush()

    async def welcome(self, command: bytes) -> None:
        if _BYE.match(command):
            self.classify_bye(command)
            self._greeted(f"server refused the connection: {_text(command[2:])}")
            return
        if self._adopt_greeting_capabilities(command):
            self._greeted(None)
            return
        try:
            await super().welcome(command)
        except Exception as exc:  # Error('...') for a non-OK greeting or no IMAP4rev1
            self._greeted(f"unusable greeting {_text(command)!r} ({_text(str(exc))})")
        else:
            self._greeted(None)

    def _adopt_greeting_capabilities(self, command: bytes) -> bool:
        """Take the capabilities of a greeting that lists them (``* OK [CAPABILITY ...]``),
        instead of asking with a CAPABILITY command as aioimaplib always does: one round
        trip less per connect. RFC 3501 section 7.1 (and RFC 9051 section 7.1) lets a
        server send them in the greeting for exactly this purpose. False (nothing changed)
        for a greeting without them, or one that is neither OK nor PREAUTH, or whose list
        names no IMAP4 version: aioimaplib's own path then runs, as before.
        """
        status = command[2:10].upper()
        if not (status.startswith(b"OK") or status.startswith(b"PREAUTH")):
            return False
        caps = parse_capabilities([command])
        if caps is None:
            return False
        versions = [v for v in ("IMAP4REV1", "IMAP4REV2", "IMAP4") if v in caps]
        if not versions or not any(v in AllowedVersions for v in versions):
            return False
        self.state = AUTH if status.startswith(b"PREAUTH") else NONAUTH
        self.capabilities = set(caps)
        self.imap_version = next(v for v in versions if v in AllowedVersions)
        return True

    def _greeted(self, reason: str | None) -> None:
        if not self.greeting.done():
            self.greeting.set_result(reason)

    # -- commands without a task ------------------------------------------------------

    def pending(self) -> bool:
        """Whether a command waits for its tagged completion (aioimaplib's pending
        commands, or one sent by :meth:`submit`)."""
        return bool(
            self._submitted is not None
            or self.pending_sync_command is not None
            or self.pending_async_commands
        )

    def submit(self, command: Any, *, ok_state: str | None = None) -> asyncio.Future[Any]:
        """Send ``command`` (a :class:`~guardedpool.imap.calls.Call`, or an aioimaplib
        ``Command``) now; return a future of its ``Response``.

        What aioimaplib's ``execute`` does for a command sent when nothing else is pending
        (the client's lock makes it so; otherwise the command is refused), without the
        coroutines, the task and the ``Event`` waiter it costs per command: the future is
        resolved by the command's tagged completion (RFC 3501 section 7.1, see
        :meth:`_tagged_done`). ``ok_state``: the protocol state after an ``OK`` (SELECT:
        ``SELECTED``). A command refused before anything is written (not valid in this
        state, or another command pending) gets aioimaplib's ``Abort`` in the future, and
        a line that cannot be encoded (``UnicodeEncodeError``, e.g. a lone surrogate in a
        mailbox name) is raised here: in both cases nothing is sent and nothing stays
        pending. A write that fails is a fault (:meth:`fail`). No bound of its own: the
        caller races :attr:`fault` under its timeout.
        """
        spec = Commands.get(command.name)
        if spec is None or self.state not in spec.valid_states:
            return self._refused(Abort(f"command {command.name} illegal in state {self.state}"))
        if self.pending():
            return self._refused(Abort(f"{command.name} while another command is pending"))
        line = str(command)
        data = self.encode_line(line)  # raises before anything is pending
        future: asyncio.Future[Any] = self.loop.create_future()
        if spec.exec == Exec.is_sync:
            self.pending_sync_command = command
        else:
            self.pending_async_commands[command.untagged_resp_name] = command
        self._submitted = (command, future, ok_state)
        if isinstance(command, Call):
            command.future = future
        self.write_line(data, line)
        return future

    def _refused(self, exc: Exception) -> asyncio.Future[Any]:
        """A command's future that holds ``exc``: refused before anything was sent."""
        future: asyncio.Future[Any] = self.loop.create_future()
        future.set_exception(exc)
        return future

    def select_command(self, mailbox: str) -> asyncio.Future[Any]:
        """SELECT ``mailbox`` (already quoted) through :meth:`submit`; ``SELECTED`` on OK,
        as aioimaplib's ``select``."""
        try:
            command = Call("SELECT", self.new_tag(), mailbox)
        except ValueError as exc:  # a control character in the name: refused, not sent
            return self._refused(exc)
        return self.submit(command, ok_state=SELECTED)

    def idle_command(self) -> asyncio.Future[Any]:
        """IDLE (RFC 2177) through :meth:`submit`, as aioimaplib's ``idle``: the future
        resolves when IDLE ends (its tagged completion); pushes go to ``idle_queue``."""
        if "IDLE" not in self.capabilities:
            return self._refused(Abort("server has not IDLE capability"))
        return self.submit(IdleCall(self.new_tag(), self.idle_queue))

    # -- commands with literals ------------------------------------------------------

    async def search_literals(self, pieces: list[Piece], *, by_uid: bool) -> Any:
        """SEARCH / UID SEARCH whose ``pieces`` hold literals (see :mod:`.literals`).

        Non-synchronising where LITERAL+/LITERAL- allow, else each literal waits for the
        server's ``+``. No bound of its own: the client's ``_run`` bounds the command.
        """
        if self.pending_sync_command is not None or "SEARCH" in self.pending_async_commands:
            raise RuntimeError("SEARCH with literals needs an idle connection")
        caps = {str(c).upper() for c in self.capabilities}
        tag = self.new_tag()
        verb = "UID SEARCH" if by_uid else "SEARCH"
        chunks = command_chunks(tag, [" ", verb, *pieces], nonsync_limit(caps))
        command = Command("SEARCH", tag, loop=self.loop)
        self.pending_async_commands[command.untagged_resp_name] = command
        self._literal_chunks = chunks[1:]
        wire_log.debug("send %s %s with %d literal(s)", tag, verb, len(pieces))
        self.transport.write(chunks[0])
        self.sent += 1
        try:
            await command.wait()
        finally:
            self._literal_chunks = []
        return command.response

    # -- capabilities ------------------------------------------------------------------

    async def capability_command(self) -> Any:
        """CAPABILITY, without aioimaplib's parsing (the client adopts the result)."""
        return await self.execute(Command("CAPABILITY", self.new_tag(), loop=self.loop))

    def adopt_capabilities(self, lines: list[bytes]) -> frozenset[str] | None:
        """Take the capabilities listed in a LOGIN/AUTHENTICATE response, if it has any.

        aioimaplib's own post-LOGIN parsing adds words of the status text to the set (bug
        6); this replaces the set with exactly what the server listed, upper-cased.
        Returns None (and changes nothing) when the response lists none.
        """
        caps = parse_capabilities(lines)
        if caps is not None:
            self.capabilities = set(caps)
        return caps

    def adopt_capability_response(self, lines: list[bytes]) -> frozenset[str]:
        """Take the capabilities from a CAPABILITY command's response.

        aioimaplib files the untagged ``* CAPABILITY a b`` line of this (async) command
        without its keyword: every line but the tagged status text is capability words.
        """
        caps = frozenset(
            word.upper() for line in lines[:-1] for word in line.decode("ascii", "replace").split()
        )
        self.capabilities = set(caps)
        return caps

    # -- authentication --------------------------------------------------------------

    async def login_quoted(self, username: str, password: str) -> Any:
        """LOGIN with the user name quoted too (aioimaplib sends it raw)."""
        quoted_password = quoted(password)
        self.set_secrets(password, quoted_password)
        try:
            return await self.login(quoted(username), password)
        finally:
            self.secrets_sent()

    async def oauth_auth(self, exchange: OAuthExchange) -> Any:
        """AUTHENTICATE OAUTHBEARER or XOAUTH2, with SASL-IR (RFC 4959) when offered."""
        self.set_secrets(*exchange.secrets)
        sasl = exchange.initial
        args: tuple[str, ...] = (exchange.mechanism,)
        if "SASL-IR" in {str(c).upper() for c in self.capabilities}:
            args = (exchange.mechanism, sasl)
        else:
            self._sasl_initial = sasl
        self._sasl_error_reply = exchange.error_reply
        try:
            async with self.state_condition:
                command = Command("AUTHENTICATE", self.new_tag(), *args, loop=self.loop)
                response = await self.execute(command, scrub=exchange.secrets[0])
                if response.result == "OK":
                    self.state = AUTH
                self.state_condition.notify_all()
        finally:
            self.secrets_sent()
        self._sasl_initial = None
        return response
