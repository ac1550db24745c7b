"""Which mailboxes of an account to sync: patterns over LIST, and folders that went away.

An account's ``mailboxes`` is a list of patterns over *human* names (``Entwürfe``, never
``Entw&APw-rfe``), read in order; the last pattern that matches a mailbox decides:

- ``"INBOX"``, ``"Archive"``: that mailbox (INBOX in any case, RFC 3501 §5.1).
- ``"*"`` any run of characters, ``"%"`` any run without the hierarchy delimiter (as in
  LIST, RFC 3501 §6.3.8): ``"Archive/*"`` is everything below Archive, ``"%"`` the top
  level. ``/`` stands for the server's delimiter, whatever it is (Dovecot's Maildir++
  uses ``.``), and the server's own delimiter works too.
- ``"\\Junk"``: the mailbox with that role (SPECIAL-USE, RFC 6154 §2: ``\\All``,
  ``\\Archive``, ``\\Drafts``, ``\\Flagged``, ``\\Junk``, ``\\Sent``, ``\\Trash``), on
  servers that announce roles.
- ``"!"`` before any of these excludes: ``["*", "!Trash", "!\\Junk"]``. A list that
  starts with an exclusion starts from everything: ``["!\\Trash"]`` = ``["*", "!\\Trash"]``.

Mailboxes LIST marks ``\\Noselect`` or ``\\NonExistent`` (a parent that only holds
others) are never synced. Each is kept under its name exactly as the server sent it: that
is the store's key and what every command sends.

A stored mailbox that LIST no longer shows, and that STATUS confirms is gone, is retired
(:meth:`~.store.Store.retire_mailbox`): its local copy is kept under a key no server name
can take, and never synced into again. When a new name has the vanished one's UIDVALIDITY
it is reported as the rename target (RFC 3501 §6.3.5: a renamed mailbox keeps its
UIDVALIDITY), but the new name is synced as a mailbox of its own, from scratch: two
mailboxes may share a UIDVALIDITY, so the pairing is a hint, never a reason to mix copies.

:func:`select_folders`, :func:`vanished` and :func:`pair_renames` are pure; the rest
asks the server (every command bounded by the pool's ``op_timeout``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

from guardedpool import IMAPCommandError
from guardedpool.imap import SPECIAL_USE, IMAPClient, ListEntry, WireName, parse_list
from guardedpool.imap.mutf7 import display, encode
from guardedpool.imap.parse import parse_select, parse_status

from .stores import MailStore

__all__ = [
    "Folder",
    "Listing",
    "Move",
    "Pattern",
    "Refresh",
    "compile_patterns",
    "find_moves",
    "list_folders",
    "literal_folders",
    "needs_list",
    "pair_renames",
    "parse_pattern",
    "refresh",
    "select_folders",
    "unmatched",
    "unselectable",
    "vanished",
    "wanted",
]

log = logging.getLogger("imap_sync")

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ROLES = {r.upper(): r for r in SPECIAL_USE}


@dataclass(frozen=True, slots=True)
class Pattern:
    """One entry of ``mailboxes``: ``text`` as configured, parsed."""

    text: str
    exclude: bool
    role: str | None  # "\\Junk" for a role pattern, else None
    name: str  # the name pattern (empty for a role pattern)

    @property
    def literal(self) -> bool:
        """A plain name, no wildcard and no role: it should match exactly one mailbox."""
        return self.role is None and not any(c in self.name for c in "*%")


def parse_pattern(text: str) -> Pattern:
    """``"!Trash"`` -> Pattern(exclude=True, name="Trash"). ValueError saying what is wrong."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("must be a mailbox name or pattern")
    if _CONTROL.search(text):
        raise ValueError("must not contain control characters")
    exclude = text.startswith("!")
    body = text[1:] if exclude else text
    if not body:
        raise ValueError("'!' must be followed by a name, pattern or role")
    if body.startswith("\\"):
        role = _ROLES.get(body.upper())
        if role is None:
            raise ValueError(
                f"{body} is not a SPECIAL-USE role (RFC 6154: {', '.join(sorted(SPECIAL_USE))})"
            )
        return Pattern(text, exclude, role, "")
    return Pattern(text, exclude, None, body)


