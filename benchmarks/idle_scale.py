"""N IDLE accounts in one process: the pool against bare asyncio connections.

A scripted IMAPS server (TLS, LOGIN, SELECT, IDLE, DONE, NOOP, LOGOUT; certificates from
trustme) runs in a child process. Two clients, each in a fresh process of its own,
alternate round by round:

* ``floor``: N ``asyncio.open_connection(ssl=...)`` that greet, LOGIN, SELECT and IDLE,
  at most ``max_connecting`` (the pool's default, 8) connecting at once;
* ``pool``: a :class:`GuardedPool` over :class:`IMAPConnector`, N accounts, each held in
  ``guardedpool.imap.idle()`` (one connection per account, ``max_total`` = N).

Measured per client, once all N are in IDLE: RSS per connection (RSS growth from before
the first connect, over N, after ``gc.collect()``), idle CPU (process CPU time over a
``--window`` of wall time, as % of a core), the longest loop stall in a second window as
long (the lateness of a 1 ms ticker; split into the time the thread waited for a CPU, its
CPU time, garbage-collection pauses and hypervisor steal, see :class:`StallProbe`; and
the same ticker in a control process that holds nothing, over the same second: how long
this machine stalls a process that does nothing, see :func:`_stall_window`), the
time of one full ``gc.collect()`` of the heap, the time to open all N, the time to close
them (the pool: ``pool.close()`` with every session still in IDLE; the floor: DONE +
LOGOUT + close on each), WARNING records logged while closing (and the first three of
them), the pool's summary line of ``close()``, and the pool's ``audit()`` time (and the
collections' pauses in it; its CPU and run-queue wait; ``audit_own_cpu_ms``: the CPU of
the audit's own steps, without what the loop ran between them, see
:func:`_bench.own_cpu`; ``audit_again_*``: the next audit).
``--gc-freeze``: both clients call ``gc.freeze()`` once all N are open. Opening and
closing also report the client's CPU seconds (``*_cpu_s``): on a shared machine they say
more than the wall times. ``--only pool`` (or ``floor``) runs one client, for development.

    python benchmarks/idle_scale.py --quick        # N = 200, 1 round
    python benchmarks/idle_scale.py --n 1000       # 2 rounds
    python benchmarks/idle_scale.py --n 10000 --rounds 1 [--gc-freeze]
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import gc
import json
import logging
import os
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _bench

MAX_CONNECTING = 8  # PoolConfig's default, given to the floor as well


# ---------------------------------------------------------------- the scripted server


async def _session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    caps = b"IMAP4rev1 IDLE"
    try:
        writer.write(b"* OK [CAPABILITY " + caps + b"] scripted ready\r\n")
        idling: bytes | None = None
        while True:
            line = await reader.readline()
            if not line:
                return
            if idling is not None:
                if line.strip().upper() == b"DONE":
                    writer.write(idling + b" OK IDLE terminated\r\n")
                    idling = None
                continue
            tag, _, rest = line.rstrip(b"\r\n").partition(b" ")
            verb = rest.split(b" ", 1)[0].upper()
            if verb == b"CAPABILITY":
                writer.write(b"* CAPABILITY " + caps + b"\r\n" + tag + b" OK done\r\n")
            elif verb == b"LOGIN":
                writer.write(tag + b" OK [CAPABILITY " + caps + b"] logged in\r\n")
            elif verb in (b"SELECT", b"EXAMINE"):
                writer.write(
                    b"* 0 EXISTS\r\n* 0 RECENT\r\n* OK [UIDVALIDITY 1] ok\r\n"
                    b"* OK [UIDNEXT 1] ok\r\n* FLAGS (\\Seen)\r\n"
                    + tag
                    + b" OK [READ-WRITE] selected\r\n"
                )
            elif verb == b"IDLE":
                idling = tag
                writer.write(b"+ idling\r\n")
            elif verb == b"LOGOUT":
                writer.write(b"* BYE bye\r\n" + tag + b" OK logged out\r\n")
                await writer.drain()
                return
            else:
                writer.write(tag + b" OK done\r\n")
    except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def _serve(certdir: Path) -> None:
    _bench.raise_nofile()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(certdir / "cert.pem", certdir / "key.pem")
    server = await asyncio.start_server(_session, "127.0.0.1", 0, ssl=ctx, backlog=4096)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    server.close()


class ServerProcess:
    def __init__(self, certdir: Path) -> None:
        self.certdir = certdir
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0

    def __enter__(self) -> ServerProcess:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "serve", str(self.certdir)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


# ---------------------------------------------------------------- measuring inside a client


class GcPauses:
    """Garbage collections while installed (``gc.callbacks``): count, longest and total
    pause, seconds, and the generation of the longest."""

    def __init__(self) -> None:
        self.count = 0
        self.longest = 0.0
        self.longest_generation = -1
        self.total = 0.0
        self._started = 0.0

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        pause = time.perf_counter() - self._started
        self.count += 1
        self.total += pause
        if pause > self.longest:
            self.longest, self.longest_generation = pause, info["generation"]

    def __enter__(self) -> GcPauses:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)


class _ProcCounter:
    """One number from a /proc file, read through an fd kept open (``pread`` at 0 makes
    procfs render the file afresh): a tick of the probe must not open and close files."""

    def __init__(self, path: str, line: int, field: int, scale: float) -> None:
        self.line, self.field, self.scale = line, field, scale
        try:
            self.fd: int | None = os.open(path, os.O_RDONLY)
        except OSError:
            self.fd = None

    def read(self) -> float:
        if self.fd is None:
            return 0.0
        try:
            text = os.pread(self.fd, 4096, 0)
            return int(text.split(b"\n")[self.line].split()[self.field]) / self.scale
        except (OSError, IndexError, ValueError):
            return 0.0

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _steal_counter() -> _ProcCounter:
    """Seconds the hypervisor gave this VM's CPUs to others, summed over CPUs (Linux
    ``/proc/stat``, ``steal``; in 10 ms ticks, so only a coarse sign); 0.0 elsewhere."""
    return _ProcCounter("/proc/stat", 0, 8, os.sysconf("SC_CLK_TCK"))


def _runqueue_counter() -> _ProcCounter:
    """Seconds this thread has waited for a CPU while runnable (Linux
    ``/proc/thread-self/schedstat``, second field, ns); 0.0 where it cannot be read."""
    return _ProcCounter("/proc/thread-self/schedstat", 0, 1, 1e9)


def _runqueue_wait() -> float:
    counter = _runqueue_counter()
    try:
        return counter.read()
    finally:
        counter.close()


LATE_MS = 2.0  # ticks later than this are listed (with their start), for comparing two probes


class StallProbe:
    """A 1 ms ticker; ``worst`` is its largest lateness (the longest loop stall), seconds.

    Each lateness is split by where the time went: ``worst_runqueue`` is how much of the
    longest stall the thread spent runnable but waiting for a CPU (the machine's other
    processes: not the loop's doing), ``worst_cpu`` the thread's CPU time in it,
    ``worst_gc`` the garbage collections' pauses in it and ``worst_steal`` the VM's steal
    time meanwhile (both CPUs, 10 ms ticks). ``busiest`` is the most CPU time the thread
    spent between two ticks: the longest the process itself held the loop. ``gc`` counts
    every collection during the probe. ``late`` lists ``(start, lateness)`` of every tick
    later than ``LATE_MS`` (``time.monotonic()`` seconds, the same clock in every process
    of the machine), at most 10,000."""

    def __init__(self) -> None:
        self.worst = self.worst_cpu = self.worst_runqueue = self.worst_gc = 0.0
        self.worst_steal = self.busiest = 0.0
        self.late: list[tuple[float, float]] = []
        self.gc = GcPauses()
        self._task: asyncio.Task[None] | None = None
        self._runqueue = _runqueue_counter()
        self._steal = _steal_counter()

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        runqueue, steal = self._runqueue.read, self._steal.read
        while True:
            before, cpu, wait, paused, stolen = (
                loop.time(),
                time.thread_time(),
                runqueue(),
                self.gc.total,
                steal(),
            )
            await asyncio.sleep(0.001)
            late = loop.time() - before - 0.001
            used = time.thread_time() - cpu
            self.busiest = max(self.busiest, used)
            if late * 1000 > LATE_MS and len(self.late) < 10_000:
                self.late.append((before, late))
            if late > self.worst:
                self.worst, self.worst_runqueue = late, runqueue() - wait
                self.worst_cpu, self.worst_gc = used, self.gc.total - paused
                self.worst_steal = steal() - stolen

    def __enter__(self) -> StallProbe:
        self.gc.__enter__()
        self._task = asyncio.get_running_loop().create_task(self._tick())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        self.gc.__exit__()
        self._runqueue.close()
        self._steal.close()

    def figures(self) -> dict[str, float]:
        """The probe's figures, ms (and the collection count)."""
        return {
            "longest_stall_ms": 1000 * self.worst,
            "longest_stall_runqueue_ms": 1000 * self.worst_runqueue,
            "longest_stall_cpu_ms": 1000 * self.worst_cpu,
            "longest_stall_gc_ms": 1000 * self.worst_gc,
            "longest_stall_steal_ms": 1000 * self.worst_steal,
            "longest_busy_ms": 1000 * self.busiest,
            "stalls_over_2_ms": len(self.late),
            "stall_window_gc_count": self.gc.count,
            "stall_window_gc_longest_ms": 1000 * self.gc.longest,
        }


async def _control_probe(seconds: float) -> None:
    """The control: the same ticker in a process that holds nothing (``python idle_scale.py
    control SECONDS``). Prints ``ready``, then after ``seconds`` one JSON line: its figures
    and its late ticks. What it sees is the machine's doing, not a pool's."""
    print("ready", flush=True)
    with StallProbe() as probe:
        await asyncio.sleep(seconds)
    print(json.dumps({**probe.figures(), "late": probe.late}), flush=True)


def _unshared(mine: list[tuple[float, float]], theirs: list[tuple[float, float]]) -> float:
    """The longest of ``mine``'s late ticks that overlaps none of ``theirs`` in time: a
    stall the control did not see at the same moment (each tick spans ``start`` to
    ``start + 1 ms + lateness``); 0.0 when every one was shared."""
    # One probe's ticks follow each other, so its spans do not overlap: of those starting
    # before ours ends, only the last can reach into ours.
    spans = sorted((s, s + 0.001 + late) for s, late in theirs)
    starts = [s for s, _ in spans]
    worst = 0.0
    for start, late in mine:
        i = bisect.bisect_left(starts, start + 0.001 + late)
        if i == 0 or spans[i - 1][1] <= start:
            worst = max(worst, late)
    return worst


async def _stall_window(seconds: float) -> dict[str, float]:
    """The longest stall over ``seconds`` (:class:`StallProbe`), with a control probe in a
    separate, empty process over the same seconds: ``control_longest_stall_ms`` is the
    longest stall this machine gave a process doing nothing, and
    ``longest_stall_unshared_ms`` the longest of this process's stalls that the control did
    not have at the same moment. On a VM whose CPUs are taken away now and then (steal),
    both probes see stalls the code under test did not cause."""
    control = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "control",
        str(seconds),
        stdout=asyncio.subprocess.PIPE,
    )
    assert control.stdout is not None
    await asyncio.wait_for(control.stdout.readline(), 60)  # "ready"
    with StallProbe() as probe:
        await asyncio.sleep(seconds)
    out = probe.figures()
    line = await asyncio.wait_for(control.stdout.readline(), 60)
    await asyncio.wait_for(control.wait(), 60)
    theirs: dict[str, Any] = json.loads(line)
    out["control_longest_stall_ms"] = theirs["longest_stall_ms"]
    out["control_longest_busy_ms"] = theirs["longest_busy_ms"]
    out["control_stalls_over_2_ms"] = theirs["stalls_over_2_ms"]
    late = [(float(s), float(x)) for s, x in theirs["late"]]
    out["longest_stall_unshared_ms"] = 1000 * _unshared(probe.late, late)
    return out


