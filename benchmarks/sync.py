"""The example sync worker against mbsync and offlineimap3, on one Dovecot corpus.

A Dovecot (tests/harness/dovecot.py) serves 50 inboxes x 1,000 messages (benchmarks/
_corpus.py: deterministic, mostly 2-50 KB, ~0.3% with 1-5 MB attachments; ~1.4 GB), over
IMAPS on 127.0.0.1. Each tool syncs every inbox from empty into its own fresh local store,
then, after the server gains 1% new messages and 1% flag changes, resyncs incrementally,
then resyncs once more with nothing changed. Tools alternate their order round by round.

Tools (``--tools``):

* ``worker``: ``python -m examples.imap_sync run --once`` (one process, its default
  settings: 8 mailboxes at once, batches of 100, default pool; SQLite store in WAL mode
  with ``store_fsync = false``, which never fsyncs, like mbsync's ``FSync no``);
* ``worker_fsync``: the worker with its default ``store_fsync = true`` (fsyncs at WAL
  checkpoints, not per message; not run by default);
* ``worker_compress``: the worker with ``compress = true`` on every account
  (COMPRESS=DEFLATE, RFC 4978; not run by default);
* ``mbsync``: ``mbsync -a``, one process, channels one after another, ``FSync no``;
* ``mbsync_parallel``: one ``mbsync`` process per inbox, all at once, ``FSync no``;
* ``mbsync_fsync``: ``mbsync -a`` with its default fsync (not run by default);
* ``mbsync_compress``: ``mbsync_parallel`` with COMPRESS=DEFLATE (RFC 4978) left on, the
  counterpart of ``worker_compress`` behind ``--shape`` (not run by default);
* ``offlineimap``: one ``offlineimap`` process per inbox, all at once (its fastest
  shape), ``fsync = false``. It is ~10x slower than the others, so by default its full
  sync runs in the first round only (``--offlineimap-rounds``);
* ``raw``: the floor, ``benchmarks/_rawfetch.py``: one asyncio process, as many inboxes
  at once as the worker (``--worker-concurrency``), each LOGIN, EXAMINE,
  ``UID FETCH 1:* (UID FLAGS BODY.PEEK[])`` over ``asyncio.open_connection(ssl=...)``,
  bodies read with ``readexactly`` and discarded (full sync only: it keeps no state);
* ``raw_files``: the same, bodies appended to one file per inbox.

None of the compared stores fsyncs per message, so the comparison is like with like.
Nor does any compress unless its name says so: mbsync 1.4 sends ``COMPRESS DEFLATE``
whenever the server offers it, and the harness's Dovecot does (``imap_zlib``, for
``worker_compress``), so every mbsync tool but ``mbsync_compress`` has mbsync's own
``DisableExtension COMPRESS=DEFLATE``. On loopback compression saves nothing and makes
Dovecot deflate every body (~1.7 CPU s more per 1,000-message inbox here, 3.8x the wall
time of one mbsync alone); the worker and the raw client compress only when asked.
Every tool writes to a freshly made ext4 filesystem (a loop-mounted sparse image; falls
back to a plain directory when that is not possible), since repeated syncs into one
directory slow down run after run. The image is made just before the tool's full sync
(not all of a round's images up front), kept for its incremental and no-change passes,
and unmounted after them; ``sync`` runs before every timed run, so no tool pays for
writing back the previous one's dirty pages. Every run is checked: message count per
inbox, and the number of \\Seen, \\Flagged and \\Answered messages per inbox, against the
corpus.

Reported per tool and phase (median over rounds): wall seconds, messages/s, MB/s, bytes
written to storage (``/proc/PID/io`` ``write_bytes``: SQLite's WAL writes every body twice),
peak RSS (the tool's own high-water mark; for many processes, the largest sum seen, sampled
every 0.05 s), CPU seconds (``cpu_s``: user + system of the tool's processes, from
``wait4``; less noisy than wall time on a shared machine; ``cpu_user_s``: the user part),
Dovecot's CPU seconds during the run (``server_cpu_s``: what the tool made the server do;
it showed mbsync's compression) and the ratios worker vs others.
Targets: the worker at least as fast as mbsync on the full and the incremental sync, and
>= 3x faster than offlineimap3.

    sudo apt-get install -y dovecot-imapd isync offlineimap3
    python benchmarks/sync.py            # 50 x 1,000, 3 rounds (~20 min)
    python benchmarks/sync.py --quick    # 5 x 200, 1 round (~1 min)

Without ``--tools``, a default tool whose program is not installed (mbsync, offlineimap)
is left out, with a line on stderr and its reason in the JSON (``tools_left_out``); a tool
named in ``--tools`` that is not installed stops the run before it starts.

``--shape 20:20`` puts every tool behind the harness's fault proxy shaped to a WAN link
(20 Mbit/s each way, 20 ms one way: ``Mode.SHAPE``) and reports the bytes each run put on
the wire (``wire_mb_down`` / ``wire_mb_up``, counted by the proxy), e.g.

    python benchmarks/sync.py --quick --tools worker,worker_compress --shape 20:20
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import imaplib
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import _bench
import _corpus
import psutil

from tests.harness.dovecot import DovecotServer
from tests.harness.proxy import FaultProxy, Mode

ALL_TOOLS = (
    "worker",
    "worker_fsync",
    "worker_compress",
    "mbsync",
    "mbsync_parallel",
    "mbsync_fsync",
    "mbsync_compress",
    "offlineimap",
    "raw",
    "raw_files",
)
DEFAULT_TOOLS = ("worker", "mbsync", "mbsync_parallel", "offlineimap", "raw", "raw_files")
# What a tool needs beyond Python and Dovecot, by the start of its name: (binary, package).
NEEDS = {"mbsync": ("mbsync", "isync"), "offlineimap": ("offlineimap", "offlineimap3")}
# The floor: a raw asyncio client (benchmarks/_rawfetch.py); it has no state to sync
# incrementally, so it runs in the full phase only.
FULL_ONLY = ("raw", "raw_files")
PHASES = ("full", "incremental", "nochange")
FLAG_LETTERS = {"S": "\\Seen", "F": "\\Flagged", "R": "\\Answered"}


# ---------------------------------------------------------------- running a tool, measured


def _status_kb(pid: int, field: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _write_bytes(pid: int) -> int | None:
    """Bytes the process caused to be written to storage so far (``/proc/PID/io``)."""
    try:
        with open(f"/proc/{pid}/io") as f:
            for line in f:
                if line.startswith("write_bytes:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def measure(
    cmds: list[list[str]],
    *,
    log: Path,
    timeout: float,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> dict[str, Any]:
    """Start every command at once; wall time until the last exits; memory, sampled.

    ``cpu_s`` is the processes' user + system CPU seconds (wait4's rusage).
    Memory is read from /proc every 0.05 s: ``peak_rss_mb`` is the largest sum of the
    processes' current RSS seen (for one process: its own high-water mark, ``VmHWM``,
    which is exact); ``sum_of_peaks_mb`` adds up each process's ``VmHWM`` (an upper
    bound when many run at once). ``ru_maxrss`` from wait4 is not used: it counts the
    Python parent's pages the child held between fork and exec.
    """
    out = open(log, "ab")  # noqa: SIM115 - closed below, after the children exit
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        for cmd in cmds
    ]
    running = {p.pid: p for p in procs}
    hwm: dict[int, int] = {}
    written: dict[int, int] = {}
    codes: dict[int, int] = {}
    cpu = 0.0
    cpu_user = 0.0
    peak_sum = 0
    timed_out = False
    try:
        while running:
            total = 0
            for pid in list(running):
                high = _status_kb(pid, "VmHWM:")
                if high is not None:
                    hwm[pid] = max(hwm.get(pid, 0), high)
                rss = _status_kb(pid, "VmRSS:")
                total += rss or 0
                wrote = _write_bytes(pid)
                if wrote is not None:
                    written[pid] = max(written.get(pid, 0), wrote)
                done_pid, status, usage = os.wait4(pid, os.WNOHANG)
                if done_pid:
                    cpu += usage.ru_utime + usage.ru_stime
                    cpu_user += usage.ru_utime
                    code = os.waitstatus_to_exitcode(status)
                    codes[pid] = code
                    running.pop(pid).returncode = code
            peak_sum = max(peak_sum, total)
            if time.perf_counter() - t0 > timeout:
                timed_out = True
                for p in running.values():
                    p.kill()
                for p in running.values():
                    p.wait(timeout=10)
                    codes[p.pid] = -9
                break
            if running:
                time.sleep(0.05)
    finally:
        out.close()
    wall = time.perf_counter() - t0
    failed = sum(1 for c in codes.values() if c != 0)
    peaks = [v * 1024 for v in hwm.values()]
    peak = max(peaks, default=0) if len(cmds) == 1 else peak_sum * 1024
    res: dict[str, Any] = {
        "wall_s": wall,
        "peak_rss_mb": peak / 2**20,
        "sum_of_peaks_mb": sum(peaks) / 2**20,
        "max_process_rss_mb": max(peaks, default=0) / 2**20,
        "processes": len(cmds),
        "failed_processes": failed,
        # Last seen (every 0.05 s) per process: the final writes of a process that exits
        # between two samples are missed; an estimate, good to a few MB.
        "storage_write_mb": sum(written.values()) / 2**20,
        # user + system CPU seconds of the processes (and their waited-for children),
        # from wait4: less noisy than wall time on a shared machine.
        "cpu_s": cpu,
        "cpu_user_s": cpu_user,
    }
    if timed_out:
        res["timed_out"] = True
    if failed or timed_out:
        res["log_tail"] = log.read_text(errors="replace")[-1500:]
    return res


# ---------------------------------------------------------------- a shaped WAN link


class ShapedLink:
    """The harness's FaultProxy in ``Mode.SHAPE``, on its own event loop in a thread."""

    def __init__(self, host: str, port: int, mbit: float, delay_ms: float) -> None:
        self.proxy = FaultProxy(host, port)
        self.proxy.set_mode(Mode.SHAPE, rate=mbit * 1e6 / 8, delay=delay_ms / 1000)
        self.mbit, self.delay_ms = mbit, delay_ms
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    @property
    def port(self) -> int:
        return self.proxy.port

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.proxy.start(), self._loop).result(10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.proxy.stop(), self._loop).result(15)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def bytes(self) -> tuple[int, int]:
        """(server->client, client->server) bytes so far."""
        stats = self.proxy.stats()
        return stats.bytes_down, stats.bytes_up


