"""The semantic cache: serve a stored answer to a *paraphrase* of a question already answered, safely.

How it decides, for a plain request whose exact key missed:

1. Scope: only requests that are the same but for the wording of the last user message may share an answer, so
   the scope is the fingerprint of everything else (model, parameters, system prompt, earlier turns), plus the
   tenant (hashed API key) and namespace, as in the exact cache.
2. Embed the last user message (all-MiniLM-L6-v2, `labkit.cache.embeddings`; in a worker thread so the event
   loop keeps serving other requests during the ~6 ms it takes). Vectors are kept in a bounded LRU by text
   (`embed_cache_size`): a popular question that missed the exact cache (another context, or many copies in
   flight before the first answer is stored) is embedded once, not once per request.
3. Search: brute-force cosine over the scope's normalised vectors with numpy (a matrix-vector product: about
   0.3 ms at 10,000 entries, 7 ms at 100,000). Past a few hundred thousand entries, or across processes, a
   vector store takes over (Redis with its vector index, pgvector, FAISS/HNSW): same interface, sub-linear search.
4. Candidates above the similarity threshold go through `decide`, which asks the guard (`labkit.cache.guard.veto`):
   negation, antonyms, swapped roles, other numbers and names, and any content word, qualifier, constraint or
   question word that one prompt has and the other lacks; the first candidate that passes is served.
   `would_serve(stored, incoming)` runs that same lookup on a cache holding only `stored`.

The threshold is chosen on the tuning part of `data/semantic_pairs.jsonl` and the decision is measured on the
held-out part, per kind, by `labkit.cache.evaluation` (`python -m labkit.cache.evaluation`). Streams and sampled
requests are passed through (lesson 07 keeps the two apart), unless `streams=True` (the assembled chain's
setting): then a hit on a streamed request is replayed as a short stream and a completed stream is stored.

Bounded memory: a chat application makes a new scope for every turn of every conversation, so the scopes are
kept in LRU order and at most `max_scopes` of them are held; all scopes together hold at most `max_entries` rows
(the least recently used scopes go first, then a scope's own oldest rows). A scope's matrix starts at one row and
doubles as it fills, since most scopes of a chat only ever hold one. Every `purge_every` stores, expired rows are
dropped and scopes left empty with them. A row's answer is kept as JSON and rebuilt on a hit, so a stored answer
is a few objects for the garbage collector to walk, not a pydantic model tree.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import numpy as np
from cachetools import LRUCache
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from labkit.body import completion_json, rebuild
from labkit.cache.embeddings import Embedder, default_embedder
from labkit.cache.guard import veto
from labkit.cache.layer import CacheControls
from labkit.chain import Handler, Result
from labkit.dedup.policy import is_sampled
from labkit.fingerprint import fingerprint
from labkit.request import ChatRequest
from labkit.scope import Scope, Scoping, served_model
from labkit.stream import ChunkStream, assemble, completion_chunks

#: Chosen on the tuning split of `data/semantic_pairs.jsonl` by `labkit.cache.evaluation.choose_threshold` (the
#: test checks that it still is). Low, because the guard's difference check does the deciding (see `decide`).
DEFAULT_THRESHOLD = 0.5


def decide(
    stored: str, incoming: str, cosine: float, threshold: float = DEFAULT_THRESHOLD, guard: bool = True
) -> str | None:
    """Why the answer stored for `stored` must not be served for `incoming` (None: it is served).

    The one decision the cache, `would_serve` and the evaluation all use: the cosine must reach the threshold,
    then the guard (`labkit.cache.guard.veto`) must find nothing in the wording that asks for another answer.
    """
    if cosine < threshold:
        return "below_threshold"
    if not guard or stored == incoming:
        return None
    return veto(stored, incoming)


class VectorIndex:
    """Normalised float32 rows in one growing matrix; top-k by inner product; oldest evicted past `max_entries`.

    The matrix starts at `initial_rows` and doubles when full (an index that only ever holds one row, as most
    scopes of a chat do, costs one row, not a preallocated block)."""

    def __init__(self, dimensions: int, max_entries: int = 100_000, initial_rows: int = 1) -> None:
        if max_entries < 1 or initial_rows < 1:
            raise ValueError("max_entries and initial_rows must be positive")
        self.dimensions = dimensions
        self.max_entries = max_entries
        self._vectors = np.zeros((min(initial_rows, max_entries), dimensions), dtype=np.float32)
        self._payloads: list[Any] = []
        self._start = 0  # ring buffer start once full

    def __len__(self) -> int:
        return len(self._payloads)

    @property
    def capacity(self) -> int:
        """Rows allocated (at least `len`; doubles when full, up to `max_entries`)."""
        return len(self._vectors)

    def add(self, vector: np.ndarray, payload: Any) -> Any:
        """Add a row; returns the payload it evicted (the oldest, once full), else None."""
        n = len(self._payloads)
        if n < self.max_entries:
            if n == len(self._vectors):
                grown = np.zeros((min(self.max_entries, 2 * n), self.dimensions), dtype=np.float32)
                grown[:n] = self._vectors
                self._vectors = grown
            self._vectors[n] = vector
            self._payloads.append(payload)
            return None
        evicted = self._payloads[self._start]  # full: overwrite the oldest
        self._vectors[self._start] = vector
        self._payloads[self._start] = payload
        self._start = (self._start + 1) % self.max_entries
        return evicted

    def add_many(self, vectors: np.ndarray, payloads: Sequence[Any]) -> None:
        for vector, payload in zip(vectors, payloads, strict=True):
            self.add(vector, payload)

    def payloads(self) -> list[Any]:
        """Every row's payload, oldest first."""
        return self._payloads[self._start :] + self._payloads[: self._start]

    def drop(self, doomed: Callable[[Any], bool]) -> list[Any]:
        """Remove the rows whose payload `doomed` accepts (the matrix shrinks to fit); returns their payloads."""
        n = len(self._payloads)
        keep: list[int] = []
        dropped: list[Any] = []
        for i in [*range(self._start, n), *range(self._start)]:  # oldest first, so the ring restarts in order
            if doomed(self._payloads[i]):
                dropped.append(self._payloads[i])
            else:
                keep.append(i)
        if dropped:
            vectors = np.zeros((max(1, len(keep)), self.dimensions), dtype=np.float32)
            vectors[: len(keep)] = self._vectors[keep]
            self._vectors = vectors
            self._payloads = [self._payloads[i] for i in keep]
            self._start = 0
        return dropped

    def search(self, vector: np.ndarray, k: int = 5, min_score: float = -1.0) -> list[tuple[float, Any]]:
        """The `k` best rows (score, payload) with a score of at least `min_score`, best first."""
        n = len(self._payloads)
        if n == 0:
            return []
        scores = self._vectors[:n] @ vector
        k = min(k, n)
        top = np.argpartition(-scores, k - 1)[:k] if k < n else np.arange(n)
        top = top[np.argsort(-scores[top])]
        return [(float(scores[i]), self._payloads[i]) for i in top if scores[i] >= min_score]


