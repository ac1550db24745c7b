"""The Prometheus collector: pool stats and worker counters become parseable metrics."""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from examples.imap_sync.metrics import SyncCollector, make_registry, render
from examples.imap_sync.worker import InboxCounters

STATS: dict[str, Any] = {
    "total": {"slots": 3, "connecting": 1},
    "keys": {
        "alice": {
            "open": 2,
            "idle": 1,
            "in_use": 1,
            "opening": 0,
            "closing": 0,
            "waiting": 0,
            "acquires": 7,
            "acquire_timeouts": 0,
            "acquire_wait_total": 0.25,
            "opened": 3,
            "connect_failures": 1,
            "closed": {"idle": 1, "poisoned": 0},
            "reconnects": {"idle": 1},
            "consecutive_failures": 0,
            "throttled": True,
            "throttled_until": 1299.9,
            "throttled_for": 299.9,
            "effective_max_per_key": 1,
            "logins_last_minute": 3,
        },
    },
}


def samples() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    counters = {
        "alice": InboxCounters(messages=12, bytes=3400, errors=1, last_success=1.7e9),
        "bob": InboxCounters(),
    }
    text = render(make_registry(SyncCollector(lambda: STATS, lambda: counters))).decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_pool_and_worker_metrics() -> None:
    got = samples()
    assert got[("guardedpool_connections", (("key", "alice"), ("state", "in_use")))] == 1
    assert got[("guardedpool_acquires_total", (("key", "alice"),))] == 7
    assert got[("guardedpool_acquire_wait_seconds_total", (("key", "alice"),))] == 0.25
    assert got[("guardedpool_closed_total", (("key", "alice"), ("reason", "idle")))] == 1
    assert got[("guardedpool_reconnects_total", (("key", "alice"), ("reason", "idle")))] == 1
    assert got[("guardedpool_slots", ())] == 3
    assert got[("guardedpool_effective_max_per_key", (("key", "alice"),))] == 1
    assert got[("guardedpool_throttled_seconds", (("key", "alice"),))] == 299.9
    assert got[("guardedpool_logins_last_minute", (("key", "alice"),))] == 3
    assert got[("imap_sync_messages_total", (("inbox", "alice"),))] == 12
    assert got[("imap_sync_bytes_total", (("inbox", "alice"),))] == 3400
    assert got[("imap_sync_errors_total", (("inbox", "alice"),))] == 1
    assert got[("imap_sync_errors_total", (("inbox", "bob"),))] == 0
    assert got[("imap_sync_last_success_timestamp_seconds", (("inbox", "alice"),))] == 1.7e9
    # No pass has succeeded for bob yet: no sample rather than a misleading 0 (1970).
    assert ("imap_sync_last_success_timestamp_seconds", (("inbox", "bob"),)) not in got


def test_empty_pool_renders() -> None:
    text = render(make_registry(SyncCollector(lambda: {"total": {}, "keys": {}}, dict))).decode()
    names = {f.name for f in text_string_to_metric_families(text)}
    assert "guardedpool_connections" in names and "imap_sync_messages" in names