def compile_patterns(texts: Iterable[str]) -> tuple[Pattern, ...]:
    """Parse every entry; a list starting with an exclusion starts from ``"*"``."""
    patterns = tuple(parse_pattern(t) for t in texts)
    if not patterns:
        raise ValueError("must list at least one mailbox or pattern")
    if patterns[0].exclude:
        patterns = (Pattern("*", False, None, "*"), *patterns)
    return patterns


@dataclass(frozen=True, slots=True)
class Folder:
    """A mailbox to sync: ``name`` as the server sends it (the store key), ``human`` that
    name decoded, with the server's ``delimiter``; ``roles`` per RFC 6154."""

    name: WireName
    human: str
    delimiter: str | None = None
    roles: frozenset[str] = frozenset()

    @property
    def path(self) -> str:
        """``human`` with ``/`` for the delimiter, as patterns spell it: what logs and
        metric labels show (``Archive/2024`` whether the server says ``Archive.2024``)."""
        d = self.delimiter
        return self.human.replace(d, "/") if d and d != "/" else self.human

    @classmethod
    def from_entry(cls, entry: ListEntry) -> Folder:
        return cls(entry.name, entry.human, entry.delimiter, entry.special_use)


def _inbox(name: str, delimiter: str | None) -> str:
    """INBOX is case-insensitive (RFC 3501 §5.1), and so is it as a parent."""
    head = name[:5]
    if head.upper() == "INBOX" and (len(name) == 5 or (delimiter and name[5:6] == delimiter)):
        return "INBOX" + name[5:]
    return name


def _regex(pattern: str, delimiter: str | None) -> re.Pattern[str]:
    parts = []
    for c in pattern:
        if c == "*":
            parts.append(".*")
        elif c == "%":
            parts.append(f"[^{re.escape(delimiter)}]*" if delimiter else ".*")
        else:
            parts.append(re.escape(c))
    return re.compile("".join(parts), re.DOTALL)


def _matches(pattern: Pattern, folder: Folder) -> bool:
    if pattern.role is not None:
        return pattern.role in folder.roles
    forms = ((folder.human, folder.delimiter), (folder.path, "/"))
    return any(
        _regex(_inbox(pattern.name, d), d).fullmatch(_inbox(name, d)) is not None
        for name, d in forms
    )


def wanted(patterns: Sequence[Pattern], folder: Folder) -> bool:
    """Whether the last pattern matching ``folder`` includes it (False: none matches)."""
    decision = False
    for p in patterns:
        if _matches(p, folder):
            decision = not p.exclude
    return decision


def select_folders(entries: Iterable[ListEntry], patterns: Sequence[Pattern]) -> list[Folder]:
    """The selectable mailboxes of a LIST that ``patterns`` include, in LIST order, once
    each. Names with control characters are skipped (no config could name them, and a
    log line could not show them)."""
    out: dict[str, Folder] = {}
    for entry in entries:
        if not entry.selectable or _CONTROL.search(entry.name) or entry.name in out:
            continue
        folder = Folder.from_entry(entry)
        if wanted(patterns, folder):
            out[entry.name] = folder
    return list(out.values())


def unmatched(patterns: Sequence[Pattern], entries: Sequence[ListEntry]) -> list[str]:
    """Literal names (no wildcard, no role) that name no selectable mailbox: a typo, or a
    wire name where a human one belongs (``Entw&APw-rfe`` for ``Entwürfe``). A name LIST
    shows as ``\\Noselect`` (a parent that only holds others) is there, and is not one of
    them: it is never synced (see :func:`unselectable`)."""
    folders = [Folder.from_entry(e) for e in entries if e.selectable]
    return [
        p.text
        for p in patterns
        if p.literal
        and not p.exclude
        and not any(_matches(p, f) for f in folders)
        and p.text not in unselectable(patterns, entries)
    ]


def unselectable(patterns: Sequence[Pattern], entries: Sequence[ListEntry]) -> list[str]:
    """Literal names that LIST shows only as ``\\Noselect`` (RFC 3501 §7.2.2): on the
    server, but SELECT would refuse them, so they are skipped, not tried every pass."""
    held = [Folder.from_entry(e) for e in entries if e.selectable]
    parents = [
        Folder.from_entry(e)
        for e in entries
        if any(f.upper() == "\\NOSELECT" for f in e.flags)
    ]
    return [
        p.text
        for p in patterns
        if p.literal
        and not p.exclude
        and not any(_matches(p, f) for f in held)
        and any(_matches(p, f) for f in parents)
    ]


