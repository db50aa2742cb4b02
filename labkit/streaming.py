"""Streaming done properly: stream timing, clear mid-stream errors with the partial text, two timeouts.

A stream has more moments than a plain call. Time to first token (TTFT) is what a reader waits before
anything shows; the inter-token latency (ITL) between chunks is how fast the text then flows; the total time
is what a plain call would have waited anyway. This module gives them names and one place to be measured:

- `StreamTiming` records chunk arrival times (monotonic clock) and answers TTFT, ITL p50/p95, tokens/s and
  time per output token (TPOT).
- `consume()` reads a `ChunkStream` to the end (or until cancelled) into a `StreamOutcome`: text, timing,
  usage (reported, or estimated from the partial text with `labkit.tokens` when no usage chunk arrived).
- `StreamGuard` is a layer. It turns what can go wrong *after* a stream started (an SSE `error` event, a dropped
  connection, a body that ends without `finish_reason`) into a `MidStreamError` that carries the partial text,
  and it enforces a timeout on the first token separately from a timeout on the whole stream: "the service
  has not started answering" (safe to retry, nothing was shown) is another failure than "the answer is too
  long" (the reader already sees half of it).
- `trim_history()` keeps a conversation under a token budget (a request-side lever of lesson 03).

`python -m labkit.streaming --bench` measures labkit's added TTFT over the bare SDK stream and its added CPU
per chunk, and writes `build/bench/streaming.json`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, Literal

import httpx
import openai
from openai.types import CompletionUsage
from openai.types.chat import ChatCompletionChunk

from labkit.chain import Handler, Result
from labkit.percentiles import percentile
from labkit.request import ChatRequest
from labkit.stream import ChunkStream
from labkit.tokens import count_messages, count_text

__all__ = [
    "FirstTokenTimeout",
    "MidStreamError",
    "StreamError",
    "StreamGuard",
    "StreamOutcome",
    "StreamTimeout",
    "StreamTiming",
    "consume",
    "estimate_usage",
    "trim_history",
]


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
# Errors
# --------------------------------------------------------------------------------------------------------


class StreamError(Exception):
    """A stream that did not finish; `partial_text` is what the reader already received (maybe nothing)."""

    def __init__(self, message: str, *, partial_text: str = "", chunks: int = 0, elapsed_s: float | None = None):
        super().__init__(message)
        self.partial_text = partial_text
        self.chunks = chunks
        self.elapsed_s = elapsed_s

    @property
    def retryable(self) -> bool:
        """Safe to retry transparently only when nothing was shown yet (a retry would repeat the text)."""
        return not self.partial_text


class MidStreamError(StreamError):
    """The stream broke after it started: `kind` is `error_event`, `dropped` or `truncated`."""

    def __init__(
        self,
        kind: Literal["error_event", "dropped", "truncated"],
        detail: str,
        *,
        partial_text: str = "",
        chunks: int = 0,
        elapsed_s: float | None = None,
        body: Any = None,
    ):
        what = {
            "error_event": "the service sent an error event",
            "dropped": "the connection was dropped",
            "truncated": "the response ended without a finish_reason",
        }[kind]
        super().__init__(
            f"stream broke after {chunks} chunks ({len(partial_text)} characters kept in .partial_text): "
            f"{what}: {detail}",
            partial_text=partial_text,
            chunks=chunks,
            elapsed_s=elapsed_s,
        )
        self.kind = kind
        self.detail = detail
        self.body = body


class FirstTokenTimeout(StreamError, TimeoutError):
    """No text within the first-token timeout (the service is queueing, slow or hung)."""


class StreamTimeout(StreamError, TimeoutError):
    """The whole stream took longer than its total timeout; the text so far is kept."""


# --------------------------------------------------------------------------------------------------------
# The guard layer
# --------------------------------------------------------------------------------------------------------


def _text_of(chunk: ChatCompletionChunk) -> str:
    for choice in chunk.choices:
        if choice.delta.content:
            return choice.delta.content
    return ""


class StreamGuard:
    """A layer: clear mid-stream errors with the partial text, and first-token vs whole-stream timeouts.

    Place it inside the metrics layer (`Chain(t, [MetricsLayer(), StreamGuard(...)])`) so metrics record the
    outcome by its class. Per request, `controls={"first_token_timeout": s, "stream_timeout": s}` override
    the layer's defaults. Plain (non-streamed) requests pass through; `stream_timeout` also bounds them.
    """

    def __init__(self, first_token_timeout_s: float | None = None, total_timeout_s: float | None = None) -> None:
        self.first_token_timeout_s = first_token_timeout_s
        self.total_timeout_s = total_timeout_s

    async def __call__(self, request: ChatRequest, call_next: Handler) -> Result:
        total = request.controls.get("stream_timeout", self.total_timeout_s)
        loop = asyncio.get_running_loop()
        start = loop.time()
        total_at = start + total if total is not None else None
        if not request.stream:
            if total_at is None:
                return await call_next(request)
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
                    text = _text_of(chunk)
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
                    text = _text_of(chunk)
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
        except (httpx.TransportError, ConnectionError) as error:
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
                text = _text_of(chunk)
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


# --------------------------------------------------------------------------------------------------------
# Benchmark: python -m labkit.streaming --bench
# --------------------------------------------------------------------------------------------------------


def _median(values: Sequence[float]) -> float:
    return float(percentile(values, 50) or 0.0)


async def _bench(pairs: int, streams: int, rounds: int, out: str) -> dict[str, Any]:  # pragma: no cover - a tool
    import json
    import os
    import platform
    from pathlib import Path

    from openai import AsyncOpenAI

    from labkit.chain import Chain
    from labkit.metrics import MetricsLayer, MetricsRecorder
    from labkit.services import start_sim
    from labkit.transport import OpenAITransport

    messages = [{"role": "user", "content": "Explain streaming in a few sentences."}]
    model = "gpt-4o"

    def chunk(i: int, text: str | None, finish: str | None = None) -> ChatCompletionChunk:
        return ChatCompletionChunk.model_validate(
            {
                "id": "chatcmpl-bench",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": model,
                "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}],
            }
        )

    canned = [chunk(i, f" word{i}") for i in range(49)] + [chunk(49, ".", "stop")]

    async def canned_stream() -> AsyncIterator[ChatCompletionChunk]:
        for c in canned:
            yield c

    async def fake_transport(request: ChatRequest) -> Result:
        return ChunkStream(canned_stream())

    async def cpu_per_chunk(open_: Callable[[], Any], n: int = 400) -> float:
        start = time.process_time()
        for _ in range(n):
            stream = await open_()
            async for _chunk in stream:
                pass
        return (time.process_time() - start) / (n * len(canned)) * 1e6

    async def bare_canned() -> ChunkStream:
        return ChunkStream(canned_stream())

    in_process: dict[str, float] = {}
    # one chain (and one metrics recorder) per variant, as an application keeps them: a recorder built per stream
    # would add the cost of creating its histograms to every stream
    chains = {
        "metrics": Chain(fake_transport, [MetricsLayer(MetricsRecorder())]),
        "metrics+guard": Chain(fake_transport, [MetricsLayer(MetricsRecorder()), StreamGuard()]),
        "metrics+guard+timeouts": Chain(fake_transport, [MetricsLayer(MetricsRecorder()), StreamGuard(30.0, 300.0)]),
    }
    variants: dict[str, Callable[[], Any]] = {"bare_generator": bare_canned}
    for name, chain in chains.items():
        variants[name] = lambda chain=chain: chain.stream(messages, model=model)
    for _ in range(3):
        for name, open_ in variants.items():
            value = await cpu_per_chunk(open_)
            in_process[name] = min(in_process.get(name, value), value)
    added_in_process = {k: v - in_process["bare_generator"] for k, v in in_process.items() if k != "bare_generator"}

    with start_sim("bench", seed=0) as sim:
        client = AsyncOpenAI(base_url=sim.base_url, api_key=sim.api_key, max_retries=0)
        chain = Chain(OpenAITransport(client=client), [MetricsLayer(MetricsRecorder()), StreamGuard(30.0, 300.0)])

        async def sdk_stream() -> Any:
            return await client.chat.completions.create(
                model=model, messages=messages, stream=True, stream_options={"include_usage": True}
            )

        async def lab_stream() -> Any:
            return await chain.stream(messages, model=model)

        async def ttft(open_: Callable[[], Any]) -> float:
            started = time.perf_counter()
            stream = await open_()
            try:
                async for c in stream:
                    if c.choices and c.choices[0].delta.content:
                        return time.perf_counter() - started
            finally:
                await (stream.aclose() if isinstance(stream, ChunkStream) else stream.close())
            raise RuntimeError("no text")

        await ttft(sdk_stream)  # warm the connection pool
        bare_ttfts: list[float] = []
        lab_ttfts: list[float] = []
        for i in range(pairs):  # one pair at a time, both sides at once, the order alternating
            order = (sdk_stream, lab_stream) if i % 2 == 0 else (lab_stream, sdk_stream)
            first, second = await asyncio.gather(*(ttft(o) for o in order))
            bare, lab = (first, second) if i % 2 == 0 else (second, first)
            bare_ttfts.append(bare)
            lab_ttfts.append(lab)
        diffs = [lab - bare for bare, lab in zip(bare_ttfts, lab_ttfts, strict=True)]

        async def consume_all(open_: Callable[[], Any]) -> tuple[float, int]:
            async def one() -> int:
                stream = await open_()
                n = 0
                async for c in stream:
                    if c.choices and c.choices[0].delta.content:
                        n += 1
                return n

            start = time.process_time()
            counts = await asyncio.gather(*(one() for _ in range(streams)))
            return time.process_time() - start, sum(counts)

        network: dict[str, list[float]] = {"sdk": [], "labkit": []}
        for _ in range(rounds):
            for name, open_ in (("sdk", sdk_stream), ("labkit", lab_stream)):
                cpu, chunks = await consume_all(open_)
                network[name].append(cpu / chunks * 1e6)
        await client.close()

    result = {
        "what": "labkit's streaming overhead over the bare openai SDK stream (bench profile: 0.3 s TTFT, 50 tokens)",
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "ttft": {
            "pairs": len(bare_ttfts),
            "sdk_median_s": _median(bare_ttfts),
            "labkit_median_s": _median(lab_ttfts),
            "added_median_ms": _median(diffs) * 1000,
            "added_p25_p75_ms": [float(percentile(diffs, 25) or 0) * 1000, float(percentile(diffs, 75) or 0) * 1000],
            "target_added_median_ms": 1.0,
        },
        "cpu_per_chunk_us": {
            "in_process": in_process,
            "in_process_added_by_labkit": added_in_process,
            "over_http": {k: _median(v) for k, v in network.items()},
            "over_http_added_by_labkit": _median(network["labkit"]) - _median(network["sdk"]),
            "concurrent_streams": streams,
        },
    }
    result["ttft"]["meets_target"] = result["ttft"]["added_median_ms"] < 1.0
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(result, indent=2), encoding="utf-8")  # noqa: ASYNC240 (once, at the end)
    return result


def main(argv: Sequence[str] | None = None) -> None:  # pragma: no cover - a tool
    import argparse
    import json

    ap = argparse.ArgumentParser(prog="python -m labkit.streaming", description="labkit's streaming benchmark")
    ap.add_argument("--bench", action="store_true", help="measure added TTFT and CPU per chunk")
    ap.add_argument("--pairs", type=int, default=60, help="TTFT samples per side")
    ap.add_argument("--streams", type=int, default=100, help="concurrent streams in the CPU measurement")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default="build/bench/streaming.json")
    args = ap.parse_args(argv)
    if not args.bench:
        ap.error("nothing to do: pass --bench")
    result = asyncio.run(_bench(args.pairs, args.streams, args.rounds, args.out))
    print(json.dumps(result, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
