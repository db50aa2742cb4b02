"""No secret leaks from an assembled chain: after the default chain has served plain and streamed requests, and an
error, with a distinctive API key, that key appears in no repr of the chain or its parts, no log record (DEBUG and
up, every library), no line of the Prometheus exposition and no Redis key.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest

from labkit.assemble import Assembled, ChainConfig, build_chain
from labkit.endpoint import Endpoint
from labkit.monitoring.exposition import make_registry, render
from labkit.request import ChatRequest

MODEL = "gpt-4o"


@dataclasses.dataclass
class Used:
    """A default chain after it served requests, its key, and everything it logged meanwhile."""

    assembled: Assembled
    secret: str
    records: list[logging.LogRecord]
    redis_url: str


@pytest.fixture(params=["lean", "sdk"])
async def used(request, fresh_sim, redis_service, caplog) -> AsyncIterator[Used]:
    """The default chain (each transport), a plain, a streamed, a repeated and a refused request through it."""
    secret = f"sk-labkit-secret-{uuid.uuid4().hex}"
    caplog.set_level(logging.DEBUG)
    config = ChainConfig(lean=request.param == "lean")
    assembled = build_chain(config, Endpoint(fresh_sim.base_url, secret), redis_url=redis_service.url)
    try:
        question = f"Which key did I use? {uuid.uuid4().hex}"
        await assembled.chain.complete(question, model=MODEL, temperature=0, max_tokens=8)
        await assembled.chain.complete(question, model=MODEL, temperature=0, max_tokens=8)  # a cache hit
        await (await assembled.chain.stream(question + " (streamed)", model=MODEL, temperature=0, max_tokens=8)).text()
        await fresh_sim.aset_faults({"insufficient_quota_keys": [secret]})  # this key is refused from now on
        with pytest.raises(openai.RateLimitError):
            refused = f"Name a prime number above {uuid.uuid4().int % 10_000}."  # no paraphrase of a cached one
            await assembled.chain.complete(refused, model=MODEL, temperature=0, max_tokens=8)
        yield Used(assembled, secret, list(caplog.records), redis_service.url)
    finally:
        await assembled.aclose()


def labkit_objects(root: Any, depth: int = 5) -> list[Any]:
    """The labkit objects reachable from `root` through public attributes and containers (the chain's parts)."""
    found: list[Any] = []
    seen: set[int] = set()

    def visit(obj: Any, left: int) -> None:
        if id(obj) in seen or left < 0 or isinstance(obj, (str, bytes, int, float, bool, type(None))):
            return
        seen.add(id(obj))
        if isinstance(obj, dict):
            for value in obj.values():
                visit(value, left - 1)
            return
        if isinstance(obj, (list, tuple, set, frozenset)):
            for value in obj:
                visit(value, left - 1)
            return
        if not type(obj).__module__.startswith("labkit"):
            return
        found.append(obj)
        attributes = getattr(obj, "__dict__", {})
        names = [n for n in attributes if not n.startswith("_")]
        names += [n for n in getattr(type(obj), "__slots__", ()) if not n.startswith("_")]
        for name in names:
            visit(getattr(obj, name, None), left - 1)

    visit(root, depth)
    return found


def test_no_repr_of_the_chain_or_its_parts_shows_the_key(used):
    parts = labkit_objects(used.assembled)
    kinds = {type(p).__name__ for p in parts}
    assert {"Assembled", "Chain", "CacheLayer", "SingleFlight", "Endpoint", "ChainConfig"} <= kinds
    leaking = [type(p).__name__ for p in parts if used.secret in repr(p) or used.secret in str(p)]
    assert leaking == []
    assert used.secret not in used.assembled.describe()


def test_no_log_record_shows_the_key(used):
    assert used.records  # DEBUG logging was on while the requests ran
    leaking = [
        f"{r.name}: {r.getMessage()}"
        for r in used.records
        if used.secret in r.getMessage() or used.secret in repr(r.__dict__)
    ]
    assert leaking == []


def test_no_metric_shows_the_key(used):
    metrics = used.assembled.layers["metrics"].metrics
    exposition = render(make_registry(metrics, used.assembled.chain))
    assert "labkit_requests_total" in exposition and "labkit_cache_" in exposition
    assert used.secret not in exposition


async def test_no_redis_key_shows_the_key(used):
    from redis.asyncio import Redis

    redis = Redis.from_url(used.redis_url)
    try:
        assert [key async for key in redis.scan_iter(f"*{used.secret}*")] == []
    finally:
        await redis.aclose()


def test_a_per_request_key_is_hidden_from_the_requests_repr():
    secret = f"sk-labkit-secret-{uuid.uuid4().hex}"
    request = ChatRequest.create(
        MODEL, "hi", controls={"api_key": secret, "headers": {"Authorization": f"Bearer {secret}"}, "tenant": "acme"}
    )
    assert secret not in repr(request) and "acme" in repr(request)
