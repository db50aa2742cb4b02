"""The bottom of the chain: the official `openai` SDK, one shared client per endpoint.

The SDK is the default transport because it is what applications use and what the lab must stay
faithful to. Its own retries are off (`max_retries=0`) by default because labkit's retry layer decides
what to retry; pass `max_retries` to keep the SDK's policy instead, never both. One `AsyncOpenAI` (and so
one HTTP connection pool) is shared by every request of a transport: creating a client per request costs a
new connection each time, which the pooling lesson measures. With `pool=` (a `labkit.transports.pool.ClientPool`) the
client comes from that pool instead: one per endpoint and event loop, shared with every other transport on
the pool, limits from its config, and closed by the pool's owner rather than by the transport.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx2
from openai import AsyncOpenAI, AsyncStream
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from labkit.body import keep_body
from labkit.endpoint import Endpoint
from labkit.request import ChatRequest
from labkit.stream import ChunkStream
from labkit.transports.pool import ClientPool

DEFAULT_TIMEOUT = httpx2.Timeout(60.0, connect=5.0)  # the SDK's own httpx fork: newer ones refuse httpx's


class OpenAITransport:
    """Send a `ChatRequest` with `AsyncOpenAI` and return a `ChatCompletion` or a `ChunkStream`."""

    def __init__(
        self,
        endpoint: Endpoint | None = None,
        *,
        client: AsyncOpenAI | None = None,
        max_retries: int = 0,
        timeout: float | httpx2.Timeout = DEFAULT_TIMEOUT,
        http_client: Any = None,
        pool: ClientPool | None = None,
    ) -> None:
        self.pool = pool
        if pool is not None:
            if endpoint is None or client is not None or http_client is not None:
                raise ValueError("OpenAITransport(pool=...) takes an endpoint and no client or http_client")
        elif client is None:
            if endpoint is None:
                raise ValueError("OpenAITransport needs an endpoint or a client")
            client = AsyncOpenAI(
                base_url=endpoint.base_url,
                api_key=endpoint.api_key,
                max_retries=max_retries,
                timeout=timeout,
                http_client=http_client,
            )
        self._client = client
        self.endpoint = endpoint

    @property
    def client(self) -> AsyncOpenAI:
        """The `AsyncOpenAI` requests go through (with a pool: the pool's for this endpoint and running loop)."""
        if self.pool is not None:
            assert self.endpoint is not None
            return self.pool.openai(self.endpoint)
        assert self._client is not None
        return self._client

    async def __call__(self, request: ChatRequest) -> ChatCompletion | ChunkStream:
        options: dict[str, Any] = {}
        if "timeout" in request.controls:
            options["timeout"] = request.controls["timeout"]
        if "headers" in request.controls:
            options["extra_headers"] = dict(request.controls["headers"])
        # The raw response carries the rate-limit headers an admission layer keeps in step with: a stream
        # gets them in `info["headers"]`, a completion in its private `_headers` attribute.
        raw = await self.client.chat.completions.with_raw_response.create(**request.body(), **options)
        if request.stream:
            upstream: AsyncStream[ChatCompletionChunk] = raw.parse()
            info = {"source": "upstream", "headers": raw.headers}
            return ChunkStream(_iterate(upstream), close=upstream.close, info=info)
        completion: ChatCompletion = raw.parse()
        completion._headers = raw.headers
        keep_body(completion, raw.content)  # a cache stores it as it came (labkit.body)
        return completion

    async def aclose(self) -> None:
        """Close the shared HTTP client and its pooled connections (a pool's clients are its owner's to close)."""
        if self.pool is None and self._client is not None:
            await self._client.close()

    async def __aenter__(self) -> OpenAITransport:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


async def _iterate(upstream: AsyncStream[ChatCompletionChunk]) -> AsyncIterator[ChatCompletionChunk]:
    async for chunk in upstream:
        yield chunk