class _Stored:
    """One stored answer: its prompt's text, the answer as JSON, and its expiry.

    The answer is kept as JSON bytes (one object the collector never walks) and rebuilt on a hit (about 4 µs,
    and each hit gets its own copy): a kept `ChatCompletion` is ~15 objects, on top of the exact cache's entry
    for the same answer."""

    __slots__ = ("_json", "expires_at", "text")

    def __init__(self, text: str, completion: ChatCompletion, expires_at: float) -> None:
        self.text = text
        self.expires_at = expires_at
        self._json: bytes = completion_json(completion)

    @property
    def completion(self) -> ChatCompletion:
        return rebuild(self._json)


@dataclasses.dataclass
class SemanticStats:
    requests: int = 0
    hits: int = 0
    misses: int = 0
    bypassed: int = 0
    stored: int = 0
    vetoed: Counter[str] = dataclasses.field(default_factory=Counter)
    expired: int = 0  # rows dropped by a purge once past their TTL
    scopes_evicted: int = 0  # least recently used scopes dropped to keep within the bounds
    embeds: int = 0
    embeds_reused: int = 0  # served from the LRU of vectors by text
    embed_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        looked_up = self.hits + self.misses
        return dataclasses.asdict(self) | {
            "vetoed": dict(self.vetoed),
            "hit_rate": self.hits / looked_up if looked_up else 0.0,
        }


