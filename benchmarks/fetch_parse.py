"""CPU of the IMAP read path: a UID FETCH response through GuardedProtocol, no server.

The bytes Dovecot sends for the worker's ``UID FETCH <batch> (UID FLAGS RFC822.SIZE
BODY.PEEK[])`` (``FETCH_NEW`` in ``examples/imap_sync/mailbox.py``) over the corpus's
messages (benchmarks/_corpus.py, the sync benchmark's) are fed to
``GuardedProtocol.data_received`` in chunks of ``--chunk`` bytes (asyncio's TLS and plain
reads deliver up to 256 KiB), batch by batch as the worker asks for them, and the
response is parsed with ``parse_fetch``. The floor, alternating with it in the same run:
the same chunks through a bare literal scanner (find each ``{n}``, skip its bytes,
keep nothing), less than any client can do: a bound, not a target. Reported: MB/s of
each and the ratio.

``--tls`` adds the read path as the worker runs it over IMAPS: the same responses,
encrypted beforehand by a server ``ssl.SSLObject`` (TLS 1.3, certificates from trustme),
fed in ``--chunk`` bytes of ciphertext to our TLS layer (``imap/tls.py``) under the
protocol. Only the client's side is timed (decryption, framing, routing, parsing).

    python benchmarks/fetch_parse.py --quick
    python benchmarks/fetch_parse.py --tls          # also through imap/tls.py
    python benchmarks/fetch_parse.py --profile      # cProfile's top frames of ours
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import pstats
import random
import re
import ssl
import time
from typing import Any

import _bench
import _corpus

from guardedpool.imap.parse import parse_fetch
from guardedpool.imap.protocol import GuardedProtocol
from guardedpool.imap.tls import TLSLayer, TLSTransport
from tests.harness.tlsctx import tls_contexts

QUERY = "(UID FLAGS RFC822.SIZE BODY.PEEK[])"


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
                b"* %d FETCH (UID %d FLAGS (\\Seen) RFC822.SIZE %d BODY[] {%d}\r\n"
                % (i + 1, i + 1, len(body), len(body))
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
        task = asyncio.ensure_future(p.fetch("1:*", QUERY, by_uid=True))
        await asyncio.sleep(0)
        tag = sink.sent[-1].split(b" ", 1)[0]
        for piece in chunks(body + tag + b" OK done\r\n", chunk):
            p.data_received(piece)
        response = await task
        n += len(parse_fetch([bytes(x) for x in response.lines]))
    return n


class _Wire(asyncio.Transport):
    """The plain transport under our TLS layer: what the client writes goes to the server."""

    def __init__(self, server_in: ssl.MemoryBIO) -> None:
        super().__init__()
        self.server_in = server_in

    def write(self, data: Any) -> None:
        self.server_in.write(bytes(data))

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def abort(self) -> None:
        pass

    def close(self) -> None:
        pass


async def run_tls(
    batches: list[bytes], chunk: int, contexts: tuple[ssl.SSLContext, ssl.SSLContext]
) -> tuple[int, float]:
    """The batches through TLSLayer -> GuardedProtocol -> parse_fetch; (messages, CPU s)
    of the client's side only."""
    server_ctx, client_ctx = contexts
    loop = asyncio.get_running_loop()
    s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    p = GuardedProtocol(loop)

    def attach(transport: TLSTransport) -> None:
        p.connection_made(transport)

    layer = TLSLayer(_Wire(s_in), p, client_ctx, "imap.test", attach)
    handshake = asyncio.ensure_future(layer.handshake(10.0))
    for _ in range(20):
        await asyncio.sleep(0)
        with contextlib.suppress(ssl.SSLWantReadError):
            server.do_handshake()
        if s_out.pending:
            layer.data_received(s_out.read())
        if handshake.done():
            break
    await handshake
    p.state = "SELECTED"
    n = 0
    cpu = 0.0
    for body in batches:
        task = asyncio.ensure_future(p.fetch("1:*", QUERY, by_uid=True))
        await asyncio.sleep(0)
        while True:  # the server reads the command (and any session tickets' answers)
            try:
                sent = server.read(1 << 16)
            except ssl.SSLWantReadError:
                continue
            if sent.endswith(b"\r\n"):
                break
        tag = sent.split(b" ", 1)[0]
        plain = memoryview(body + tag + b" OK done\r\n")
        while plain:
            plain = plain[server.write(plain) :]
        cipher = s_out.read()
        t0 = time.process_time()
        for piece in chunks(cipher, chunk):
            layer.data_received(piece)
        response = await task
        n += len(parse_fetch([bytes(x) for x in response.lines]))
        cpu += time.process_time() - t0
    return n, cpu


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
    tls: list[float] = []
    kinds = ["ours", "floor", *(["tls"] if args.tls else [])]
    contexts = tls_contexts("imap.test") if args.tls else None
    for r in range(rounds):
        for kind in kinds if r % 2 == 0 else kinds[::-1]:
            t0 = time.process_time()
            if kind == "tls":
                assert contexts is not None
                got, dt = asyncio.run(run_tls(batches, args.chunk, contexts))
            else:
                got = (
                    asyncio.run(run_protocol(batches, args.chunk))
                    if kind == "ours"
                    else (run_floor(batches, args.chunk))
                )
                dt = time.process_time() - t0
            assert got == n, (kind, got, n)
            {"ours": ours, "floor": floor, "tls": tls}[kind].append(dt)
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        asyncio.run(run_protocol(batches, args.chunk))
        prof.disable()
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(15)
        _bench.log(out.getvalue())
    mb = total / 1e6
    through_tls = (
        {"tls_mb_per_cpu_s": mb / _bench.median(tls), "tls_cpu_s": _bench.spread(tls)}
        if tls
        else {}
    )
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
        **through_tls,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="400 messages, 3 rounds")
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=100, help="messages per UID FETCH")
    parser.add_argument("--chunk", type=int, default=256 * 1024, help="bytes per read")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--tls", action="store_true", help="also through imap/tls.py")
    parser.add_argument("--profile", action="store_true")
    _bench.emit(main(parser.parse_args()))
