"""L2: Redis through `redis.asyncio` (never the synchronous client: it blocks the event loop for a round trip).

One `SET key blob PX ttl` per write (atomic value and expiry), one `GET` per read; `set_many` pipelines a batch
(warming a cache, or promoting several entries) into one round trip. The client's own retries are off, for the
same reason as the SDK's: the layer decides.

Connections: at most `max_connections` operations run at once (an `asyncio.Semaphore` in front of a plain pool of
that size). Under a burst, an operation waits up to `timeout_s` for a free connection instead of failing at once
(redis-py's plain pool raises past its size, which the cache layer would take for an outage). redis-py's
`BlockingConnectionPool` does the same waiting, but its condition and timeout cost about 45 µs on every
operation here, a fifth of a hit. Likewise no per-socket timeout is set (redis-py wraps each send in a task for
it): the cache layer bounds every tier operation with its own `op_timeout_s`, so a Redis that hangs never holds a
request longer than that. Use the tier inside a `CacheLayer`, or bound your calls yourself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from labkit.cache.base import Entry, decode


def glob_escape(text: str) -> str:
    """`text` as a literal in a Redis MATCH pattern: a prefix such as `app[1]:` must not match `app1:` keys."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


class _Slots:
    """`async with slots:` holds one of `size` slots, waiting at most `timeout_s` (then `redis.ConnectionError`).

    A class with `__aenter__`, not `contextlib.asynccontextmanager`: it runs on every hit."""

    def __init__(self, size: int, timeout_s: float) -> None:
        self._free = asyncio.Semaphore(size)
        self.timeout_s = timeout_s

    async def __aenter__(self) -> None:
        if not self._free.locked():
            await self._free.acquire()  # a slot is free: returns without suspending
            return
        try:
            async with asyncio.timeout(self.timeout_s):
                await self._free.acquire()
        except TimeoutError:
            raise RedisConnectionError(f"no Redis connection free within {self.timeout_s} s") from None

    async def __aexit__(self, *exc_info: object) -> None:
        self._free.release()


class RedisTier:
    """A cache tier in Redis; keys are `prefix + key` (the key already carries namespace and tenant hash)."""

    local = False

    def __init__(
        self,
        url: str | None = None,
        *,
        client: aioredis.Redis | None = None,
        prefix: str = "labkit:cache:",
        timeout_s: float = 0.25,
        max_connections: int = 64,
        name: str = "redis",
    ) -> None:
        if client is None:
            if not url:
                raise ValueError("RedisTier needs a url or a client")
            pool = aioredis.ConnectionPool.from_url(
                url, max_connections=max_connections, socket_connect_timeout=timeout_s, retry_on_timeout=False
            )
            client = aioredis.Redis(connection_pool=pool)
        self.client = client
        self.prefix = prefix
        self.name = name
        self._slots = _Slots(max_connections, timeout_s)

    async def get(self, key: str) -> Entry | None:
        async with self._slots:
            blob = await self.client.get(self.prefix + key)
        if blob is None:
            return None
        entry = decode(blob, expected_key=key)
        return None if entry.expired() else entry

    async def set(self, key: str, entry: Entry, ttl_s: float) -> None:
        await self.set_raw(key, entry.blob, ttl_s)

    async def set_many(self, items: Iterable[tuple[str, Entry, float]]) -> None:
        """Write several entries in one round trip (a pipeline without MULTI)."""
        async with self._slots, self.client.pipeline(transaction=False) as pipe:
            for key, entry, ttl_s in items:
                pipe.set(self.prefix + key, entry.blob, px=max(1, int(ttl_s * 1000)))
            await pipe.execute()

    async def set_raw(self, key: str, blob: bytes, ttl_s: float = 60.0) -> None:
        """Store bytes under a key (`set` uses it; tests and the lesson plant a corrupt entry with it)."""
        async with self._slots:
            await self.client.set(self.prefix + key, blob, px=max(1, int(ttl_s * 1000)))

    async def delete(self, key: str) -> None:
        async with self._slots:
            await self.client.delete(self.prefix + key)

    async def clear(self) -> None:
        """Delete this tier's keys only (SCAN by prefix, taken literally; never FLUSHDB on a server others share)."""
        batch: list[bytes] = []
        async for name in self.client.scan_iter(match=glob_escape(self.prefix) + "*", count=500):
            batch.append(name)
            if len(batch) >= 500:
                await self.client.unlink(*batch)
                batch.clear()
        if batch:
            await self.client.unlink(*batch)

    async def aclose(self) -> None:
        await self.client.aclose()

    def __repr__(self) -> str:
        return f"RedisTier({self.prefix!r})"


__all__ = ["RedisTier", "glob_escape"]
