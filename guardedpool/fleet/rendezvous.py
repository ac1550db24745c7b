"""Rendezvous (highest random weight) hashing: which worker owns which key.

Thaler and Ravishankar, "Using name-based mappings to increase hit rates" (1998): every
(worker, key) pair gets a pseudo-random weight, and a key belongs to the live worker with
the highest weight. Every worker computes the same answer from the same list of live
workers, with no coordination; when a worker joins or leaves, only the keys it wins or
held move (about 1/N of them), and no other key changes hands.

Pure functions: no I/O, no clock.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

__all__ = ["assign", "owner", "weight"]


def weight(worker: str, key: str) -> int:
    """The 64-bit weight of ``worker`` for ``key`` (BLAKE2b: stable across processes,
    machines and Python versions, unlike ``hash()``)."""
    digest = hashlib.blake2b(
        key.encode("utf-8") + b"\x00" + worker.encode("utf-8"), digest_size=8
    ).digest()
    return int.from_bytes(digest, "big")


def owner(key: str, workers: Iterable[str]) -> str | None:
    """The worker that owns ``key`` among ``workers``; ``None`` when there is none.
    Ties (64-bit collisions) go to the greater worker id, so the answer is total."""
    best: tuple[int, str] | None = None
    for worker in workers:
        candidate = (weight(worker, key), worker)
        if best is None or candidate > best:
            best = candidate
    return None if best is None else best[1]


def assign(keys: Iterable[str], workers: Iterable[str]) -> dict[str, str]:
    """``key -> worker`` for every key (empty when there are no workers)."""
    live = sorted(set(workers))
    if not live:
        return {}
    return {key: owner(key, live) or "" for key in keys}
