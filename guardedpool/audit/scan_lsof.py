"""The lsof view: the classic leak hunt, kept as a selectable backend and a cross-check.

``lsof -a -p PID -n -P -w -i -F pcftPnT`` lists this process's internet sockets as one
field per line (``f`` fd, ``t`` IPv4/IPv6, ``P`` TCP/UDP, ``n`` "local->remote",
``TST=`` state). It is an independent program reading the kernel's tables, which is why
tests use it to check the other views; it is also the slowest (a process spawn and a
full text parse) and, like psutil, it does not show sockets in state CLOSE.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Generator

from .rows import Address, OsSocket

__all__ = ["lsof_command", "parse_lsof", "run_lsof"]

_FAMILIES = {"IPv4": "inet", "IPv6": "inet6"}
_TYPES = {"TCP": "stream", "UDP": "dgram"}
# lsof spells a few states differently across platforms; use the Linux kernel's names.
_STATES = {
    "CLOSED": "CLOSE",
    "FIN_WAIT_1": "FIN_WAIT1",
    "FIN_WAIT_2": "FIN_WAIT2",
    "SYN_RECEIVED": "SYN_RECV",
}


def lsof_command(pid: int | None = None) -> list[str]:
    """``-F`` needs ``f`` for the fd (``-F cnT`` prints none); ``-w`` drops warnings."""
    pid = os.getpid() if pid is None else pid
    return ["lsof", "-a", "-p", str(pid), "-n", "-P", "-w", "-i", "-F", "pcftPnT"]


async def run_lsof(pid: int | None = None) -> str:
    """lsof's ``-F`` output for this process (default: ours).

    Unbounded by itself: the caller wraps it in ``asyncio.timeout``; on timeout or
    cancellation lsof is killed and reaped. Raises FileNotFoundError without lsof.
    Exit status 1 with empty output means "no internet sockets", not a failure.
    """
    proc = await asyncio.create_subprocess_exec(
        *lsof_command(pid),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        out, _ = await proc.communicate()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await asyncio.shield(proc.wait())
        raise
    if proc.returncode not in (0, 1):
        raise OSError(f"lsof exited with status {proc.returncode}")
    return out.decode("utf-8", "replace")


def _address(text: str) -> Address | None:
    host, sep, port = text.rpartition(":")
    if not sep:
        return None
    host = host.strip("[]")
    return (host, int(port) if port.isdigit() else 0)


def _row(fields: dict[str, str]) -> OsSocket | None:
    fd = fields.get("f", "")
    if not fd.isdigit():
        return None
    local_text, _, remote_text = fields.get("n", "").partition("->")
    state = fields.get("TST")
    return OsSocket(
        fd=int(fd),
        inode=None,
        family=_FAMILIES.get(fields.get("t", "")),
        type=_TYPES.get(fields.get("P", "")),
        local=_address(local_text) if local_text else None,
        remote=_address(remote_text) if remote_text else None,
        state=_STATES.get(state, state) if state else None,
    )


def parse_lsof(text: str, *, chunk: int = 5000) -> Generator[None, None, list[OsSocket]]:
    """Rows from ``-F pcftPnT`` output; yields every ``chunk`` lines so a caller can
    give the event loop a turn (tens of thousands of lines take tens of milliseconds)."""
    rows: list[OsSocket] = []
    fields: dict[str, str] = {}
    for i, line in enumerate(text.splitlines(), 1):
        if not line:
            continue
        tag = line[0]
        if tag == "f":
            row = _row(fields) if fields else None
            if row is not None:
                rows.append(row)
            fields = {"f": line[1:]}
        elif tag == "T":
            name, _, value = line[1:].partition("=")
            fields["T" + name] = value
        elif tag in "tPn" and fields:
            fields[tag] = line[1:]
        elif tag == "p":
            fields = {}
        if i % chunk == 0:
            yield
    row = _row(fields) if fields else None
    if row is not None:
        rows.append(row)
    return rows
