"""The IMAP layer's name for :mod:`guardedpool.waits` (waiting for the first of a few
futures at the cost of one waiter), which the pool uses as well."""

from __future__ import annotations

from ..waits import callbacks_context, first_done

__all__ = ["callbacks_context", "first_done"]
