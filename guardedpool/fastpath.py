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
   :meth:`guardedpool.books.Books.lend` and IN_USE -> IDLE in
   :meth:`guardedpool.books.Books.give_back`, are :meth:`~guardedpool.books.Books.move`
   written out in place, inside the books (legal by the table; ``Books.verify`` recounts
   them after every step of the pool's hypothesis test), instead of a nested call to
   ``move``. Saves 839 (lend) + 1,017 (give_back) instructions per acquire + release on
   3.11: 18,588 instead of 20,444 (the ``asyncio.Queue`` floor is 6,395). A Python call
   costs about as much on 3.12, so this is not a 3.11-only trick: delete it when the
   benchmark's ratio allows it (call ``self.move`` in both places), and only here. The
   pool itself edits no count: until this stop it wrote the two moves out in
   ``GuardedPool._take_ready`` and ``release`` (17,437 instructions), so one place for
   every state change costs +1,151 (+6.6 %): one more call (``give_back``) per release,
   and ``lend``'s check of where the slot comes from.
4. :meth:`GuardedPool._take_ready` asks :func:`guardedpool.policy.ready_to_hand_out`'s
   three questions (lifetime, idle timeout, check interval) written out in place. Saves
   ~510 instructions per acquire on 3.11. Not a version trick.
5. :meth:`GuardedPool.release` answers the common case of
   :func:`guardedpool.policy.retire_on_release` itself (no error, alive, not shutting
   down, lifetime left: keep it) and calls the policy for every other case. Saves ~680
   instructions per release on 3.11 (a call with six arguments). Not a version trick.

6. :meth:`GuardedPool.acquire` makes its :class:`~guardedpool.acquisition.Acquisition`
   with ``object.__new__`` and sets its three slots itself, instead of calling the
   class (whose ``__init__`` is a Python frame of its own). Saves ~420 instructions per
   acquire on 3.11 (17,250 -> 16,832). Not a version trick; ``Acquisition(pool, key)``
   still works and does the same. Delete it when the benchmark's ratio allows it.

   Tricks 4 and 5 together: 18,488 -> 17,296 instructions per acquire + release on 3.11.
   They copy policy rules, so ``tests/unit/test_pool_fastpath.py`` drives a real pool
   across every threshold and holds each hand-out and release against the policy
   functions; it fails if either copy drifts from the policy (loosening either
   condition was tried: both fail). Delete them when the benchmark's ratio allows it.

What is *not* here any more: the read of ``asyncio.tasks._current_tasks`` (a private of the
standard library, see issue 12). Its removal and the books together cost 936 instructions
per acquire + release on 3.11: 16,431 at commit 0d484e8, 17,367 after.
``GuardedPool.__slots__`` is not a version trick either: past 30 instance attributes
CPython stops sharing the instance's dict keys and every ``self._x`` on the hot path is a
dict lookup; slots saved 19,161 -> 18,479 instructions per acquire + release on 3.11.
Enum hashing by identity (``ConnState.__hash__ = object.__hash__``, in records.py) is not a
version trick: ``Enum.__hash__`` is a Python function on 3.12 as well.
"""

from __future__ import annotations

from .records import ConnState

__all__ = ["IDLE", "IN_USE"]

IDLE = ConnState.IDLE
IN_USE = ConnState.IN_USE
