"""One upstream attempt of a streamed request, held until its first token: shared by retry and hedge.

A stream can fail in two very different places. Before its first token nothing reached the reader, so another
attempt (the same endpoint later, or another endpoint now) is invisible; after it, a retry would show the text
twice. Both the retry layer and the hedge therefore wait for the first token *before* they hand a stream on:
`until_first_token()` reads the role chunk (and any empty chunks) up to the first chunk with text, a
`finish_reason` or usage, and returns a stream that replays what it read and then continues upstream. If the
attempt fails or is cancelled on the way, the upstream stream is closed (the service sees the disconnect).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from openai.types.chat import ChatCompletionChunk

from labkit.stream import ChunkStream, chunk_text

__all__ = ["chunk_text", "is_first_token", "until_first_token"]


def is_first_token(chunk: ChatCompletionChunk) -> bool:
    """A chunk that shows the reader something or ends the answer (an empty answer has no text at all)."""
    if chunk_text(chunk) or chunk.usage is not None:
        return True
    return any(choice.finish_reason for choice in chunk.choices)


async def until_first_token(stream: ChunkStream) -> ChunkStream:
    """Wait for the stream's first token; return a stream that replays the chunks read so far, then the rest."""
    buffered: list[ChatCompletionChunk] = []
    ended = False
    try:
        while True:
            try:
                chunk = await stream.__anext__()
            except StopAsyncIteration:
                ended = True
                break
            buffered.append(chunk)
            if is_first_token(chunk):
                break
    except BaseException:
        await stream.aclose()
        raise

    async def replay() -> AsyncIterator[ChatCompletionChunk]:
        for item in buffered:
            yield item
        if not ended:
            async for item in stream:
                yield item

    return ChunkStream(replay(), close=stream.aclose, info=stream.info)
