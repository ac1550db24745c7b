"""The Redis edge shared by the budget and the ownership: client, scripts, bounded calls.

Scripts are package data (``guardedpool/fleet/lua/*.lua``), registered once per client
with redis-py's ``register_script``: they are called by SHA (``EVALSHA``) and loaded again
by redis-py on ``NOSCRIPT`` (a restarted Redis has an empty script cache). Every script
reads the time with ``TIME``, the server's clock; the client's clock never reaches Redis.

Requires the optional extra ``guardedpool[redis]`` (redis-py >= 5).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript

__all__ = ["UNREACHABLE", "call", "client_from", "load_script", "text", "where"]

UNREACHABLE: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,  # includes BusyLoadingError: Redis is loading its AOF
    redis.exceptions.TimeoutError,
    OSError,
    TimeoutError,
)
"""Errors that mean "the store cannot be reached now", as opposed to a bug."""


def client_from(source: str | aioredis.Redis, op_timeout: float) -> tuple[aioredis.Redis, bool]:
    """``(client, owned)``: a URL makes a client this object owns (and closes), with
    socket and connect timeouts of ``op_timeout`` seconds and one immediate retry (a
    pooled connection found dead after a Redis restart); a client is used as it is."""
    if isinstance(source, str):
        client = aioredis.Redis.from_url(
            source,
            socket_timeout=op_timeout,
            socket_connect_timeout=op_timeout,
            retry=Retry(NoBackoff(), 1),
        )
        return client, True
    return source, False


def where(source: str | aioredis.Redis) -> str:
    """Host and port of the store for logs and reprs: never the URL (it may hold a
    password)."""
    if isinstance(source, str):
        parts = urlsplit(source)
        return f"{parts.scheme}://{parts.hostname or ''}:{parts.port or ''}{parts.path}"
    return "redis-client"


def load_script(client: aioredis.Redis, name: str) -> AsyncScript:
    """Register ``lua/<name>.lua`` with ``client`` (no round trip until the first call)."""
    source = resources.files("guardedpool.fleet").joinpath("lua", f"{name}.lua").read_text()
    return client.register_script(source)


async def call(
    script: AsyncScript, keys: Sequence[str], args: Sequence[str | int], timeout: float
) -> Any:
    """Run ``script`` within ``timeout`` seconds; raises one of :data:`UNREACHABLE`."""
    async with asyncio.timeout(timeout):
        return await script(keys=list(keys), args=list(args))


def text(value: object) -> str:
    """A reply element as ``str`` (clients with and without ``decode_responses``)."""
    return value.decode() if isinstance(value, bytes) else str(value)
