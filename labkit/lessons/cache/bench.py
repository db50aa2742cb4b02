"""Cache hit latency per tier through the layer chain, and the semantic lookup time.

`python -m labkit.lessons.cache --bench [--out build/bench/cache.json]` starts a Redis and a Memcached server (or uses
REDIS_URL / MEMCACHED_URL), and measures, one request at a time, the time from `await chain(request)` to the
answer for:

- a hit in each tier on its own (a chain whose cache layer has that one tier): memory, Redis, Memcached, SQLite;
- a miss (cache layer over an in-memory upstream that answers at once: the cache's own cost on a miss, lookups
  in every tier plus the write-through), and the bare chain without a cache for reference;
- the semantic lookup at `--semantic-entries` stored entries (default 10,000): embedding the query plus the
  search plus the guard, measured through the layer, each query a sentence not asked before (so the embedding is
  computed, not found in the cache's embedding LRU). The stored vectors are random unit vectors (the search cost
  does not depend on their values; embedding 10,000 texts would take a minute); the queries are real sentences.

Targets (issue 5): L1 < 20 µs median, Redis < 300 µs median on loopback, semantic < 15 ms median at 10,000
entries on 2 cores. The machine is shared and timings are noisy: the JSON records medians and p99 per figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from labkit.cache.layer import CacheLayer
from labkit.cache.memory import MemoryTier
from labkit.chain import Chain
from labkit.lessons.dedup.bench import _upstream
from labkit.request import ChatRequest

TARGETS_US = {"memory": 20.0, "redis": 300.0, "semantic": 15_000.0}


def _request(i: int) -> ChatRequest:
    return ChatRequest.create(
        "gpt-4o",
        [{"role": "system", "content": "You are terse."}, {"role": "user", "content": f"Question number {i}?"}],
        max_tokens=50,
        temperature=0,
    )


def _summary(samples_s: list[float]) -> dict[str, float]:
    us = np.asarray(samples_s) * 1e6
    return {"p50_us": float(np.median(us)), "p99_us": float(np.percentile(us, 99)), "n": len(us)}


async def _time_calls(chain: Chain, requests: list[ChatRequest]) -> list[float]:
    samples = []
    clock = time.perf_counter
    for request in requests:
        t0 = clock()
        await chain(request)
        samples.append(clock() - t0)
    return samples


async def tier_hits(tier: Any, n: int, keys: int = 200) -> dict[str, float]:
    """Hit latency of one tier through the chain: `keys` entries stored, then `n` hits cycling over them."""
    layer = CacheLayer([tier], stampede_protection=True)
    chain = Chain(_upstream, [layer])
    requests = [_request(i) for i in range(keys)]
    for request in requests:
        await chain(request)
    await _time_calls(chain, requests[: min(keys, 100)])  # warm-up
    samples = await _time_calls(chain, [requests[i % keys] for i in range(n)])
    assert layer.stats.tiers[tier.name].hits >= n, "the benchmark must measure hits"
    return _summary(samples)


async def misses(tiers: list[Any], n: int, offset: int) -> dict[str, dict[str, float]]:
    bare = Chain(_upstream)
    layer = CacheLayer(tiers)
    cached = Chain(_upstream, [layer])
    base = await _time_calls(bare, [_request(offset + i) for i in range(n)])
    miss = await _time_calls(cached, [_request(offset + n + i) for i in range(n)])
    return {"bare_chain": _summary(base), "miss_all_tiers": _summary(miss)}


async def semantic_lookup(entries: int, queries: int, seed: int = 0) -> dict[str, Any]:
    from labkit.cache.evaluation import load_pairs
    from labkit.cache.semantic import SemanticCache

    cache = SemanticCache(embed_in_thread=True)
    rng = np.random.default_rng(seed)
    probe = ChatRequest.create("gpt-4o", "warm-up", temperature=0, max_tokens=50)
    from labkit.cache.layer import NO_CONTROLS

    scope = cache.scope_of(probe, NO_CONTROLS)
    filler = rng.standard_normal((entries, cache.embedder.dimensions)).astype(np.float32)
    filler /= np.linalg.norm(filler, axis=1, keepdims=True)
    from labkit.lessons.dedup.bench import _COMPLETION

    for i, vector in enumerate(filler):
        cache.add(scope, f"stored question {i}", vector, _COMPLETION, 3600)
    # distinct sentences, each asked once: the cache's embedding LRU must not answer a query the bench times
    distinct = list(dict.fromkeys(text for pair in load_pairs() for text in (pair["a"], pair["b"])))
    warm_up, texts = distinct[:10], distinct[10 : 10 + queries]
    chain = Chain(_upstream, [cache])
    for text in warm_up:
        await chain(probe.replace(messages=[{"role": "user", "content": text}], controls={"no_store": True}))
    samples, embed_only = [], []
    for text in texts:
        request = probe.replace(messages=[{"role": "user", "content": text}], controls={"no_store": True})
        t0 = time.perf_counter()
        await chain(request)
        samples.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        cache.embedder.embed([text])
        embed_only.append(time.perf_counter() - t0)
    vector = cache.embedder.embed(["a query"])[0]
    index = cache._indexes[scope]
    t0 = time.perf_counter()
    for _ in range(200):
        index.search(vector, 5)
    search_us = (time.perf_counter() - t0) / 200 * 1e6
    return {
        "entries": len(cache),
        "through_layer": _summary(samples),
        "embedding_only": _summary(embed_only),
        "search_only_us": search_us,
    }


async def bench(n: int = 2000, semantic_entries: int = 10_000, semantic_queries: int = 200) -> dict[str, Any]:
    from labkit.cache.memcached_tier import MemcachedTier
    from labkit.cache.redis_tier import RedisTier
    from labkit.cache.sqlite_tier import SQLiteTier
    from labkit.lab.services import start_memcached, start_redis

    result: dict[str, Any] = {
        "what": "cache hit latency through the layer chain, one request at a time, in-memory upstream (µs)",
        "python": platform.python_version(),
        "machine": platform.machine(),
        "n": n,
        "targets_p50_us": TARGETS_US,
    }
    with start_redis() as redis_service, start_memcached() as memcached_service, tempfile.TemporaryDirectory() as d:
        tiers = {
            "memory": MemoryTier(),
            "redis": RedisTier(redis_service.url, prefix="labkit:bench:"),
            "memcached": MemcachedTier(memcached_service.url, prefix="bench:"),
            "sqlite": SQLiteTier(Path(d) / "bench.db"),
        }
        result["hits"] = {name: await tier_hits(tier, n) for name, tier in tiers.items()}
        fresh = [
            MemoryTier(),
            RedisTier(redis_service.url, prefix="labkit:bench2:"),
            SQLiteTier(Path(d) / "bench2.db"),
        ]
        result["miss"] = await misses(fresh, min(n, 500), offset=10_000)
        for tier in [*tiers.values(), *fresh]:
            await tier.aclose()
    result["semantic"] = await semantic_lookup(semantic_entries, semantic_queries)
    result["met"] = {
        "memory": result["hits"]["memory"]["p50_us"] < TARGETS_US["memory"],
        "redis": result["hits"]["redis"]["p50_us"] < TARGETS_US["redis"],
        "semantic": result["semantic"]["through_layer"]["p50_us"] < TARGETS_US["semantic"],
    }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m labkit.lessons.cache --bench", description=__doc__)
    parser.add_argument("--bench", action="store_true", help="run the benchmark (the only action)")
    parser.add_argument("--out", default="build/bench/cache.json")
    parser.add_argument("-n", type=int, default=2000, help="hits timed per tier")
    parser.add_argument("--semantic-entries", type=int, default=10_000)
    parser.add_argument("--semantic-queries", type=int, default=200)
    args = parser.parse_args(argv)
    if not args.bench:
        parser.error("nothing to do: pass --bench")
    result = asyncio.run(bench(args.n, args.semantic_entries, args.semantic_queries))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(json.dumps(result, indent=2))
    return 0
