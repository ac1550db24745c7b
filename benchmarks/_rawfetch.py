"""The floor for ``sync.py``: the least an asyncio client can do to mirror the corpus.

Per inbox, on one IMAPS connection (``asyncio.open_connection(ssl=...)``): LOGIN, EXAMINE
INBOX, ``UID FETCH 1:* (UID FLAGS BODY.PEEK[])``, LOGOUT. Literals are read with
``readexactly``; nothing is parsed but the ``{n}`` of each literal and the FLAGS of each
FETCH line. Bodies are discarded, or (``--files``) appended to one file per inbox. The
per-inbox message and flag counts go to ``counts.json`` in ``--out`` for ``sync.py`` to
verify, as it does every tool's store.

Not a benchmark on its own: ``sync.py`` runs it as the tools ``raw`` and ``raw_files``.

    python benchmarks/_rawfetch.py --port 993 --cafile ca.pem --accounts accounts.json \\
        --out DIR [--files] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import ssl
import sys
from pathlib import Path
from typing import Any

_LITERAL = re.compile(rb"\{(\d+)\}\r\n$")
_FLAGS = re.compile(rb"FLAGS \(([^)]*)\)")
_WANTED = ("\\Seen", "\\Flagged", "\\Answered")


def _quoted(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


async def _command(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, tag: str, line: str
) -> None:
    writer.write(f"{tag} {line}\r\n".encode())
    prefix = f"{tag} ".encode()
    while True:
        got = await reader.readuntil(b"\r\n")
        if got.startswith(prefix):
            if not got.startswith(prefix + b"OK"):
                raise RuntimeError(f"{line.split()[0]} failed: {got[:200]!r}")
            return


async def _one(
    account: str, password: str, args: argparse.Namespace, ctx: ssl.SSLContext
) -> dict[str, int]:
    reader, writer = await asyncio.open_connection(
        args.host, args.port, ssl=ctx, server_hostname=args.host, limit=2**20
    )
    counts = {"messages": 0, **{f: 0 for f in _WANTED}}
    sink = open(Path(args.out) / f"{account}.mbox", "ab") if args.files else None  # noqa: SIM115, ASYNC230 - a floor writes as mbsync does
    try:
        await reader.readuntil(b"\r\n")  # greeting
        await _command(reader, writer, "a1", f"LOGIN {_quoted(account)} {_quoted(password)}")
        await _command(reader, writer, "a2", "EXAMINE INBOX")
        writer.write(b"a3 UID FETCH 1:* (UID FLAGS BODY.PEEK[])\r\n")
        while True:
            line = await reader.readuntil(b"\r\n")
            if line.startswith(b"a3 "):
                if not line.startswith(b"a3 OK"):
                    raise RuntimeError(f"UID FETCH failed: {line[:200]!r}")
                break
            head = line
            while True:
                literal = _LITERAL.search(line)
                if literal is None:
                    break
                body = await reader.readexactly(int(literal.group(1)))
                if sink is not None:
                    sink.write(body)
                line = await reader.readuntil(b"\r\n")
                head += line
            if head.startswith(b"* ") and b" FETCH " in head[:40]:
                counts["messages"] += 1
                flags = _FLAGS.search(head)
                if flags is not None:
                    for flag in flags.group(1).decode().split():
                        if flag in counts:
                            counts[flag] += 1
        await _command(reader, writer, "a4", "LOGOUT")
    finally:
        if sink is not None:
            sink.close()
        writer.close()
    return counts


async def main(args: argparse.Namespace, accounts: dict[str, str]) -> None:
    ctx = ssl.create_default_context(cafile=args.cafile)
    gate = asyncio.Semaphore(args.concurrency)

    async def bounded(account: str, password: str) -> tuple[str, dict[str, int]]:
        async with gate:
            return account, await asyncio.wait_for(_one(account, password, args, ctx), 1800)

    done: list[Any] = await asyncio.gather(*(bounded(a, p) for a, p in accounts.items()))
    (Path(args.out) / "counts.json").write_text(json.dumps(dict(done)))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cafile", required=True)
    parser.add_argument("--accounts", required=True, help="JSON {account: password}")
    parser.add_argument("--out", required=True)
    parser.add_argument("--files", action="store_true", help="append bodies to a file per inbox")
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    asyncio.run(main(args, json.loads(Path(args.accounts).read_text())))
    sys.exit(0)