# ---------------------------------------------------------------- fresh filesystems


class Scratch:
    """A fresh ext4 filesystem per run (loop-mounted sparse image), or a plain directory."""

    def __init__(self, workdir: Path, size_gb: int, use_loop: bool) -> None:
        self.workdir = workdir
        self.size_gb = size_gb
        self.use_loop = use_loop and os.geteuid() == 0 and shutil.which("mkfs.ext4") is not None
        self._mounted: list[tuple[Path, Path]] = []
        self._seq = 0

    def make(self, label: str) -> Path:
        self._seq += 1
        mnt = self.workdir / "runs" / f"{self._seq:03d}-{label}"
        mnt.mkdir(parents=True)
        if self.use_loop:
            img = self.workdir / "runs" / f"{self._seq:03d}-{label}.img"
            try:
                subprocess.run(["truncate", "-s", f"{self.size_gb}G", str(img)], check=True)
                subprocess.run(
                    [
                        "mkfs.ext4",
                        "-q",
                        "-F",
                        "-E",
                        "lazy_itable_init=1,lazy_journal_init=1",
                        str(img),
                    ],
                    check=True,
                    capture_output=True,
                )
                subprocess.run(
                    ["mount", "-o", "loop", str(img), str(mnt)], check=True, capture_output=True
                )
                self._mounted.append((mnt, img))
            except (subprocess.CalledProcessError, OSError) as exc:
                _bench.log(f"loop mount unavailable ({exc}); using plain directories")
                self.use_loop = False
                img.unlink(missing_ok=True)
        return mnt

    def release(self, mnt: Path) -> None:
        """Unmount one run's filesystem and delete its image (its results are read)."""
        for pair in [m for m in self._mounted if m[0] == mnt]:
            subprocess.run(["umount", str(mnt)], check=False, capture_output=True)
            pair[1].unlink(missing_ok=True)
            self._mounted.remove(pair)

    def release_all(self) -> None:
        for mnt, img in self._mounted:
            subprocess.run(["umount", str(mnt)], check=False, capture_output=True)
            img.unlink(missing_ok=True)
        self._mounted.clear()
        shutil.rmtree(self.workdir / "runs", ignore_errors=True)


