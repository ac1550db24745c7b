"""Leak suspects, in one home: who holds a connection, and when a hold becomes suspect.

* :class:`Borrow` is the borrower as people read it (task name, acquire site, where the
  task is now), built from the raw facts the acquire hot path stores on the record.
* :func:`leak_suspect` and :func:`reclaim_due` are the rules (pure, over a record and
  ``now``); the pool's housekeeping, the auditor's classification and the reports all ask
  them, and nothing else decides.
* :class:`LeakWatch` is what the pool logs about them: one warning per borrow held past
  ``leak_threshold``, one line when it comes back.

A hold is not suspect when its borrower declared it long on purpose
(``pool.declare_long_hold(conn)``, as an IDLE session does): the declaration lasts until
the connection is released. ``reclaim_after``, the operator's hard cap, still applies.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from types import CodeType
from typing import Any

from .config import PoolConfig
from .records import ConnectionRecord, ConnState

__all__ = [
    "Borrow",
    "LeakWatch",
    "borrower_fields",
    "borrower_of",
    "borrower_text",
    "leak_suspect",
    "reclaim_due",
    "suspect_reason",
]

log = logging.getLogger("guardedpool.pool")

_IN_USE = ConnState.IN_USE


class Borrow:
    """Who holds a connection: a view of a record's ``borrowed_*`` facts.

    The acquire hot path only stores raw facts on the record (task, time, code object and
    instruction offset of the acquire site); this view is built, and ``stack`` formatted,
    only when someone reads it: a report of a leak suspect, a log line. ``frames`` holds
    ``(code, line)`` pairs or preformatted ``"file:line in function"`` strings. Frames of
    guardedpool itself and of asyncio are left out of the formatted stack.
    """

    __slots__ = ("_frames", "_task", "since")

    def __init__(
        self,
        task: object,
        since: float,
        frames: tuple[tuple[CodeType, int | None] | str, ...] = (),
    ) -> None:
        self._task = task
        self.since = since
        self._frames = frames

    @property
    def task(self) -> str:
        """The borrowing task's name (``asyncio.Task.get_name()``), or its str()."""
        get_name = getattr(self._task, "get_name", None)
        return str(get_name()) if callable(get_name) else str(self._task)

    @property
    def stack(self) -> tuple[str, ...]:
        """``file:line in function``: where it was acquired, then where the borrowing task
        is now (outermost first), outside guardedpool and asyncio."""
        out = [f if isinstance(f, str) else _where(*f) for f in self._frames]
        get_stack = getattr(self._task, "get_stack", None)
        done = getattr(self._task, "done", None)
        if callable(get_stack) and callable(done) and not done():
            for frame in get_stack(limit=_LIVE_DEPTH):
                out.append(_where(frame.f_code, frame.f_lineno))
        return tuple(s for s in out if s)

    def __repr__(self) -> str:
        return f"Borrow(task={self.task!r}, since={self.since!r})"

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "since": self.since, "stack": list(self.stack)}


_PKG_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_LIVE_DEPTH = 8


def _where(code: CodeType, line: int | None) -> str:
    name = code.co_filename
    if name.startswith(_PKG_DIR) or f"{os.sep}asyncio{os.sep}" in name:
        return ""
    return f"{name}:{line} in {code.co_qualname}"


def _line_at(code: CodeType, lasti: int) -> int | None:
    """The source line of the instruction at byte offset ``lasti`` (what ``f_lineno`` says)."""
    if lasti < 0:
        return code.co_firstlineno
    for start, end, line in code.co_lines():
        if start <= lasti < end:
            return line
    return None


def borrower_of(record: ConnectionRecord) -> Borrow | None:
    """Who holds the connection of ``record`` (None unless it is lent out)."""
    task = record.borrowed_by
    if task is None:
        return None
    site = record.borrowed_site
    if site is None:
        return Borrow(task, record.borrowed_at)
    if isinstance(site, str):
        return Borrow(task, record.borrowed_at, (site,))
    return Borrow(task, record.borrowed_at, ((site, _line_at(site, record.borrowed_lasti)),))


