"""Bounded memory and disk: the semantic cache holds a bounded number of scopes and rows however many conversations
pass through it, and drops expired rows; the SQLite tier purges expired rows on its own schedule and keeps within
its row bound."""

from __future__ import annotations

import gc
import zlib
from collections.abc import Sequence

import numpy as np
import psutil
import pytest
from openai.types.chat import ChatCompletion

from labkit.cache.base import Entry
from labkit.cache.layer import CacheControls
from labkit.cache.semantic import SemanticCache, VectorIndex
from labkit.cache.sqlite_tier import SQLiteTier
from labkit.chain import Chain
from labkit.request import ChatRequest

MODEL = "gpt-4o"
DIMENSIONS = 384


class HashEmbedder:
    """One of 4096 fixed random unit vectors per text, chosen by a hash: the real model costs about 6 ms a text,
    ten minutes for 100,000 conversations, and the memory under test is the cache's, not the model's."""

    dimensions = DIMENSIONS

    def __init__(self) -> None:
        rows = np.random.default_rng(0).standard_normal((4096, DIMENSIONS)).astype(np.float32)
        self.rows = rows / np.linalg.norm(rows, axis=1, keepdims=True)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return np.stack([self.rows[zlib.crc32(text.encode()) % len(self.rows)] for text in texts])


