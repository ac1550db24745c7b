"""``store_fsync = false`` never fsyncs, counted at the system calls with strace.

A new store is created, written and closed (the close checkpoints the WAL) in a child
process under ``strace -f``; every fsync-family call it makes is listed. With
``fsync=False`` there must be none -- also while the file is created and switched to WAL,
which fsynced the rollback journal, the directory and the database when ``synchronous``
was set only after the switch. With ``fsync=True`` the same run does fsync: the count is
a real observation, not a tracer that sees nothing.

strace is a system package: ``.ci/run`` installs it when missing, and the test fails
(never skips) without it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SYNC_CALLS = "fsync,fdatasync,sync_file_range,syncfs,sync,msync"

WRITER = """
import sys
from examples.imap_sync.store import NewMessage, Store
with Store.open(sys.argv[1], fsync=sys.argv[2] == "1") as s:
    s.ensure_account("a", "h", "u")
    s.reset_mailbox("a", "m", 1)
    for first in range(1, 200, 50):
        batch = [NewMessage(u, (), b"x" * 2000) for u in range(first, first + 50)]
        s.store_batch("a", "m", 1, batch)
    s.finish_pass("a", "m", 1, uidnext=201, highestmodseq=None)
"""


def sync_calls(path: Path, *, fsync: bool) -> list[str]:
    """The fsync-family calls of a child that creates, fills and closes a store at ``path``."""
    strace = shutil.which("strace")
    if strace is None:
        pytest.fail("strace not found: apt-get install strace (.ci/run installs it)")
    trace = path.with_suffix(".strace")
    tracer = [strace, "-f", "-qq", "-y", "-e", f"trace={SYNC_CALLS}", "-o", str(trace)]
    run = subprocess.run(
        [*tracer, sys.executable, "-c", WRITER, str(path), "1" if fsync else "0"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert path.exists()
    return [line for line in trace.read_text().splitlines() if "sync" in line]


def test_fsync_false_never_fsyncs_not_even_creating_the_store(tmp_path: Path) -> None:
    assert sync_calls(tmp_path / "off.sqlite3", fsync=False) == []


def test_fsync_true_does_fsync_as_strace_sees(tmp_path: Path) -> None:
    calls = sync_calls(tmp_path / "on.sqlite3", fsync=True)
    assert any("on.sqlite3" in call for call in calls), calls
