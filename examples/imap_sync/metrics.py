"""Pool stats and worker counters as Prometheus metrics, read at scrape time.

A custom collector on its own ``CollectorRegistry`` rather than module-level ``Counter``
objects: the numbers already live in ``pool.stats()`` and the worker's counters, so
reading them when scraped means no second copy to keep in step, and a private registry
means two pools (two tests, a demo and a worker) never collide in the global one.

Names follow Prometheus conventions: ``_total`` counters, ``_seconds`` units, one label
per dimension (``key``/``inbox`` is the account key, never a user name or host;
``mailbox`` is the human name, ``Entwürfe`` rather than ``Entw&APw-rfe``, with ``/`` for
the hierarchy delimiter).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .worker import InboxCounters, MailboxView

__all__ = ["SyncCollector", "make_registry", "render"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_GAUGES = ("open", "idle", "in_use", "opening", "closing", "waiting")
_COUNTERS = (
    ("acquires", "acquires_total", "Connections handed out."),
    ("acquire_timeouts", "acquire_timeouts_total", "acquire() calls that timed out."),
    ("acquire_wait_total", "acquire_wait_seconds_total", "Seconds spent waiting in acquire()."),
    ("opened", "opened_total", "Connections opened."),
    ("connect_failures", "connect_failures_total", "Failed connect attempts."),
)


class SyncCollector(Collector):
    """Collects ``stats()`` (a pool's), ``counters()`` and ``mailboxes()`` (the worker's
    ``counters`` and ``mailbox_views``) on every scrape."""

    def __init__(
        self,
        stats: Callable[[], Mapping[str, Any]],
        counters: Callable[[], Mapping[str, InboxCounters]],
        mailboxes: Callable[[], Mapping[str, Mapping[str, MailboxView]]] | None = None,
    ) -> None:
        self._stats = stats
        self._counters = counters
        self._mailboxes = mailboxes

    def collect(self) -> Iterator[Metric]:
        yield from self._pool_metrics(self._stats())
        yield from self._sync_metrics(self._counters())
        if self._mailboxes is not None:
            yield from self._mailbox_metrics(self._mailboxes())

    @staticmethod
    def _mailbox_metrics(views: Mapping[str, Mapping[str, MailboxView]]) -> Iterator[Metric]:
        messages = CounterMetricFamily(
            "imap_sync_mailbox_messages",
            "Messages fetched and stored, per mailbox.",
            labels=["inbox", "mailbox"],
        )
        state = GaugeMetricFamily(
            "imap_sync_mailbox_state",
            "1 for the mailbox's state: synced, failed (last pass), gone or renamed (on the "
            "server; the local copy is kept).",
            labels=["inbox", "mailbox", "state"],
        )
        for key, boxes in views.items():
            for name, view in boxes.items():
                messages.add_metric([key, name], float(view.messages))
                state.add_metric([key, name, view.state], 1.0)
        yield messages
        yield state

    @staticmethod
    def _pool_metrics(stats: Mapping[str, Any]) -> Iterator[Metric]:
        keys: Mapping[str, Mapping[str, Any]] = stats.get("keys", {})
        conns = GaugeMetricFamily(
            "guardedpool_connections", "Connections per key and state.", labels=["key", "state"]
        )
        for key, s in keys.items():
            for state in _GAUGES:
                conns.add_metric([key, state], float(s.get(state, 0)))
        yield conns
        for stat, name, doc in _COUNTERS:
            family = CounterMetricFamily(f"guardedpool_{name}", doc, labels=["key"])
            for key, s in keys.items():
                family.add_metric([key], float(s.get(stat, 0)))
            yield family
        for stat, name, doc in (
            ("closed", "closed_total", "Connections retired, by reason."),
            ("reconnects", "reconnects_total", "Replacement connects, by what was replaced."),
        ):
            family = CounterMetricFamily(f"guardedpool_{name}", doc, labels=["key", "reason"])
            for key, s in keys.items():
                for reason, n in s.get(stat, {}).items():
                    family.add_metric([key, reason], float(n))
            yield family
        failing = GaugeMetricFamily(
            "guardedpool_consecutive_connect_failures",
            "Connect failures in a row (0 once a connect succeeds).",
            labels=["key"],
        )
        for key, s in keys.items():
            failing.add_metric([key], float(s.get("consecutive_failures", 0)))
        yield failing
        cap = GaugeMetricFamily(
            "guardedpool_effective_max_per_key",
            "Connections the key may hold now: max_per_key, or lower while the server "
            "refuses more (too many connections).",
            labels=["key"],
        )
        throttled = GaugeMetricFamily(
            "guardedpool_throttled_seconds",
            "Seconds the server's throttling still holds the key back (0: not throttled).",
            labels=["key"],
        )
        logins = GaugeMetricFamily(
            "guardedpool_logins_last_minute",
            "Logins (connect attempts that reached the server) in the last 60 s.",
            labels=["key"],
        )
        for key, s in keys.items():
            if "effective_max_per_key" in s:
                cap.add_metric([key], float(s["effective_max_per_key"]))
            throttled.add_metric([key], float(s.get("throttled_for", 0.0)))
            logins.add_metric([key], float(s.get("logins_last_minute", 0)))
        yield cap
        yield throttled
        yield logins
        total = stats.get("total", {})
        yield GaugeMetricFamily(
            "guardedpool_slots",
            "Connections counted against max_total.",
            value=float(total.get("slots", 0)),
        )
        yield GaugeMetricFamily(
            "guardedpool_connecting", "Connects in flight.", value=float(total.get("connecting", 0))
        )
        budget = stats.get("budget")
        if budget is not None:
            yield from _budget_metrics(budget)

    @staticmethod
    def _sync_metrics(counters: Mapping[str, InboxCounters]) -> Iterator[Metric]:
        for attr, name, doc in (
            ("messages", "messages_total", "Messages fetched and stored."),
            ("bytes", "bytes_total", "Bytes of messages stored."),
            ("flags_changed", "flag_changes_total", "Stored messages whose flags changed."),
            ("expunged", "expunged_total", "Stored messages removed after a server expunge."),
            ("errors", "errors_total", "Mailbox syncs that failed."),
            ("passes", "passes_total", "Sync passes over the inbox."),
        ):
            family = CounterMetricFamily(f"imap_sync_{name}", doc, labels=["inbox"])
            for key, c in counters.items():
                family.add_metric([key], float(getattr(c, attr)))
            yield family
        last = GaugeMetricFamily(
            "imap_sync_last_success_timestamp_seconds",
            "Unix time of the inbox's last pass without error (absent: none yet).",
            labels=["inbox"],
        )
        for key, c in counters.items():
            if c.last_success is not None:
                last.add_metric([key], c.last_success)
        yield last


# pool.stats()["budget"] (a fleet budget, see guardedpool.leasing) -> metric, kind, help.
_BUDGET = (
    ("held", "leases_held", "gauge", "Fleet budget leases this process holds."),
    ("pool_waiting", "lease_waiting", "gauge", "Connects waiting for a fleet budget lease."),
    ("acquired", "leases_acquired_total", "counter", "Fleet budget leases granted."),
    ("renewals", "lease_renewals_total", "counter", "Renewal round trips that succeeded."),
    ("renew_failures", "lease_renew_failures_total", "counter", "Renewals that failed."),
    ("lost", "leases_lost_total", "counter", "Leases lost (gone, expired, closed)."),
    ("acquire_timeouts", "lease_timeouts_total", "counter", "Lease waits with no room."),
    ("unavailable", "lease_unavailable_total", "counter", "Acquires with Redis unreachable."),
    ("pool_lost_aborts", "lease_lost_aborts_total", "counter", "Connections aborted: lost lease."),
)


def _budget_metrics(budget: Mapping[str, Any]) -> Iterator[Metric]:
    for stat, name, kind, doc in _BUDGET:
        value = float(budget.get(stat, 0))
        if kind == "gauge":
            yield GaugeMetricFamily(f"guardedpool_budget_{name}", doc, value=value)
        else:
            yield CounterMetricFamily(f"guardedpool_budget_{name}", doc, value=value)


def make_registry(collector: Collector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The registry in the Prometheus text exposition format (what ``/metrics`` serves)."""
    return generate_latest(registry)
