"""L2': Memcached through `aiomcache` (asyncio-native, so no thread hop per call as pymemcache would need).

Memcached refuses items larger than its item size (1 MiB by default, `-I`), counting its own header and the key.
A long streamed answer recorded with its chunks can pass that. This tier compresses blobs above
`compress_over` bytes (zlib; JSON of chunks shrinks about 10x) and refuses, with `EntryTooLarge` and the sizes
in the message, what is still too large, before sending it: the server's reply to an oversized SET is an
error that would otherwise look like an outage.
"""

from __future__ import annotations

import math
from urllib.parse import urlsplit

import aiomcache

from labkit.cache.base import Entry, EntryTooLarge, compress, decode

#: Memcached's default item size limit (`-I 1m`).
MEMCACHED_ITEM_LIMIT = 1024 * 1024
#: What the server needs besides the value: its item header and the key (a generous allowance).
_ITEM_OVERHEAD = 1024
#: Memcached reads an expiry above 30 days as a Unix time; longer TTLs are capped to it.
_MAX_RELATIVE_EXPIRY_S = 30 * 24 * 3600


class MemcachedTier:
    """A cache tier in Memcached; keys are `prefix + key` (ASCII, well under the 250-byte key limit)."""

    local = False

    def __init__(
        self,
        url: str | tuple[str, int],
        *,
        prefix: str = "lk:",
        item_limit: int = MEMCACHED_ITEM_LIMIT,
        compress_over: int = 16 * 1024,
        pool_size: int = 4,
        name: str = "memcached",
    ) -> None:
        if isinstance(url, tuple):
            host, port = url
        else:
            parts = urlsplit(url if "://" in url else f"memcached://{url}")
            host, port = parts.hostname or "127.0.0.1", parts.port or 11211
        self.client = aiomcache.Client(host, port, pool_size=pool_size)
        self.prefix = prefix
        self.max_value = item_limit - _ITEM_OVERHEAD
        self.compress_over = compress_over
        self.name = name
        self.compressed = 0
        self.refused = 0

    def _key(self, key: str) -> bytes:
        return (self.prefix + key).encode("ascii")

    def pack(self, entry: Entry) -> bytes:
        """The bytes to store: the JSON, compressed when large; `EntryTooLarge` if they still do not fit."""
        blob = entry.blob
        if len(blob) > self.compress_over:
            blob = compress(blob)
            self.compressed += 1
        if len(blob) > self.max_value:
            self.refused += 1
            raise EntryTooLarge(
                f"entry of {entry.size} bytes ({len(blob)} compressed) exceeds Memcached's item limit of "
                f"{self.max_value + _ITEM_OVERHEAD} bytes (server option -I); not stored in {self.name}"
            )
        return blob

    async def get(self, key: str) -> Entry | None:
        blob = await self.client.get(self._key(key))
        if blob is None:
            return None
        entry = decode(blob, expected_key=key)
        return None if entry.expired() else entry

    async def set(self, key: str, entry: Entry, ttl_s: float) -> None:
        blob = self.pack(entry)
        expiry = min(_MAX_RELATIVE_EXPIRY_S, max(1, math.ceil(ttl_s)))
        await self.client.set(self._key(key), blob, exptime=expiry)

    async def set_raw(self, key: str, blob: bytes, ttl_s: float = 60.0) -> None:
        """Store arbitrary bytes under a key (tests and the lesson use it to plant a corrupt entry)."""
        await self.client.set(self._key(key), blob, exptime=max(1, math.ceil(ttl_s)))

    async def delete(self, key: str) -> None:
        await self.client.delete(self._key(key))

    async def clear(self) -> None:
        """Memcached cannot list keys: `flush_all` empties the whole server (fine for a lab's own server)."""
        await self.client.flush_all()

    async def aclose(self) -> None:
        await self.client.close()

    def __repr__(self) -> str:
        return f"MemcachedTier({self.prefix!r})"


__all__ = ["MEMCACHED_ITEM_LIMIT", "MemcachedTier"]