def vanished(
    known: Iterable[str],
    listed: Collection[str],
    patterns: Sequence[Pattern],
    delimiter: str | None,
) -> list[str]:
    """Stored mailboxes (wire names) the patterns still want but LIST no longer shows as
    selectable: candidates for :func:`find_moves` to confirm. A mailbox the patterns no
    longer include is left alone: narrowing the config retires nothing."""
    out = []
    for name in known:
        if name in listed:
            continue
        folder = Folder(WireName(name), display(name), delimiter)
        if wanted(patterns, folder):
            out.append(name)
    return out


def pair_renames(gone: Mapping[str, int | None], fresh: Mapping[str, int]) -> dict[str, str]:
    """old name -> new name, where exactly one vanished and one new mailbox share a
    UIDVALIDITY (RFC 3501 §6.3.5: RENAME keeps it). Ambiguous pairs are not paired."""
    by_uv: dict[int, list[str]] = {}
    for name, uv in fresh.items():
        by_uv.setdefault(uv, []).append(name)
    olds: dict[int, list[str]] = {}
    for name, old_uv in gone.items():
        if old_uv is not None:
            olds.setdefault(old_uv, []).append(name)
    return {
        olds[uv][0]: names[0]
        for uv, names in by_uv.items()
        if len(names) == 1 and len(olds.get(uv, ())) == 1
    }


@dataclass(frozen=True, slots=True)
class Listing:
    """What LIST said: every entry, and the folders the patterns select."""

    entries: tuple[ListEntry, ...]
    folders: tuple[Folder, ...]

    @property
    def delimiter(self) -> str | None:
        return next((e.delimiter for e in self.entries if e.delimiter), None)


@dataclass(frozen=True, slots=True)
class Move:
    """A stored mailbox the server no longer has: ``renamed_to`` when a new mailbox has
    its UIDVALIDITY (a hint, see the module doc), else None (deleted)."""

    name: str
    human: str
    uidvalidity: int | None
    renamed_to: Folder | None

    @property
    def state(self) -> str:
        return "renamed" if self.renamed_to is not None else "gone"


async def list_folders(imap: IMAPClient, patterns: Sequence[Pattern]) -> Listing:
    """``LIST "" "*"`` (roles come with it where the server offers SPECIAL-USE, RFC 6154
    §2) and the folders ``patterns`` select."""
    entries = tuple(parse_list((await imap.list("", "*")).lines, utf8=imap.utf8_enabled))
    return Listing(entries, tuple(select_folders(entries, patterns)))


async def _uidvalidity(imap: IMAPClient, name: str) -> int | None:
    """STATUS (UIDVALIDITY); None when the server answers NO (no such mailbox).

    On the mailbox this connection has selected (a pooled connection keeps the one its
    last pass synced), EXAMINE instead: STATUS SHOULD NOT be used there (RFC 3501
    §6.3.10), and Dovecot answers it from the open view even after another session
    renamed or deleted the mailbox. A failed EXAMINE leaves nothing selected (§6.3.2)."""
    try:
        if imap.selected == name:
            return parse_select((await imap.examine(WireName(name))).lines).uidvalidity
        resp = await imap.status(WireName(name), "(UIDVALIDITY)")
    except IMAPCommandError as exc:
        if exc.result == "NO":
            return None
        raise
    return parse_status(resp.lines).get("UIDVALIDITY")


