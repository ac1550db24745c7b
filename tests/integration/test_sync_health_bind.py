"""The worker's health port already in use: exit 2, one line naming [health] bind."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SECRET = "Pw-never-shown-7f3a"


def test_health_port_in_use_exits_2_with_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        config = tmp_path / "sync.toml"
        config.write_text(
            f"""
store = "mirror.sqlite3"
[health]
bind = "127.0.0.1:{port}"
[[accounts]]
key = "alice"
host = "127.0.0.1"
port = 1
username = "alice"
password_env = "SYNC_TEST_PW"
tls = false
"""
        )
        proc = subprocess.run(
            [sys.executable, "-m", "examples.imap_sync", "run", "--config", str(config)],
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(ROOT), "SYNC_TEST_PW": SECRET},
            capture_output=True,
            text=True,
            timeout=20,
        )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"config error: {config}: health.bind: cannot listen on ")
    assert f"127.0.0.1:{port}" in lines[0] and "[health] bind" in lines[0]
    assert SECRET not in proc.stderr + proc.stdout
    assert not (tmp_path / "mirror.sqlite3").exists()  # nothing touched
