"""What each speed trick in ``guardedpool/fastpath.py`` saves, on the Python running this.

Question: do the tricks kept for Python 3.11 still pay on the interpreter at hand? Run it
under each interpreter (it needs only the standard library) and compare:

    python3.11 benchmarks/version_tricks.py
    python3.12 benchmarks/version_tricks.py

Prints one JSON document: nanoseconds per use (best of 7 timeit repeats) of the plain
spelling and of the trick, and the gain (plain - trick; negative: the trick costs).
"""

from __future__ import annotations

import asyncio
import enum
import json
import sys
import timeit
from typing import Any


class _State(enum.Enum):
    IDLE = "idle"
    IN_USE = "in_use"


_IDLE = _State.IDLE


def _best(stmt: str, env: dict[str, Any], number: int) -> float:
    return min(timeit.repeat(stmt, globals=env, number=number, repeat=7)) / number * 1e9


async def _main(quick: bool) -> dict[str, Any]:
    n = 200_000 if quick else 2_000_000
    loop = asyncio.get_running_loop()
    out: dict[str, Any] = {"python": sys.version.split()[0]}
    env: dict[str, Any] = {"_State": _State, "_IDLE": _IDLE, "asyncio": asyncio, "loop": loop}
    tricks = {
        "enum_member_as_module_constant": ("_State.IDLE", "_IDLE"),
        "cached_loop_for_current_task": ("asyncio.current_task()", "asyncio.current_task(loop)"),
    }
    for name, (plain, trick) in tricks.items():
        plain_ns = _best(plain, env, n)
        trick_ns = _best(trick, env, n)
        out[name] = {
            "plain_ns": round(plain_ns, 1),
            "trick_ns": round(trick_ns, 1),
            "gain_ns": round(plain_ns - trick_ns, 1),
        }
    return out


if __name__ == "__main__":
    print(json.dumps(asyncio.run(_main("--quick" in sys.argv)), indent=2))
