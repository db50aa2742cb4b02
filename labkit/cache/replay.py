"""Record a stream with its timing, and replay it at once, at the pace it was first received, or merged.

A cache hit on a stream that arrives all at once makes a dashboard's time to first token look like zero, which
is true for the user but hides how long a miss takes; replaying at the original pace keeps TTFT and duration
figures comparable, at the cost of the saving in time (the saving in money stays). Paced replay schedules each
chunk against an absolute deadline (start + recorded offset) rather than sleeping each interval, so event-loop
lag does not pile up (docs/ARCHITECTURE.md, "Measurements behind the design"). The replayed chunks are the
recorded ones, rebuilt from the entry's JSON and shared by the replays in flight (treat them as read-only); only
`ChunkStream.info` tells a replay (`source="cache"`, `cache_replay=<pace>`) from a live stream.

`"merged"` sends the same answer at once as one chunk (role, the whole text and the finish reason) and the usage
chunk, as LiteLLM does for a cached stream: the caller reads the same text and usage, and a busy process iterates
two chunks instead of one per token through every layer of the chain (the capstone's choice). Answers it cannot
merge without losing something (several choices, tool-call deltas, logprobs) are replayed as recorded
(`labkit.stream.merge_chunks`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Literal

from openai.types.chat import ChatCompletionChunk

from labkit.cache.base import RecordedChunk
from labkit.stream import ChunkStream, merge_chunks

ReplayPace = Literal["instant", "paced", "merged"]
REPLAY_PACES: tuple[str, ...] = ("instant", "paced", "merged")


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


async def _at_once(chunks: Sequence[ChatCompletionChunk]) -> AsyncIterator[ChatCompletionChunk]:
    for chunk in chunks:
        yield chunk


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
    merged: Sequence[ChatCompletionChunk] | None = None,
) -> ChunkStream:
    """A `ChunkStream` of recorded chunks: at once, at `speed` times the recorded pace, or merged
    (`labkit.stream.merge_chunks`; pass `merged` when it is already computed: `Entry.merged` rebuilds its own)."""
    if pace not in REPLAY_PACES:
        raise ValueError(f"replay pace must be one of {', '.join(REPLAY_PACES)}, not {pace!r}")
    if speed <= 0:
        raise ValueError("replay speed must be positive")
    if pace == "paced":
        source = _paced(chunks, speed)
    elif pace == "merged":
        source = _at_once(merged if merged is not None else merge_chunks([r.chunk for r in chunks]))
    else:
        source = _at_once([r.chunk for r in chunks])
    return ChunkStream(source, info={"source": "cache", "cache_replay": pace, **(info or {})})


__all__ = ["REPLAY_PACES", "ReplayPace", "record", "replay"]
