"""What ``pool.close()`` did, counted: one summary line instead of a line per connection.

Closing a pool that holds 10,000 IDLE sessions used to log a warning per connection
("still lent out ... aborting it"). The pool now counts each close by outcome in a
:class:`ShutdownTally` (sans-I/O: plain counters and the words for them) and logs one
summary when ``close()`` ends: at WARNING only when something went wrong that someone
should look at (a connection aborted under its borrower, a socket not verified gone),
at INFO otherwise. The per-connection detail is logged at DEBUG.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

__all__ = ["ShutdownTally"]


@dataclass(slots=True)
class ShutdownTally:
    """Counts of the connections a closing pool closed, by outcome.

    Attributes:
        logged_out: the goodbye (IMAP LOGOUT) completed within its bound.
        logout_sent: the goodbye was written without waiting for its answer
            (``Connector.farewell``: what a closing pool does when the connector can).
        goodbye_failed: the goodbye raised or overran its bound (then aborted).
        no_goodbye: closed without a goodbye: no time left of ``shutdown_timeout``, or
            none was due (a fault, a lost lease).
        aborted_lent: still lent out ``close_timeout`` after ``close()``: aborted under
            its borrower.
        not_verified: the socket was not verified gone (the audit reports it).
    """

    logged_out: int = 0
    logout_sent: int = 0
    goodbye_failed: int = 0
    no_goodbye: int = 0
    aborted_lent: int = 0
    not_verified: int = 0

    def closed(self, goodbye: str, os_closed: bool) -> None:
        """Count one close: ``goodbye`` is ``"done"``, ``"sent"``, ``"failed"`` or
        ``"skipped"`` (:class:`guardedpool.closing.Closed`)."""
        if goodbye == "done":
            self.logged_out += 1
        elif goodbye == "sent":
            self.logout_sent += 1
        elif goodbye == "failed":
            self.goodbye_failed += 1
        else:
            self.no_goodbye += 1
        if not os_closed:
            self.not_verified += 1

    @property
    def total(self) -> int:
        """Connections closed (each counted once by its goodbye's outcome)."""
        return self.logged_out + self.logout_sent + self.goodbye_failed + self.no_goodbye

    @property
    def level(self) -> int:
        """WARNING when a borrower lost its connection or a socket may be left; else INFO."""
        return logging.WARNING if self.aborted_lent or self.not_verified else logging.INFO

    def text(self, seconds: float, shutdown_timeout: float) -> str:
        """The summary, e.g. ``closed 10000 connections in 1.62 s: 10000 LOGOUT sent ...``."""
        return (
            f"closed {self.total} connections in {seconds:.2f} s: {self.logout_sent} LOGOUT "
            f"sent (not awaited), {self.logged_out} logged out, {self.goodbye_failed} "
            f"goodbye failed or overran, {self.no_goodbye} "
            f"without goodbye (none due, or no time left of shutdown_timeout "
            f"{shutdown_timeout:g} s); {self.aborted_lent} aborted under their borrower "
            f"after close_timeout; {self.not_verified} sockets not verified gone"
        )

    def fields(self) -> dict[str, Any]:
        """The counts as ``extra=`` fields with stable names."""
        return {
            "closed": self.total,
            "logged_out": self.logged_out,
            "logout_sent": self.logout_sent,
            "goodbye_failed": self.goodbye_failed,
            "no_goodbye": self.no_goodbye,
            "aborted_lent": self.aborted_lent,
            "not_verified": self.not_verified,
        }