def leak_suspect(record: ConnectionRecord, now: float, config: PoolConfig) -> bool:
    """Checked out for ``leak_threshold`` s or more, by a borrower that did not declare the
    hold long on purpose: someone may have forgotten to give it back."""
    return (
        record.state is _IN_USE
        and record.borrowed_by is not None
        and not record.long_hold
        and now - record.borrowed_at >= config.leak_threshold
    )


def reclaim_due(record: ConnectionRecord, now: float, config: PoolConfig) -> bool:
    """Checked out past ``reclaim_after`` (when set), declared long or not: abort it and
    take the slot back."""
    limit = config.reclaim_after
    return (
        limit is not None
        and record.state is _IN_USE
        and record.borrowed_by is not None
        and now - record.borrowed_at >= limit
    )


def suspect_reason(record: ConnectionRecord, now: float, config: PoolConfig) -> tuple[str, float]:
    """For a leak suspect: why, in words, and since when it is suspect (``now``'s clock)."""
    borrower = borrower_of(record)
    assert borrower is not None
    reason = f"checked out for {now - borrower.since:.1f} s by task {borrower.task!r}"
    return reason, borrower.since + config.leak_threshold


def borrower_text(borrower: Borrow | None) -> str:
    """``task 'sync-alice', acquired at file:line in f``: the borrower, for log lines."""
    if borrower is None:
        return "no borrower recorded"
    stack = borrower.stack
    site = f", acquired at {stack[0]}" if stack else ", acquire site unknown"
    return f"task {borrower.task!r}{site}"


def borrower_fields(borrower: Borrow | None) -> dict[str, Any]:
    """The borrower as ``extra=`` fields: ``task``, ``acquired_at`` (site), ``stack``."""
    if borrower is None:
        return {"task": None, "acquired_at": None, "stack": []}
    stack = list(borrower.stack)
    return {"task": borrower.task, "acquired_at": stack[0] if stack else None, "stack": stack}


class LeakWatch:
    """The pool's log of leak suspects: warned once per borrow, and again when it returns.

    ``warned`` holds the ids of records warned about in their current borrow; the pool's
    release asks :meth:`returned` only while it is not empty (the hot path stays one test).
    """

    __slots__ = ("_config", "warned")

    def __init__(self, config: PoolConfig) -> None:
        self._config = config
        self.warned: set[int] = set()

    def sweep(self, records: Iterable[ConnectionRecord], now: float) -> list[ConnectionRecord]:
        """Warn about new suspects among ``records`` (borrowed ones); return those due for
        reclaim (the caller aborts them)."""
        cfg = self._config
        due: list[ConnectionRecord] = []
        for record in records:
            if reclaim_due(record, now, cfg):
                due.append(record)
            elif leak_suspect(record, now, cfg) and record.id not in self.warned:
                self.warned.add(record.id)
                borrower = borrower_of(record)  # a view of the record: build it once
                held = now - record.borrowed_at
                log.warning(
                    "guardedpool: connection %d of key %r lent out for %.1f s (leak_threshold "
                    "%g s) to %s (leak suspect)",
                    record.id,
                    record.key,
                    held,
                    cfg.leak_threshold,
                    borrower_text(borrower),
                    extra={
                        "key": record.key,
                        "conn_id": record.id,
                        "held": held,
                        **borrower_fields(borrower),
                    },
                )
        return due

    def returned(self, record: ConnectionRecord, now: float) -> None:
        """``record``'s borrow ended; log it if it was warned about (the next borrow is a
        new suspect, or none)."""
        if record.id in self.warned:
            self.warned.discard(record.id)
            held = now - record.borrowed_at
            borrower = borrower_of(record)
            log.info(
                "guardedpool: leak suspect returned: connection %d of key %r after %.1f s (%s)",
                record.id,
                record.key,
                held,
                borrower_text(borrower),
                extra={"key": record.key, "conn_id": record.id, "held": held},
            )
