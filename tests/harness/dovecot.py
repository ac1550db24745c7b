"""A throwaway Dovecot IMAP server for tests, run as a child process.

Everything (config, certificates, passwd file, mail, logs, runtime sockets) lives in one
temp dir, so several servers can run side by side and nothing outside the dir is touched.
The server is a real Dovecot so that the pool is tested against real socket behaviour:
real greetings, real LOGIN failures, real per-user connection caps, real IDLE.

Why these settings (verified on Debian 12, Dovecot 2.3.19):

* ``first_valid_uid = 1``: the ``dovecot`` uid is below the default 500; without this
  LOGIN answers OK "but initialization failed" and then disconnects.
* ``auth_failure_delay = 0`` and the anvil auth penalty off by default: Dovecot otherwise
  waits 2 s before answering a bad password and then delays *every* login from the same
  IP (all tests share 127.0.0.1) by up to 15 s.
* ``imap_zlib`` is loaded, so COMPRESS=DEFLATE is offered, and ``imap_id_log = *`` logs
  what a client sends with ID.
* ``mail_max_userip_connections`` is raised (default 10) so pool tests are limited by the
  pool, not the server; pass a small value to test a server-side cap on purpose.
* Logs go to a file in the temp dir so test output stays clean; ``log_tail()`` is
  included in every startup error.
"""

from __future__ import annotations

import atexit
import contextlib
import grp
import itertools
import os
import pwd
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping
from email.utils import formatdate
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
import trustme

if TYPE_CHECKING:
    from guardedpool.imap import IMAPAccount

__all__ = ["DEFAULT_USERS", "DovecotError", "DovecotServer", "make_message"]

DEFAULT_USERS: Mapping[str, str] = {
    name: f"{name}-pw" for name in ("alice", "bob", "carol", "dave", "erin")
}

_USERNAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# Unix socket paths are limited to 108 bytes; Dovecot puts several under base_dir.
_MAX_BASE_LEN = 60
_seq = itertools.count(1)


class DovecotError(RuntimeError):
    """Dovecot could not be started or stopped; the message carries the log tail."""


def _find_dovecot() -> str:
    # /usr/sbin is often missing from a non-root PATH.
    found = shutil.which("dovecot") or shutil.which("dovecot", path="/usr/sbin:/sbin")
    if found is None:
        raise DovecotError("dovecot binary not found (apt-get install dovecot-imapd)")
    return found


