"""The README's first example runs as printed (``python -m examples.quickstart``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quickstart_runs_and_reports_healthy() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "examples.quickstart"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=25,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "INBOX: 1 message(s)" in done.stdout
    assert "pool: 1 opened, 1 idle, 1 acquire(s)" in done.stdout
    assert "healthy" in done.stdout and "UNHEALTHY" not in done.stdout
