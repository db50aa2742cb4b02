"""Record a stream with its timing, and replay it either at once or at the pace it was first received.

A cache hit on a stream that arrives all at once makes a dashboard's time to first token look like zero, which
is true for the user but hides how long a miss takes; replaying at the original pace keeps TTFT and duration
figures comparable, at the cost of the saving in time (the saving in money stays). Paced replay schedules each
chunk against an absolute deadline (start + recorded offset) rather than sleeping each interval, so event-loop
lag does not pile up (DESIGN §4). The replayed chunks are the recorded ones (shared: treat them as read-only);
only `ChunkStream.info` tells a replay (`source="cache"`, `cache_replay="instant"|"paced"`) from a live stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Literal

from openai.types.chat import ChatCompletionChunk

from labkit.cache.base import RecordedChunk
from labkit.stream import ChunkStream

ReplayPace = Literal["instant", "paced"]


def record(
    upstream: ChunkStream,
    started: float,
    on_complete: Callable[[list[RecordedChunk]], Awaitable[None]],
) -> ChunkStream:
    """Pass `upstream` through, noting each chunk's arrival (loop time minus `started`).

    `on_complete` runs once the stream has ended normally (not when it fails or the caller closes it early: a
    partial answer must never be cached).
    """
    loop = asyncio.get_running_loop()

    async def transform(chunks: AsyncIterator[ChatCompletionChunk]) -> AsyncIterator[ChatCompletionChunk]:
        recorded: list[RecordedChunk] = []
        async for chunk in chunks:
            recorded.append(RecordedChunk(loop.time() - started, chunk))
            yield chunk
        if recorded:
            await on_complete(recorded)

    return upstream.wrap(transform)


async def _instant(chunks: Sequence[RecordedChunk]) -> AsyncIterator[ChatCompletionChunk]:
    for recorded in chunks:
        yield recorded.chunk


async def _paced(chunks: Sequence[RecordedChunk], speed: float) -> AsyncIterator[ChatCompletionChunk]:
    loop = asyncio.get_running_loop()
    start = loop.time()
    for recorded in chunks:
        delay = start + recorded.at_s / speed - loop.time()
        await asyncio.sleep(delay if delay > 0 else 0)
        yield recorded.chunk


def replay(
    chunks: Sequence[RecordedChunk],
    pace: ReplayPace = "instant",
    *,
    speed: float = 1.0,
    info: dict[str, Any] | None = None,
) -> ChunkStream:
    """A `ChunkStream` of recorded chunks, at once or at `speed` times the recorded pace."""
    if pace not in ("instant", "paced"):
        raise ValueError(f"replay pace must be 'instant' or 'paced', not {pace!r}")
    if speed <= 0:
        raise ValueError("replay speed must be positive")
    source = _instant(chunks) if pace == "instant" else _paced(chunks, speed)
    return ChunkStream(source, info={"source": "cache", "cache_replay": pace, **(info or {})})


__all__ = ["ReplayPace", "record", "replay"]
