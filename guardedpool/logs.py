"""How guardedpool writes its log lines: messages that read on their own, secrets out.

Every line says in its message what happened and where (key, connection id, error type
and text, the finding's kind, action and fd, the borrower's task and acquire site), so a
plain ``logging.basicConfig()`` shows all an operator needs; the same facts go in
``extra=`` fields with the stable names listed in the README ("Logging") for JSON
handlers. Levels: INFO for lifecycle events, WARNING for what an operator should look at,
ERROR only for what the pool could not fix.

Error texts pass through :func:`error_text`, which cuts them short and masks anything
shaped like a credential (``LOGIN user secret``, ``AUTHENTICATE PLAIN <data>``,
``password=...``): exceptions raised below us (TLS, aioimaplib) are not ours to trust.
"""

from __future__ import annotations

import re

__all__ = ["error_text", "redact"]

_MAX_ERROR = 300

_SECRETS = (
    # LOGIN user password (RFC 3501 6.2.3), quoted or atom, as a command line would show it
    # (the command word in capitals, and a user that is not "failed:" or the like)
    re.compile(
        r'(\bLOGIN\s+(?!(?:failed|rejected|refused)\b)(?:"(?:[^"\\]|\\.)*"|[^\s:]+)\s+)'
        r'("(?:[^"\\]|\\.)*"|\S+)'
    ),
    # AUTHENTICATE mechanism initial-response (RFC 4959 SASL-IR)
    re.compile(r"(?i)(\bAUTHENTICATE\s+\S+\s+)(\S+)"),
    # password=..., token: ..., secret=...
    re.compile(r"(?i)(\b(?:password|passwd|pass|pwd|token|secret|bearer)\b\s*[=:]?\s*)(\S+)"),
)


def redact(text: str) -> str:
    """``text`` with anything shaped like a credential replaced by ``***``."""
    for pattern in _SECRETS:
        text = pattern.sub(lambda m: m.group(1) + "***", text)
    return text


def error_text(exc: BaseException) -> str:
    """``Type: message`` for a log line: redacted, at most a few hundred characters."""
    text = redact(str(exc))
    if len(text) > _MAX_ERROR:
        text = text[: _MAX_ERROR - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