# ---------------------------------------------------------------- the server and its corpus


class Server:
    """Dovecot with the corpus loaded, plus the changes an incremental sync must see."""

    def __init__(self, workdir: Path, corpus: _corpus.Corpus) -> None:
        self.corpus = corpus
        users = {a: _corpus.password(a) for a in corpus.accounts}
        self.dc = DovecotServer(users, base_dir=str(workdir), max_userip_connections=100)
        # expected flag counts per account, kept up to date with every change we make
        self.expected: dict[str, dict[str, int]] = {}
        self.appended: dict[str, list[int]] = {}
        self.toggled: dict[str, list[int]] = {}

    def start(self) -> None:
        st = self.dc.mail_root.stat()
        for account in self.corpus.accounts:
            self.dc.seed_messages(account, 0)  # creates the Maildir layout, owned right
            _corpus.load_into_maildir(
                self.corpus, account, self.dc.maildir(account), st.st_uid, st.st_gid
            )
            counts = {"messages": 0, "\\Seen": 0, "\\Flagged": 0, "\\Answered": 0}
            for _, msg in self.corpus.files(account):
                counts["messages"] += 1
                for letter in msg.flags:
                    counts[FLAG_LETTERS[letter]] += 1
            self.expected[account] = counts
        # offlineimap's imaplib2 insists on a commonName, which the harness's cert (SAN only,
        # as is modern practice) lacks: reissue it from the same CA with one.
        cert = self.dc.ca.issue_cert("localhost", "127.0.0.1", common_name="localhost")
        cert.private_key_pem.write_to_path(str(self.dc.dir / "key.pem"))
        (self.dc.dir / "cert.pem").write_bytes(b"".join(b.bytes() for b in cert.cert_chain_pems))
        self.dc.start()

    def stop(self) -> None:
        self.dc.stop()

    def cpu_s(self) -> float:
        """Dovecot's user + system CPU seconds so far, all its processes together.

        The master's own, its reaped children's (every ``imap`` and ``imap-login``
        process of a finished session: the master waits for them), and its live
        descendants' (auth, anvil, sessions still open). A process reaped between the
        two reads is missed or counted twice: good to a session's worth.
        """
        pid = self.dc.pid
        if pid is None:
            return 0.0
        master = psutil.Process(pid)
        t = master.cpu_times()
        total = t.user + t.system + t.children_user + t.children_system
        for child in master.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                c = child.cpu_times()
                total += c.user + c.system
        return total

    @contextlib.contextmanager
    def imap(self, account: str) -> Iterator[imaplib.IMAP4]:
        conn = imaplib.IMAP4(self.dc.host, self.dc.port, timeout=120)
        try:
            conn.login(account, _corpus.password(account))
            yield conn
        finally:
            with contextlib.suppress(Exception):
                conn.logout()

    def warm(self) -> None:
        """Index every inbox and read every message once (Dovecot's caches, page cache)."""

        def one(account: str) -> None:
            with self.imap(account) as conn:
                conn.select("INBOX")
                conn.uid("FETCH", "1:*", "(UID FLAGS RFC822.SIZE INTERNALDATE)")
                conn.uid("FETCH", "1:*", "(BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
                _, data = conn.uid("SEARCH", "ALL")
                uids = data[0].split() if data and data[0] else []
                for i in range(0, len(uids), 100):
                    conn.uid("FETCH", b",".join(uids[i : i + 100]).decode(), "(BODY.PEEK[])")

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(one, self.corpus.accounts))

    def change(self, round_no: int, share: float) -> int:
        """Append ``share`` new messages and toggle \\Flagged on ``share`` of each inbox."""
        blob = _corpus._text_blob(self.corpus.seed)
        n_new = max(1, round(self.corpus.messages * share))
        total = 0
        for account in self.corpus.accounts:
            rng = random.Random(f"{self.corpus.seed}-{account}-change-{round_no}")
            with self.imap(account) as conn:
                conn.select("INBOX")
                _, data = conn.uid("SEARCH", "ALL")
                before = {int(u) for u in data[0].split()}
                for i in range(n_new):
                    target, kind = _corpus._size(rng)
                    when = _corpus.BASE_TIME + 10_000_000 + round_no * 100_000 + i * 60
                    msg = _corpus.make_message(rng, blob, account, 100_000 + i, target, kind, when)
                    conn.append("INBOX", None, imaplib.Time2Internaldate(when), msg)
                conn.select("INBOX")
                _, data = conn.uid("SEARCH", "ALL")
                now = {int(u) for u in data[0].split()}
                self.appended[account] = sorted(now - before)
                picks = rng.sample(sorted(before), n_new)
                flagged = self._flagged(conn, picks)
                for uid in picks:
                    op = "-FLAGS" if uid in flagged else "+FLAGS"
                    conn.uid("STORE", str(uid), op, "(\\Flagged)")
                    self.expected[account]["\\Flagged"] += -1 if uid in flagged else 1
                self.toggled[account] = picks
                self.expected[account]["messages"] += len(self.appended[account])
                total += len(self.appended[account])
        return total

    @staticmethod
    def _flagged(conn: imaplib.IMAP4, uids: list[int]) -> set[int]:
        _, data = conn.uid("FETCH", ",".join(map(str, uids)), "(UID FLAGS)")
        out = set()
        for item in data:
            line = item.decode() if isinstance(item, bytes) else item[0].decode()
            if "\\Flagged" in line:
                out.add(int(line.split("UID ")[1].split()[0].rstrip(")")))
        return out

    def restore(self) -> None:
        """Undo :meth:`change`: expunge what was appended, toggle the flags back."""
        for account in self.corpus.accounts:
            with self.imap(account) as conn:
                conn.select("INBOX")
                picks = self.toggled.get(account, [])
                if picks:
                    flagged = self._flagged(conn, picks)
                    for uid in picks:
                        op = "-FLAGS" if uid in flagged else "+FLAGS"
                        conn.uid("STORE", str(uid), op, "(\\Flagged)")
                        self.expected[account]["\\Flagged"] += -1 if uid in flagged else 1
                new = self.appended.get(account, [])
                if new:
                    conn.uid("STORE", ",".join(map(str, new)), "+FLAGS", "(\\Deleted)")
                    conn.expunge()
                    self.expected[account]["messages"] -= len(new)
            self.appended[account] = []
            self.toggled[account] = []


