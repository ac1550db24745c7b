"""A model IMAP server on 127.0.0.1 whose answers a test (or hypothesis) scripts.

The server keeps a real model of its mailboxes -- UIDVALIDITY, UIDNEXT, messages with
flags, bytes and (under CONDSTORE) mod-sequences -- and answers what a sync worker sends:
CAPABILITY, LOGIN, SELECT/EXAMINE (with ``(CONDSTORE)``), ``UID SEARCH ALL`` /
``UID SEARCH UID set``, ``UID FETCH set items [(CHANGEDSINCE n)]``, IDLE/DONE, NOOP,
LOGOUT (anything else: ``OK``). It never pushes during IDLE, like GNU Mailutils.

What a test sets in :class:`Faults` shapes the answers of the next pass, the way real
servers differ or break (every one of them allowed by RFC 3501/9051 or a plain network
fault):

- ``search_seed``: the order of SEARCH results (RFC 3501 6.4.4 says nothing about order);
- ``cut_at``: the connection is cut after that many bytes of server output, counted from
  the start of the pass over every connection: any byte of any response, greeting
  included; ``cut_answer = ("UID FETCH", 2, 10)`` cuts the answer to the pass's second
  ``UID FETCH`` after its first 10 bytes;
- ``quirks``: per UID, how its FETCH answer is shaped -- ``drop`` (no answer at all),
  ``no_body``, ``no_uid``, ``no_flags`` (an item missing), ``reorder`` (items in another
  order), ``split`` (two FETCH responses for one message, RFC 3501 7.4.2 allows it);
  ``extra``: an untagged FETCH, with body, for a message that was not asked for;
- ``expunge_after_search``: UIDs expunged by "another session" right after the first
  ``UID SEARCH ALL`` of the pass was answered.

A ``(CHANGEDSINCE n)`` answer is only ever reordered or split: a server that leaves a
changed message out of it is indistinguishable, to any client, from one where nothing
changed.

The model-based test of the sync worker built on it is :mod:`harness.sync_histories`.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from .loopback import LoopbackServer

__all__ = ["Faults", "ModelIMAP", "ModelMailbox", "ModelMessage", "parse_uid_set"]

QUIRKS = ("drop", "no_body", "no_uid", "no_flags", "reorder", "split")
FLAG_CHOICES = ("\\Seen", "\\Flagged", "\\Answered", "$Label1")


@dataclass(slots=True)
class ModelMessage:
    uid: int
    raw: bytes
    flags: frozenset[str]
    modseq: int


@dataclass(slots=True)
class ModelMailbox:
    """One mailbox's truth. ``history`` keeps every (uidvalidity, uid) -> bytes it ever
    held, so a test can check that a store holds nothing the server never had."""

    uidvalidity: int = 1
    uidnext: int = 1
    highestmodseq: int = 1
    messages: dict[int, ModelMessage] = field(default_factory=dict)
    history: dict[tuple[int, int], bytes] = field(default_factory=dict)

    def append(self, raw: bytes, flags: Iterable[str] = ()) -> int:
        uid = self.uidnext
        self.uidnext += 1
        self.highestmodseq += 1
        self.messages[uid] = ModelMessage(uid, raw, frozenset(flags), self.highestmodseq)
        self.history[(self.uidvalidity, uid)] = raw
        return uid

    def expunge(self, uid: int) -> None:
        if self.messages.pop(uid, None) is not None:
            self.highestmodseq += 1

    def set_flags(self, uid: int, flags: Iterable[str]) -> None:
        msg = self.messages[uid]
        if msg.flags != frozenset(flags):
            self.highestmodseq += 1
            msg.flags, msg.modseq = frozenset(flags), self.highestmodseq

    def recreate(self, raws: Iterable[bytes]) -> None:
        """Delete and recreate: a new UIDVALIDITY, and UIDs counted from 1 again (reused)."""
        self.uidvalidity += 1
        self.uidnext = 1
        self.messages = {}
        for raw in raws:
            self.append(raw)

    def uids(self) -> list[int]:
        return sorted(self.messages)

    def view(self) -> dict[int, tuple[frozenset[str], bytes]]:
        """uid -> (flags, bytes): what a mirror of this mailbox must hold."""
        return {u: (m.flags, m.raw) for u, m in self.messages.items()}


@dataclass(slots=True)
class Faults:
    """How the next pass is answered (see the module docstring); all off by default."""

    search_seed: int | None = None  # None: ascending
    cut_at: int | None = None
    cut_answer: tuple[str, int, int] | None = None  # (command, nth of the pass, byte)
    quirks: dict[int, frozenset[str]] = field(default_factory=dict)
    extra: bool = False
    expunge_after_search: frozenset[int] = frozenset()
    seed: int = 0  # for reorder/split choices

    @property
    def clean(self) -> bool:
        return (
            self.cut_at is None
            and self.cut_answer is None
            and not self.quirks
            and not self.extra
            and not self.expunge_after_search
        )


def parse_uid_set(text: str, largest: int) -> set[int]:
    """``"1:3,7,9:*"`` -> the UIDs it names; ``*`` is ``largest`` (RFC 3501 6.4.8, 9)."""
    out: set[int] = set()
    for part in text.split(","):
        lo, _, hi = part.partition(":")
        a = largest if lo == "*" else int(lo)
        b = a if not hi else (largest if hi == "*" else int(hi))
        out.update(range(min(a, b), max(a, b) + 1))
    return out


def _flags(flags: Iterable[str]) -> bytes:
    return ("(" + " ".join(sorted(flags)) + ")").encode()


class _Cut(Exception):
    """The scripted cut happened: the connection is gone."""


class ModelIMAP(LoopbackServer):
    """``async with ModelIMAP(condstore=True) as srv``: clients connect to ``srv.port``.

    ``mailboxes`` (name -> :class:`ModelMailbox`, INBOX to begin with) and ``faults`` may
    be changed between passes. ``commands`` logs every command line received;
    ``expunged_in_pass`` the UIDs ``expunge_after_search`` removed.
    """

    quiet = (_Cut,)

    def __init__(self, *, condstore: bool = False, password: str = "pw") -> None:
        super().__init__()
        self.condstore = condstore
        self.password = password
        self.mailboxes: dict[str, ModelMailbox] = {"INBOX": ModelMailbox()}
        self.faults = Faults()
        self.commands: list[str] = []
        self.expunged_in_pass: set[int] = set()
        self.cuts = 0
        self._sent = 0
        self._searched = False
        self._counts: dict[str, int] = {}

    @property
    def caps(self) -> str:
        return "IMAP4rev1 IDLE UIDPLUS" + (" CONDSTORE" if self.condstore else "")

    def start_pass(self, faults: Faults | None = None) -> None:
        """Arm ``faults`` (default: none) for the pass about to run."""
        self.faults = faults or Faults()
        self._sent = 0
        self._searched = False
        self._counts = {}
        self.expunged_in_pass = set()

    # -- the connection ------------------------------------------------------------------

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._session(reader, writer)

    async def _send(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        cut = self.faults.cut_at
        if cut is not None and self._sent + len(data) > cut:
            writer.write(data[: cut - self._sent])
            await writer.drain()
            self.faults.cut_at = None
            self.cuts += 1
            writer.transport.abort()
            raise _Cut
        self._sent += len(data)
        writer.write(data)
        await writer.drain()

    def _arm_cut(self, command: str) -> None:
        """``cut_answer = (prefix, n, k)``: cut the answer to the n-th command of the pass
        starting with ``prefix`` after its first k bytes."""
        if self.faults.cut_answer is None:
            return
        prefix, nth, byte = self.faults.cut_answer
        if not command.upper().startswith(prefix.upper()):
            return
        count = self._counts[prefix] = self._counts.get(prefix, 0) + 1
        if count == nth:
            self.faults.cut_answer = None
            self.faults.cut_at = self._sent + byte

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._send(writer, f"* OK [CAPABILITY {self.caps}] model ready\r\n".encode())
        selected: ModelMailbox | None = None
        while True:
            async with asyncio.timeout(60.0):  # bounded: a client that went away ends it
                line = await reader.readline()
            if not line:
                return
            text = line.decode("utf-8", "replace").rstrip("\r\n")
            self.commands.append(text)
            tag, _, rest = text.partition(" ")
            verb, _, args = rest.partition(" ")
            verb = verb.upper()
            self._arm_cut(rest)
            ok = f"{tag} OK done\r\n".encode()
            if verb == "CAPABILITY":
                await self._send(writer, f"* CAPABILITY {self.caps}\r\n".encode() + ok)
            elif verb == "LOGIN":
                if args.split(" ")[-1].strip('"') != self.password:
                    await self._send(writer, f"{tag} NO [AUTHENTICATIONFAILED] no\r\n".encode())
                else:
                    await self._send(writer, f"{tag} OK [CAPABILITY {self.caps}] in\r\n".encode())
            elif verb in ("SELECT", "EXAMINE"):
                name = args.split(" ")[0].strip('"')
                selected = self.mailboxes.get(name)
                if selected is None:
                    await self._send(writer, f"{tag} NO [NONEXISTENT] no such mailbox\r\n".encode())
                else:
                    await self._send(writer, self._select(tag, selected, "(CONDSTORE)" in args))
            elif verb == "UID" and selected is not None:
                sub, _, uargs = args.partition(" ")
                if sub.upper() == "SEARCH":
                    await self._send(writer, self._search(tag, selected, uargs))
                elif sub.upper() == "FETCH":
                    await self._send(writer, self._fetch(tag, selected, uargs))
                else:
                    await self._send(writer, ok)
            elif verb == "IDLE":
                await self._send(writer, b"+ idling\r\n")
                async with asyncio.timeout(3600.0):
                    done = await reader.readline()
                if not done:
                    return
                await self._send(writer, ok)
            elif verb == "LOGOUT":
                await self._send(writer, b"* BYE bye\r\n" + ok)
                return
            else:
                await self._send(writer, ok)

    # -- the answers ---------------------------------------------------------------------

    def _select(self, tag: str, box: ModelMailbox, condstore: bool) -> bytes:
        out = [
            f"* FLAGS ({' '.join(FLAG_CHOICES)})",
            f"* {len(box.messages)} EXISTS",
            "* 0 RECENT",
            f"* OK [UIDVALIDITY {box.uidvalidity}] ok",
            f"* OK [UIDNEXT {box.uidnext}] ok",
        ]
        if self.condstore and condstore:
            out.append(f"* OK [HIGHESTMODSEQ {box.highestmodseq}] ok")
        out.append(f"{tag} OK [READ-WRITE] selected")
        return ("\r\n".join(out) + "\r\n").encode()

    def _search(self, tag: str, box: ModelMailbox, args: str) -> bytes:
        uids = box.uids()
        m = re.match(r"UID (\S+)", args, re.IGNORECASE)
        if m is not None:
            wanted = parse_uid_set(m.group(1), uids[-1] if uids else 0)
            uids = [u for u in uids if u in wanted]
        if self.faults.search_seed is not None:
            random.Random(self.faults.search_seed).shuffle(uids)
        answer = ("* SEARCH " + " ".join(map(str, uids))).rstrip() + "\r\n"
        if args.strip().upper() == "ALL" and not self._searched:
            self._searched = True
            for uid in self.faults.expunge_after_search:
                if uid in box.messages:
                    box.expunge(uid)
                    self.expunged_in_pass.add(uid)
        return f"{answer}{tag} OK search done\r\n".encode()

    def _fetch(self, tag: str, box: ModelMailbox, args: str) -> bytes:
        set_text, _, items = args.partition(" ")
        uids = box.uids()
        asked = parse_uid_set(set_text, uids[-1] if uids else 0)
        m = re.search(r"\(CHANGEDSINCE (\d+)\)", items, re.IGNORECASE)
        since = int(m.group(1)) if m else None
        body = "BODY.PEEK[]" in items.upper()
        seqs = {u: i + 1 for i, u in enumerate(uids)}
        rng = random.Random(self.faults.seed)
        out: list[bytes] = []
        for uid in uids:
            msg = box.messages[uid]
            if uid not in asked or (since is not None and msg.modseq <= since):
                continue
            quirks = self.faults.quirks.get(uid, frozenset())
            if since is not None:  # see the module docstring: only reorder/split here
                quirks = quirks & {"reorder", "split"}
            if "drop" in quirks:
                continue
            parts: list[tuple[bytes, bytes]] = []
            if "no_uid" not in quirks:
                parts.append((b"UID", str(uid).encode()))
            if "no_flags" not in quirks:
                parts.append((b"FLAGS", _flags(msg.flags)))
            if body:
                parts.append((b"RFC822.SIZE", str(len(msg.raw)).encode()))
                if "no_body" not in quirks:
                    parts.append((b"BODY[]", b"{%d}\r\n%s" % (len(msg.raw), msg.raw)))
            if self.condstore and since is not None:
                parts.append((b"MODSEQ", b"(%d)" % msg.modseq))
            if "reorder" in quirks:
                rng.shuffle(parts)
            if "split" in quirks and len(parts) > 1:
                cut = rng.randrange(1, len(parts))
                head, tail = parts[:cut], parts[cut:]
                uid_item = [(b"UID", str(uid).encode())] if "no_uid" not in quirks else []
                if not any(k == b"UID" for k, _ in tail):
                    tail = uid_item + tail
                out.append(_fetch_line(seqs[uid], head))
                out.append(_fetch_line(seqs[uid], tail))
            else:
                out.append(_fetch_line(seqs[uid], parts))
        if self.faults.extra and uids:
            other = [u for u in uids if u not in asked] or uids
            uid = rng.choice(other)
            msg = box.messages[uid]
            parts = [
                (b"UID", str(uid).encode()),
                (b"FLAGS", _flags(msg.flags)),
                (b"BODY[]", b"{%d}\r\n%s" % (len(msg.raw), msg.raw)),
            ]
            out.insert(rng.randrange(len(out) + 1), _fetch_line(seqs[uid], parts))
        return b"".join(out) + f"{tag} OK fetch done\r\n".encode()


def _fetch_line(seq: int, parts: list[tuple[bytes, bytes]]) -> bytes:
    return b"* %d FETCH (%s)\r\n" % (seq, b" ".join(k + b" " + v for k, v in parts))
