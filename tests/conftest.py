"""Shared fixtures: real servers, started once per test session through labkit.lab.services, and the small
helpers several test files need (one counting layer, one bare-stream baseline, one runner of a benchmark command)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletion

from labkit.chain import Handler
from labkit.lab.services import MemcachedService, RedisService, SimService, start_memcached, start_redis, start_sim
from labkit.request import ChatRequest
from labkit.stream import ChunkStream


@pytest.fixture(scope="session")
def sim() -> Iterator[SimService]:
    """One fast simulated service for the whole session (seed 0, so its faults are reproducible)."""
    with start_sim("fast", seed=0) as service:
        yield service


@pytest.fixture
def fresh_sim(sim: SimService) -> Iterator[SimService]:
    """The session's simulated service with no faults, default limits and zeroed counters.

    It is reset again afterwards, so a test that injects faults cannot leak them into one that uses ``sim``.
    """
    sim.reset()
    yield sim
    sim.reset()


@pytest.fixture(scope="session")
def redis_service() -> Iterator[RedisService]:
    """A Redis server: REDIS_URL if CI provides one, else a local one for the session."""
    with start_redis() as service:
        yield service


@pytest.fixture(scope="session")
def memcached_service() -> Iterator[MemcachedService]:
    """A Memcached server: MEMCACHED_URL if CI provides one, else a local one for the session."""
    with start_memcached() as service:
        yield service


# -- in-process upstreams for a layer's own logic (no service needed) -------------------------------------------


def completion(model: str = "gpt-4o", content: str = "ok") -> ChatCompletion:
    """A whole answer, as a transport returns one."""
    return ChatCompletion.model_validate(
        {
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "created": 0,
            "model": model,
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
        }
    )


async def hangs(request: ChatRequest) -> Any:
    """An upstream that never answers (until cancelled)."""
    await asyncio.Event().wait()


async def answers(request: ChatRequest) -> ChatCompletion:
    """An upstream that answers at once."""
    return completion(request.model)


# -- a layer that counts what gets past the layers above it ----------------------------------------------------


class Counting:
    """A chain layer that counts the requests reaching it (below a cache: what would cost money).

    It can also slow plain calls (`delay_s`) and each streamed chunk (`chunk_delay_s`), so tests can hold a
    request in flight long enough for a duplicate to join it.
    """

    def __init__(self, delay_s: float = 0.0, chunk_delay_s: float = 0.0) -> None:
        self.calls = 0
        self.delay_s, self.chunk_delay_s = delay_s, chunk_delay_s

    async def __call__(self, request: ChatRequest, call_next: Handler) -> Any:
        self.calls += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        result = await call_next(request)
        if isinstance(result, ChunkStream) and self.chunk_delay_s:
            delay = self.chunk_delay_s

            async def slow(chunks: AsyncIterator[Any]) -> AsyncIterator[Any]:
                async for chunk in chunks:
                    await asyncio.sleep(delay)
                    yield chunk

            return result.wrap(slow)
        return result


@pytest.fixture
def counting() -> Counting:
    """A fresh counting layer with no delays."""
    return Counting()


# -- a timing baseline: the same stream through the bare SDK, no labkit in the way ---------------------------


@dataclass
class BareStream:
    """When a bare SDK stream's content chunks arrived, in seconds from the call."""

    arrivals: list[float] = field(default_factory=list)
    total_s: float = 0.0

    @property
    def ttft_s(self) -> float:
        """Seconds to the first chunk with text."""
        return self.arrivals[0]

    @property
    def gaps(self) -> list[float]:
        """Seconds between consecutive content chunks."""
        return [b - a for a, b in zip(self.arrivals, self.arrivals[1:], strict=False)]

    @property
    def itl_p50_s(self) -> float:
        """Median gap between content chunks."""
        gaps = sorted(self.gaps)
        return gaps[len(gaps) // 2]

    @property
    def spread_s(self) -> float:
        """Seconds from the first content chunk to the last."""
        return self.arrivals[-1] - self.arrivals[0]


async def bare_stream(base_url: str, model: str = "gpt-4o", **params: Any) -> BareStream:
    """Stream one request with the plain OpenAI SDK and time its content chunks.

    Timing tests compare labkit's figures with this, measured on the same machine in the same test, rather than
    with a fixed number of seconds: a busy machine slows both alike.
    """
    timing = BareStream()
    async with AsyncOpenAI(base_url=base_url, api_key="sk-labkit-baseline", max_retries=0) as client:
        started = time.perf_counter()
        stream = await client.chat.completions.create(model=model, stream=True, **params)
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                timing.arrivals.append(time.perf_counter() - started)
        timing.total_s = time.perf_counter() - started
    if not timing.arrivals:
        raise AssertionError("the baseline stream carried no text")
    return timing


ROOT = Path(__file__).resolve().parent.parent


def run_module(module: str, *args: str, timeout: float) -> str:
    """Run `python -m module args...` from the repository's root as its own process; its stdout, or the test fails
    with the end of its stderr."""
    proc = subprocess.run(
        [sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout
