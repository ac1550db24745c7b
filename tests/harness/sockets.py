"""Count and describe this process's sockets, for the per-module leak check.

The library promises that nothing it does leaves a socket behind; the kernel's view in
``/proc/self/fd`` is the one witness that cannot be fooled by our own bookkeeping.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["describe_sockets", "socket_fds"]


def socket_fds() -> dict[int, int]:
    """fd -> socket inode for every socket fd this process holds (a dup counts twice)."""
    found: dict[int, int] = {}
    for entry in os.scandir("/proc/self/fd"):
        try:
            target = os.readlink(entry.path)
        except OSError:
            continue  # closed between listing and readlink (e.g. the scandir fd itself)
        if target.startswith("socket:["):
            found[int(entry.name)] = int(target[len("socket:[") : -1])
    return found


def _hex_addr(text: str) -> str:
    host, port = text.split(":")
    if len(host) == 8:  # IPv4, little-endian
        octets = [str(int(host[i : i + 2], 16)) for i in range(6, -1, -2)]
        return f"{'.'.join(octets)}:{int(port, 16)}"
    return f"[{host}]:{int(port, 16)}"


_TCP_STATES = {
    "01": "ESTABLISHED", "02": "SYN_SENT", "03": "SYN_RECV", "04": "FIN_WAIT1",
    "05": "FIN_WAIT2", "06": "TIME_WAIT", "07": "CLOSE", "08": "CLOSE_WAIT",
    "09": "LAST_ACK", "0A": "LISTEN", "0B": "CLOSING",
}  # fmt: skip


def describe_sockets(inodes: set[int]) -> dict[int, str]:
    """inode -> "tcp 127.0.0.1:a -> 127.0.0.1:b ESTABLISHED" (or "unix"/"udp"/"?")."""
    out: dict[int, str] = {}
    for kind in ("tcp", "tcp6", "udp", "udp6"):
        try:
            lines = Path(f"/proc/net/{kind}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) > 9 and int(cols[9]) in inodes:
                state = _TCP_STATES.get(cols[3], cols[3]) if kind.startswith("tcp") else ""
                out[int(cols[9])] = (
                    f"{kind} {_hex_addr(cols[1])} -> {_hex_addr(cols[2])} {state}".rstrip()
                )
    try:
        for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
            cols = line.split()
            if len(cols) > 6 and int(cols[6]) in inodes:
                out[int(cols[6])] = "unix " + (cols[7] if len(cols) > 7 else "(unnamed)")
    except OSError:
        pass
    return {ino: out.get(ino, "?") for ino in inodes}