def last_user_text(request: ChatRequest) -> str | None:
    message = request.messages[-1]
    content = message.get("content")
    if message.get("role") != "user" or not isinstance(content, str):
        return None
    return content


class SemanticCache:
    """A chain layer that serves paraphrases of answered questions (plain, deterministic requests only)."""

    def __init__(
        self,
        embedder: Embedder | None = None,
        *,
        threshold: float = DEFAULT_THRESHOLD,
        guard: bool = True,
        top_k: int = 5,
        max_entries: int = 10_000,
        max_scopes: int = 1024,
        purge_every: int = 1000,
        ttl_s: float = 3600.0,
        api_key: str | None = None,
        scoping: Scoping | None = None,
        namespace: str = "default",
        cache_sampled: bool = False,
        embed_in_thread: bool = True,
        embed_cache_size: int = 4096,
        streams: bool = False,
        on_hit: Callable[[str, str, float], None] | None = None,
    ) -> None:
        if not -1.0 <= threshold <= 1.0:
            raise ValueError("threshold is a cosine similarity: between -1 and 1")
        if max_entries < 1 or max_scopes < 1 or purge_every < 1:
            raise ValueError("max_entries, max_scopes and purge_every must be positive")
        self.embedder = embedder or default_embedder()
        self.threshold = threshold
        self.guard = guard
        self.top_k = top_k
        self.max_entries = max_entries  # rows, across all scopes
        self.max_scopes = max_scopes
        self.purge_every = purge_every
        self.ttl_s = ttl_s
        self.namespace = namespace
        self.cache_sampled = cache_sampled
        self.embed_in_thread = embed_in_thread
        self._vectors: LRUCache[str, np.ndarray] | None = LRUCache(embed_cache_size) if embed_cache_size else None
        self.on_hit = on_hit
        self.streams = streams
        self.stats = SemanticStats()
        self._default_tenant = (scoping or Scoping(api_key=api_key)).tenant  # hashed: no raw key is kept
        self._indexes: OrderedDict[str, VectorIndex] = OrderedDict()  # least recently used scope first
        self._by_text: dict[tuple[str, str], _Stored] = {}  # (scope, text) -> its newest row, while it is indexed
        self._rows = 0  # rows in all indexes
        self._stores_since_purge = 0

    def scope_of(self, request: ChatRequest, controls: CacheControls, model: str | None = None) -> str:
        """The request's `Scope` with everything but the last user message as its fingerprint, as a key.

        `model` is the model that served the answer when a balancer's fallback did (`labkit.scope.served_model`).
        """
        model = model or request.model
        context = fingerprint(model, list(request.messages[:-1]), request.params)
        tenant = controls.tenant or self._default_tenant  # `CacheControls` holds the request's tenant hashed
        return Scope(tenant, controls.namespace or self.namespace, model, context).key("m")

    async def embed(self, text: str) -> np.ndarray:
        """The text's vector: from the LRU when this text was embedded recently, else from the model."""
        if self._vectors is not None and (known := self._vectors.get(text)) is not None:
            self.stats.embeds_reused += 1
            return known
        started = time.perf_counter()
        if self.embed_in_thread:
            vector = (await asyncio.to_thread(self.embedder.embed, [text]))[0]
        else:
            vector = self.embedder.embed([text])[0]
        self.stats.embeds += 1
        self.stats.embed_s += time.perf_counter() - started
        if self._vectors is not None:
            vector.setflags(write=False)  # shared by every request with this text
            self._vectors[text] = vector
        return vector

    def match(self, scope: str, text: str, vector: np.ndarray) -> tuple[_Stored, float] | None:
        """The best stored answer above the threshold that the guard lets through, or None."""
        index = self._indexes.get(scope)
        if index is None:
            return None
        self._indexes.move_to_end(scope)
        now = time.time()
        for score, stored in index.search(vector, self.top_k, self.threshold):
            if stored.expires_at <= now:
                continue
            reason = decide(stored.text, text, score, self.threshold, self.guard)
            if reason is not None:
                self.stats.vetoed[reason] += 1
                continue
            return stored, score
        return None

    def knows(self, scope: str, text: str) -> bool:
        """Whether this very text has a fresh answer in the scope (storing it again would only add a twin row)."""
        stored = self._by_text.get((scope, text))
        return stored is not None and stored.expires_at > time.time()

    def add(self, scope: str, text: str, vector: np.ndarray, completion: ChatCompletion, ttl_s: float) -> None:
        """Store an answer; a text the scope already holds fresh is left as it is (no twin rows to search)."""
        if self.knows(scope, text):
            return
        index = self._indexes.get(scope)
        if index is None:
            index = self._indexes[scope] = VectorIndex(len(vector), self.max_entries)
        else:
            self._indexes.move_to_end(scope)
        stored = _Stored(text, completion, time.time() + ttl_s)
        evicted = index.add(vector, stored)
        self._by_text[(scope, text)] = stored
        if evicted is None:
            self._rows += 1
        else:
            self._forget(scope, evicted)
        self.stats.stored += 1
        self._stores_since_purge += 1
        if self._stores_since_purge >= self.purge_every:
            self.purge()
        self._keep_within_bounds()

    def _forget(self, scope: str, stored: _Stored) -> None:
        if self._by_text.get((scope, stored.text)) is stored:
            del self._by_text[(scope, stored.text)]

    def _keep_within_bounds(self) -> None:
        """Drop least recently used scopes past `max_scopes` scopes or `max_entries` rows (never the last one)."""
        while len(self._indexes) > self.max_scopes or (self._rows > self.max_entries and len(self._indexes) > 1):
            scope, index = self._indexes.popitem(last=False)
            for stored in index.payloads():
                self._forget(scope, stored)
            self._rows -= len(index)
            self.stats.scopes_evicted += 1

    def purge(self, now: float | None = None) -> int:
        """Drop expired rows, and scopes left empty; returns how many rows (`add` calls it every `purge_every`)."""
        now = time.time() if now is None else now
        dropped_rows = 0
        for scope, index in list(self._indexes.items()):
            dropped = index.drop(lambda stored: stored.expires_at <= now)
            for stored in dropped:
                self._forget(scope, stored)
            dropped_rows += len(dropped)
            if not len(index):
                del self._indexes[scope]
        self._rows -= dropped_rows
        self.stats.expired += dropped_rows
        self._stores_since_purge = 0
        return dropped_rows

    @property
    def scopes(self) -> int:
        """How many scopes are held."""
        return len(self._indexes)

    def __len__(self) -> int:
        return self._rows

    async def _look_up(self, request: ChatRequest) -> tuple[CacheControls, str, str, np.ndarray, Any] | None:
        """The lookup both paths share, counted once: None when the request bypasses the cache (no user text, or
        sampled), else its controls, text, scope, vector and the hit `(stored, score)` or None (a miss)."""
        self.stats.requests += 1
        ctl = CacheControls.of(request.controls)
        text = last_user_text(request)
        if text is None or (is_sampled(request) and not self.cache_sampled):
            self.stats.bypassed += 1
            return None
        scope = self.scope_of(request, ctl)
        vector = await self.embed(text)
        found = None if ctl.no_cache else self.match(scope, text, vector)
        if found is None:
            self.stats.misses += 1
        else:
            self.stats.hits += 1
            if self.on_hit is not None:
                self.on_hit(text, found[0].text, found[1])
        return ctl, text, scope, vector, found

    async def __call__(self, request: ChatRequest, call_next: Handler) -> Result:
        if request.stream and self.streams:
            return await self.serve_stream(request, call_next)
        if request.stream:
            self.stats.requests += 1
            self.stats.bypassed += 1
            return await call_next(request)
        looked = await self._look_up(request)
        if looked is None:
            return await call_next(request)
        ctl, text, scope, vector, found = looked
        if found is not None:
            return found[0].completion  # rebuilt from its JSON: the caller's own copy
        result = await call_next(request)
        if isinstance(result, ChunkStream):
            result = await result.collect()
        if not ctl.no_store:
            if (served := served_model(result)) is not None and served != request.model:
                scope = self.scope_of(request, ctl, served)  # a fallback's answer, under the model that served it
            self.add(scope, text, vector, result, ctl.ttl_s or self.ttl_s)
        return result

    async def serve_stream(self, request: ChatRequest, call_next: Handler) -> Result:
        """A streamed request (with `streams=True`): a hit is replayed as one short stream (the role, the text and
        the finish in one chunk, then the usage); a miss is passed on and its answer stored once it completed."""
        looked = await self._look_up(request)
        if looked is None:
            return await call_next(request)
        ctl, text, scope, vector, found = looked
        if found is not None:
            stored, score = found
            chunks = completion_chunks(stored.completion)

            async def replay() -> AsyncIterator[ChatCompletionChunk]:
                for chunk in chunks:
                    yield chunk

            return ChunkStream(replay(), info={"source": "cache", "cache_tier": "semantic", "semantic_score": score})
        result = await call_next(request)
        if ctl.no_store:
            return result
        if (served := served_model(result)) is not None and served != request.model:
            scope = self.scope_of(request, ctl, served)  # a fallback's answer, under the model that served it
        if isinstance(result, ChatCompletion):
            self.add(scope, text, vector, result, ctl.ttl_s or self.ttl_s)
            return result
        if self.knows(scope, text):  # a coalesced copy of an answer being stored already
            return result

        async def keep(chunks: AsyncIterator[ChatCompletionChunk]) -> AsyncIterator[ChatCompletionChunk]:
            seen: list[ChatCompletionChunk] = []
            finished = False
            async for chunk in chunks:
                seen.append(chunk)
                finished = finished or any(c.finish_reason for c in chunk.choices)
                yield chunk
            if finished and not self.knows(scope, text):  # only a complete answer, and only once

                async def again() -> AsyncIterator[ChatCompletionChunk]:
                    for chunk in seen:
                        yield chunk

                self.add(scope, text, vector, await assemble(again()), ctl.ttl_s or self.ttl_s)

        return result.wrap(keep)


