"""A throwaway PostgreSQL server for tests, run as a child process on a free loopback port.

``initdb`` into a temp dir, ``postgres`` listening on 127.0.0.1 only, its unix socket in
the same dir, trust authentication for local connections, no fsync (test data). Needs
the Debian package ``postgresql`` (binaries under ``/usr/lib/postgresql/<v>/bin``).

PostgreSQL refuses to run as root. Under root (CI), the server runs as the ``postgres``
system user via ``runuser -u postgres --``, and the temp dir is handed to that user.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from .dovecot import _free_port, _pdeathsig_prefix

__all__ = ["PostgresError", "PostgresServer", "find_pg_bin"]


class PostgresError(RuntimeError):
    """PostgreSQL could not be started or stopped; the message carries the log tail."""


def find_pg_bin() -> Path:
    """The newest ``/usr/lib/postgresql/<v>/bin`` with ``postgres`` and ``initdb``, or the
    directory of ``initdb`` on PATH."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/postgres"),
        key=lambda p: (
            int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0
        ),
    )
    if candidates:
        return Path(candidates[-1]).parent
    initdb = shutil.which("initdb")
    if initdb is None:
        raise PostgresError("PostgreSQL binaries not found (apt-get install postgresql)")
    return Path(initdb).parent


class PostgresServer:
    """One PostgreSQL on a free 127.0.0.1 port, database ``postgres``, user ``postgres``.

    Args:
        start_timeout: seconds to wait for the server to accept connections; default 30.
        stop_timeout: seconds to wait after SIGINT (fast shutdown) before SIGKILL; default 10.

    ``dsn`` is ``postgresql://postgres@127.0.0.1:<port>/postgres`` (trust auth, loopback).
    """

    host = "127.0.0.1"
    user = "postgres"

    def __init__(self, *, start_timeout: float = 30.0, stop_timeout: float = 10.0) -> None:
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.bin = find_pg_bin()
        self.dir = Path(tempfile.mkdtemp(prefix="gp-pg-", dir="/tmp"))
        self.data = self.dir / "data"
        self.log_path = self.dir / "postgres.log"
        self.port = _free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self._as_root = os.geteuid() == 0
        self._initdb()

    @property
    def dsn(self) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/postgres"

    def _prefix(self) -> list[str]:
        if not self._as_root:
            return []
        runuser = shutil.which("runuser") or "/usr/sbin/runuser"
        return [runuser, "-u", "postgres", "--"]

    def _initdb(self) -> None:
        if self._as_root:
            ent = pwd.getpwnam("postgres")
            os.chown(self.dir, ent.pw_uid, ent.pw_gid)
        self.dir.chmod(0o755)
        result = subprocess.run(
            [
                *self._prefix(),
                str(self.bin / "initdb"),
                "-D",
                str(self.data),
                "-U",
                self.user,
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ],
            capture_output=True,
            text=True,
            timeout=self.start_timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        if result.returncode != 0:
            raise PostgresError(f"initdb failed ({result.returncode}): {result.stderr[-2000:]}")

    def start(self) -> None:
        """Start and wait until it accepts connections (a TCP connect and a startup
        answer); bounded by ``start_timeout``."""
        if self._proc is not None and self._proc.poll() is None:
            return
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
        if self._as_root:
            ent = pwd.getpwnam("postgres")
            os.chown(self.log_path, ent.pw_uid, ent.pw_gid)
        try:
            self._proc = subprocess.Popen(
                [
                    *_pdeathsig_prefix(),
                    *self._prefix(),
                    str(self.bin / "postgres"),
                    "-D",
                    str(self.data),
                    "-p",
                    str(self.port),
                    "-c",
                    f"listen_addresses={self.host}",
                    "-c",
                    f"unix_socket_directories={self.dir}",
                    "-c",
                    "fsync=off",
                    "-c",
                    "synchronous_commit=off",
                    "-c",
                    "full_page_writes=off",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                close_fds=True,
            )
        finally:
            log.close()
        atexit.register(self.stop)
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._proc = None
                raise PostgresError(f"postgres exited with {code} at startup\n{self.log_tail()}")
            if self._ready():
                return
            if time.monotonic() > deadline:
                self.stop(_cleanup=False)
                raise PostgresError(
                    f"postgres not ready within {self.start_timeout}s\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def _ready(self) -> bool:
        """``pg_isready`` semantics without the binary: the log says it is ready and the
        port accepts."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return False
        if "ready to accept connections" not in text:
            return False
        try:
            with socket.create_connection((self.host, self.port), timeout=1.0):
                return True
        except OSError:
            return False

    def stop(self, *, _cleanup: bool = True) -> None:
        """Fast shutdown (SIGINT), bounded wait, SIGKILL of the whole group as fallback."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            # Signal the process group: with runuser in front, postgres is its child.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=self.stop_timeout)
        if _cleanup:
            atexit.unregister(self.stop)
            shutil.rmtree(self.dir, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"(no postgres log: {exc})"
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
