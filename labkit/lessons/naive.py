"""The naive client: the common advice of the guide, assembled as an application would, for the capstone's "before".

What it takes from the guide (`performance-guide.zh.txt`), and nothing else:

- **Batching** (批处理): one module-level `AsyncOpenAI()` and `asyncio.gather` over every request, unbounded; the
  caller starts a task per arriving request and nothing limits how many are in flight.
- **The SDK's defaults** for everything the guide does not set: `max_retries=2` (its exponential backoff honours
  `retry-after`), a 600 s timeout, the SDK's own HTTP client and connection limits. No streaming: every Python
  snippet of the guide waits for the whole answer (its streaming example is front-end JavaScript).
- **De-duplication / caching** (请求去重, 智能缓存), switchable:
  `"md5"` (default): the `get_response` snippet, a dict keyed by `hashlib.md5(prompt).hexdigest()` holding the
  response. The guide never defines `cache`; we define it as a module-level dict (the charitable reading), and
  "prompt" is the whole prompt text (system and user messages), so that, on this lab's workloads, it never serves
  an answer to a different question: hashing the user text alone would. No TTL, no size bound, no in-flight
  de-duplication: identical requests that arrive while the first is running all go upstream.
  `"redis"`: the `SmartCache` snippet: a *synchronous* `redis.Redis` called from async code (it blocks the event
  loop for each round trip), key `ai:response:<md5>`, the answer's text only, `setex` with a 7200 s TTL. The
  lab puts its own per-run prefix in front of that key (`labkit:naive:<run>:ai:response:<md5>`), so that on a
  Redis the user shares (`REDIS_URL`) clearing the cache never deletes anyone else's `ai:response:*` keys.
  `"none"`: no cache.

What it deliberately does not get: anything the guide does not show (admission control, circuit breakers, a
second endpoint, hedging, a semantic cache). The capstone compares it with labkit's full chain on the same
simulated services; see `labkit.lessons.capstone`.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from openai import AsyncOpenAI

from labkit.cache.redis_tier import glob_escape
from labkit.endpoint import Endpoint

CacheMode = Literal["none", "md5", "redis"]
CACHE_MODES: tuple[str, ...] = ("none", "md5", "redis")


def prompt_of(messages: Sequence[Mapping[str, Any]]) -> str:
    """The prompt text the guide's md5 key is computed over: every message's content, in order."""
    return "\n".join(str(m.get("content", "")) for m in messages)


class NaiveClient:
    """`await NaiveClient(endpoint).ask(messages, model=...)` -> (answer text, usage or None, source)."""

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        cache: CacheMode = "md5",
        redis_url: str | None = None,
        max_retries: int | None = None,
        timeout: float | None = None,
        key_prefix: str | None = None,
    ) -> None:
        if cache not in CACHE_MODES:
            raise ValueError(f"cache must be one of {CACHE_MODES}, not {cache!r}")
        if cache == "redis" and not redis_url:
            raise ValueError("cache='redis' needs a redis_url (the guide's SmartCache talks to a Redis server)")
        kwargs: dict[str, Any] = {"base_url": endpoint.base_url, "api_key": endpoint.api_key}
        if max_retries is not None:  # None: the SDK's default, as in the guide
            kwargs["max_retries"] = max_retries
        if timeout is not None:
            kwargs["timeout"] = timeout
        self.client = AsyncOpenAI(**kwargs)
        self.endpoint = endpoint
        self.cache_mode = cache
        self.cache: dict[str, Any] = {}
        self.hits = 0
        self.misses = 0
        self.blocked_s = 0.0  # time the event loop spent blocked in synchronous Redis calls
        self._redis: Any = None
        #: Where this client's Redis keys live: its own per-run namespace unless the caller names one.
        self.key_prefix = key_prefix if key_prefix is not None else f"labkit:naive:{secrets.token_hex(4)}:"
        if cache == "redis":
            import redis

            self._redis = redis.Redis.from_url(redis_url, decode_responses=True)

    async def ask(self, messages: Sequence[Mapping[str, Any]], *, model: str, **params: Any) -> tuple[str, Any, str]:
        """The answer text, its usage (None for a cache hit) and where it came from (`"cache"` or `"upstream"`)."""
        key = hashlib.md5(prompt_of(messages).encode()).hexdigest()
        redis_key = f"{self.key_prefix}ai:response:{key}"
        if self.cache_mode == "md5":
            if key in self.cache:
                self.hits += 1
                response = self.cache[key]
                return response.choices[0].message.content or "", None, "cache"
        elif self.cache_mode == "redis":
            started = time.perf_counter()
            cached = self._redis.get(redis_key)  # synchronous: blocks the loop, as in the guide
            self.blocked_s += time.perf_counter() - started
            if cached:
                self.hits += 1
                return json.loads(cached), None, "cache"
        self.misses += 1
        response = await self.client.chat.completions.create(model=model, messages=list(messages), **params)
        text = response.choices[0].message.content or ""
        if self.cache_mode == "md5":
            self.cache[key] = response
        elif self.cache_mode == "redis":
            started = time.perf_counter()
            self._redis.set(redis_key, json.dumps(text), ex=7200)  # the guide's setex(key, 7200, ...)
            self.blocked_s += time.perf_counter() - started
        return text, response.usage, "upstream"

    def clear(self) -> int:
        """Forget every answer this client cached (the dict, or its own keys in Redis); returns how many.

        The guide's Redis keys outlive the process, so a measurement starts cold: a cache warmed by an earlier run
        would flatter the next one. Only keys under this client's `key_prefix` are deleted (glob characters in it
        are escaped), never another application's `ai:response:*` keys on a shared server.
        """
        if self._redis is not None:
            pattern = glob_escape(self.key_prefix) + "ai:response:*"
            keys = list(self._redis.scan_iter(match=pattern, count=1000))
            if keys:
                self._redis.delete(*keys)
            return len(keys)
        n = len(self.cache)
        self.cache.clear()
        return n

    def stats(self) -> dict[str, Any]:
        looked_up = self.hits + self.misses
        return {
            "cache": self.cache_mode,
            "hits": self.hits,
            "misses": self.misses,
            "hit_rate": self.hits / looked_up if looked_up else 0.0,
            "entries": len(self.cache),
            "blocked_s": self.blocked_s,
            "max_retries": self.client.max_retries,
            "timeout": str(self.client.timeout),
        }

    async def aclose(self) -> None:
        """Close the clients; with Redis, delete this run's keys first (nothing else reads them after the run)."""
        await self.client.close()
        if self._redis is not None:
            import redis

            try:
                self.clear()
            except redis.RedisError:  # Redis gone: its keys expire on their own (7200 s)
                pass
            finally:
                self._redis.close()


__all__ = ["CACHE_MODES", "NaiveClient", "prompt_of"]
