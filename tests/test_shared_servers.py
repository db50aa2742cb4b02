"""Shared servers: on a Redis or Memcached the user runs for other things (`REDIS_URL`, `MEMCACHED_URL`), the lab's
clean-up deletes its own keys only. Each test writes a key another application owns, runs the clean-up, and checks
that the foreign key survives and the lab's own keys are gone."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import aiomcache
import pytest
import redis
import redis.asyncio
from openai.types.chat import ChatCompletion

from labkit.cache.base import Entry
from labkit.cache.memcached_tier import MemcachedTier
from labkit.cache.redis_tier import RedisTier
from labkit.endpoint import Endpoint
from labkit.lessons.naive import NaiveClient, prompt_of

MODEL = "gpt-4o"


def entry(key: str, text: str = "lab answer") -> Entry:
    completion = ChatCompletion.model_validate(
        {"id": "c", "object": "chat.completion", "created": 1, "model": MODEL,
         "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}
    )  # fmt: skip
    return Entry.of_completion(key, completion, 60.0)


def unique(label: str) -> str:
    """A name no other test (or earlier run against the same server) uses."""
    return f"{label}{time.monotonic_ns()}"


@pytest.fixture
async def memcached_client(memcached_service) -> AsyncIterator[aiomcache.Client]:
    """A plain client standing for another application on the same Memcached server."""
    parts = urlsplit(memcached_service.url if "://" in memcached_service.url else f"mc://{memcached_service.url}")
    client = aiomcache.Client(parts.hostname or "127.0.0.1", parts.port or 11211)
    yield client
    await client.close()


@pytest.fixture
async def redis_client(redis_service) -> AsyncIterator[redis.asyncio.Redis]:
    """A plain client standing for another application on the same Redis server."""
    client = redis.asyncio.Redis.from_url(redis_service.url)
    yield client
    await client.aclose()


# -- Memcached ---------------------------------------------------------------------------------------------------


async def test_memcached_clear_keeps_another_applications_key(memcached_service, memcached_client):
    foreign = unique("someone-else:").encode()
    await memcached_client.set(foreign, b"their data", exptime=60)
    tier = MemcachedTier(memcached_service.url, prefix=unique("lab:") + ":")
    await tier.set("k1", entry("k1"), 60)
    assert await tier.get("k1") is not None
    await tier.clear()
    assert await tier.get("k1") is None
    assert await memcached_client.get(foreign) == b"their data"
    await tier.aclose()


async def test_memcached_clear_works_before_anything_was_stored(memcached_service):
    tier = MemcachedTier(memcached_service.url, prefix=unique("lab:") + ":")
    await tier.clear()  # no namespace version on the server yet
    await tier.set("k1", entry("k1"), 60)
    assert await tier.get("k1") is not None
    await tier.aclose()


async def test_memcached_clear_by_one_client_is_seen_by_another_with_the_same_prefix(memcached_service):
    prefix = unique("lab:") + ":"
    writer, other = (
        MemcachedTier(memcached_service.url, prefix=prefix),
        MemcachedTier(memcached_service.url, prefix=prefix),
    )
    await writer.set("k1", entry("k1"), 60)
    assert await other.get("k1") is not None  # same namespace: the other process reads it
    await writer.clear()
    assert await other.get("k1") is None
    await writer.aclose()
    await other.aclose()


async def test_memcached_clear_leaves_another_prefix_of_the_lab_alone(memcached_service):
    cleared = MemcachedTier(memcached_service.url, prefix=unique("lab-a:") + ":")
    kept = MemcachedTier(memcached_service.url, prefix=unique("lab-b:") + ":")
    await cleared.set("k1", entry("k1"), 60)
    await kept.set("k1", entry("k1"), 60)
    await cleared.clear()
    assert await cleared.get("k1") is None and await kept.get("k1") is not None
    await cleared.aclose()
    await kept.aclose()


# -- Redis -------------------------------------------------------------------------------------------------------


async def test_redis_clear_keeps_another_applications_keys(redis_service, redis_client):
    tag = unique("")
    foreign = [f"ai:response:{tag}", f"app:{tag}:session"]
    for name in foreign:
        await redis_client.set(name, b"their data", ex=60)
    tier = RedisTier(redis_service.url, prefix=f"labkit:test:{tag}:")
    await tier.set("k1", entry("k1"), 60)
    await tier.clear()
    assert await tier.get("k1") is None
    assert [await redis_client.get(name) for name in foreign] == [b"their data", b"their data"]
    await redis_client.delete(*foreign)
    await tier.aclose()


async def test_redis_clear_reads_its_prefix_literally_not_as_a_pattern(redis_service, redis_client):
    tag = unique("")
    foreign = f"app1{tag}:k"  # the pattern `app[1]{tag}:*` would match it
    await redis_client.set(foreign, b"their data", ex=60)
    tier = RedisTier(redis_service.url, prefix=f"app[1]{tag}:")
    await tier.set("k1", entry("k1"), 60)
    await tier.clear()
    assert await tier.get("k1") is None
    assert await redis_client.get(foreign) == b"their data"
    await redis_client.delete(foreign)
    await tier.aclose()


# -- the naive client of the capstone (the guide's SmartCache on Redis) ------------------------------------------


@pytest.fixture
def question() -> list[dict[str, str]]:
    return [{"role": "user", "content": unique("What is the capital of Australia? run ")}]


@pytest.fixture
def users_key(redis_service, question):
    """The user's own `ai:response:<md5>` key for the very question the naive client will ask."""
    name = f"ai:response:{hashlib.md5(prompt_of(question).encode()).hexdigest()}"
    client = redis.Redis.from_url(redis_service.url)
    client.set(name, json.dumps("the user's own answer"), ex=60)
    yield name, client
    client.delete(name)
    client.close()


async def test_naive_client_clear_keeps_the_users_ai_response_keys(sim, redis_service, question, users_key):
    name, client = users_key
    naive = NaiveClient(Endpoint(sim.base_url), cache="redis", redis_url=redis_service.url)
    _, _, source = await naive.ask(question, model=MODEL, max_tokens=10, temperature=0)
    assert source == "upstream"  # the user's key of the same name is not the lab's cache
    own = [k for k in client.scan_iter(match=naive.key_prefix + "*")]
    assert len(own) == 1
    assert naive.clear() == 1
    assert client.get(name) == json.dumps("the user's own answer").encode()
    assert client.exists(*own) == 0
    await naive.aclose()


async def test_naive_client_deletes_its_run_keys_when_closed(sim, redis_service, question, users_key):
    name, client = users_key
    naive = NaiveClient(Endpoint(sim.base_url), cache="redis", redis_url=redis_service.url)
    await naive.ask(question, model=MODEL, max_tokens=10, temperature=0)
    own = [k for k in client.scan_iter(match=naive.key_prefix + "*")]
    await naive.aclose()
    assert own and client.exists(*own) == 0
    assert client.exists(name) == 1