def completion(text: str = "An answer of a typical length, a sentence or two. " * 2) -> ChatCompletion:
    return ChatCompletion.model_validate(
        {"id": "c", "object": "chat.completion", "created": 1, "model": MODEL,
         "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}
    )  # fmt: skip


async def upstream(request: ChatRequest) -> ChatCompletion:
    """The end of the chain: a new answer object per call, as a transport returns."""
    return completion()


def conversation(i: int) -> ChatRequest:
    """Turn two of conversation `i`: its earlier turns differ from every other conversation's, so its own scope."""
    return ChatRequest.create(
        MODEL,
        [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": f"conversation {i}: hello"},
            {"role": "assistant", "content": "Hi! How can I help?"},
            {"role": "user", "content": f"question {i}: what should I read next?"},
        ],
        temperature=0,
        max_tokens=50,
    )


def rss() -> int:
    gc.collect()
    return psutil.Process().memory_info().rss


# -- the semantic cache ------------------------------------------------------------------------------------------


async def test_100k_conversations_keep_the_semantic_cache_within_32_mib():
    """100,000 distinct conversations after a warm-up grow the process by less than 32 MiB.

    Why 32 MiB: past the warm-up (5,000 conversations, more than `max_scopes` scopes and more than the embedding
    LRU's 4,096 texts) every structure is at its bound, so what is left is allocator noise (measured here: under
    1 MiB). A cache that kept every scope holds about 5 KB per conversation (a 1.5 KB vector row, the answer, its
    bookkeeping; measured 5.1 KB), about 500 MB for these 100,000, fifteen times the bound.
    """
    cache = SemanticCache(HashEmbedder(), embed_in_thread=False)
    chain = Chain(upstream, [cache])
    for i in range(5_000):
        await chain(conversation(i))
    baseline = rss()
    for i in range(5_000, 105_000):
        await chain(conversation(i))
    growth = rss() - baseline
    assert cache.stats.stored == 105_000 and cache.scopes == cache.max_scopes  # all stored, the oldest dropped
    assert growth < 32 * 2**20, f"grew {growth / 2**20:.1f} MiB over 100,000 conversations"


async def test_the_semantic_cache_holds_at_most_max_scopes_dropping_the_least_recently_used():
    cache = SemanticCache(HashEmbedder(), embed_in_thread=False, max_scopes=3)
    chain = Chain(upstream, [cache])
    for i in range(3):
        await chain(conversation(i))
    await chain(conversation(0))  # a lookup in scope 0 (an exact-text hit) makes it the most recent
    await chain(conversation(3))
    scopes = [cache.scope_of(conversation(i), CacheControls.of({})) for i in range(4)]
    held = [cache.knows(scope, conversation(i).messages[-1]["content"]) for i, scope in enumerate(scopes)]
    assert held == [True, False, True, True] and cache.scopes == 3 and cache.stats.scopes_evicted == 1


def test_the_semantic_cache_holds_at_most_max_entries_rows_across_scopes():
    cache = SemanticCache(HashEmbedder(), max_entries=10, max_scopes=100)
    vectors = HashEmbedder().embed([f"text {i}" for i in range(30)])
    for i, vector in enumerate(vectors):
        cache.add(f"scope {i % 6}", f"text {i}", vector, completion(), 60.0)
        assert len(cache) <= 10
    assert cache.knows(f"scope {29 % 6}", "text 29")  # the newest row is kept


def test_expired_rows_are_dropped_every_purge_every_stores():
    cache = SemanticCache(HashEmbedder(), purge_every=4)
    vectors = HashEmbedder().embed(["a", "b", "c", "d"])
    for text, vector in zip("abc", vectors, strict=False):
        cache.add(f"scope {text}", text, vector, completion(), 0.0)  # expired as soon as stored
    assert len(cache) == 3 and cache.scopes == 3  # no purge yet: three stores
    cache.add("scope d", "d", vectors[3], completion(), 60.0)
    assert len(cache) == 1 and cache.scopes == 1 and cache.stats.expired == 3


def test_a_purge_keeps_the_fresh_rows_of_a_scope_searchable():
    cache = SemanticCache(HashEmbedder(), purge_every=1000)
    embedder = HashEmbedder()
    texts = ["old one", "fresh one", "old two", "fresh two"]
    for text, vector in zip(texts, embedder.embed(texts), strict=True):
        cache.add("scope", text, vector, completion(text), 0.0 if text.startswith("old") else 60.0)
    assert cache.purge() == 2
    found = cache.match("scope", "fresh two", embedder.embed(["fresh two"])[0])
    assert found is not None and found[0].text == "fresh two" and len(cache) == 2


def test_a_vector_index_starts_at_one_row_and_doubles():
    index = VectorIndex(DIMENSIONS)
    vectors = HashEmbedder().embed([f"t{i}" for i in range(5)])
    capacities = []
    for i, vector in enumerate(vectors):
        index.add(vector, i)
        capacities.append(index.capacity)
    assert capacities == [1, 2, 4, 4, 8]


# -- the SQLite tier ---------------------------------------------------------------------------------------------


def entry(key: str, ttl_s: float) -> Entry:
    return Entry.of_completion(key, completion(), ttl_s)


@pytest.fixture
def sqlite_path(tmp_path):
    return tmp_path / "bounds.db"


async def test_sqlite_purges_expired_rows_every_purge_every_writes(sqlite_path):
    tier = SQLiteTier(sqlite_path, purge_every=5, purge_interval_s=3600.0)
    for i in range(3):
        await tier.set(f"old{i}", entry(f"old{i}", 0.0), 0.0)  # expired as soon as written
    await tier.set("new0", entry("new0", 60.0), 60.0)
    assert len(tier) == 4  # four writes: not yet
    await tier.set("new1", entry("new1", 60.0), 60.0)
    assert len(tier) == 2 and tier.purged == 3
    await tier.aclose()


async def test_sqlite_purges_expired_rows_once_purge_interval_has_passed(sqlite_path):
    tier = SQLiteTier(sqlite_path, purge_every=1000, purge_interval_s=0.0)  # every write finds the interval passed
    await tier.set("old", entry("old", 0.0), 0.0)
    await tier.set("new", entry("new", 60.0), 60.0)
    assert len(tier) == 1 and tier.purged == 1
    await tier.aclose()


async def test_sqlite_purges_expired_rows_left_by_an_earlier_process_when_it_opens(sqlite_path):
    first = SQLiteTier(sqlite_path, purge_every=1000, purge_interval_s=3600.0)
    await first.set("old", entry("old", 0.0), 0.0)
    await first.set("new", entry("new", 60.0), 60.0)
    await first.aclose()
    second = SQLiteTier(sqlite_path)
    assert len(second) == 1 and second.purged == 1
    await second.aclose()


async def test_sqlite_keeps_within_max_rows_evicting_the_oldest(sqlite_path):
    tier = SQLiteTier(sqlite_path, max_rows=10, purge_every=1000, purge_interval_s=3600.0)
    sizes = []
    for i in range(25):
        await tier.set(f"k{i:02}", entry(f"k{i:02}", 60.0), 60.0)
        sizes.append(len(tier))
    assert max(sizes) == 10 and tier.evicted == 25 - len(tier)
    assert await tier.get("k24") is not None and await tier.get("k00") is None
    await tier.aclose()
