"""Streaming done properly: stream timing, clear mid-stream errors with the partial text, two timeouts.

A stream has more moments than a plain call. Time to first token (TTFT) is what a reader waits before
anything shows; the inter-token latency (ITL) between chunks is how fast the text then flows; the total time
is what a plain call would have waited anyway. This module gives them names and one place to be measured:

- `StreamTiming` records chunk arrival times (monotonic clock) and answers TTFT, ITL p50/p95, tokens/s and
  time per output token (TPOT).
- `consume()` reads a `ChunkStream` to the end (or until cancelled) into a `StreamOutcome`: text, timing,
  usage (reported, or estimated from the partial text with `labkit.tokens` when no usage chunk arrived).
- The stream guard layer (`labkit.layers.guard.StreamGuard`) turns what breaks after the first chunk into a
  `labkit.errors.MidStreamError` with the partial text, and times the first token apart from the whole stream.
- `trim_history()` keeps a conversation under a token budget (a request-side lever of lesson 04).

"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from openai.types import CompletionUsage

from labkit.percentiles import percentile
from labkit.stream import ChunkStream, chunk_text
from labkit.tokens import count_messages, count_text

# --------------------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class StreamTiming:
    """Arrival times of one stream's content chunks, relative to when the request was sent.

    Only chunks that carry text count: the first chunk of an OpenAI stream (`role: "assistant", content: ""`)
    and the final usage chunk show nothing to a reader.
    """

    started: float = dataclasses.field(default_factory=time.perf_counter)
    first_s: float | None = None  # TTFT
    last_s: float | None = None
    end_s: float | None = None  # when the stream ended (last byte, error or stop)
    chunks: int = 0
    gaps: list[float] = dataclasses.field(default_factory=list)

    def mark(self, now: float | None = None) -> None:
        """Note one content chunk arriving now."""
        t = (time.perf_counter() if now is None else now) - self.started
        if self.first_s is None:
            self.first_s = t
        else:
            self.gaps.append(t - self.last_s)  # type: ignore[operator]
        self.last_s = t
        self.chunks += 1

    def finish(self, now: float | None = None) -> None:
        if self.end_s is None:
            self.end_s = (time.perf_counter() if now is None else now) - self.started

    @property
    def ttft_s(self) -> float | None:
        return self.first_s

    @property
    def total_s(self) -> float | None:
        return self.end_s if self.end_s is not None else self.last_s

    @property
    def itl_p50_s(self) -> float | None:
        return percentile(self.gaps, 50)

    @property
    def itl_p95_s(self) -> float | None:
        return percentile(self.gaps, 95)

    @property
    def decode_s(self) -> float | None:
        """From the first to the last content chunk."""
        if self.first_s is None or self.last_s is None:
            return None
        return self.last_s - self.first_s

    def tokens_per_s(self, tokens: int | None = None) -> float | None:
        """Decode speed after the first token: (tokens - 1) / (last - first)."""
        n = self.chunks if tokens is None else tokens
        decode = self.decode_s
        return (n - 1) / decode if decode and n > 1 else None

    def tpot_s(self, tokens: int | None = None) -> float | None:
        """Time per output token after the first: the inverse of `tokens_per_s`."""
        rate = self.tokens_per_s(tokens)
        return 1.0 / rate if rate else None

    def as_dict(self, tokens: int | None = None) -> dict[str, Any]:
        return {
            "ttft_s": self.ttft_s,
            "total_s": self.total_s,
            "chunks": self.chunks,
            "itl_p50_s": self.itl_p50_s,
            "itl_p95_s": self.itl_p95_s,
            "tokens_per_s": self.tokens_per_s(tokens),
            "tpot_s": self.tpot_s(tokens),
        }


# --------------------------------------------------------------------------------------------------------
# Reading a stream into an outcome
# --------------------------------------------------------------------------------------------------------


def estimate_usage(messages: Sequence[Mapping[str, Any]], text: str, model: str) -> CompletionUsage:
    """Usage for a stream that ended without a usage chunk: the prompt and the partial text, counted with
    the model's tokenizer. It is a lower bound on what was billed (the service may have generated a few
    tokens more before it noticed the disconnect)."""
    prompt = count_messages(messages, model)
    completion = count_text(text, model) if text else 0
    return CompletionUsage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


@dataclasses.dataclass
class StreamOutcome:
    """How one stream ended: `ok`, `stopped` (cancelled by the reader) or `error`, with what arrived."""

    text: str
    timing: StreamTiming
    status: Literal["ok", "stopped", "error"]
    usage: CompletionUsage | None = None
    usage_estimated: bool = False
    finish_reason: str | None = None
    error: BaseException | None = None
    model: str = ""

    @property
    def completion_tokens(self) -> int:
        return self.usage.completion_tokens if self.usage else 0

    @property
    def prompt_tokens(self) -> int:
        return self.usage.prompt_tokens if self.usage else 0

    @property
    def cached_tokens(self) -> int:
        details = self.usage.prompt_tokens_details if self.usage else None
        return (details.cached_tokens or 0) if details is not None else 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "characters": len(self.text),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cached_tokens": self.cached_tokens,
            "usage_estimated": self.usage_estimated,
            "finish_reason": self.finish_reason,
            "error": None if self.error is None else f"{type(self.error).__name__}: {self.error}",
            **self.timing.as_dict(self.completion_tokens or None),
        }


async def consume(
    open_stream: Callable[[], Any] | ChunkStream,
    *,
    messages: Sequence[Mapping[str, Any]] = (),
    model: str = "gpt-4o",
    on_text: Callable[[str, StreamTiming], None] | None = None,
    timing: StreamTiming | None = None,
    stop_requested: Callable[[], bool] | None = None,
) -> StreamOutcome:
    """Read a stream to its end into a `StreamOutcome`; stream errors are reported in it, not raised.

    `open_stream` is a `ChunkStream` or a zero-argument callable returning an awaitable of one (so the time
    to open the request counts in TTFT). `on_text(delta, timing)` is called for every text delta.

    Stopping: cancel the task running this coroutine. The stream is closed, which closes the HTTP
    connection upstream (the service stops generating), and the partial text is kept. If `stop_requested()`
    returns True at that moment, the cancellation was a Stop button and is absorbed: the outcome is
    `stopped`, with usage estimated from the partial text when no usage chunk arrived. Any other
    cancellation (an interrupt, an outer timeout) propagates as it must.
    """
    timing = timing or StreamTiming()
    parts: list[str] = []
    usage: CompletionUsage | None = None
    finish: str | None = None
    status: Literal["ok", "stopped", "error"] = "ok"
    error: BaseException | None = None
    served_model = model
    stream: ChunkStream | None = None
    try:
        stream = open_stream if isinstance(open_stream, ChunkStream) else await open_stream()
        async with stream:
            async for chunk in stream:
                text = chunk_text(chunk)
                if text:
                    timing.mark()
                    parts.append(text)
                    if on_text is not None:
                        on_text(text, timing)
                if chunk.choices and chunk.choices[0].finish_reason:
                    finish = chunk.choices[0].finish_reason
                if chunk.usage is not None:
                    usage = chunk.usage
                    served_model = chunk.model or served_model
    except asyncio.CancelledError as cancelled:
        if stop_requested is None or not stop_requested():
            raise
        status, error = "stopped", cancelled
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
    except Exception as failure:  # StreamError, APIStatusError ...: reported, not raised
        status, error = "error", failure
    finally:
        timing.finish()
    text = "".join(parts)
    estimated = False
    if usage is None and messages:
        usage, estimated = estimate_usage(messages, text, model), True
    return StreamOutcome(
        text=text,
        timing=timing,
        status=status,
        usage=usage,
        usage_estimated=estimated,
        finish_reason=finish,
        error=error,
        model=served_model,
    )


# --------------------------------------------------------------------------------------------------------
# Request-side levers
# --------------------------------------------------------------------------------------------------------


def trim_history(
    messages: Sequence[Mapping[str, Any]], budget_tokens: int, model: str = "gpt-4o"
) -> list[Mapping[str, Any]]:
    """The system messages and the most recent turns that fit in `budget_tokens` prompt tokens.

    System messages are kept (they are the instructions, and usually the cacheable prefix); then turns are
    added newest first while `count_messages` stays within the budget. The last message is always kept, even
    alone over budget, because it is the question.
    """
    if not messages:
        return []
    system = [m for m in messages if m.get("role") == "system"]
    rest = [m for m in messages if m.get("role") != "system"]
    kept: list[Mapping[str, Any]] = []
    for message in reversed(rest):
        candidate = [message, *kept]
        if kept and count_messages([*system, *candidate], model) > budget_tokens:
            break
        kept = candidate
    # an assistant turn without the user turn that asked for it reads oddly: start on a user turn
    while len(kept) > 1 and kept[0].get("role") == "assistant":
        kept = kept[1:]
    return [*system, *kept]
