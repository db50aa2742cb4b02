"""L2': Memcached through `aiomcache` (asyncio-native, so no thread hop per call as pymemcache would need).

Memcached refuses items larger than its item size (1 MiB by default, `-I`), counting its own header and the key.
A long streamed answer recorded with its chunks can pass that. This tier compresses blobs above
`compress_over` bytes (zlib; JSON of chunks shrinks about 10x) and refuses, with `EntryTooLarge` and the sizes
in the message, what is still too large, before sending it: the server's reply to an oversized SET is an
error that would otherwise look like an outage.

Shared servers: Memcached cannot list keys, and `flush_all` would empty a server the user may run for other
things (`MEMCACHED_URL`). So every key carries a namespace version, `prefix + version + ":" + key`, and
`clear()` bumps the version (an atomic `incr` on `prefix + "ns"`): the old entries become unreachable and age out
under Memcached's own LRU and TTLs, and no key outside the prefix is touched. Each `get` fetches the version with
the entry in one `get` of two keys, so a `clear()` by another process is seen on the next read, at no extra
round trip. A missing version (never set, or evicted) starts at the current time in nanoseconds, never at a value
an earlier generation used.
"""

from __future__ import annotations

import math
import time
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
    """A cache tier in Memcached; keys are `prefix + version + ":" + key` (ASCII, under the 250-byte limit)."""

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
        self._ns_key = (prefix + "ns").encode("ascii")  # entry keys have digits and ":" after the prefix
        self._version: bytes | None = None

    def _key(self, key: str, version: bytes) -> bytes:
        return self.prefix.encode("ascii") + version + b":" + key.encode("ascii")

    async def _current(self) -> bytes:
        """The namespace version, read from the server on first use (then kept fresh by every `get`)."""
        if self._version is None:
            self._version = await self._fetch_version()
        return self._version

    async def _fetch_version(self) -> bytes:
        version = await self.client.get(self._ns_key)
        if version is None:  # `add` only sets it if no other client did first
            await self.client.add(self._ns_key, str(time.time_ns()).encode("ascii"))
            version = await self.client.get(self._ns_key)
        if version is None:
            raise ConnectionError(f"Memcached did not keep the namespace key {self._ns_key!r}")
        return bytes(version).strip()

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
        version = await self._current()
        current, blob = await self.client.multi_get(self._ns_key, self._key(key, version))
        if current is None or bytes(current).strip() != version:  # cleared elsewhere, or the version was evicted
            self._version = version = await self._fetch_version()
            blob = await self.client.get(self._key(key, version))
        if blob is None:
            return None
        entry = decode(blob, expected_key=key)
        return None if entry.expired() else entry

    async def set(self, key: str, entry: Entry, ttl_s: float) -> None:
        blob = self.pack(entry)
        expiry = min(_MAX_RELATIVE_EXPIRY_S, max(1, math.ceil(ttl_s)))
        await self.client.set(self._key(key, await self._current()), blob, exptime=expiry)

    async def set_raw(self, key: str, blob: bytes, ttl_s: float = 60.0) -> None:
        """Store arbitrary bytes under a key (tests and the lesson use it to plant a corrupt entry)."""
        await self.client.set(self._key(key, await self._current()), blob, exptime=max(1, math.ceil(ttl_s)))

    async def delete(self, key: str) -> None:
        await self.client.delete(self._key(key, await self._current()))

    async def clear(self) -> None:
        """Forget this prefix's entries only: bump the namespace version (never `flush_all`, see the module doc)."""
        try:
            bumped: int | None = await self.client.incr(self._ns_key)
        except aiomcache.exceptions.ClientException:  # NOT_FOUND: no version yet (never used, or evicted)
            bumped = None
        self._version = str(bumped).encode("ascii") if bumped is not None else await self._fetch_version()

    async def aclose(self) -> None:
        await self.client.close()

    def __repr__(self) -> str:
        return f"MemcachedTier({self.prefix!r})"


__all__ = ["MEMCACHED_ITEM_LIMIT", "MemcachedTier"]
