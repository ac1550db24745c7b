"""The audit at the fd limit: every fd of the process in use, each backend (issue 12 §3).

Each case runs ``fd_limit_child.py`` in a subprocess (the limit is per process, and the
test runner must not be starved of fds): the soft ``RLIMIT_NOFILE`` lowered, every fd
below it taken, then ``pool.audit()`` -- the first of that process, as a health probe at
the worst moment would be. It must answer: unhealthy, ``fds_used == fd_limit``, the reason
in ``notes``, and still find what it can (a straggler held by a dup'd fd, an orphan),
without poisoning the healthy connection in use.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

CHILD = Path(__file__).with_name("fd_limit_child.py")

WHY = {
    "procfs": "could not read /proc/self/status: Too many open files (EMFILE)",
    "psutil": "psutil could not read the process's sockets: Too many open files (EMFILE)",
    "lsof": "lsof could not start: Too many open files (EMFILE)",
}


def run_child(backend: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, str(CHILD), backend, "64"],
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    out: dict[str, Any] = json.loads(done.stdout)
    out["stderr"] = done.stderr
    return out


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", ["procfs", "psutil", "lsof"])
def test_audit_at_the_fd_limit_answers_unhealthy_and_still_finds(backend: str) -> None:
    out = run_child(backend)
    first, limit = out["first"], out["limit"]

    assert not first["healthy"]
    assert first["fd_exhausted"] is True
    assert first["fds_used"] == first["fd_limit"] == limit
    assert f"no fd left ({limit} of {limit} in use)" in first["notes"][0]
    assert WHY[backend] in first["notes"][0]
    assert f"no fd left (fds {limit}/{limit})" in first["problems"]
    assert first["backend"] == backend
    # What it could still do: all three of the pool's sockets and the orphan were seen.
    assert first["records_checked"] == 2
    found = {(f["kind"], f["action"], f["record_id"], tuple(f["fds"])) for f in first["findings"]}
    assert found == {
        ("straggler", "close_failed", out["retired_id"], (out["dup"],)),
        ("orphan", "reported", None, (out["orphan_fd"],)),
    }  # and no half_open: the connection in use is fine, and was seen to be

    # The straggler's background check finished after the first report: on the record,
    # and in the next report (an fd nobody reads still holds it: close_failed for good).
    second = out["second"]
    assert second["fd_exhausted"] is True and not second["healthy"]
    (v,) = second["verifications"]
    assert (v["kind"], v["action"], v["record_id"], v["still"]) == (
        "straggler",
        "close_failed",
        out["retired_id"],
        [out["dup"]],
    )
    last = out["history"][-1]
    assert last["event"] == "verified" and f"fd {out['dup']} still holds it" in last["detail"]
    assert "Traceback" not in out["stderr"]
    # Said in the log too (the child logs to stderr with plain basicConfig).
    assert f"guardedpool audit ({backend}): no fd left ({limit} of {limit} in use)" in out["stderr"]
