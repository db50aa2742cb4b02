"""The anti-pattern the pooling lesson measures, as a transport: a new `AsyncOpenAI` (new connections) per request.

`labkit.assemble.build_chain` uses it only when the `pooling` switch is off (the capstone's ablation). A stream
keeps its client until the stream is closed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionChunk

from labkit.chain import Result
from labkit.endpoint import Endpoint
from labkit.request import ChatRequest
from labkit.stream import ChunkStream
from labkit.transports.sdk import OpenAITransport


class PerRequestClientTransport:
    """A fresh SDK client for every request, closed when its answer (or stream) is done."""

    def __init__(self, endpoint: Endpoint, timeout: float = 60.0, max_retries: int = 0) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.max_retries = max_retries

    async def __call__(self, request: ChatRequest) -> Result:
        client = AsyncOpenAI(
            base_url=self.endpoint.base_url,
            api_key=self.endpoint.api_key,
            max_retries=self.max_retries,
            timeout=self.timeout,
        )
        transport = OpenAITransport(client=client, endpoint=self.endpoint)
        try:
            result = await transport(request)
        except BaseException:
            await client.close()
            raise
        if isinstance(result, ChunkStream):

            async def closing(chunks: AsyncIterator[ChatCompletionChunk]) -> AsyncIterator[ChatCompletionChunk]:
                try:
                    async for chunk in chunks:
                        yield chunk
                finally:
                    await client.close()

            return result.wrap(closing)
        await client.close()
        return result

    async def aclose(self) -> None:
        return None


__all__ = ["PerRequestClientTransport"]