def _pdeathsig_prefix() -> list[str]:
    """``setpriv --pdeathsig TERM`` if available: Dovecot then dies with the test process
    even when that is SIGKILLed or SIGTERMed (where atexit never runs). The signal fires
    when the *thread* that started Dovecot exits, so start servers from the main thread."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return []
    try:
        helptext = subprocess.run(
            [setpriv, "--help"], capture_output=True, text=True, timeout=5, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [setpriv, "--pdeathsig", "TERM"] if "--pdeathsig" in helptext else []


def _free_port() -> int:
    """A port that was free a moment ago; a clash shows up as a bind error at start."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _running(proc: psutil.Process) -> bool:
    """Alive and not a zombie: orphaned children are reaped by init whenever it gets to it,
    and a zombie holds no sockets or files."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _wait_dead(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Poll until no process in ``procs`` runs or ``timeout`` passes; return the survivors."""
    deadline = time.monotonic() + timeout
    alive = [p for p in procs if _running(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.02)
        alive = [p for p in alive if _running(p)]
    return alive


def make_message(
    index: int,
    *,
    subject: str | None = None,
    body: str | None = None,
    sender: str = "sender@example.test",
    to: str = "user@example.test",
) -> bytes:
    """A small, valid RFC 822 message with CRLF line endings (what IMAP servers store)."""
    subject = subject if subject is not None else f"Test message {index}"
    body = body if body is not None else f"Body of test message {index}.\n"
    headers = [
        f"From: {sender}",
        f"To: {to}",
        f"Subject: {subject}",
        f"Date: {formatdate(localtime=False)}",
        f"Message-ID: <gp-{os.getpid()}-{next(_seq)}-{index}@example.test>",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
    ]
    text = "\r\n".join(headers) + "\r\n\r\n" + body.replace("\r\n", "\n").replace("\n", "\r\n")
    return text.encode("utf-8")


class DovecotServer:
    """One Dovecot instance on free 127.0.0.1 ports: plain IMAP and implicit-TLS IMAPS.

    Args:
        users: username -> password; default alice/bob/carol/dave/erin with "<name>-pw".
        idle_notify_interval: seconds between Dovecot's "* OK Still here" during IDLE
            (``imap_idle_notify_interval``; Dovecot's default is 120).
        max_userip_connections: per user and client IP cap (``mail_max_userip_connections``);
            default 1000 so the pool, not the server, is the limit.
        auth_failure_delay: seconds Dovecot waits before rejecting a bad login; default 0
            (Dovecot still takes about 0.5 s to answer NO).
        auth_penalty: keep Dovecot's per-IP auth penalty (after a failed login, every
            login from 127.0.0.1 is delayed 2..15 s for a while); default off, or one
            auth-failure test would slow down every later test.
        start_timeout: seconds to wait for the ``* OK`` greeting on both ports; default 10.
        stop_timeout: seconds to wait after SIGTERM before SIGKILL; default 5.
        base_dir: parent for the temp dir; default the system temp dir (or /tmp if that
            path is too long for Dovecot's unix sockets).
        keep_dir: leave the temp dir (config, log, mail) after ``stop()``, for debugging.
        oauth2_introspection_url: also accept OAuth 2 bearer tokens (``AUTH=OAUTHBEARER``
            and ``AUTH=XOAUTH2``) through Dovecot's oauth2 passdb, which POSTs each token
            to this RFC 7662 introspection URL (see ``harness.oauth.TokenServer``).

    ``start()`` and ``stop()`` block: start takes ~50 ms, stop ~1.1 s (Dovecot's master
    sleeps a fixed second on shutdown to let its log process flush). The object is also a
    context manager.
    """

    host = "127.0.0.1"

    def __init__(
        self,
        users: Mapping[str, str] | None = None,
        *,
        idle_notify_interval: int = 120,
        max_userip_connections: int = 1000,
        auth_failure_delay: int = 0,
        auth_penalty: bool = False,
        start_timeout: float = 10.0,
        stop_timeout: float = 5.0,
        base_dir: str | None = None,
        keep_dir: bool = False,
        oauth2_introspection_url: str | None = None,
    ) -> None:
        if idle_notify_interval < 1:
            raise ValueError(f"idle_notify_interval must be >= 1 s, got {idle_notify_interval!r}")
        if max_userip_connections < 1:
            raise ValueError(f"max_userip_connections must be >= 1, got {max_userip_connections!r}")
        self.users: dict[str, str] = dict(DEFAULT_USERS if users is None else users)
        for name, password in self.users.items():
            self._check_user(name, password)
        self.idle_notify_interval = idle_notify_interval
        self.max_userip_connections = max_userip_connections
        self.auth_failure_delay = auth_failure_delay
        self.auth_penalty = auth_penalty
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.keep_dir = keep_dir
        self.oauth2_introspection_url = oauth2_introspection_url

        parent = base_dir or tempfile.gettempdir()
        if len(parent) > _MAX_BASE_LEN:
            parent = "/tmp"
        self.dir = Path(tempfile.mkdtemp(prefix="gp-dovecot-", dir=parent))
        # Dovecot's unprivileged processes must traverse the dir to reach passwd and mail.
        self.dir.chmod(0o755)
        self.mail_root = self.dir / "mail"
        self.config_path = self.dir / "dovecot.conf"
        self.passwd_dir = self.dir / "passwd.d"
        self.log_path = self.dir / "dovecot.log"
        self.cafile = self.dir / "ca.pem"

        self._root = os.geteuid() == 0
        if self._root:
            ent = pwd.getpwnam("dovecot")
            self._mail_user, self._mail_uid, self._mail_gid = "dovecot", ent.pw_uid, ent.pw_gid
        else:
            ent = pwd.getpwuid(os.geteuid())
            self._mail_user, self._mail_uid, self._mail_gid = ent.pw_name, ent.pw_uid, os.getegid()

        self.ca = trustme.CA()
        cert = self.ca.issue_cert("localhost", "127.0.0.1")
        self.ca.cert_pem.write_to_path(str(self.cafile))
        cert.private_key_pem.write_to_path(str(self.dir / "key.pem"))
        (self.dir / "cert.pem").write_bytes(b"".join(b.bytes() for b in cert.cert_chain_pems))

        self.port = _free_port()
        self.tls_port = _free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self.stray_pids: list[int] = []  # descendants that outlived the last stop()

        self.mail_root.mkdir()
        self._chown(self.mail_root)
        self.passwd_dir.mkdir(mode=0o755)
        for name, password in self.users.items():
            self._write_passwd(name, password)
        self._write_config()

    @property
    def starttls_port(self) -> int:
        """The STARTTLS port: the plain listener, which offers STARTTLS because TLS is
        configured globally (``ssl = yes`` with a certificate). Dovecot 2.3 cannot require
        STARTTLS per listener, and loopback counts as secured, so plaintext LOGIN works
        there too; tests that need LOGINDISABLED use a scripted server."""
        return self.port

    # -- lifecycle -------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """PID of the Dovecot master while running, else None."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def start(self) -> None:
        """Start Dovecot and wait until both ports greet; retried on fresh ports on a clash."""
        if self.pid is not None:
            return
        for attempt in range(3):
            try:
                self._spawn_and_wait()
                return
            except DovecotError as exc:
                if "Address already in use" not in str(exc) or attempt == 2:
                    raise
                self.port, self.tls_port = _free_port(), _free_port()
                self._write_config()

    def pause(self) -> None:
        """Stop, keeping config and mail: every connection dies and the ports refuse."""
        self.stop(_cleanup=False)

    def resume(self) -> None:
        """Start again after :meth:`pause`, on the same ports with the same mail."""
        self._spawn_and_wait()

    def restart(self) -> None:
        """Stop and start again on the same ports with the same mail (for reconnect tests)."""
        self.stop(_cleanup=False)
        self._spawn_and_wait()

    def stop(self, *, _cleanup: bool = True) -> None:
        """SIGTERM the master, wait (bounded), SIGKILL as fallback; no child may survive."""
        proc = self._proc
        if proc is not None:
            self._proc = None
            descendants = self._descendants(proc.pid)
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=self.stop_timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=self.stop_timeout)
            # The master SIGTERMs its children (shutdown_clients = yes); give them a moment,
            # then make sure: a stray imap process would hold sockets and mail files.
            alive = _wait_dead(descendants, timeout=2.0)
            for p in alive:
                with contextlib.suppress(psutil.Error):
                    p.kill()
            still = _wait_dead(alive, timeout=2.0)
            self.stray_pids = [p.pid for p in alive]
            if still:
                raise DovecotError(f"dovecot children survived SIGKILL: {[p.pid for p in still]}")
        if _cleanup:
            atexit.unregister(self.stop)
            if not self.keep_dir:
                shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> DovecotServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _spawn_and_wait(self) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
        try:
            # Own session: a Ctrl-C aimed at pytest must not kill Dovecot behind the
            # fixture's back; the fixture (or atexit) stops it.
            self._proc = subprocess.Popen(
                [*_pdeathsig_prefix(), _find_dovecot(), "-c", str(self.config_path), "-F"],
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
        pending = {"plain": self.port, "tls": self.tls_port}
        last_error = "no attempt"
        while pending:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._proc = None
                raise DovecotError(f"dovecot exited with {code} at startup\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop(_cleanup=False)
                raise DovecotError(
                    f"dovecot did not greet on {sorted(pending)} within {self.start_timeout}s "
                    f"(last: {last_error})\n{self.log_tail()}"
                )
            for kind, port in list(pending.items()):
                try:
                    self._read_greeting(port, tls=kind == "tls")
                    del pending[kind]
                except (OSError, ValueError) as exc:
                    last_error = f"{kind}:{port}: {exc!r}"
            if pending:
                time.sleep(0.02)

    def _read_greeting(self, port: int, *, tls: bool) -> bytes:
        """Readiness is the ``* OK`` greeting: the port accepts before imap-login can serve."""
        with socket.create_connection((self.host, port), timeout=1.0) as raw:
            sock: socket.socket = raw
            if tls:
                sock = self.client_ssl_context().wrap_socket(raw, server_hostname=self.host)
            try:
                line = b""
                while not line.endswith(b"\r\n") and len(line) < 4096:
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    line += chunk
                if not line.startswith(b"* OK"):
                    raise ValueError(f"unexpected greeting {line[:80]!r}")
                return line
            finally:
                if sock is not raw:
                    sock.close()

    @staticmethod
    def _descendants(pid: int) -> list[psutil.Process]:
        try:
            return list(psutil.Process(pid).children(recursive=True))
        except psutil.Error:
            return []

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of Dovecot's log, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"(no dovecot log: {exc})"
        return "\n".join(text.splitlines()[-lines:])

    # -- TLS -------------------------------------------------------------------------

    def client_ssl_context(self) -> ssl.SSLContext:
        """A verifying client context that trusts only this server's throwaway CA."""
        return ssl.create_default_context(cafile=str(self.cafile))

    def plain_account(self, username: str, password: str | None = None) -> IMAPAccount:
        """An account for ``username`` on the plain (no TLS) port; the password is the
        user's own (``users``) unless given."""
        from guardedpool.imap import IMAPAccount

        return IMAPAccount(
            host=self.host,
            port=self.port,
            username=username,
            password=self.users[username] if password is None else password,
            tls=False,
        )

    # -- users and mail --------------------------------------------------------------

    def add_user(self, username: str, password: str | None = None) -> str:
        """Add a user; usable at once, also while running. Returns the password.

        The password defaults to ``"<username>-pw"``. Each user has its own passwd file
        (``passwd.d/%u``) because Dovecot stats a passwd file at most once per second: a
        user appended to a shared file can stay unknown for up to a second, while a new
        file is read on first lookup.
        """
        password = password if password is not None else f"{username}-pw"
        self._check_user(username, password)
        if username in self.users:
            raise ValueError(f"user {username!r} already exists")
        self._write_passwd(username, password)
        self.users[username] = password
        return password

    def maildir(self, username: str, folder: str = "INBOX") -> Path:
        """Path of a user's Maildir folder (Maildir++ layout: ``.Name`` for non-INBOX)."""
        root = self.mail_root / username / "Maildir"
        if folder.upper() == "INBOX":
            return root
        return root / ("." + folder.replace("/", "."))

    def seed_messages(
        self,
        username: str,
        count: int = 0,
        *,
        messages: Iterable[bytes] = (),
        folder: str = "INBOX",
        seen: bool = False,
    ) -> list[Path]:
        """Write messages straight into a user's Maildir, far faster than APPEND.

        ``count`` generated messages (see ``make_message``) followed by ``messages``.
        Unseen messages go to ``new/`` (they become \\Recent), seen ones to ``cur/`` with
        the ``S`` flag. Files are written in ``tmp/`` and renamed, as the Maildir spec
        demands, so Dovecot never sees a half-written message; it picks them up at its
        next sync (SELECT, NOOP, IDLE). Returns the file paths in order.
        """
        if username not in self.users:
            raise KeyError(f"unknown user {username!r}")
        target = self.maildir(username, folder)
        self._ensure_maildir(target, username, is_sub=target != self.maildir(username))
        payloads = itertools.chain((make_message(i + 1) for i in range(count)), messages)
        paths: list[Path] = []
        host = socket.gethostname().replace("/", "_").replace(":", "_")
        for payload in payloads:
            base = f"{time.time_ns() // 1_000_000_000}.M{next(_seq)}P{os.getpid()}.{host}"
            tmp = target / "tmp" / base
            tmp.write_bytes(payload)
            os.chown(tmp, self._mail_uid, self._mail_gid)
            final = target / "cur" / f"{base}:2,S" if seen else target / "new" / base
            tmp.rename(final)
            paths.append(final)
        return paths

    def _ensure_maildir(self, target: Path, username: str, *, is_sub: bool) -> None:
        home = self.mail_root / username
        for path in (home, home / "Maildir", target):
            if not path.exists():
                path.mkdir(mode=0o700)
                self._chown(path)
        for sub in ("cur", "new", "tmp"):
            path = target / sub
            if not path.exists():
                path.mkdir(mode=0o700)
                self._chown(path)
        if is_sub and not (target / "maildirfolder").exists():
            (target / "maildirfolder").touch()
            self._chown(target / "maildirfolder")

    def _chown(self, path: Path) -> None:
        if self._root:
            os.chown(path, self._mail_uid, self._mail_gid)

    @staticmethod
    def _check_user(username: str, password: str) -> None:
        if not _USERNAME_RE.match(username):
            raise ValueError(f"username {username!r} must match {_USERNAME_RE.pattern}")
        if any(c in password for c in ":\r\n") or not password:
            raise ValueError("password must be non-empty without ':' or newlines")

    # -- files -----------------------------------------------------------------------

    def _write_passwd(self, username: str, password: str) -> None:
        # Write-then-rename so the auth process never reads a half-written file.
        tmp = self.passwd_dir / f".{username}.tmp"
        tmp.write_text(f"{username}:{{PLAIN}}{password}::::::\n")
        tmp.chmod(0o644)
        tmp.replace(self.passwd_dir / username)

    def _write_config(self) -> None:
        d = self.dir
        (d / "run").mkdir(exist_ok=True)
        (d / "state").mkdir(exist_ok=True)
        if self._root:
            identity = ""
            chroot = ""
        else:
            u, g = self._mail_user, grp.getgrgid(self._mail_gid).gr_name
            identity = (
                f"default_internal_user = {u}\ndefault_internal_group = {g}\n"
                f"default_login_user = {u}\n"
            )
            chroot = "  chroot =\n"
        # mode 0 disables the listener: no per-IP auth penalty (mail_max_userip_connections
        # uses the separate "anvil" listener and keeps working).
        mechanisms = "plain login"
        oauth2 = ""
        if self.oauth2_introspection_url is not None:
            # Dovecot 2.3's oauth2 passdb: introspection_mode = post sends token=...;
            # active=true and a username equal to the login name let the user in.
            oauth_conf = d / "oauth2.conf"
            oauth_conf.write_text(
                f"introspection_mode = post\n"
                f"introspection_url = {self.oauth2_introspection_url}\n"
                f"force_introspection = yes\n"
                f"username_attribute = username\n"
                f"active_attribute = active\n"
                f"active_value = true\n"
            )
            oauth_conf.chmod(0o644)
            mechanisms += " xoauth2 oauthbearer"
            oauth2 = (
                f"passdb {{\n  driver = oauth2\n  mechanisms = xoauth2 oauthbearer\n"
                f"  args = {oauth_conf}\n}}\n"
            )
        penalty = (
            "" if self.auth_penalty else "  unix_listener anvil-auth-penalty {\n    mode = 0\n  }\n"
        )
        self.config_path.write_text(
            f"""# generated by tests/harness/dovecot.py
protocols = imap
listen = 127.0.0.1
base_dir = {d}/run
state_dir = {d}/state
instance_name = gp-dovecot-{self.port}
log_path = {self.log_path}
info_log_path = {self.log_path}
{identity}first_valid_uid = 1
ssl = yes
ssl_cert = <{d}/cert.pem
ssl_key = <{d}/key.pem
disable_plaintext_auth = no
auth_mechanisms = {mechanisms}
auth_failure_delay = {self.auth_failure_delay} secs
auth_verbose = yes
mail_location = maildir:~/Maildir
# Roles (RFC 6154) for mailboxes a test creates; none is created automatically.
namespace inbox {{
  inbox = yes
  mailbox Junk {{
    special_use = \\Junk
  }}
  mailbox Trash {{
    special_use = \\Trash
  }}
}}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {self.passwd_dir}/%u
}}
{oauth2}userdb {{
  driver = static
  args = uid={self._mail_uid} gid={self._mail_gid} home={self.mail_root}/%u
}}
protocol imap {{
  mail_max_userip_connections = {self.max_userip_connections}
  imap_idle_notify_interval = {self.idle_notify_interval} secs
  # COMPRESS=DEFLATE (RFC 4978) on offer; clients opt in. ID (RFC 2971) fields logged.
  mail_plugins = $mail_plugins imap_zlib
  imap_id_log = *
}}
service imap-login {{
{chroot}  process_limit = 500
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {self.tls_port}
    ssl = yes
  }}
}}
service anvil {{
{chroot}{penalty}}}
"""
        )
