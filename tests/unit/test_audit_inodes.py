"""InodeCache: the pool's socket inodes, rebuilt whenever its socket identities change."""

from __future__ import annotations

from guardedpool.audit.scan import InodeCache
from guardedpool.records import SocketIdentity


def ident(fd: int, inode: int) -> SocketIdentity:
    return SocketIdentity(fd, inode, ("127.0.0.1", 40000 + fd), ("127.0.0.1", 993))


def test_same_identities_give_the_same_set() -> None:
    a, b = ident(5, 100), ident(6, 101)
    cache = InodeCache()
    first = cache.inodes([a, b])
    assert first == {100, 101}
    assert cache.inodes([a, b]) is first  # a new list of the same objects: not rebuilt


def test_any_change_rebuilds_the_set() -> None:
    a, b = ident(5, 100), ident(6, 101)
    cache = InodeCache()
    cache.inodes([a, b])
    # The fd number of ``b`` now holds another socket, identified anew.
    assert cache.inodes([a, ident(6, 202)]) == {100, 202}
    assert cache.inodes([a]) == {100}
    assert cache.inodes([a, b, ident(7, 303)]) == {100, 101, 303}
    assert cache.inodes([]) == frozenset()


def test_an_equal_identity_in_another_object_gives_equal_inodes() -> None:
    cache = InodeCache()
    cache.inodes([ident(5, 100)])
    assert cache.inodes([ident(5, 100)]) == {100}