# ---------------------------------------------------------------- the tools


class Tools:
    def __init__(self, server: Server, args: argparse.Namespace) -> None:
        self.server = server
        self.args = args
        self.accounts = server.corpus.accounts
        dc = server.dc
        self.port = dc.tls_port
        self.cafile = dc.cafile
        self.link: ShapedLink | None = None
        if args.shape:
            mbit, _, ms = args.shape.partition(":")
            self.link = ShapedLink(dc.host, dc.tls_port, float(mbit), float(ms or 0))
            self.link.start()
            self.port = self.link.port

    # -- configs

    def worker_config(self, d: Path, fsync: bool, compress: bool = False) -> Path:
        secrets = d / "secrets.toml"
        secrets.write_text("".join(f'{a} = "{_corpus.password(a)}"\n' for a in self.accounts))
        secrets.chmod(0o600)
        lines = [
            f'store = "{d}/worker.sqlite3"',
            f"store_fsync = {'true' if fsync else 'false'}",
            f'secrets_file = "{secrets}"',
            "[sync]",
            f"concurrency = {self.args.worker_concurrency}",
            f"batch_size = {self.args.worker_batch}",
            "[health]",
            "enabled = false",
        ]
        for a in self.accounts:
            lines += [
                "[[accounts]]",
                f'key = "{a}"',
                'host = "127.0.0.1"',
                f"port = {self.port}",
                f'username = "{a}"',
                "tls = true",
                f"compress = {'true' if compress else 'false'}",
                f'cafile = "{self.cafile}"',
            ]
        path = d / "sync.toml"
        path.write_text("\n".join(lines) + "\n")
        return path

    def mbsync_config(self, d: Path, fsync: bool, compress: bool = False) -> Path:
        """One mbsyncrc with a channel per inbox (``mbsync -a`` or ``mbsync NAME``).

        ``compress=False`` adds ``DisableExtension COMPRESS=DEFLATE`` to every account:
        mbsync 1.4 compresses whenever the server offers it, as the harness's Dovecot does.
        """
        parts = [] if fsync else ["FSync no", ""]
        for a in self.accounts:
            (d / "mbsync" / a).mkdir(parents=True, exist_ok=True)
            parts += [
                f"IMAPAccount {a}",
                "Host localhost",
                f"Port {self.port}",
                f"User {a}",
                f"Pass {_corpus.password(a)}",
                "AuthMechs PLAIN",
                "SSLType IMAPS",
                f"CertificateFile {self.cafile}",
                *([] if compress else ["DisableExtension COMPRESS=DEFLATE"]),
                "",
                f"IMAPStore {a}-remote",
                f"Account {a}",
                "",
                f"MaildirStore {a}-local",
                f"Path {d}/mbsync/{a}/",
                f"Inbox {d}/mbsync/{a}/INBOX",
                "",
                f"Channel {a}",
                f"Far :{a}-remote:",
                f"Near :{a}-local:",
                "Patterns INBOX",
                "Create Near",
                "SyncState *",
                "",
            ]
        parts += ["Group all"] + [f"Channel {a}" for a in self.accounts]
        path = d / "mbsyncrc"
        path.write_text("\n".join(parts) + "\n")
        path.chmod(0o600)
        return path

    def offlineimap_configs(self, d: Path) -> list[Path]:
        out = []
        for a in self.accounts:
            (d / "offlineimap" / a).mkdir(parents=True, exist_ok=True)
            (d / "oi-meta" / a).mkdir(parents=True, exist_ok=True)
            text = f"""[general]
accounts = {a}
metadata = {d}/oi-meta/{a}
ui = quiet
fsync = false

[Account {a}]
localrepository = {a}-local
remoterepository = {a}-remote

[Repository {a}-local]
type = Maildir
localfolders = {d}/offlineimap/{a}

[Repository {a}-remote]
type = IMAP
remotehost = localhost
remoteport = {self.port}
remoteuser = {a}
remotepass = {_corpus.password(a)}
maxconnections = 1
folderfilter = lambda f: f == 'INBOX'
ssl = yes
sslcacertfile = {self.cafile}
"""
            path = d / f"offlineimap-{a}.conf"
            path.write_text(text)
            path.chmod(0o600)
            out.append(path)
        return out

    # -- runs

    def prepare(self, tool: str, d: Path) -> list[list[str]]:
        if tool.startswith("worker"):
            cfg = self.worker_config(
                d, fsync=tool == "worker_fsync", compress=tool == "worker_compress"
            )
            return [
                [sys.executable, "-m", "examples.imap_sync", "run", "--config", str(cfg), "--once"]
            ]
        if tool in ("mbsync", "mbsync_fsync"):
            cfg = self.mbsync_config(d, fsync=tool == "mbsync_fsync")
            return [["mbsync", "-q", "-c", str(cfg), "-a"]]
        if tool in ("mbsync_parallel", "mbsync_compress"):
            cfg = self.mbsync_config(d, fsync=False, compress=tool == "mbsync_compress")
            return [["mbsync", "-q", "-c", str(cfg), a] for a in self.accounts]
        if tool in FULL_ONLY:
            accounts = d / "accounts.json"
            accounts.write_text(json.dumps({a: _corpus.password(a) for a in self.accounts}))
            accounts.chmod(0o600)
            cmd = [
                sys.executable,
                str(_bench.ROOT / "benchmarks" / "_rawfetch.py"),
                f"--port={self.port}",
                f"--cafile={self.cafile}",
                f"--accounts={accounts}",
                f"--out={d}",
                f"--concurrency={self.args.worker_concurrency}",
            ]
            return [[*cmd, "--files"] if tool == "raw_files" else cmd]
        if tool == "offlineimap":
            return [
                ["offlineimap", "-o", "-u", "quiet", "-c", str(c)]
                for c in self.offlineimap_configs(d)
            ]
        raise ValueError(tool)

    def run(self, tool: str, d: Path, cmds: list[list[str]], phase: str) -> dict[str, Any]:
        env = dict(os.environ)
        root = _bench.ROOT
        if tool in ("worker", "worker_fsync", "worker_compress"):
            root = Path(self.args.worker_root)
        elif tool.startswith("worker-"):
            root = Path(self.args.variants[tool])
        env["PYTHONPATH"] = str(root) + os.pathsep + env.get("PYTHONPATH", "")
        before = self.link.bytes() if self.link is not None else (0, 0)
        os.sync()  # the previous run's dirty pages are written back now, not during this one
        server_cpu = self.server.cpu_s()
        res = measure(
            cmds,
            log=d / f"{phase}.log",
            timeout=self.args.run_timeout,
            env=env,
            cwd=root,
        )
        time.sleep(0.2)  # the sessions' imap processes exit after their clients' LOGOUT
        res["server_cpu_s"] = self.server.cpu_s() - server_cpu
        if self.link is not None:
            after = self.link.bytes()
            res["wire_mb_down"] = (after[0] - before[0]) / 2**20
            res["wire_mb_up"] = (after[1] - before[1]) / 2**20
        res["check"] = self.verify(tool, d)
        return res

    # -- verification

    def verify(self, tool: str, d: Path) -> dict[str, Any]:
        got: dict[str, dict[str, int]] = {}
        if tool in FULL_ONLY:
            with contextlib.suppress(OSError, ValueError):
                got = json.loads((d / "counts.json").read_text())
        elif tool.startswith("worker"):
            db = sqlite3.connect(f"file:{d}/worker.sqlite3?mode=ro", uri=True)
            try:
                for account, flags in db.execute("SELECT account, flags FROM messages"):
                    c = got.setdefault(account, _zero())
                    c["messages"] += 1
                    for f in flags.split():
                        if f in c:
                            c[f] += 1
            finally:
                db.close()
        else:
            base = d / ("offlineimap" if tool == "offlineimap" else "mbsync")
            for a in self.accounts:
                c = got.setdefault(a, _zero())
                for sub in ("cur", "new"):
                    folder = base / a / "INBOX" / sub
                    if not folder.is_dir():
                        continue
                    for name in os.listdir(folder):
                        c["messages"] += 1
                        info = name.rsplit(":2,", 1)[1] if ":2," in name else ""
                        for letter in info:
                            if letter in FLAG_LETTERS:
                                c[FLAG_LETTERS[letter]] += 1
        bad = {
            a: {"expected": exp, "got": got.get(a, _zero())}
            for a, exp in self.server.expected.items()
            if got.get(a, _zero()) != exp
        }
        return {
            "ok": not bad,
            "mismatched_inboxes": len(bad),
            "example": dict(list(bad.items())[:1]),
        }


