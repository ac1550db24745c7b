"""What a server's refusal means: its capacity, its throttling, the credentials, or else.

A pure classifier (no I/O, no clock): :func:`classify_refusal` reads the status text of a
tagged ``NO``/``BAD`` or an untagged ``BYE`` -- with its response code, if any -- and says
what kind of refusal it is, plus any delay the server suggests. It classifies by meaning,
not by a list of codes: most providers send free text, and the same RFC 5530 code means
different things in different places (``[OVERQUOTA]`` is a full mailbox on APPEND but a
bandwidth quota on Gmail's ``BYE``).

Kinds, and what a caller does about them:

* ``"capacity"``: too many connections or sessions for the account (or user+IP). Transient;
  holding fewer connections is what helps.
* ``"throttled"``: a rate limit, a bandwidth or command quota, "throttled", or the server
  (or a part of it) temporarily unavailable. Transient; wait (``delay`` when the server
  suggests one), then try again.
* ``"auth"``: the credentials, the account or its settings are refused. Permanent: a
  retry only locks the account.
* ``"other"``: anything else (a full mailbox, a server bug, an idle timeout...).

Order of the rules (the first that matches wins), so that a capacity limit never reads as
bad credentials:

1. wording of too many connections/sessions -> capacity;
2. wording of throttling, rate limits, bandwidth/command quotas, a suggested backoff ->
   throttled;
3. an RFC 5530 code of refusal (``AUTHENTICATIONFAILED``, ``AUTHORIZATIONFAILED``,
   ``EXPIRED``, ``PRIVACYREQUIRED``, ``CONTACTADMIN``) -> auth;
4. an RFC 5530 code of load (``UNAVAILABLE``, ``INUSE`` -> throttled; ``LIMIT`` -> capacity
   at login, throttled after, unless the text speaks of a size; ``OVERQUOTA`` -> throttled
   on ``BYE`` or at login, unless the text speaks of storage);
5. wording of temporary trouble ("temporary", "try again later", "unavailable", "busy")
   -> throttled;
6. wording of bad credentials or a refused account -> auth;
7. otherwise a ``NO``/``BAD`` to LOGIN/AUTHENTICATE -> auth (a login the server refused
   without saying why is treated as a credentials problem: never retried); anything else
   -> other.

The text is classified after secrets are cut out of it, so a password that happens to read
"throttled" cannot change the outcome, and :attr:`Refusal.text` never carries it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "AUTH_CODES",
    "LOAD_CODES",
    "Kind",
    "Phase",
    "Refusal",
    "Status",
    "classify_refusal",
    "parse_delay",
    "redact",
]

Kind = Literal["capacity", "throttled", "auth", "other"]
Phase = Literal["login", "command"]
Status = Literal["NO", "BAD", "BYE"]

REDACTED = "<redacted>"
_MAX_TEXT = 300

# RFC 5530 section 3: codes that say the login (or the account) is refused for good.
AUTH_CODES = frozenset(
    {"AUTHENTICATIONFAILED", "AUTHORIZATIONFAILED", "EXPIRED", "PRIVACYREQUIRED", "CONTACTADMIN"}
)
# RFC 5530 section 3: codes that say the server is loaded or limited right now.
LOAD_CODES = frozenset({"UNAVAILABLE", "INUSE", "LIMIT", "OVERQUOTA"})


@dataclass(frozen=True, slots=True)
class Refusal:
    """One classified refusal.

    Attributes:
        kind: ``"capacity"``, ``"throttled"``, ``"auth"`` or ``"other"`` (module doc).
        delay: seconds the server suggests waiting before the next attempt, or None.
        code: the response code's name, upper-cased (``"LIMIT"``), or None.
        text: the status text with secrets replaced by ``<redacted>``, at most 300
            characters.
        status: ``"NO"``, ``"BAD"`` or ``"BYE"``.
        phase: ``"login"`` (greeting, LOGIN, AUTHENTICATE) or ``"command"`` (after login).
    """

    kind: Kind
    delay: float | None
    code: str | None
    text: str
    status: Status
    phase: Phase

    @property
    def transient(self) -> bool:
        """Whether waiting and trying again may succeed (every kind but ``"auth"``)."""
        return self.kind != "auth"

    @property
    def limited(self) -> bool:
        """True for the server's own limits: ``"capacity"`` or ``"throttled"``."""
        return self.kind in ("capacity", "throttled")

    def limit_fields(self) -> dict[str, Any]:
        """The keyword arguments of a :class:`~guardedpool.errors.ServerLimit` for this
        refusal: ``kind``, ``delay``, ``code``, ``server_text``."""
        return {"kind": self.kind, "delay": self.delay, "code": self.code, "server_text": self.text}


