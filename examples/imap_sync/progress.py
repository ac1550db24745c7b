"""What the terminal shows: live bars while a long sync runs, one table when a pass ends.

Bars appear only on a terminal and only for mailboxes with something to fetch; they are
transient, so a log or a pipe gets the summary and nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from types import TracebackType
from typing import Any

from rich import box
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from .worker import InboxCounters, PassSummary

__all__ = ["RichObserver", "human_bytes", "make_console", "summary_table"]

PIPE_WIDTH = 120
"""Columns used when stdout is not a terminal (rich would assume 80 and squeeze tables)."""


def make_console() -> Console:
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=PIPE_WIDTH)
    return console


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


class RichObserver:
    """Implements :class:`~.worker.Observer` with one rich progress bar per busy mailbox."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._progress: Progress | None = None
        self._tasks: dict[tuple[str, str], TaskID] = {}
        if console.is_terminal:
            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                DownloadColumn(),
                TimeRemainingColumn(),
                console=console,
                transient=True,
            )

    def __enter__(self) -> RichObserver:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._progress is not None:
            self._progress.stop()

    def planned(self, account: str, mailbox: str, new: int) -> None:
        if self._progress is not None and new > 0:
            self._tasks[(account, mailbox)] = self._progress.add_task(
                f"{account}/{mailbox}", total=new
            )

    def advanced(self, account: str, mailbox: str, messages: int, size: int) -> None:
        task = self._tasks.get((account, mailbox))
        if self._progress is not None and task is not None:
            self._progress.advance(task, messages)

    def finished(self, account: str, mailbox: str, error: str | None) -> None:
        task = self._tasks.pop((account, mailbox), None)
        if self._progress is not None and task is not None:
            self._progress.remove_task(task)


def _when(ts: float | None) -> str:
    return "never" if ts is None else datetime.fromtimestamp(ts).strftime("%H:%M:%S")


def summary_table(
    summary: PassSummary,
    counters: Mapping[str, InboxCounters],
    pool_stats: Mapping[str, Any],
) -> Table:
    """One row per inbox: this pass's changes, errors so far, connections, last success."""
    per_inbox: dict[str, list[int]] = {key: [0, 0, 0, 0] for key in counters}
    for r in summary.results:
        row = per_inbox[r.account]
        row[0] += r.new
        row[1] += r.bytes
        row[2] += r.flags_changed
        row[3] += r.expunged
    failed = {f.account for f in summary.failures}
    keys = pool_stats.get("keys", {})
    table = Table(
        title=f"sync pass: {summary.duration:.2f} s", title_justify="left", box=box.SIMPLE_HEAD
    )
    for name in (
        "inbox",
        "new",
        "bytes",
        "flags",
        "expunged",
        "errors",
        "opened",
        "closed",
        "last ok",
    ):
        table.add_column(name, justify="left" if name in ("inbox", "last ok") else "right")
    for key, c in counters.items():
        new, size, flags, gone = per_inbox[key]
        k = keys.get(key, {})
        table.add_row(
            key if key not in failed else f"[red]{key}[/red]",
            str(new),
            human_bytes(size),
            str(flags),
            str(gone),
            str(c.errors),
            str(k.get("opened", 0)),
            str(k.get("closed_total", 0)),
            _when(c.last_success),
        )
    return table
