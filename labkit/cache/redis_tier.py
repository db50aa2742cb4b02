"""L2: Redis through `redis.asyncio` (never the synchronous client: it blocks the event loop for a round trip).

One `SET key blob PX ttl` per write (atomic value and expiry), one `GET` per read; `set_many` pipelines a batch
(warming a cache, or promoting several entries) into one round trip. Socket timeouts are short: a Redis that
hangs must not hold a request longer than a miss would, and the layer bypasses a tier that fails (fail-open).
The client's own retries are off, for the same reason as the SDK's: the layer decides.
"""

from __future__ import annotations

from collections.abc import Iterable

import redis.asyncio as aioredis

from labkit.cache.base import Entry, decode


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
            # a blocking pool: under a burst, a request waits (up to timeout_s) for one of `max_connections`
            # connections; redis-py's default pool instead fails at once past 100 (MaxConnectionsError), which
            # the cache layer would take for an outage and bypass the tier
            pool = aioredis.BlockingConnectionPool.from_url(
                url,
                max_connections=max_connections,
                timeout=timeout_s,
                socket_timeout=timeout_s,
                socket_connect_timeout=timeout_s,
                retry_on_timeout=False,
            )
            client = aioredis.Redis(connection_pool=pool)
        self.client = client
        self.prefix = prefix
        self.name = name

    async def get(self, key: str) -> Entry | None:
        blob = await self.client.get(self.prefix + key)
        if blob is None:
            return None
        entry = decode(blob, expected_key=key)
        return None if entry.expired() else entry

    async def set(self, key: str, entry: Entry, ttl_s: float) -> None:
        await self.client.set(self.prefix + key, entry.blob, px=max(1, int(ttl_s * 1000)))

    async def set_many(self, items: Iterable[tuple[str, Entry, float]]) -> None:
        """Write several entries in one round trip (a pipeline without MULTI)."""
        async with self.client.pipeline(transaction=False) as pipe:
            for key, entry, ttl_s in items:
                pipe.set(self.prefix + key, entry.blob, px=max(1, int(ttl_s * 1000)))
            await pipe.execute()

    async def set_raw(self, key: str, blob: bytes, ttl_s: float = 60.0) -> None:
        """Store arbitrary bytes under a key (tests and the lesson use it to plant a corrupt entry)."""
        await self.client.set(self.prefix + key, blob, px=max(1, int(ttl_s * 1000)))

    async def delete(self, key: str) -> None:
        await self.client.delete(self.prefix + key)

    async def clear(self) -> None:
        """Delete this tier's keys only (SCAN by prefix; never FLUSHDB on a server others may share)."""
        batch: list[bytes] = []
        async for name in self.client.scan_iter(match=self.prefix + "*", count=500):
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


__all__ = ["RedisTier"]
