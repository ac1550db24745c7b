"""AuditReport and Finding: the health rule, JSON-ready dicts, a readable table."""

from __future__ import annotations

import json

import pytest

from guardedpool.audit.classify import Kind
from guardedpool.audit.report import Action, AuditReport, Finding, Verification
from guardedpool.records import LifecycleEvent


def finding(kind: Kind, action: Action, **extra: object) -> Finding:
    fields: dict[str, object] = {
        "key": "inbox-7",
        "record_id": 3,
        "fd": 12,
        "fds": (12,),
        "inode": 4242,
        "local": ("127.0.0.1", 50000),
        "remote": ("::1", 993),
        "os_state": "ESTABLISHED",
        "record_state": "closed",
        "opened_at": 1_700_000_000.0,
        "retired_at": 1_700_000_100.0,
        "should_have_closed_at": None,
        "detail": "retired 5.0 s ago, socket still open",
        "history": (LifecycleEvent(1_700_000_000.0, "open", "fd=12"),),
    }
    fields.update(extra)
    return Finding(kind=kind, action=action, **fields)  # type: ignore[arg-type]


def report(
    *findings: Finding, fds_used: int = 10, fd_limit: int | None = 1024, **extra: object
) -> AuditReport:
    fields: dict[str, object] = {"fd_usage_unhealthy": 0.9, **extra}
    return AuditReport(  # type: ignore[arg-type]
        checked_at=1_700_000_200.0,
        duration=0.004,
        backend="procfs",
        fds_used=fds_used,
        fd_limit=fd_limit,
        records_checked=5,
        sockets_seen=6,
        findings=findings,
        **fields,
    )


@pytest.mark.parametrize(
    ("findings", "healthy"),
    [
        ((), True),
        ((finding(Kind.STRAGGLER, Action.FORCE_CLOSED),), True),
        ((finding(Kind.STRAGGLER, Action.CLOSE_FAILED),), False),
        ((finding(Kind.STRAGGLER, Action.REPORTED),), False),
        ((finding(Kind.OVERDUE, Action.RETIRED),), True),
        ((finding(Kind.HALF_OPEN, Action.POISONED),), False),
        ((finding(Kind.ORPHAN, Action.REPORTED, key=None, record_id=None),), False),
        ((finding(Kind.ORPHAN, Action.FORCE_CLOSED, key=None, record_id=None),), False),
        ((finding(Kind.LEAK_SUSPECT, Action.REPORTED),), False),
    ],
)
def test_health_rule(findings: tuple[Finding, ...], healthy: bool) -> None:
    assert report(*findings).healthy is healthy


@pytest.mark.parametrize(
    ("fds_used", "fd_limit", "healthy"),
    [(922, 1024, False), (921, 1024, True), (10**6, None, True)],
)
def test_fd_usage_rule(fds_used: int, fd_limit: int | None, healthy: bool) -> None:
    r = report(fds_used=fds_used, fd_limit=fd_limit)
    assert r.healthy is healthy
    assert bool(r.problems()) is not healthy


def test_counts_have_every_kind() -> None:
    r = report(finding(Kind.STRAGGLER, Action.FORCE_CLOSED), finding(Kind.OVERDUE, Action.RETIRED))
    assert dict(r.counts) == {
        "straggler": 1,
        "half_open": 0,
        "orphan": 0,
        "leak_suspect": 0,
        "overdue": 1,
    }


def test_to_dict_is_json_and_stable() -> None:
    leak = finding(
        Kind.LEAK_SUSPECT,
        Action.REPORTED,
        task="sync-inbox-7",
        borrowed_at=1_700_000_150.0,
        stack=("worker.py:42 in sync",),
    )
    data = json.loads(json.dumps(report(leak).to_dict()))
    assert data["healthy"] is False
    assert data["backend"] == "procfs"
    (f,) = data["findings"]
    assert f["kind"] == "leak_suspect" and f["action"] == "reported"
    assert f["remote"] == "[::1]:993" and f["local"] == "127.0.0.1:50000"
    assert f["stack"] == ["worker.py:42 in sync"] and f["task"] == "sync-inbox-7"
    assert f["history"] == [{"at": 1_700_000_000.0, "event": "open", "detail": "fd=12"}]


def test_str_is_a_table() -> None:
    text = str(report(finding(Kind.STRAGGLER, Action.CLOSE_FAILED)))
    assert "UNHEALTHY" in text
    assert "straggler" in text and "close_failed" in text and "inbox-7" in text
    assert "127.0.0.1:50000 -> [::1]:993" in text
    assert str(report()).startswith("audit (procfs")


def test_report_is_frozen() -> None:
    r = report()
    with pytest.raises(AttributeError):
        r.healthy = False  # type: ignore[misc]


@pytest.mark.parametrize("share", [0.9, 1.0])
@pytest.mark.parametrize(("fds_used", "fd_limit"), [(1024, 1024), (300, 1024), (50, None)])
def test_no_fd_left_is_always_unhealthy(share: float, fds_used: int, fd_limit: int | None) -> None:
    """EMFILE (every fd in use) or ENFILE (the system's table full, whatever our share)."""
    r = report(fds_used=fds_used, fd_limit=fd_limit, fd_exhausted=True, fd_usage_unhealthy=share)
    assert not r.healthy
    assert r.problems() == [f"no fd left (fds {fds_used}/{fd_limit or 'unlimited'})"]
    assert r.to_dict()["fd_exhausted"] is True


def test_a_finding_reads_on_its_own_and_names_its_log_fields() -> None:
    f = finding(Kind.STRAGGLER, Action.CLOSE_FAILED, fds=(12, 14))
    assert f.summary() == (
        "straggler conn 3 key 'inbox-7' fd 12,14 inode 4242 127.0.0.1:50000 -> [::1]:993: "
        "close_failed (retired 5.0 s ago, socket still open)"
    )
    orphan = finding(Kind.ORPHAN, Action.REPORTED, key=None, record_id=None, detail="x")
    assert orphan.summary().startswith("orphan no record fd 12 inode 4242 ")
    fields = f.log_fields()
    assert {k: fields[k] for k in ("kind", "action", "key", "conn_id", "fd", "fds", "inode")} == {
        "kind": "straggler",
        "action": "close_failed",
        "key": "inbox-7",
        "conn_id": 3,
        "fd": 12,
        "fds": [12, 14],
        "inode": 4242,
    }
    assert fields["finding"] == f.to_dict()
    json.dumps(fields)


def test_verifications_do_not_change_health_and_are_shown() -> None:
    v = Verification(
        kind=Kind.STRAGGLER,
        action=Action.FORCE_CLOSED,
        key="inbox-7",
        record_id=3,
        inode=4242,
        fds=(12,),
        still=(),
        after=0.042,
        finished_at=1_700_000_201.0,
        detail="gone 42 ms after the shutdown",
    )
    r = report(verifications=(v,))
    assert r.healthy
    data = json.loads(json.dumps(r.to_dict()))
    assert data["verifications"] == [
        {
            "kind": "straggler",
            "action": "force_closed",
            "key": "inbox-7",
            "record_id": 3,
            "inode": 4242,
            "fds": [12],
            "still": [],
            "after": 0.042,
            "finished_at": 1_700_000_201.0,
            "detail": "gone 42 ms after the shutdown",
        }
    ]
    assert (
        "verified since last audit: straggler conn 3 key 'inbox-7' fd 12 inode 4242: "
        "force_closed (gone 42 ms after the shutdown)"
    ) in str(r)
