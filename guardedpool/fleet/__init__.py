"""Fleet coordination: per-key connection budgets and key ownership across processes.

* :class:`Budget` is what the pool asks for a lease before each connect;
  :class:`LocalBudget` implements it in one process (tests, several pools),
  :class:`RedisBudget` across processes and machines.
* :class:`RedisOwnership` splits a set of keys over the live workers of a fleet by
  rendezvous hashing, each owned key under a lease with a growing fencing token.

``RedisBudget`` and ``RedisOwnership`` need the optional extra ``guardedpool[redis]``;
they are imported on first use, so ``LocalBudget`` works without redis-py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .book import LostListener
from .budget import Budget, Limit, LocalBudget, StatValue
from .errors import BudgetError, BudgetTimeout, BudgetUnavailable
from .lease import Lease, LostReason, clock
from .rendezvous import assign, owner

if TYPE_CHECKING:
    from .ownership import OwnershipChange, RedisOwnership
    from .redis import RedisBudget

__all__ = [
    "Budget",
    "BudgetError",
    "BudgetTimeout",
    "BudgetUnavailable",
    "Lease",
    "Limit",
    "LocalBudget",
    "LostListener",
    "LostReason",
    "OwnershipChange",
    "RedisBudget",
    "RedisOwnership",
    "StatValue",
    "assign",
    "clock",
    "owner",
]

_LAZY = {
    "RedisBudget": ".redis",
    "RedisOwnership": ".ownership",
    "OwnershipChange": ".ownership",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        from importlib import import_module

        return getattr(import_module(module, __name__), name)
    except ModuleNotFoundError as exc:
        if exc.name != "redis" and not (exc.name or "").startswith("redis."):
            raise
        raise ImportError(
            f"guardedpool.fleet.{name} needs redis-py: pip install 'guardedpool[redis]'"
        ) from exc
