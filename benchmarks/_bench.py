"""Helpers shared by the benchmark scripts: statistics, machine facts, JSON out, limits.

Not part of guardedpool. Every script imports this as ``_bench`` (the scripts' own folder
is first on ``sys.path`` when run as ``python benchmarks/NAME.py``); it also puts the
repository root on ``sys.path`` so ``tests.harness`` and ``examples`` import from a fresh
clone without installing anything beyond the package itself.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    # appended, not prepended: PYTHONPATH=/some/other/checkout can still measure another copy
    sys.path.append(str(ROOT))


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, min and max: enough to see how noisy a figure was."""
    if not values:
        return {"median": float("nan"), "min": float("nan"), "max": float("nan")}
    return {"median": median(values), "min": float(min(values)), "max": float(max(values))}


def ratio(a: float, b: float) -> float:
    return a / b if b else float("inf")


def rounded(obj: Any, digits: int = 4) -> Any:
    """Floats rounded to ``digits`` significant places, recursively, for readable JSON."""
    if isinstance(obj, float):
        if obj != obj or obj in (float("inf"), float("-inf")):
            return str(obj)
        return float(f"{obj:.{digits}g}")
    if isinstance(obj, dict):
        return {k: rounded(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [rounded(v, digits) for v in obj]
    return obj


def emit(result: dict[str, Any]) -> None:
    """The one line of machine-readable output a script prints (to stdout)."""
    json.dump(rounded(result), sys.stdout, indent=2)
    sys.stdout.write("\n")
    sys.stdout.flush()


def log(msg: str) -> None:
    """Progress for humans: stderr, so stdout stays pure JSON."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


async def with_longest_stall(work: Callable[[], Awaitable[T]]) -> tuple[T, float]:
    """``work()``'s result, and the longest gap (s) between two turns of a task that only
    yields while it ran: the loop stall ``work`` caused (or suffered)."""
    done = False
    worst = 0.0

    async def ticker() -> None:
        nonlocal worst
        last = time.perf_counter()
        while not done:
            await asyncio.sleep(0)
            now = time.perf_counter()
            worst = max(worst, now - last)
            last = now

    tick = asyncio.get_running_loop().create_task(ticker())
    await asyncio.sleep(0)
    try:
        result = await work()
    finally:
        done = True
        await tick
    return result, worst


async def own_cpu(coro: Coroutine[Any, Any, T]) -> tuple[T, float]:
    """``coro``'s result, and this thread's CPU seconds spent inside its own steps.

    The coroutine is driven by hand, one step (``send``) at a time, each step timed with
    ``time.thread_time()``; between two steps this task awaits what the step yielded (a
    future, or a bare yield: one loop turn), so the event loop runs as it would under
    ``await coro``, but its work (callbacks, timers falling due, other tasks) is not
    counted. An exception from what it awaited is thrown into ``coro``, as ``await`` does.
    """
    spent = 0.0
    throw: BaseException | None = None
    while True:
        t0 = time.thread_time()
        try:
            yielded = coro.send(None) if throw is None else coro.throw(throw)
        except StopIteration as done:
            spent += time.thread_time() - t0
            return done.value, spent
        spent += time.thread_time() - t0
        throw = None
        try:
            if yielded is None:
                await asyncio.sleep(0)
            else:
                await yielded
        except BaseException as exc:  # handed to the coroutine, as await does
            throw = exc


def loopback_accounts(n: int, port: int, cafile: str) -> dict[str, Any]:
    """``n`` IMAPS accounts ``u0`` .. ``u{n-1}`` (password ``pw``) on 127.0.0.1:``port``,
    trusting the CA in ``cafile`` for the name ``localhost``: the scripted server's users.
    guardedpool is imported here, so a script can choose which checkout to measure first."""
    import ssl

    from guardedpool.imap import IMAPAccount

    ctx = ssl.create_default_context(cafile=cafile)
    return {
        f"u{i}": IMAPAccount(
            host="127.0.0.1",
            port=port,
            username=f"u{i}",
            password="pw",
            ssl_context=ctx,
            server_hostname="localhost",
        )
        for i in range(n)
    }


def idle_pool(n: int, port: int, cafile: str) -> tuple[Any, dict[str, Any]]:
    """A :class:`GuardedPool` (not started) over :func:`loopback_accounts`, as the
    10,000-connection scripts hold them: one connection per account (``max_per_key`` 1,
    ``max_total`` ``n``), acquires bounded at 300 s; returns (pool, accounts)."""
    from guardedpool import GuardedPool, PoolConfig
    from guardedpool.imap import IMAPConnector

    accounts = loopback_accounts(n, port, cafile)
    config = PoolConfig(max_per_key=1, max_total=n, acquire_timeout=300.0)
    return GuardedPool(IMAPConnector(accounts), config), accounts


async def enter_idle(pool: Any, keys: Iterable[str], timeout: float) -> list[Any]:
    """One ``idle()`` session per key, entered, and each one's first event (CONNECTED)
    awaited, all within ``timeout`` seconds; returns the sessions (exit them to end)."""
    from guardedpool.imap.idle import idle

    sessions = [idle(pool, key) for key in keys]
    for s in sessions:
        await s.__aenter__()

    async def connected(session: Any) -> None:
        event = await session.__aiter__().__anext__()
        if event.kind != "CONNECTED":
            raise RuntimeError(f"first IDLE event {event}")

    await asyncio.wait_for(asyncio.gather(*(connected(s) for s in sessions)), timeout)
    return sessions


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_rev() -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def machine() -> dict[str, Any]:
    """The facts a reader needs to compare a table with their own machine."""
    mem_total = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_total = int(line.split()[1]) * 1024
    except OSError:
        pass
    return {
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "mem_total_bytes": mem_total,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "git": _git_rev(),
    }


def raise_nofile(wanted: int | None = None) -> tuple[int, int]:
    """Raise the RLIMIT_NOFILE soft limit to ``wanted`` (default: the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if wanted is None else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def rss_bytes(pid: int | None = None) -> int:
    """Current resident set size, from /proc (no psutil needed)."""
    path = f"/proc/{pid or 'self'}/statm"
    pages = int(Path(path).read_text().split()[1])
    return pages * resource.getpagesize()


class Deadline:
    """A script's overall time budget: loops ask ``left()`` and stop adding rounds."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    def passed(self) -> bool:
        return self.left() <= 0


# ---------------------------------------------------------------- a LineServer in its own process


class LineServerProcess:
    """A :class:`guardedpool.testing.LineServer` on 127.0.0.1 in a child process.

    Its sockets then count neither against our ``RLIMIT_NOFILE`` nor in our memory, and it
    gets the other CPU. ``with LineServerProcess() as srv: srv.port``; stopped by closing
    its stdin (so it also ends if we die).
    """

    def __init__(self) -> None:
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0

    def __enter__(self) -> LineServerProcess:
        raise_nofile()  # the child inherits the raised soft limit
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "line-server"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.strip():
            self.__exit__()
            raise RuntimeError("line server did not start")
        self.port = int(line)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def fd_count(self) -> int:
        try:
            return len(os.listdir(f"/proc/{self.pid}/fd"))
        except OSError:
            return 0

    def wait_quiet(self, below: int = 200, timeout: float = 30.0) -> None:
        """Wait (bounded) until the server has dropped the previous run's sockets."""
        end = time.monotonic() + timeout
        while self.fd_count() > below and time.monotonic() < end:
            time.sleep(0.1)

    def __exit__(self, *exc: object) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


async def _serve_lines() -> None:
    import asyncio

    from guardedpool.testing import LineServer

    raise_nofile()
    server = await LineServer("127.0.0.1", 0).start()
    print(server.port, flush=True)
    # Serve until the parent closes our stdin (or dies).
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await server.stop()


if __name__ == "__main__" and sys.argv[1:] == ["line-server"]:
    import asyncio

    asyncio.run(_serve_lines())
