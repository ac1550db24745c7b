"""Speed tricks on the acquire/release hot path, kept in quarantine.

Each trick says what it saves per use, counted in CPU instructions with valgrind's
cachegrind (deterministic, unlike timings on a shared machine; ~1,000 instructions are
~0.2 us here) on CPython 3.11.7 and 3.12.1; ``benchmarks/version_tricks.py`` times the
first two with ``timeit`` on any interpreter. The ones that pay only on 3.11 **can be
deleted once ``requires-python >= 3.12``**: write the plain spelling in their place and
nothing else changes.

1. Enum members as module constants (``IDLE``, ``IN_USE`` below): ``ConnState.IDLE``
   goes through ``EnumType.__getattr__`` on 3.11. Saves ~910 instructions per lookup on
   3.11 (962 -> 48), ~200 on 3.12 (268 -> 62). Delete at 3.12: spell ``ConnState.IDLE``.
2. The cached loop (``GuardedPool._loop``, bound by ``start()``) passed to
   ``asyncio.current_task(loop)`` to name the borrower: on 3.11 ``current_task()`` is a
   Python function that first asks for the running loop. Saves ~310 instructions per
   acquire on 3.11 (1,463 -> 1,152), nothing on 3.12 (317 -> 320, C there). Delete at
   3.12: call ``asyncio.current_task()``.
3. The two state changes of every acquire and release, IDLE -> IN_USE in
   ``GuardedPool._take_ready`` and IN_USE -> IDLE in ``GuardedPool.release``, are
   :meth:`guardedpool.books.Books.move` written out in place (three edits each, legal
   by the table; ``Books.verify`` recounts them after every step of the pool's hypothesis
   test). A Python method call costs ~840 instructions on 3.11 and ~910 on 3.12, so this
   pays on both: 17,367 instead of 19,511 instructions per acquire + release (the
   ``asyncio.Queue`` floor is ~6,400), i.e. the uncontended ratio drops by ~0.35x. Not a
   3.11-only trick: delete it when the benchmark's ratio allows it, and only here.

What is *not* here any more: the read of ``asyncio.tasks._current_tasks`` (a private of the
standard library, see issue 12). Its removal and the books together cost 936 instructions
per acquire + release on 3.11: 16,431 at commit 0d484e8, 17,367 after.
Enum hashing by identity (``ConnState.__hash__ = object.__hash__``, in records.py) is not a
version trick: ``Enum.__hash__`` is a Python function on 3.12 as well.
"""

from __future__ import annotations

from .records import ConnState

__all__ = ["IDLE", "IN_USE"]

IDLE = ConnState.IDLE
IN_USE = ConnState.IN_USE