def _zero() -> dict[str, int]:
    return {"messages": 0, "\\Seen": 0, "\\Flagged": 0, "\\Answered": 0}


# ---------------------------------------------------------------- main


def summarize(
    runs: dict[str, dict[str, list[dict[str, Any]]]], msgs: dict[str, int], nbytes: int
) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for tool, phases in runs.items():
        entry: dict[str, Any] = {}
        for phase, rs in phases.items():
            ok = [r for r in rs if not r.get("failed_processes") and not r.get("timed_out")]
            walls = [r["wall_s"] for r in ok]
            if not walls:
                entry[phase] = {"runs": len(rs), "failed": len(rs)}
                continue
            wall = _bench.median(walls)
            e = {
                "runs": len(rs),
                "failed": len(rs) - len(ok),
                "verified": all(r["check"]["ok"] for r in ok),
                "wall_s": _bench.spread(walls),
                "msgs_per_s": msgs[phase] / wall if msgs[phase] else None,
                "peak_rss_mb": _bench.median([r["peak_rss_mb"] for r in ok]),
                "storage_write_mb": _bench.median([r.get("storage_write_mb", 0.0) for r in ok]),
                "cpu_s": _bench.median([r.get("cpu_s", 0.0) for r in ok]),
                "cpu_user_s": _bench.median([r.get("cpu_user_s", 0.0) for r in ok]),
                "server_cpu_s": _bench.median([r.get("server_cpu_s", 0.0) for r in ok]),
                "processes": ok[0]["processes"],
            }
            if phase == "full":
                e["mb_per_s"] = nbytes / 2**20 / wall
            if "wire_mb_down" in ok[0]:
                e["wire_mb_down"] = _bench.median([r["wire_mb_down"] for r in ok])
                e["wire_mb_up"] = _bench.median([r["wire_mb_up"] for r in ok])
            entry[phase] = e
        table[tool] = entry
    return table


