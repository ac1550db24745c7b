"""Every PoolConfig option rejects bad values with a ValueError that names it."""

from __future__ import annotations

import math

import pytest

from guardedpool import AuditPolicy, PoolConfig, RetryPolicy

FLOAT_POSITIVE = [
    "acquire_timeout",
    "connect_timeout",
    "op_timeout",
    "close_timeout",
    "shutdown_timeout",
    "queue_timeout",
    "idle_timeout",
    "max_lifetime",
    "leak_threshold",
    "housekeeping_interval",
    "check_timeout",
    "forget_keys_after",
]
INT_POSITIVE = [
    "max_per_key",
    "max_total",
    "max_connecting",
    "keepalive_idle",
    "keepalive_interval",
    "keepalive_count",
]
BAD_FLOATS = [0, 0.0, -1, -0.5, math.nan, math.inf, -math.inf, "1", None, True]
BAD_INTS = [0, -1, 1.5, math.nan, "2", None, True, False]


@pytest.mark.parametrize("name", FLOAT_POSITIVE)
@pytest.mark.parametrize("value", BAD_FLOATS)
def test_float_options_reject(name: str, value: object) -> None:
    with pytest.raises(ValueError, match=rf"PoolConfig\.{name}") as info:
        PoolConfig(**{name: value})  # type: ignore[arg-type]
    assert repr(value) in str(info.value)


@pytest.mark.parametrize("name", INT_POSITIVE)
@pytest.mark.parametrize("value", BAD_INTS)
def test_int_options_reject(name: str, value: object) -> None:
    kwargs: dict[str, object] = {name: value}
    if name == "max_per_key":
        kwargs["max_total"] = 10**6
    with pytest.raises(ValueError, match=rf"PoolConfig\.{name}") as info:
        PoolConfig(**kwargs)  # type: ignore[arg-type]
    assert repr(value) in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "names"),
    [
        ({"max_per_key": 5, "max_total": 4}, "max_per_key"),
        ({"lifetime_jitter": 0.6}, "lifetime_jitter"),
        ({"lifetime_jitter": -0.1}, "lifetime_jitter"),
        ({"check_after": -1.0}, "check_after"),
        ({"check_after": math.nan}, "check_after"),
        ({"heartbeat_interval": 0.0}, "heartbeat_interval"),
        ({"heartbeat_interval": math.inf}, "heartbeat_interval"),
        ({"reclaim_after": 10.0, "leak_threshold": 20.0}, "reclaim_after"),
        ({"retry": "fast"}, "retry"),
        ({"audit": {}}, "audit"),
    ],
)
def test_cross_field_and_optional_rules(kwargs: dict[str, object], names: str) -> None:
    with pytest.raises(ValueError, match=rf"PoolConfig\.{names}"):
        PoolConfig(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"initial": -1.0}, "initial"),
        ({"multiplier": 0.5}, "multiplier"),
        ({"max_delay": 0.0}, "max_delay"),
        ({"jitter": math.nan}, "jitter"),
        ({"reconnect_deadline": math.inf}, "reconnect_deadline"),
        ({"initial": 10.0, "max_delay": 1.0}, "initial"),
        ({"max_throttle_delay": 0.0}, "max_throttle_delay"),
        ({"max_throttle_delay": math.inf}, "max_throttle_delay"),
    ],
)
def test_retry_policy_rejects(kwargs: dict[str, object], name: str) -> None:
    with pytest.raises(ValueError, match=rf"RetryPolicy\.{name}"):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"backend": "netstat"}, "backend"),
        ({"interval": 0.0}, "interval"),
        ({"force_close_stragglers": 1}, "force_close_stragglers"),
        ({"close_orphans": "no"}, "close_orphans"),
        ({"fd_usage_unhealthy": 1.5}, "fd_usage_unhealthy"),
        ({"graveyard_size": 0}, "graveyard_size"),
        ({"graveyard_ttl": -5.0}, "graveyard_ttl"),
    ],
)
def test_audit_policy_rejects(kwargs: dict[str, object], name: str) -> None:
    with pytest.raises(ValueError, match=rf"AuditPolicy\.{name}"):
        AuditPolicy(**kwargs)  # type: ignore[arg-type]


def test_defaults_are_finite_and_json_ready() -> None:
    import json

    cfg = PoolConfig()
    data = cfg.to_dict()
    json.dumps(data)
    for name in FLOAT_POSITIVE:
        assert math.isfinite(data[name])  # type: ignore[arg-type]


def test_config_is_frozen() -> None:
    cfg = PoolConfig()
    with pytest.raises(AttributeError):
        cfg.max_total = 5  # type: ignore[misc]
