"""The bottom of the chain: the official `openai` SDK, one shared client per endpoint.

The SDK is the default transport because it is what applications use and what the lab must stay
faithful to. Its own retries are off (`max_retries=0`) by default because labkit's retry layer decides
what to retry; pass `max_retries` to keep the SDK's policy instead, never both. One `AsyncOpenAI` (and so
one HTTP connection pool) is shared by every request of a transport: creating a client per request costs a
new connection each time, which the pooling lesson measures.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
from openai import AsyncOpenAI, AsyncStream
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from labkit.endpoint import Endpoint
from labkit.request import ChatRequest
from labkit.stream import ChunkStream

DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=5.0)


class OpenAITransport:
    """Send a `ChatRequest` with `AsyncOpenAI` and return a `ChatCompletion` or a `ChunkStream`."""

    def __init__(
        self,
        endpoint: Endpoint | None = None,
        *,
        client: AsyncOpenAI | None = None,
        max_retries: int = 0,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        http_client: Any = None,
    ) -> None:
        if client is None:
            if endpoint is None:
                raise ValueError("OpenAITransport needs an endpoint or a client")
            client = AsyncOpenAI(
                base_url=endpoint.base_url,
                api_key=endpoint.api_key,
                max_retries=max_retries,
                timeout=timeout,
                http_client=http_client,
            )
        self.client = client
        self.endpoint = endpoint

    async def __call__(self, request: ChatRequest) -> ChatCompletion | ChunkStream:
        options: dict[str, Any] = {}
        if "timeout" in request.controls:
            options["timeout"] = request.controls["timeout"]
        if "headers" in request.controls:
            options["extra_headers"] = dict(request.controls["headers"])
        if request.stream:
            upstream: AsyncStream[ChatCompletionChunk] = await self.client.chat.completions.create(
                **request.body(), **options
            )
            return ChunkStream(_iterate(upstream), close=upstream.close, info={"source": "upstream"})
        return await self.client.chat.completions.create(**request.body(), **options)

    async def aclose(self) -> None:
        """Close the shared HTTP client and its pooled connections."""
        await self.client.close()

    async def __aenter__(self) -> OpenAITransport:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


async def _iterate(upstream: AsyncStream[ChatCompletionChunk]) -> AsyncIterator[ChatCompletionChunk]:
    async for chunk in upstream:
        yield chunk