async def find_moves(
    imap: IMAPClient,
    known: Mapping[str, int | None],
    listing: Listing,
    patterns: Sequence[Pattern],
) -> list[Move]:
    """Stored mailboxes (``known``: wire name -> stored UIDVALIDITY) that are gone from
    the server, each confirmed by a STATUS that answers NO; paired with a new name when
    one has its UIDVALIDITY. Costs nothing (no command) when nothing vanished."""
    listed = {e.name for e in listing.entries if e.selectable}
    candidates = vanished(known, listed, patterns, listing.delimiter)
    if not candidates:
        return []
    gone = {n: known[n] for n in candidates if await _uidvalidity(imap, n) is None}
    if not gone:
        return []
    fresh: dict[str, int] = {}
    for folder in listing.folders:
        if folder.name not in known:
            uv = await _uidvalidity(imap, folder.name)
            if uv is not None:
                fresh[folder.name] = uv
    pairs = pair_renames(gone, fresh)
    by_name: dict[str, Folder] = {f.name: f for f in listing.folders}
    return [
        Move(name, display(name), uv, by_name[pairs[name]] if name in pairs else None)
        for name, uv in gone.items()
    ]


def needs_list(patterns: Sequence[Pattern]) -> bool:
    """Whether resolving ``patterns`` takes a LIST: plain names need none (each is synced
    as named, and a missing one fails its SELECT every pass, as a typo should) -- unless
    one has a ``/``, which stands for the server's delimiter (``Archive/2024`` is
    ``Archive.2024`` on Dovecot's Maildir++), so only LIST can tell its wire name; or an
    ``&``, which may be a wire name written where a human one belongs (``Entw&APw-rfe``,
    the spelling of configs older than patterns): LIST lets the log say which is meant."""
    return not all(p.literal and "/" not in p.name and "&" not in p.name for p in patterns)


def literal_folders(
    patterns: Sequence[Pattern],
    delimiter: str | None = None,
    *,
    only: Iterable[str] | None = None,
) -> tuple[Folder, ...]:
    """The plain names among ``patterns`` (or those of them in ``only``) as folders, their
    wire names encoded from the human ones: what is synced without a LIST, and configured
    names the server does not have."""
    chosen = None if only is None else set(only)
    out: dict[str, Folder] = {}
    for p in patterns:
        if p.literal and not p.exclude and (chosen is None or p.text in chosen):
            name = "INBOX" if p.name.upper() == "INBOX" else p.name
            folder = Folder(WireName(encode(name)), name, delimiter)
            if wanted(patterns, folder):
                out.setdefault(folder.name, folder)
    return tuple(out.values())


@dataclass(frozen=True, slots=True)
class Refresh:
    """One account resolved: the ``folders`` to sync, and the ``retired`` ones as
    (label, state) pairs, ``state`` "gone" or "renamed"."""

    folders: tuple[Folder, ...]
    retired: tuple[tuple[str, str], ...]


async def refresh(
    imap: IMAPClient, store: MailStore, key: str, patterns: Sequence[Pattern]
) -> Refresh:
    """LIST, select by ``patterns``, retire the stored folders the server no longer has
    (:meth:`Store.retire_mailbox`), and log each retired folder and each configured name
    the server lacks, one line each."""
    listing = await list_folders(imap, patterns)
    moves = await find_moves(imap, store.known_mailboxes(key), listing, patterns)
    missing = unmatched(patterns, listing.entries)
    folders = listing.folders + literal_folders(patterns, listing.delimiter, only=missing)
    retired: list[tuple[str, str]] = []
    for move in moves:
        target = move.renamed_to
        kept = store.retire_mailbox(
            key, move.name, state=move.state, renamed_to=target.name if target else None
        )
        label = Folder(WireName(move.name), move.human, listing.delimiter).path
        retired.append((label, move.state))
        log.warning(
            "%s/%s: %s on the server%s; its local copy is kept, retired as %r",
            key,
            label,
            "renamed" if target else "deleted",
            f" to {target.path!r}" if target else "",
            kept,
            extra={"key": key, "mailbox": label, "state": move.state},
        )
    for text in unselectable(patterns, listing.entries):
        log.warning(
            "%s: mailbox %r cannot be selected on the server (\\Noselect: it only holds "
            "other mailboxes); not synced",
            key,
            text,
            extra={"key": key, "mailbox": text},
        )
    for text in missing:
        hint = display(text)
        log.warning(
            "%s: mailbox %r is not on the server%s",
            key,
            text,
            f" (did you mean {hint!r}? mailboxes takes human names)" if hint != text else "",
            extra={"key": key, "mailbox": text},
        )
    return Refresh(folders, tuple(retired))
