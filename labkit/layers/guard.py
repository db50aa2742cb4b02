"""The stream guard layer: clear mid-stream errors with the partial text, and two timeouts.

What can go wrong *after* a stream started (an SSE `error` event, a dropped connection, a body that ends without
`finish_reason`) becomes a `MidStreamError` carrying the partial text, and the first token has its own timeout,
apart from the whole stream's: "the service has not started answering" (safe to retry, nothing was shown) is
another failure than "the answer is too long" (the reader already sees half of it). The exception types live in
`labkit.errors` with the others the resilience layers decide on.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from typing import Literal

import openai
from openai.types.chat import ChatCompletionChunk

from labkit.chain import Handler, Result
from labkit.errors import TRANSPORT_ERRORS, FirstTokenTimeout, MidStreamError, StreamError, StreamTimeout
from labkit.request import ChatRequest
from labkit.stream import chunk_text

# --------------------------------------------------------------------------------------------------------
# The guard layer
# --------------------------------------------------------------------------------------------------------


class StreamGuard:
    """A layer: clear mid-stream errors with the partial text, and first-token vs whole-stream timeouts.

    Place it inside the metrics layer (`Chain(t, [MetricsLayer(), StreamGuard(...)])`) so metrics record the
    outcome by its class. Per request, `controls={"first_token_timeout": s, "stream_timeout": s}` override
    the layer's defaults. Plain (non-streamed) requests pass through; `stream_timeout` also bounds them.
    """

    def __init__(self, first_token_timeout_s: float | None = None, total_timeout_s: float | None = None) -> None:
        self.first_token_timeout_s = first_token_timeout_s
        self.total_timeout_s = total_timeout_s

    def __call__(self, request: ChatRequest, call_next: Handler) -> Awaitable[Result]:
        """A plain request with no time limit passes straight through: the next handler's awaitable, not a
        coroutine of the guard's (`labkit.chain.Layer`); anything else is guarded."""
        total = request.controls.get("stream_timeout", self.total_timeout_s)
        if not request.stream and total is None:
            return call_next(request)
        return self._guarded(request, call_next, total)

    async def _guarded(self, request: ChatRequest, call_next: Handler, total: float | None) -> Result:
        loop = asyncio.get_running_loop()
        start = loop.time()
        total_at = start + total if total is not None else None
        if not request.stream:
            assert total is not None and total_at is not None  # a plain request without one passed through
            try:
                async with asyncio.timeout_at(total_at):
                    return await call_next(request)
            except TimeoutError as error:
                raise StreamTimeout(f"no answer within the {total:g} s timeout", elapsed_s=total) from error
        first = request.controls.get("first_token_timeout", self.first_token_timeout_s)
        first_at = start + first if first is not None else None
        opening_at = min((t for t in (first_at, total_at) if t is not None), default=None)
        if opening_at is None:
            stream = await call_next(request)
        else:
            timeout = asyncio.timeout_at(opening_at)
            try:
                async with timeout:
                    stream = await call_next(request)
            except TimeoutError as error:
                if not timeout.expired():
                    raise
                raise self._timeout_error(first_at, total_at, start, loop.time(), "", 0) from error
        return stream.wrap(lambda chunks: self._guard(chunks, start, first_at, total_at))

    def _timeout_error(
        self, first_at: float | None, total_at: float | None, start: float, now: float, text: str, chunks: int
    ) -> StreamError:
        elapsed = now - start
        if chunks == 0 and first_at is not None and (total_at is None or first_at <= total_at):
            return FirstTokenTimeout(
                f"no first token within {first_at - start:g} s", partial_text=text, chunks=chunks, elapsed_s=elapsed
            )
        limit = (total_at or now) - start
        return StreamTimeout(
            f"stream not finished within {limit:g} s ({chunks} chunks received, partial text kept)",
            partial_text=text,
            chunks=chunks,
            elapsed_s=elapsed,
        )

    async def _guard(
        self, chunks: AsyncIterator[ChatCompletionChunk], start: float, first_at: float | None, total_at: float | None
    ) -> AsyncIterator[ChatCompletionChunk]:
        loop = asyncio.get_running_loop()
        parts: list[str] = []
        finished = False
        deadline = first_at if first_at is not None else total_at
        try:
            if deadline is None:  # the fast path: no timer per chunk
                async for chunk in chunks:
                    text = chunk_text(chunk)
                    if text:
                        parts.append(text)
                    if not finished and chunk.choices and chunk.choices[0].finish_reason:
                        finished = True
                    yield chunk
            else:
                iterator = chunks.__aiter__()
                while True:
                    timeout = asyncio.timeout_at(deadline)
                    try:
                        async with timeout:
                            chunk = await iterator.__anext__()
                    except StopAsyncIteration:
                        break
                    except TimeoutError as error:
                        if not timeout.expired():
                            raise
                        raise self._timeout_error(
                            first_at, total_at, start, loop.time(), "".join(parts), len(parts)
                        ) from error
                    text = chunk_text(chunk)
                    if text:
                        if not parts:
                            deadline = total_at  # the first token came: only the whole-stream limit is left
                        parts.append(text)
                    if not finished and chunk.choices and chunk.choices[0].finish_reason:
                        finished = True
                    yield chunk
        except StreamError:
            raise
        except openai.APIConnectionError as error:  # also APITimeoutError: the SDK wraps httpx's errors
            raise self._broken("dropped", error, parts, start, loop) from error
        except (*TRANSPORT_ERRORS, ConnectionError) as error:  # httpx's and the SDK's fork's
            raise self._broken("dropped", error, parts, start, loop) from error
        except openai.APIError as error:  # an SSE `data: {"error": ...}` event
            raise self._broken("error_event", error, parts, start, loop) from error
        if not finished:
            raise self._broken("truncated", None, parts, start, loop)

    @staticmethod
    def _broken(
        kind: Literal["error_event", "dropped", "truncated"],
        error: BaseException | None,
        parts: list[str],
        start: float,
        loop: asyncio.AbstractEventLoop,
    ) -> MidStreamError:
        detail = "no finish_reason and no error" if error is None else f"{type(error).__name__}: {error}"
        cause = error.__cause__ if error is not None else None
        if cause is not None and kind == "dropped":
            detail += f" ({type(cause).__name__}: {cause})"
        return MidStreamError(
            kind,
            detail,
            partial_text="".join(parts),
            chunks=len(parts),
            elapsed_s=loop.time() - start,
            body=getattr(error, "body", None),
        )