class WarningCounter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0
        self.samples: list[str] = []  # the first few, to say what the warnings were

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        if len(self.samples) < 3:
            self.samples.append(f"{record.name}: {record.getMessage()}"[:300])


class SummaryCatcher(logging.Handler):
    """Keeps the pool's one summary line of close() (its counts by outcome)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.text = ""

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("guardedpool: pool closed"):
            self.text = message


async def _idle_window(seconds: float, freeze: bool) -> dict[str, float]:
    """CPU over ``seconds`` with nothing else running, then the longest stall over as many
    seconds with the 1 ms ticker (whose own wake-ups would swamp the CPU figure).

    First one full collection, timed (``gc_full_ms``: what a generation-2 collection of
    this heap stops the loop for), then, with ``freeze``, ``gc.freeze()``: every object
    alive now moves to the permanent generation, which later collections do not walk."""
    t0 = time.perf_counter()
    gc.collect()
    out = {"gc_full_ms": 1000 * (time.perf_counter() - t0)}
    if freeze:
        gc.freeze()
        t0 = time.perf_counter()
        gc.collect()
        out["gc_full_after_freeze_ms"] = 1000 * (time.perf_counter() - t0)
    out["gc_tracked_objects"] = len(gc.get_objects()) + gc.get_freeze_count()
    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.sleep(seconds)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
    out["idle_cpu_pct_of_core"] = 100 * cpu / wall
    out.update(await _stall_window(seconds))
    return out


async def _floor_one(
    port: int, ctx: ssl.SSLContext, i: int, gate: asyncio.Semaphore
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    async with gate:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="localhost"),
            60,
        )
        await reader.readline()
        for tag, line in ((b"a1", f'LOGIN "u{i}" "pw"'.encode()), (b"a2", b"SELECT INBOX")):
            writer.write(tag + b" " + line + b"\r\n")
            while not (await reader.readline()).startswith(tag + b" "):
                pass
    writer.write(b"a3 IDLE\r\n")
    await reader.readline()  # "+ idling"
    return reader, writer


async def _floor_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        writer.write(b"DONE\r\na4 LOGOUT\r\n")
        while not (await reader.readline()).startswith(b"a4 "):
            pass
    finally:
        writer.close()


async def run_floor(n: int, port: int, cafile: str, window: float, freeze: bool) -> dict[str, Any]:
    ctx = ssl.create_default_context(cafile=cafile)
    gc.collect()
    rss0 = _bench.rss_bytes()
    gate = asyncio.Semaphore(MAX_CONNECTING)
    t0, c0 = time.perf_counter(), time.process_time()
    conns = await asyncio.gather(*(_floor_one(port, ctx, i, gate) for i in range(n)))
    open_s, open_cpu = time.perf_counter() - t0, time.process_time() - c0
    gc.collect()
    rss = _bench.rss_bytes()
    out: dict[str, Any] = {
        "open_all_s": open_s,
        "open_all_cpu_s": open_cpu,
        "rss_per_conn_kb": (rss - rss0) / n / 1000,
    }
    out.update(await _idle_window(window, freeze))
    warnings = WarningCounter()
    logging.getLogger().addHandler(warnings)
    t0, c0 = time.perf_counter(), time.process_time()
    await asyncio.wait_for(asyncio.gather(*(_floor_close(r, w) for r, w in conns)), 120)
    out["close_s"] = time.perf_counter() - t0
    out["close_cpu_s"] = time.process_time() - c0
    out["close_warnings"] = warnings.count
    return out


async def run_pool(n: int, port: int, cafile: str, window: float, freeze: bool) -> dict[str, Any]:
    pool, accounts = _bench.idle_pool(n, port, cafile)
    gc.collect()
    rss0 = _bench.rss_bytes()
    pool.start()
    t0, c0 = time.perf_counter(), time.process_time()
    sessions = await _bench.enter_idle(pool, accounts, 600)
    open_s, open_cpu = time.perf_counter() - t0, time.process_time() - c0
    gc.collect()
    rss = _bench.rss_bytes()
    out: dict[str, Any] = {
        "open_all_s": open_s,
        "open_all_cpu_s": open_cpu,
        "rss_per_conn_kb": (rss - rss0) / n / 1000,
    }
    out.update(await _idle_window(window, freeze))
    t0, c0, w0 = time.perf_counter(), time.thread_time(), _runqueue_wait()
    with GcPauses() as collections:
        report, own = await _bench.own_cpu(pool.audit())
    out["audit_ms"] = 1000 * (time.perf_counter() - t0)
    out["audit_cpu_ms"] = 1000 * (time.thread_time() - c0)
    out["audit_own_cpu_ms"] = 1000 * own
    out["audit_runqueue_ms"] = 1000 * (_runqueue_wait() - w0)
    out["audit_gc_ms"] = 1000 * collections.total
    t0, c0 = time.perf_counter(), time.thread_time()
    _, own = await _bench.own_cpu(pool.audit())  # right after the first: a warm audit
    out["audit_again_ms"] = 1000 * (time.perf_counter() - t0)
    out["audit_again_cpu_ms"] = 1000 * (time.thread_time() - c0)
    out["audit_again_own_cpu_ms"] = 1000 * own
    out["audit_findings"] = len(getattr(report, "findings", ()) or ())
    warnings = WarningCounter()
    logging.getLogger().addHandler(warnings)
    summary = SummaryCatcher()
    pool_log = logging.getLogger("guardedpool.pool")
    pool_log.addHandler(summary)
    pool_log.setLevel(logging.INFO)  # the summary line only: the handler filters
    t0, c0 = time.perf_counter(), time.process_time()
    await asyncio.wait_for(pool.close(), 600)
    out["close_s"] = time.perf_counter() - t0
    out["close_cpu_s"] = time.process_time() - c0
    out["close_warnings"] = warnings.count
    out["close_warning_samples"] = warnings.samples
    out["close_summary"] = summary.text
    for s in sessions:
        await s.stop()
    return out


def client_main(kind: str, n: int, port: int, cafile: str, window: float, freeze: bool) -> None:
    _bench.raise_nofile()
    runner = run_pool if kind == "pool" else run_floor
    result = asyncio.run(runner(n, port, cafile, window, freeze))
    result["peak_rss_mb"] = _bench_hwm_mb()
    print(json.dumps(result), flush=True)


def _bench_hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# ---------------------------------------------------------------- the orchestrator


def _client(
    kind: str, n: int, port: int, cafile: Path, window: float, freeze: bool
) -> dict[str, Any]:
    argv = [__file__, "client", kind, str(n), str(port), str(cafile), str(window), str(freeze)]
    proc = subprocess.run(
        [sys.executable, *argv],
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} client failed: {proc.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def write_certs(certdir: Path) -> None:
    """A fresh CA (``ca.pem``) and the server's key and chain for localhost and
    127.0.0.1 (``key.pem``, ``cert.pem``) in ``certdir``, for :class:`ServerProcess`."""
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert.private_key_pem.write_to_path(str(certdir / "key.pem"))
    (certdir / "cert.pem").write_bytes(b"".join(b.bytes() for b in cert.cert_chain_pems))
    ca.cert_pem.write_to_path(str(certdir / "ca.pem"))


def main(args: argparse.Namespace) -> dict[str, Any]:
    n = 200 if args.quick else args.n
    rounds = args.rounds or (1 if args.quick else 2)
    _bench.raise_nofile()
    with tempfile.TemporaryDirectory() as tmp:
        certdir = Path(tmp)
        write_certs(certdir)
        runs: dict[str, list[dict[str, Any]]] = {"floor": [], "pool": []}
        with ServerProcess(certdir) as server:
            for r in range(rounds):
                order = ["floor", "pool"] if r % 2 == 0 else ["pool", "floor"]
                if args.only:
                    order = [args.only]
                for kind in order:
                    _bench.log(f"round {r + 1}/{rounds}: {kind}, N = {n}")
                    res = _client(
                        kind, n, server.port, certdir / "ca.pem", args.window, args.gc_freeze
                    )
                    res["round"] = r
                    runs[kind].append(res)
                    _bench.log(f"  {res}")
                    time.sleep(1)  # let the server drop the closed sessions
    if args.only:
        return {
            "benchmark": "idle_scale",
            "n": n,
            "only": args.only,
            "gc_freeze": args.gc_freeze,
            "runs": runs,
        }
    keys = sorted({k for rs in runs.values() for r in rs for k in r if k != "round"})
    table = {
        kind: {
            k: _bench.median([r[k] for r in rs if k in r])
            for k in keys
            if isinstance(rs[0].get(k), (int, float))
        }
        for kind, rs in runs.items()
    }
    ratios = {
        "rss_per_conn_pool_over_floor": _bench.ratio(
            table["pool"]["rss_per_conn_kb"], table["floor"]["rss_per_conn_kb"]
        ),
        "open_all_cpu_pool_over_floor": _bench.median(
            [
                p["open_all_cpu_s"] / f["open_all_cpu_s"]
                for p, f in zip(runs["pool"], runs["floor"], strict=True)
            ]
        ),
        "open_all_pool_over_floor": _bench.median(
            [
                p["open_all_s"] / f["open_all_s"]
                for p, f in zip(runs["pool"], runs["floor"], strict=True)
            ]
        ),
    }
    pool = table["pool"]
    goals = {
        "rss_per_conn_le_64_kb": pool["rss_per_conn_kb"] <= 64,
        "idle_cpu_le_0_3_pct": pool["idle_cpu_pct_of_core"] <= 0.3,
        "longest_stall_le_5_ms": pool["longest_stall_ms"] <= 5,
        "open_all_le_1_2x_floor": ratios["open_all_pool_over_floor"] <= 1.2,
        "close_le_2_s": pool["close_s"] <= 2,
        "audit_le_50_ms": pool["audit_ms"] <= 50,
    }
    return {
        "benchmark": "idle_scale",
        "quick": args.quick,
        "machine": _bench.machine(),
        "load_average": os.getloadavg(),
        "n": n,
        "rounds": rounds,
        "idle_window_s": args.window,
        "gc_freeze": args.gc_freeze,
        "results": table,
        "ratios": ratios,
        "goals_at_this_n": goals,
        "runs": runs,
    }


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        asyncio.run(_serve(Path(sys.argv[2])))
        sys.exit(0)
    if sys.argv[1:2] == ["control"]:
        asyncio.run(_control_probe(float(sys.argv[2])))
        sys.exit(0)
    if sys.argv[1:2] == ["client"]:
        kind, n, port, cafile, window, freeze = sys.argv[2:8]
        client_main(kind, int(n), int(port), cafile, float(window), freeze == "True")
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="N = 200, one round")
    parser.add_argument("--n", type=int, default=1000, help="accounts (default 1000)")
    parser.add_argument("--rounds", type=int, default=0, help="default 2 (quick: 1)")
    parser.add_argument(
        "--only",
        choices=("floor", "pool"),
        default=None,
        help="run one client only (development: no ratios, no goals)",
    )
    parser.add_argument(
        "--window", type=float, default=10.0, help="seconds of idle measured (default 10)"
    )
    parser.add_argument(
        "--gc-freeze",
        action="store_true",
        help="both clients call gc.freeze() once all N are open (see the README)",
    )
    _bench.emit(main(parser.parse_args()))
