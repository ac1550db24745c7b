"""guardedpool.shutdown: close()'s counts by outcome and its one summary line."""

from __future__ import annotations

import logging

from guardedpool.shutdown import ShutdownTally


def test_counts_and_words() -> None:
    tally = ShutdownTally()
    for goodbye, gone in [("sent", True)] * 3 + [
        ("done", True),
        ("failed", True),
        ("skipped", False),
    ]:
        tally.closed(goodbye, gone)
    assert (tally.logout_sent, tally.logged_out, tally.goodbye_failed, tally.no_goodbye) == (
        3,
        1,
        1,
        1,
    )
    assert tally.total == 6 and tally.not_verified == 1
    text = tally.text(1.234, 1.0)
    assert text.startswith("closed 6 connections in 1.23 s: 3 LOGOUT sent")
    assert "1 sockets not verified gone" in text and "shutdown_timeout 1 s" in text
    assert tally.fields()["closed"] == 6 and tally.fields()["not_verified"] == 1


def test_warning_only_when_someone_should_look() -> None:
    tally = ShutdownTally()
    tally.closed("sent", True)
    tally.closed("failed", True)  # a goodbye cut short: expected when closing thousands
    assert tally.level == logging.INFO
    tally.aborted_lent += 1
    assert tally.level == logging.WARNING
    other = ShutdownTally()
    other.closed("done", False)
    assert other.level == logging.WARNING
