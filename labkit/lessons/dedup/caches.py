"""Two small answer caches for lesson 02: the common advice's, and an exact one that is right.

`PromptHashCache` is the guide's snippet made into a layer, faithfully: the key is `md5(prompt)` of the last
user message, nothing else, in an unbounded dict. It serves a request another request's answer whenever the
two differ only in model, temperature, `max_tokens`, tools, system prompt or earlier turns.

`ExactCache` keys on the canonical fingerprint and follows the same `SamplingPolicy` as single-flight. It is
deliberately small (in-process LRU, plain completions only, no TTL): lesson 06 builds the real multi-tier cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from collections import OrderedDict
from collections.abc import Callable

from openai.types.chat import ChatCompletion

from labkit.chain import Handler, Result
from labkit.dedup.policy import SamplingPolicy, key_of
from labkit.dedup.singleflight import _copy
from labkit.request import ChatRequest
from labkit.stream import ChunkStream


def prompt_text(request: ChatRequest) -> str:
    """The text of the last user message: all that the common advice's key looks at."""
    for message in reversed(request.messages):
        if message.get("role") == "user":
            content = message.get("content")
            return content if isinstance(content, str) else str(content)
    return ""


@dataclasses.dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    bypassed: int = 0

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


class PromptHashCache:
    """The guide's cache: `md5(prompt)` as the key, so requests that differ elsewhere share one answer."""

    def __init__(self) -> None:
        self.store: dict[str, ChatCompletion] = {}
        self.stats = CacheStats()

    @staticmethod
    def key(request: ChatRequest) -> str:
        return hashlib.md5(prompt_text(request).encode()).hexdigest()

    async def __call__(self, request: ChatRequest, call_next: Handler) -> Result:
        if request.stream:
            self.stats.bypassed += 1
            return await call_next(request)
        key = self.key(request)
        if key in self.store:
            self.stats.hits += 1
            return self.store[key]
        self.stats.misses += 1
        result = await call_next(request)
        if isinstance(result, ChunkStream):
            result = await result.collect()
        self.store[key] = result
        return result


class ExactCache:
    """An in-process LRU of whole completions under the canonical fingerprint (plain requests only).

    Under `SamplingPolicy.keep(n)` a key collects up to `n` answers before it is served from the cache, and
    then hands them out at random (seeded), so sampled requests keep some variety.
    """

    def __init__(
        self,
        policy: SamplingPolicy | None = None,
        *,
        key: Callable[[ChatRequest], str] = key_of,
        max_entries: int = 10_000,
        seed: int = 0,
    ) -> None:
        self.policy = policy or SamplingPolicy()
        self.key = key
        self.max_entries = max_entries
        self.stats = CacheStats()
        self._store: OrderedDict[str, list[ChatCompletion]] = OrderedDict()
        self._random = random.Random(seed)

    def __len__(self) -> int:
        return len(self._store)

    def clear(self) -> None:
        self._store.clear()

    async def __call__(self, request: ChatRequest, call_next: Handler) -> Result:
        slots = self.policy.slots(request)
        if slots == 0 or request.stream or request.controls.get("no_cache"):
            self.stats.bypassed += 1
            return await call_next(request)
        key = self.key(request)
        answers = self._store.get(key)
        if answers is not None and len(answers) >= slots:
            self.stats.hits += 1
            self._store.move_to_end(key)
            answer = answers[0] if slots == 1 else self._random.choice(answers)
            return _copy(answer)  # a caller may edit its answer; the cached one stays intact
        self.stats.misses += 1
        result = await call_next(request)
        if isinstance(result, ChunkStream):
            result = await result.collect()
        answers = self._store.setdefault(key, [])
        if len(answers) < slots:
            answers.append(_copy(result))
        self._store.move_to_end(key)
        while len(self._store) > self.max_entries:
            self._store.popitem(last=False)
        return result


__all__ = ["CacheStats", "ExactCache", "PromptHashCache", "prompt_text"]
