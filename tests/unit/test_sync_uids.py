"""UID set compression and batching (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from examples.imap_sync.uids import batches, uid_set


@pytest.mark.parametrize(
    ("uids", "expected"),
    [
        ([1], "1"),
        ([1, 2, 3], "1:3"),
        ([5, 1, 2, 3, 9, 10], "1:3,5,9:10"),
        ([7, 7, 8], "7:8"),
        ([2, 4, 6], "2,4,6"),
    ],
)
def test_uid_set(uids: list[int], expected: str) -> None:
    assert uid_set(uids) == expected


@pytest.mark.parametrize("uids", [[], [0, 1], [-3]])
def test_uid_set_rejects(uids: list[int]) -> None:
    with pytest.raises(ValueError):
        uid_set(uids)


def _expand(text: str) -> set[int]:
    out: set[int] = set()
    for part in text.split(","):
        lo, _, hi = part.partition(":")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


@given(st.sets(st.integers(1, 500), min_size=1))
def test_uid_set_round_trips(uids: set[int]) -> None:
    assert _expand(uid_set(uids)) == uids


@given(st.lists(st.integers(1, 10**6), max_size=60), st.integers(1, 13))
def test_batches_cover_in_order(uids: list[int], size: int) -> None:
    parts = list(batches(uids, size))
    assert [u for part in parts for u in part] == uids
    assert all(1 <= len(p) <= size for p in parts)


def test_batches_reject_zero() -> None:
    with pytest.raises(ValueError):
        list(batches([1], 0))