def _any(*patterns: str) -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{p})" for p in patterns), re.IGNORECASE)


# 1. Too many connections. "Too many ... attempts/failures" is not here: that is a
# lockout after bad logins, which more attempts make worse.
_CAPACITY = _any(
    r"too many (?:simultaneous |concurrent |parallel |open |active |imap )*"
    r"(?:connections|sessions|clients|logins\b(?! per))",
    r"(?:maximum|max\.?) (?:number of )?(?:simultaneous |concurrent |open )?"
    r"(?:connections|sessions)",
    r"connection (?:count |number )?limit",
    r"(?:connections|sessions) (?:limit|exceeded)",
    r"exceeded (?:the )?(?:maximum )?(?:number of )?(?:simultaneous |concurrent )?connections",
)

# 2. Throttling, rate limits, bandwidth or command quotas, a suggested backoff.
_THROTTLED = _any(
    r"throttl",
    r"rate[- ]?limit",
    r"(?:bandwidth|command|download|upload|request|traffic)s?"
    r"(?: or (?:bandwidth|command|download|upload))? (?:limit|quota)",
    r"exceeded (?:the |your )?(?:daily |hourly )?(?:command|bandwidth|download|upload|request)",
    r"backoff|back off|slow down",
    r"too many (?:requests|commands|operations)",
    r"limit (?:for|of|on) (?:logins|requests|commands)",
    r"(?:logins|requests|commands) per (?:second|minute|hour|day|\d+)",
)

# 5. Temporary trouble on the server's side.
_TEMPORARY = _any(
    r"\btemporar(?:y|ily)\b",
    r"try (?:again )?later",
    r"retry later|please retry",
    r"\bunavailable\b",
    r"\b(?:server|service|system|backend|mailbox server) (?:is )?(?:too )?"
    r"(?:busy|overloaded|not available)",
    r"authenticated but not connected",
)

# 6. Bad credentials, or an account that may not log in (no retry fixes it).
_AUTH = _any(
    r"invalid (?:credentials|user|username|login|password)",
    r"authenticat\w* (?:failed|failure|error|rejected|unsuccessful)",
    r"(?:failed|unable) to authenticate",
    r"log ?in (?:failed|failure|rejected|denied|incorrect)|logon failure",
    r"(?:incorrect|invalid|wrong|bad|unknown) (?:user ?name|user|password|login|credentials)",
    r"user ?name (?:and|or) password",
    r"password",  # "application-specific password required", "password expired"...
    r"web ?login required|log ?in via (?:your )?web",
    r"not enabled for imap|imap (?:access )?(?:is )?disabled",
    r"account (?:is )?(?:disabled|locked|suspended|blocked|inactive)",
    r"too many (?:failed |invalid |bad )?(?:login|auth\w*|logon) (?:attempts|failures)",
)

# Storage quota wording: an [OVERQUOTA] with these is a full mailbox, not a rate.
_STORAGE = _any(r"mailbox (?:is )?full", r"storage", r"disk", r"\bspace\b", r"message too large")
# Size wording: a [LIMIT] with these is a too-large request (RFC 5530), not a load limit.
_SIZE = _any(r"too (?:large|long|big)", r"\bsize\b", r"too many (?:messages|results|arguments)")

_CODE = re.compile(r"^\s*\[([^\]]*)\]")

