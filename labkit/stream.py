"""A stream of chat-completion chunks that layers can wrap without losing the way to close it.

Every layer passes streams through: metrics time them, a cache records them, de-dup fans them out. A
plain async generator cannot do that well, because closing the outermost wrapper must close the HTTP
response at the bottom (so the service stops generating and the connection returns to the pool).
`ChunkStream` keeps that close path and a small `info` dict (for example `{"source": "cache"}`) that
layers may annotate and callers may read. `merge_chunks` turns a finished answer's chunks into one chunk plus usage
(a cache replays a hit that way: the same text, two chunks instead of one per token); `completion_chunks` gives a
whole completion the same shape.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.chat.chat_completion_chunk import ChoiceDelta

Closer = Callable[[], Awaitable[None]]


class ChunkStream:
    """An async iterator of `ChatCompletionChunk` with `aclose()` and `info`."""

    def __init__(
        self,
        chunks: AsyncIterator[ChatCompletionChunk],
        *,
        close: Closer | None = None,
        info: dict[str, Any] | None = None,
    ) -> None:
        self._chunks = chunks
        self._close = close
        self._closed = False
        self.info: dict[str, Any] = info if info is not None else {}

    def __aiter__(self) -> ChunkStream:
        return self

    async def __anext__(self) -> ChatCompletionChunk:
        return await self._chunks.__anext__()

    async def aclose(self) -> None:
        """Close every generator in the wrapping and the upstream response, once."""
        if self._closed:
            return
        self._closed = True
        try:
            aclose = getattr(self._chunks, "aclose", None)
            if aclose is not None:
                await aclose()
        finally:
            if self._close is not None:
                await self._close()

    async def __aenter__(self) -> ChunkStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def wrap(
        self, transform: Callable[[AsyncIterator[ChatCompletionChunk]], AsyncIterator[ChatCompletionChunk]]
    ) -> ChunkStream:
        """A new stream over `transform(self)` that closes this one and shares its `info`."""
        return ChunkStream(transform(self), close=self.aclose, info=self.info)

    async def text(self) -> str:
        """Consume the stream and return the concatenated content."""
        parts: list[str] = []
        async with self:
            async for chunk in self:
                for choice in chunk.choices:
                    if choice.delta.content:
                        parts.append(choice.delta.content)
        return "".join(parts)

    async def collect(self) -> ChatCompletion:
        """Consume the stream and assemble the `ChatCompletion` a plain call would have returned."""
        return await assemble(self)


def chunk_text(chunk: ChatCompletionChunk) -> str:
    """The text a chunk carries (choice 0; the lab streams n=1)."""
    for choice in chunk.choices:
        if choice.delta.content:
            return choice.delta.content
    return ""


async def assemble(chunks: AsyncIterator[ChatCompletionChunk]) -> ChatCompletion:
    """Fold streamed chunks into one `ChatCompletion` (choice 0 only, as the lab streams n=1)."""
    parts: list[str] = []
    first: ChatCompletionChunk | None = None
    finish_reason: str | None = None
    usage = None
    try:
        async for chunk in chunks:
            first = first or chunk
            if chunk.usage is not None:
                usage = chunk.usage
            for choice in chunk.choices:
                if choice.delta.content:
                    parts.append(choice.delta.content)
                if choice.finish_reason:
                    finish_reason = choice.finish_reason
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()
    if first is None:
        raise ValueError("the stream ended before its first chunk")
    return ChatCompletion.model_validate(
        {
            "id": first.id,
            "object": "chat.completion",
            "created": first.created,
            "model": first.model,
            "system_fingerprint": first.system_fingerprint,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(parts), "refusal": None},
                    "finish_reason": finish_reason or "stop",
                    "logprobs": None,
                }
            ],
            "usage": usage.model_dump() if usage is not None else None,
        }
    )


def merge_chunks(chunks: Sequence[ChatCompletionChunk]) -> list[ChatCompletionChunk]:
    """The answer of `chunks` as one chunk (role, whole text, finish reason) plus its usage chunk, if it has one.

    Returned unchanged when merging would lose something: more than one choice, tool calls, logprobs, a refusal."""
    head: ChatCompletionChunk | None = None
    finish: str | None = None
    text: list[str] = []
    usage: list[ChatCompletionChunk] = []
    for chunk in chunks:
        if not chunk.choices:
            if chunk.usage is not None:
                usage.append(chunk)
            continue
        for choice in chunk.choices:
            delta = choice.delta
            if choice.index != 0 or choice.logprobs is not None or delta.tool_calls or delta.function_call:
                return list(chunks)
            if delta.refusal:
                return list(chunks)
            if delta.content:
                text.append(delta.content)
            finish = choice.finish_reason or finish
        head = head or chunk
    if head is None:
        return list(chunks)
    choice = head.choices[0].model_copy(
        update={"delta": ChoiceDelta(role="assistant", content="".join(text)), "finish_reason": finish}
    )
    return [head.model_copy(update={"choices": [choice], "usage": None}), *usage]


def completion_chunks(completion: ChatCompletion) -> list[ChatCompletionChunk]:
    """A whole completion as the chunks of a merged replay: role, text and finish in one, then the usage."""
    choice = completion.choices[0]
    head = {"id": completion.id, "object": "chat.completion.chunk", "created": completion.created,
            "model": completion.model, "system_fingerprint": completion.system_fingerprint}  # fmt: skip
    delta = {"role": "assistant", "content": choice.message.content or ""}
    chunks = [
        ChatCompletionChunk.model_validate(
            {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": choice.finish_reason or "stop"}]}
        )
    ]
    if completion.usage is not None:
        chunks.append(
            ChatCompletionChunk.model_validate({**head, "choices": [], "usage": completion.usage.model_dump()})
        )
    return chunks