_PROBE = ChatCompletion.model_validate(
    {"id": "would-serve", "object": "chat.completion", "created": 0, "model": "probe",
     "choices": [{"index": 0, "message": {"role": "assistant", "content": ""}, "finish_reason": "stop"}]}
)  # fmt: skip


def would_serve(stored: str, incoming: str) -> bool:
    """Whether a `SemanticCache` with the default embedder, threshold and guard, holding an answer for `stored` and
    nothing else in the scope, serves that answer for `incoming` (the same code path as a real lookup)."""
    cache = SemanticCache(embed_in_thread=False, embed_cache_size=0)
    vectors = cache.embedder.embed([stored, incoming])
    cache.add("would_serve", stored, vectors[0], _PROBE, cache.ttl_s)
    return cache.match("would_serve", incoming, vectors[1]) is not None


def __getattr__(name: str) -> Any:
    """The evaluation half moved to `labkit.cache.evaluation`; its names still resolve from here."""
    from labkit.cache import evaluation

    if name in evaluation.__all__:
        return getattr(evaluation, name)
    raise AttributeError(name)


__all__ = [
    "DEFAULT_THRESHOLD",
    "SemanticCache",
    "SemanticStats",
    "VectorIndex",
    "decide",
    "last_user_text",
    "would_serve",
]
