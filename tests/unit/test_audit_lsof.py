"""Parsing ``lsof -F pcftPnT`` output (the classic hunt, kept as a backend)."""

from __future__ import annotations

from guardedpool.audit.rows import OsSocket
from guardedpool.audit.scan_lsof import lsof_command, parse_lsof

SAMPLE = """p4242
cpython
f3
tIPv4
PTCP
n127.0.0.1:42583
TST=LISTEN
TQR=0
TQS=0
f4
tIPv4
PTCP
n127.0.0.1:48998->127.0.0.1:42583
TST=ESTABLISHED
TQR=0
TQS=0
f9
tIPv6
PTCP
n[::1]:5000->[::1]:993
TST=CLOSE_WAIT
f12
tIPv4
PUDP
n127.0.0.1:44761->127.0.0.1:9
f13
tIPv4
PTCP
n*:*
TST=CLOSED
"""


def drain(text: str, chunk: int = 5000) -> tuple[list[OsSocket], int]:
    steps = parse_lsof(text, chunk=chunk)
    yields = 0
    try:
        while True:
            next(steps)
            yields += 1
    except StopIteration as done:
        return done.value, yields


def test_parse_fields() -> None:
    rows, _ = drain(SAMPLE)
    assert [r.fd for r in rows] == [3, 4, 9, 12, 13]
    listen, est, v6, udp, closed = rows
    assert listen.remote is None and listen.state == "LISTEN" and listen.is_tcp
    assert est.local == ("127.0.0.1", 48998) and est.remote == ("127.0.0.1", 42583)
    assert est.inode is None and est.state == "ESTABLISHED"
    assert v6.family == "inet6" and v6.remote == ("::1", 993) and v6.state == "CLOSE_WAIT"
    assert udp.type == "dgram" and not udp.is_tcp and udp.state is None
    assert closed.state == "CLOSE" and closed.local == ("*", 0)


def test_parse_yields_between_chunks() -> None:
    rows, yields = drain(SAMPLE, chunk=10)
    assert len(rows) == 5
    assert yields == len(SAMPLE.splitlines()) // 10


def test_empty_output() -> None:
    assert drain("") == ([], 0)


def test_command_asks_for_the_fd_field() -> None:
    cmd = lsof_command(1234)
    assert cmd[cmd.index("-p") + 1] == "1234"
    assert "f" in cmd[cmd.index("-F") + 1]
