"""Caching (智能缓存): a multi-tier exact cache and a guarded semantic cache, as chain layers.

- `base`: the stored entry, its versioned JSON codec (never pickle), and the `Tier` interface;
- `memory` (L1, in-process), `redis_tier` (L2, redis.asyncio), `memcached_tier` (L2', aiomcache, 1 MiB items),
  `sqlite_tier` (L3, on disk, survives restarts);
- `layer`: `CacheLayer`, read-through with promotion, write-through, TTL with jitter, stampede protection,
  per-request controls, tenant isolation, fail-open;
- `replay`: streams recorded with their timing and replayed at once or at the original pace;
- `embeddings`, `guard` (its word lists in `lexicon`, its difference check in `difference`), `semantic`: the
  semantic cache (all-MiniLM-L6-v2 on onnxruntime, a guard against hard negatives); `would_serve(stored,
  incoming)`, its decision for one pair; `evaluation`: that decision measured on labelled pairs
  (`python -m labkit.cache.evaluation`);

Lessons 06 and 07's workload and benchmark (`python -m labkit.lessons.cache --bench`) live in `labkit.lessons.cache`.

The remote tiers and the semantic cache are imported lazily, so an in-process cache needs none of their packages.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from labkit.cache.base import CorruptEntry, Entry, EntryTooLarge, RecordedChunk, Tier, decode, encode
from labkit.cache.layer import CacheControls, CacheLayer, CacheStats, TierStats, tenant_hash
from labkit.cache.memory import MemoryTier
from labkit.cache.replay import record, replay

if TYPE_CHECKING:
    from labkit.cache.memcached_tier import MemcachedTier
    from labkit.cache.redis_tier import RedisTier
    from labkit.cache.semantic import SemanticCache, would_serve
    from labkit.cache.sqlite_tier import SQLiteTier

_LAZY = {
    "RedisTier": "labkit.cache.redis_tier",
    "MemcachedTier": "labkit.cache.memcached_tier",
    "SQLiteTier": "labkit.cache.sqlite_tier",
    "SemanticCache": "labkit.cache.semantic",
    "would_serve": "labkit.cache.semantic",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(name)


__all__ = [
    "CacheControls",
    "CacheLayer",
    "CacheStats",
    "CorruptEntry",
    "Entry",
    "EntryTooLarge",
    "MemcachedTier",
    "MemoryTier",
    "RecordedChunk",
    "RedisTier",
    "SQLiteTier",
    "SemanticCache",
    "Tier",
    "TierStats",
    "decode",
    "encode",
    "record",
    "replay",
    "tenant_hash",
    "would_serve",
]