def ratios(
    runs: dict[str, dict[str, list[dict[str, Any]]]], table: dict[str, Any]
) -> dict[str, Any]:
    """Other tool's wall / worker's wall (> 1: the worker is faster), per phase.

    Per-round ratios (median) where both ran in the same round, else ratio of medians.
    """
    out: dict[str, Any] = {}
    if "worker" not in runs:
        return out
    for tool in runs:
        if tool == "worker":
            continue
        per_phase: dict[str, Any] = {}
        for phase in PHASES:
            w = runs["worker"].get(phase, [])
            o = runs[tool].get(phase, [])
            pairs = [
                (a["wall_s"], b["wall_s"])
                for a, b in zip(w, o, strict=False)
                if a.get("round") == b.get("round")
                and not a.get("failed_processes")
                and not b.get("failed_processes")
            ]
            if pairs:
                per_phase[phase] = _bench.median([ob / wk for wk, ob in pairs])
            else:
                try:
                    per_phase[phase] = (
                        table[tool][phase]["wall_s"]["median"]
                        / table["worker"][phase]["wall_s"]["median"]
                    )
                except (KeyError, TypeError):
                    per_phase[phase] = None
        out[f"{tool}_over_worker"] = per_phase
    return out


def main(args: argparse.Namespace) -> dict[str, Any]:
    inboxes, per_inbox = (5, 200) if args.quick else (args.inboxes, args.messages)
    rounds = args.rounds or (1 if args.quick else 3)
    oi_rounds = args.offlineimap_rounds or 1
    args.variants = {}
    for spec in args.variant:
        name, _, path = spec.partition("=")
        args.variants[f"worker-{name}"] = path
    asked = args.tools is not None
    names = args.tools.split(",") if asked else list(DEFAULT_TOOLS)
    tools = [t for t in names if t] + list(args.variants)
    for t in tools:
        if t not in ALL_TOOLS and t not in args.variants:
            raise SystemExit(f"unknown tool {t!r} (known: {', '.join(ALL_TOOLS)})")
    left_out = not_installed(tools)
    if left_out and asked:
        raise SystemExit(f"--tools asks for what is not installed: {'; '.join(left_out.values())}")
    for tool, why in left_out.items():
        _bench.log(f"leaving out default tool {tool}: {why} (--tools {tool} makes it an error)")
    tools = [t for t in tools if t not in left_out]
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    _bench.log(f"corpus {inboxes} x {per_inbox} in {workdir}")
    corpus = _corpus.Corpus(workdir, args.seed, inboxes, per_inbox).ensure()
    server = Server(workdir, corpus)
    scratch = Scratch(workdir, max(2, corpus.total_bytes * 3 // 2**30 + 2), not args.no_loop)
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {t: {} for t in tools}
    msgs = {"full": corpus.total_messages, "incremental": 0, "nochange": 0}
    changed = 0
    deadline = _bench.Deadline(args.budget)
    tool_objs: Tools | None = None
    try:
        server.start()
        t0 = time.perf_counter()
        server.warm()
        _bench.log(f"dovecot up, corpus indexed and read once in {time.perf_counter() - t0:.1f}s")
        tool_objs = Tools(server, args)
        for r in range(rounds):
            if r and deadline.left() < 0:
                _bench.log(f"time budget spent after {r} rounds")
                break
            order = tools[r % len(tools) :] + tools[: r % len(tools)]
            if r >= oi_rounds:
                order = [t for t in order if t != "offlineimap"]
            dirs: dict[str, tuple[Path, list[list[str]]]] = {}
            for phase in PHASES:
                if phase == "incremental":
                    changed = server.change(r, args.change)
                    msgs["incremental"] = changed
                for tool in order:
                    if phase != "full" and tool in FULL_ONLY:
                        continue
                    if tool not in dirs:
                        # One fresh image per tool, made right before its first run.
                        d = scratch.make(tool)
                        dirs[tool] = (d, tool_objs.prepare(tool, d))
                    d, cmds = dirs[tool]
                    _bench.log(f"round {r + 1}/{rounds} {phase}: {tool}")
                    res = tool_objs.run(tool, d, cmds, phase)
                    res["round"] = r
                    runs[tool].setdefault(phase, []).append(res)
                    _bench.log(
                        f"  {res['wall_s']:.2f}s, cpu {res['cpu_s']:.2f}s "
                        f"(user {res['cpu_user_s']:.2f}s), "
                        f"dovecot cpu {res['server_cpu_s']:.2f}s, "
                        f"peak {res['peak_rss_mb']:.0f} MB, "
                        f"check {'ok' if res['check']['ok'] else res['check']}"
                        + (
                            f", FAILED: {res.get('log_tail', '')[-300:]}"
                            if res["failed_processes"]
                            else ""
                        )
                    )
                    if phase == "nochange" or tool in FULL_ONLY:
                        scratch.release(d)
            server.restore()
            scratch.release_all()
    finally:
        scratch.release_all()
        if tool_objs is not None and tool_objs.link is not None:
            tool_objs.link.stop()
        server.stop()
    table = summarize(runs, msgs, corpus.total_bytes)
    rat = ratios(runs, table)
    targets: dict[str, Any] = {}
    for other in ("mbsync", "mbsync_parallel"):
        key = f"{other}_over_worker"
        if key in rat:
            for phase in ("full", "incremental"):
                v = rat[key].get(phase)
                targets[f"worker_at_least_as_fast_as_{other}_{phase}"] = (
                    None if v is None else v >= 1.0
                )
    if "raw_files_over_worker" in rat:
        v = rat["raw_files_over_worker"].get("full")
        targets["worker_within_1_2x_of_raw_files_full"] = None if v is None else 1 / v <= 1.2
    if "mbsync_parallel_over_worker" in rat:
        v = rat["mbsync_parallel_over_worker"].get("full")
        targets["worker_1_2x_faster_than_mbsync_parallel_full"] = None if v is None else v >= 1.2
    if "offlineimap_over_worker" in rat:
        v = rat["offlineimap_over_worker"].get("full")
        targets["worker_3x_offlineimap_full"] = None if v is None else v >= 3.0
    return {
        "benchmark": "sync",
        "quick": args.quick,
        "machine": _bench.machine(),
        "tools_versions": versions(),
        "transport": "IMAPS (implicit TLS) to Dovecot on 127.0.0.1"
        + (f", through a link shaped to {args.shape} (Mbit/s : ms one way)" if args.shape else ""),
        "corpus": corpus.summary(),
        "rounds": rounds,
        "tools": tools,
        "tools_left_out": left_out,
        "offlineimap_rounds": min(oi_rounds, rounds),
        "incremental_change": {
            "new_messages": changed,
            "flag_changes": changed,
            "share": args.change,
        },
        "fresh_filesystem_per_run": scratch.use_loop,
        "worker_settings": {
            "concurrency": args.worker_concurrency,
            "batch_size": args.worker_batch,
            "root": args.worker_root,
        },
        "results": table,
        "ratios": rat,
        "targets": targets,
        "runs": {
            t: {
                p: [{k: v for k, v in r.items() if k != "log_tail"} for r in rs]
                for p, rs in ph.items()
            }
            for t, ph in runs.items()
        },
    }


def not_installed(tools: list[str]) -> dict[str, str]:
    """The tools whose binary is not on PATH, each with why (and the package to install)."""
    left_out: dict[str, str] = {}
    for tool in tools:
        for prefix, (binary, package) in NEEDS.items():
            if tool.startswith(prefix) and shutil.which(binary) is None:
                left_out[tool] = f"{binary} not installed (apt-get install -y {package})"
    return left_out


def versions() -> dict[str, str | None]:
    def out(cmd: list[str]) -> str | None:
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
        except OSError:
            return None
        text = (p.stdout or p.stderr).strip().splitlines()
        return text[-1] if text else None

    return {
        "mbsync": out(["mbsync", "--version"]),
        "offlineimap": out(["offlineimap", "--version"]),
        "dovecot": out(["/usr/sbin/dovecot", "--version"]),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="5 inboxes x 200, one round")
    parser.add_argument("--inboxes", type=int, default=50)
    parser.add_argument("--messages", type=int, default=1000, help="per inbox")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=0, help="default 3 (quick: 1)")
    parser.add_argument(
        "--offlineimap-rounds",
        type=int,
        default=0,
        help="rounds in which offlineimap runs (default 1)",
    )
    parser.add_argument(
        "--tools",
        default=None,
        help=f"comma-separated, from {', '.join(ALL_TOOLS)}; default "
        f"{','.join(DEFAULT_TOOLS)}, leaving out (with a word on stderr and in the JSON's "
        "tools_left_out) those not installed; a tool asked for here that is not installed "
        "is an error",
    )
    parser.add_argument(
        "--change",
        type=float,
        default=0.01,
        help="share of new messages and of flag changes (default 0.01)",
    )
    parser.add_argument(
        "--worker-concurrency",
        type=int,
        default=8,
        help="the worker's [sync] concurrency (default 8, its own default)",
    )
    parser.add_argument(
        "--worker-batch",
        type=int,
        default=100,
        help="the worker's [sync] batch_size (default 100, its own default)",
    )
    parser.add_argument(
        "--worker-root",
        default=str(_bench.ROOT),
        help="run the worker (examples/ and guardedpool/) from this checkout, "
        "to measure a candidate change (default: this repository)",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="also run the worker from checkout PATH as tool worker-NAME, "
        "alternating with the others (repeatable)",
    )
    parser.add_argument(
        "--shape",
        default="",
        metavar="MBIT:MS",
        help="put every tool behind a proxy shaped to MBIT Mbit/s each way and MS ms "
        "one way (e.g. 20:20), and report wire bytes",
    )
    parser.add_argument(
        "--workdir",
        default="/var/tmp/gpbench",
        help="corpus, Dovecot and run dirs (default /var/tmp/gpbench)",
    )
    parser.add_argument(
        "--no-loop",
        action="store_true",
        help="plain directories instead of a fresh loop-mounted fs per run",
    )
    parser.add_argument(
        "--run-timeout",
        type=float,
        default=1800.0,
        help="seconds one tool run may take (default 1800)",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=3600.0,
        help="no new round starts after this many seconds (default 3600)",
    )
    _bench.raise_nofile()
    _bench.emit(main(parser.parse_args()))
