"""UID sets and batches: pure helpers, so the mailbox sync reads as the algorithm it is."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

__all__ = ["batches", "uid_set"]


def uid_set(uids: Iterable[int]) -> str:
    """``[1, 2, 3, 5, 9, 10]`` -> ``"1:3,5,9:10"`` (sorted, duplicates dropped).

    Compact ranges keep a command line short: servers limit line length (Dovecot 64 KiB),
    and a batch of a few hundred sparse UIDs written out one by one can come close.
    """
    ordered = sorted(set(uids))
    if not ordered:
        raise ValueError("an IMAP UID set cannot be empty")
    if ordered[0] < 1:
        raise ValueError(f"UIDs start at 1, got {ordered[0]}")
    parts: list[str] = []
    start = prev = ordered[0]
    for uid in ordered[1:]:
        if uid == prev + 1:
            prev = uid
            continue
        parts.append(str(start) if start == prev else f"{start}:{prev}")
        start = prev = uid
    parts.append(str(start) if start == prev else f"{start}:{prev}")
    return ",".join(parts)


def batches(uids: Sequence[int], size: int) -> Iterator[Sequence[int]]:
    """Consecutive slices of at most ``size`` UIDs, in order."""
    if size < 1:
        raise ValueError(f"batch size must be >= 1, got {size}")
    for i in range(0, len(uids), size):
        yield uids[i : i + size]
