"""The errors a fleet budget or ownership raises, under :class:`~guardedpool.PoolError`.

A budget that has no room within the caller's deadline and a budget whose store cannot be
reached are different failures with different cures (wait, or fix Redis), so they are
different types. Messages name the key and the bound; never a URL with a password.
"""

from __future__ import annotations

from ..errors import PoolError

__all__ = ["BudgetError", "BudgetTimeout", "BudgetUnavailable"]


class BudgetError(PoolError):
    """Base class of the fleet budget's errors."""


class BudgetTimeout(BudgetError, TimeoutError):
    """The fleet budget had no room for ``key`` within ``waited`` seconds.

    ``limit`` is the fleet-wide cap for the key and ``held`` the count the store reported
    at the last attempt (leases of every process, not only this one).
    """

    def __init__(self, key: str, waited: float, limit: int, held: int) -> None:
        self.key = key
        self.waited = waited
        self.limit = limit
        self.held = held
        super().__init__(
            f"fleet budget for key {key!r} had no room within {waited:.3f} s "
            f"({held} of {limit} leases held fleet-wide)"
        )


class BudgetUnavailable(BudgetError, ConnectionError):
    """The budget's store (Redis) could not be reached within ``waited`` seconds.

    Raised by ``acquire`` when there is no ``fallback_limit``: the budget never admits a
    connection it cannot count. ``last_error`` is the last client error, by type and text.
    """

    def __init__(self, key: str, waited: float, last_error: BaseException | None) -> None:
        self.key = key
        self.waited = waited
        self.last_error = last_error
        why = f"{type(last_error).__name__}: {last_error}" if last_error is not None else "?"
        super().__init__(
            f"fleet budget store unreachable for key {key!r} within {waited:.3f} s ({why})"
        )
