"""CPU of the IMAP read path: a UID FETCH response through GuardedProtocol, no server.

The bytes a server sends for ``UID FETCH <batch> (UID FLAGS BODY.PEEK[])`` over the
corpus's messages (benchmarks/_corpus.py, the sync benchmark's) are fed to
``GuardedProtocol.data_received`` in chunks of ``--chunk`` bytes (asyncio's TLS and plain
reads deliver up to 256 KiB), batch by batch as the worker asks for them, and the
response is parsed with ``parse_fetch``. The floor, alternating with it in the same run:
the same chunks through a bare literal scanner (find each ``{n}``, skip its bytes,
keep nothing), less than any client can do: a bound, not a target. Reported: MB/s of
each and the ratio.

    python benchmarks/fetch_parse.py --quick
    python benchmarks/fetch_parse.py --profile      # cProfile's top frames of ours
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import random
import re
import time
from typing import Any

import _bench
import _corpus

from guardedpool.imap.parse import parse_fetch
from guardedpool.imap.protocol import GuardedProtocol


class _Sink(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.sent: list[bytes] = []

    def write(self, data: Any) -> None:
        self.sent.append(bytes(data))

    def is_closing(self) -> bool:
        return False

    def abort(self) -> None:
        pass


def make_batches(n_messages: int, batch: int, seed: int) -> list[bytes]:
    """Each batch's FETCH response lines, untagged (the tag is added at feed time)."""
    rng = random.Random(seed)
    blob = _corpus._text_blob(seed)
    out: list[bytes] = []
    for start in range(0, n_messages, batch):
        parts: list[bytes] = []
        for i in range(start, min(start + batch, n_messages)):
            size, kind = _corpus._size(rng)
            body = _corpus.make_message(rng, blob, "bench", i, size, kind, _corpus.BASE_TIME)
            parts.append(
                b"* %d FETCH (UID %d FLAGS (\\Seen) BODY[] {%d}\r\n" % (i + 1, i + 1, len(body))
                + body
                + b")\r\n"
            )
        out.append(b"".join(parts))
    return out


def chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


async def run_protocol(batches: list[bytes], chunk: int) -> int:
    loop = asyncio.get_running_loop()
    p = GuardedProtocol(loop)
    sink = _Sink()
    p.connection_made(sink)
    p.state = "SELECTED"
    n = 0
    for body in batches:
        task = asyncio.ensure_future(p.fetch("1:*", "(UID FLAGS BODY.PEEK[])", by_uid=True))
        await asyncio.sleep(0)
        tag = sink.sent[-1].split(b" ", 1)[0]
        for piece in chunks(body + tag + b" OK done\r\n", chunk):
            p.data_received(piece)
        response = await task
        n += len(parse_fetch([bytes(x) for x in response.lines]))
    return n


_LIT = re.compile(rb"\{(\d+)\}\r\n")


def run_floor(batches: list[bytes], chunk: int) -> int:
    n = 0
    for body in batches:
        buf = b""
        need = 0
        for piece in chunks(body, chunk):
            buf += piece
            pos = 0
            while True:
                if need:
                    take = min(need, len(buf) - pos)
                    pos += take
                    need -= take
                    if need:
                        break
                m = _LIT.search(buf, pos)
                if m is None:
                    break
                need = int(m.group(1))
                pos = m.end()
                n += 1
            buf = buf[pos:]
    return n


def main(args: argparse.Namespace) -> dict[str, Any]:
    n = 400 if args.quick else args.messages
    batches = make_batches(n, args.batch, args.seed)
    total = sum(len(b) for b in batches)
    rounds = 3 if args.quick else args.rounds
    ours: list[float] = []
    floor: list[float] = []
    for r in range(rounds):
        for kind in ("ours", "floor") if r % 2 == 0 else ("floor", "ours"):
            t0 = time.process_time()
            got = (
                asyncio.run(run_protocol(batches, args.chunk))
                if kind == "ours"
                else (run_floor(batches, args.chunk))
            )
            dt = time.process_time() - t0
            assert got == n, (kind, got, n)
            (ours if kind == "ours" else floor).append(dt)
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        asyncio.run(run_protocol(batches, args.chunk))
        prof.disable()
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(15)
        _bench.log(out.getvalue())
    mb = total / 1e6
    return {
        "benchmark": "fetch_parse",
        "quick": args.quick,
        "machine": _bench.machine(),
        "messages": n,
        "mb": mb,
        "batch": args.batch,
        "chunk": args.chunk,
        "rounds": rounds,
        "ours_mb_per_cpu_s": mb / _bench.median(ours),
        "floor_mb_per_cpu_s": mb / _bench.median(floor),
        "ours_over_floor_cpu": _bench.median(ours) / _bench.median(floor),
        "ours_cpu_s": _bench.spread(ours),
        "floor_cpu_s": _bench.spread(floor),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="400 messages, 3 rounds")
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=100, help="messages per UID FETCH")
    parser.add_argument("--chunk", type=int, default=256 * 1024, help="bytes per read")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--profile", action="store_true")
    _bench.emit(main(parser.parse_args()))
