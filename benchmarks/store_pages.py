"""The worker's SQLite store: what its page size and journal mode cost per byte stored.

Stores the first ``--inboxes`` inboxes of ``sync.py``'s corpus (the same files, read
into memory first) through :meth:`examples.imap_sync.store.Store.store_batch`, batches of
100 as the worker does, into a fresh file per configuration, one thread, no network.
Configurations alternate round by round. Reported per configuration (median of rounds):
CPU seconds of the process (user + system), bytes the process dirtied for storage
(``/proc/self/io`` ``write_bytes``: a page rewritten before write-back counts once), and
the size of the database file, each also as a multiple of the bodies' bytes.

Journal modes: ``wal`` is the store's; ``persist`` (a rollback journal kept between
transactions) is measured as the alternative that writes a page appended to the file
once. ``--fsync`` opens the store with ``fsync=True`` (its default: ``synchronous=NORMAL``).

    python benchmarks/store_pages.py --inboxes 10 --rounds 5
    python benchmarks/store_pages.py --quick      # 2 inboxes, 1 round
"""

from __future__ import annotations

import argparse
import os
import resource
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

import _bench
import _corpus

from examples.imap_sync.store import NewMessage, Store

CONFIGS = ("wal:65536", "wal:32768", "wal:16384", "wal:4096", "persist:32768")


def _write_bytes() -> int:
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    return 0


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run_one(
    path: Path, journal: str, page_size: int, boxes: dict[str, list[bytes]], fsync: bool
) -> dict[str, Any]:
    db = sqlite3.connect(path)  # a new file takes its page size from the first write
    db.execute(f"PRAGMA page_size={page_size}")
    db.execute("VACUUM")
    db.close()
    store = Store.open(path, fsync=fsync)
    if journal != "wal":
        # The store's own connection, so the mode holds for its writes (not persistent).
        store._db.execute("PRAGMA journal_mode=DELETE")
        store._db.execute(f"PRAGMA journal_mode={journal}")
    store.ensure_account("a", "127.0.0.1", "a")
    for name in boxes:
        store.mailbox("a", name)
        store.reset_mailbox("a", name, 1)
    os.sync()
    cpu0, w0 = _cpu(), _write_bytes()
    for name, bodies in boxes.items():
        for start in range(0, len(bodies), 100):
            batch = [
                NewMessage(uid, ("\\Seen",), raw)
                for uid, raw in enumerate(bodies[start : start + 100], start + 1)
            ]
            store.store_batch("a", name, 1, batch)
    store.close()
    cpu, written = _cpu() - cpu0, _write_bytes() - w0
    size = path.stat().st_size
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return {"cpu_s": cpu, "written_mb": written / 2**20, "file_mb": size / 2**20}


def main(args: argparse.Namespace) -> dict[str, Any]:
    if args.quick:
        args.inboxes, args.rounds = 2, 1
    corpus = _corpus.Corpus(Path(args.workdir), args.seed, args.corpus_inboxes, 1000).ensure()
    boxes = {
        a: [path.read_bytes() for path, _ in corpus.files(a)]
        for a in corpus.accounts[: args.inboxes]
    }
    nbytes = sum(len(b) for bodies in boxes.values() for b in bodies)
    configs = args.configs.split(",")
    runs: dict[str, list[dict[str, Any]]] = {c: [] for c in configs}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for r in range(args.rounds):
            for c in configs[r % len(configs) :] + configs[: r % len(configs)]:
                journal, _, size = c.partition(":")
                res = run_one(Path(tmp) / "s.sqlite3", journal, int(size), boxes, args.fsync)
                _bench.log(f"round {r + 1} {c}: {res}")
                runs[c].append(res)
    table = {}
    for c, rs in runs.items():
        row = {k: _bench.median([x[k] for x in rs]) for k in ("cpu_s", "written_mb", "file_mb")}
        row["written_x_bodies"] = row["written_mb"] * 2**20 / nbytes
        row["file_x_bodies"] = row["file_mb"] * 2**20 / nbytes
        table[c] = row
    return {
        "benchmark": "store_pages",
        "machine": _bench.machine(),
        "bodies": {"messages": sum(len(b) for b in boxes.values()), "mb": nbytes / 2**20},
        "fsync": args.fsync,
        "rounds": args.rounds,
        "results": table,
        "runs": runs,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 inboxes, 1 round")
    parser.add_argument("--inboxes", type=int, default=10, help="corpus inboxes stored")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--configs", default=",".join(CONFIGS), help="JOURNAL:PAGE_SIZE,...")
    parser.add_argument("--fsync", action="store_true", help="the store's fsync=True")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--corpus-inboxes", type=int, default=50, help="the sync.py corpus to read (50 x 1000)"
    )
    parser.add_argument("--workdir", default="/var/tmp/gpbench", help="where the corpus is")
    parser.add_argument("--dir", default="/var/tmp", help="where the store files are made")
    _bench.emit(main(parser.parse_args()))
