"""Adaptive concurrency: find how many requests to keep in flight when the service's capacity binds.

A published rate limit can be paced (`labkit.layers.admission`). A server's *capacity* cannot be read anywhere: past
its number of concurrent sequences, extra requests only queue, and the only signal is that latency grows.
This layer runs AIMD on latency, as TCP Vegas and Netflix's concurrency-limits do: while a completed
request's latency stays within ``tolerance`` times the best seen recently, the limit grows by one per
window of requests (additive increase); when it exceeds that, or the service answers 429/503, the limit is
multiplied by ``backoff`` (multiplicative decrease), at most once per window. It settles where queueing
starts: the knee of the throughput curve.

Hand-written because the Python ports of concurrency-limits are unmaintained and not asyncio-native; the
algorithm is a dozen lines.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator

import openai
from openai.types.chat import ChatCompletionChunk

from labkit.chain import Handler, Result
from labkit.request import ChatRequest
from labkit.stream import ChunkStream

__all__ = ["AdaptiveConcurrency"]


class AdaptiveConcurrency:
    """A chain layer whose concurrency limit follows AIMD on latency. ``history`` keeps (time, limit) pairs."""

    def __init__(
        self,
        initial: int = 4,
        *,
        min_limit: int = 1,
        max_limit: int = 256,
        tolerance: float = 1.6,
        backoff: float = 0.8,
        baseline_window: int = 200,
    ) -> None:
        if not 1 <= min_limit <= initial <= max_limit:
            raise ValueError("need 1 <= min_limit <= initial <= max_limit")
        if tolerance <= 1 or not 0 < backoff < 1:
            raise ValueError("tolerance must be > 1 and backoff in (0, 1)")
        self.limit = float(initial)
        self.min_limit, self.max_limit = min_limit, max_limit
        self.tolerance, self.backoff = tolerance, backoff
        self.in_flight = 0
        self.history: list[tuple[float, float]] = [(time.monotonic(), self.limit)]
        self._recent: deque[float] = deque(maxlen=baseline_window)  # latencies, for the no-load baseline
        self._since_change = 0
        self._cond = asyncio.Condition()

    @property
    def baseline_s(self) -> float | None:
        """The best latency seen among the recent requests: what one request costs without queueing."""
        return min(self._recent) if self._recent else None

    async def __call__(self, request: ChatRequest, call_next: Handler) -> Result:
        async with self._cond:
            await self._cond.wait_for(lambda: self.in_flight < int(self.limit))
            self.in_flight += 1
        t0 = time.monotonic()
        try:
            result = await call_next(request)
        except openai.APIStatusError as error:
            await self._done(t0, overloaded=error.status_code in (429, 503))
            raise
        except BaseException:
            await self._done(t0, overloaded=False)
            raise
        if isinstance(result, ChunkStream):  # the slot is held until the stream is read or closed

            async def watch(chunks: AsyncIterator[ChatCompletionChunk]) -> AsyncIterator[ChatCompletionChunk]:
                try:
                    async for chunk in chunks:
                        yield chunk
                finally:
                    await self._done(t0, overloaded=False)

            return result.wrap(watch)
        await self._done(t0, overloaded=False)
        return result

    async def _done(self, t0: float, overloaded: bool) -> None:
        self._update(time.monotonic() - t0, overloaded)
        async with self._cond:
            self.in_flight -= 1
            self._cond.notify_all()

    def _update(self, latency: float, overloaded: bool) -> None:
        self._recent.append(latency)
        self._since_change += 1
        window = max(1, int(self.limit))
        baseline = self.baseline_s or latency
        if overloaded or latency > self.tolerance * baseline:
            if self._since_change >= window:
                self.limit = max(float(self.min_limit), self.limit * self.backoff)
                self._since_change = 0
        else:
            self.limit = min(float(self.max_limit), self.limit + 1.0 / window)
        self.history.append((time.monotonic(), self.limit))