_UNITS = {
    "ms": 0.001,
    "msec": 0.001,
    "msecs": 0.001,
    "millisecond": 0.001,
    "milliseconds": 0.001,
    "s": 1.0,
    "sec": 1.0,
    "secs": 1.0,
    "second": 1.0,
    "seconds": 1.0,
    "m": 60.0,
    "min": 60.0,
    "mins": 60.0,
    "minute": 60.0,
    "minutes": 60.0,
    "h": 3600.0,
    "hr": 3600.0,
    "hrs": 3600.0,
    "hour": 3600.0,
    "hours": 3600.0,
}
_UNIT = "|".join(sorted(_UNITS, key=len, reverse=True))
# A number is a delay only after words that introduce one: "per-10 minute limit" is not.
_DELAY = re.compile(
    r"(?:backoff(?: time)?|back off(?: for)?|retry[- ]after|retry in|try again in|"
    r"try again after|wait(?: for)?|in about)\s*[:=]?\s*"
    rf"(\d+(?:\.\d+)?)\s*({_UNIT})\b",
    re.IGNORECASE,
)
# Office 365 also says "Suggested Backoff Time: 299961 milliseconds"; and some servers
# send a bare "[... retry-after=30]"-style number of seconds.
_BARE_SECONDS = re.compile(r"retry[- ]after\s*[:=]\s*(\d+(?:\.\d+)?)(?!\s*[a-z])", re.IGNORECASE)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every non-empty secret replaced by ``<redacted>`` (longest first)."""
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text


def parse_delay(text: str) -> float | None:
    """The delay a server suggests, in seconds, or None.

    Reads "Suggested Backoff Time: 299961 milliseconds" (Office 365), "try again in 5
    minutes", "retry after 30 seconds", "Retry-After: 30". A number not introduced as a
    wait ("per-10 minute limit for logins") is not a delay, nor is one too large for a
    float.
    """
    m = _DELAY.search(text)
    if m is not None:
        seconds = float(m.group(1)) * _UNITS[m.group(2).lower()]
    else:
        m = _BARE_SECONDS.search(text)
        if m is None:
            return None
        seconds = float(m.group(1))
    return seconds if math.isfinite(seconds) else None


def _code(text: str) -> str | None:
    m = _CODE.match(text)
    if m is None or not m.group(1).strip():
        return None
    return m.group(1).split()[0].upper()


def classify_refusal(
    text: str | bytes,
    *,
    status: Status = "NO",
    phase: Phase = "command",
    code: str | None = None,
    secrets: Iterable[str] = (),
) -> Refusal:
    """Classify a refusal by what it means (see the module doc for the rules).

    Args:
        text: the status text after ``tag NO`` / ``tag BAD`` / ``* BYE``, with any leading
            ``[CODE ...]``; bytes are decoded as UTF-8 (errors replaced).
        status: ``"NO"``, ``"BAD"`` or ``"BYE"``.
        phase: ``"login"`` for the greeting, LOGIN and AUTHENTICATE; ``"command"`` after.
        code: the response code, when the caller already took it off ``text``; else it is
            read from the start of ``text``.
        secrets: strings (password, token, their quoted forms) to cut out before anything
            else looks at the text.

    Returns:
        A :class:`Refusal`. Never raises for any text.
    """
    raw = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
    clean = redact(raw, secrets).strip()
    name = code.upper() if code else _code(clean)
    kind = _kind(clean, name, status, phase)
    delay = parse_delay(clean) if kind in ("capacity", "throttled") else None
    shown = clean if len(clean) <= _MAX_TEXT else clean[:_MAX_TEXT] + "..."
    return Refusal(kind, delay, name, shown, status, phase)


def _kind(text: str, code: str | None, status: Status, phase: Phase) -> Kind:
    if _CAPACITY.search(text):
        return "capacity"
    if _THROTTLED.search(text):
        return "throttled"
    if code in AUTH_CODES:
        return "auth"
    if code in ("UNAVAILABLE", "INUSE"):
        return "throttled"
    if code == "LIMIT" and not _SIZE.search(text):
        return "capacity" if phase == "login" else "throttled"
    if code == "OVERQUOTA" and (status == "BYE" or phase == "login") and not _STORAGE.search(text):
        return "throttled"
    if _TEMPORARY.search(text):
        return "throttled"
    if _AUTH.search(text):
        return "auth"
    if phase == "login" and status in ("NO", "BAD"):
        return "auth"
    return "other"
