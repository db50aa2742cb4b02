"""The metrics layer: one record per request (latency, time to first token, tokens, cost, outcome).

It sits outermost in the chain so it sees what the caller sees, cache hits and retries included. Times
come from `time.perf_counter()` (a monotonic clock: `time.time()` can jump). Records are kept in a bounded
deque, so memory does not grow with traffic. Lesson 11: every finished request also feeds a
`labkit.monitoring.Metrics` (bounded histograms with ±1 % quantiles, counters, totals and a rolling window),
and the layer opens a `labkit.timing.StageLog` for it, so layers below can mark where its time went.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable
from typing import Any

from openai.types import CompletionUsage
from openai.types.chat import ChatCompletionChunk

from labkit.chain import Handler, Result
from labkit.monitoring.registry import Metrics
from labkit.percentiles import sorted_percentile
from labkit.pricing import PriceTable, default_prices
from labkit.request import ChatRequest
from labkit.stream import ChunkStream
from labkit.timing import StageLog, opened


@dataclasses.dataclass(slots=True)  # slots: one object less per kept record for the garbage collector to walk
class RequestRecord:
    """What one request cost the caller in time, tokens and money."""

    key: str
    model: str
    stream: bool
    started: float
    latency_s: float | None = None
    ttft_s: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: float | None = None
    outcome: str = "pending"
    source: str = "upstream"
    # streams only: content chunks received, inter-token latency between them (s), and whether the tokens
    # were estimated from the partial text because the stream ended (stopped, broken) before its usage chunk
    chunks: int = 0
    itl_p50_s: float | None = None
    itl_p95_s: float | None = None
    usage_estimated: bool = False
    # seconds per stage of this request (labkit.timing); they add up to latency_s
    stages: dict[str, float] | None = None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class MetricsRecorder:
    """A bounded log of request records, with the summaries the notebooks chart."""

    def __init__(self, maxlen: int = 100_000) -> None:
        self.records: deque[RequestRecord] = deque(maxlen=maxlen)

    def add(self, record: RequestRecord) -> None:
        self.records.append(record)

    def clear(self) -> None:
        self.records.clear()

    def to_frame(self) -> Any:
        """The records as a pandas DataFrame (pandas is imported only when asked for)."""
        import pandas as pd

        return pd.DataFrame([r.as_dict() for r in self.records])

    def summary(self) -> dict[str, Any]:
        """Counts, latency percentiles (s), tokens and cost over the recorded requests."""
        return summarize(self.records)


def summarize(records: Iterable[RequestRecord]) -> dict[str, Any]:
    import numpy as np

    records = list(records)
    ok = [r for r in records if r.outcome == "ok"]
    latencies = np.array([r.latency_s for r in ok if r.latency_s is not None], dtype=float)
    ttfts = np.array([r.ttft_s for r in ok if r.ttft_s is not None], dtype=float)
    itl50 = np.array([r.itl_p50_s for r in ok if r.itl_p50_s is not None], dtype=float)
    itl95 = np.array([r.itl_p95_s for r in ok if r.itl_p95_s is not None], dtype=float)

    def pct(values: Any, q: float) -> float | None:
        return float(np.percentile(values, q)) if len(values) else None

    return {
        "requests": len(records),
        "ok": len(ok),
        "errors": len(records) - len(ok),
        "latency_p50_s": pct(latencies, 50),
        "latency_p95_s": pct(latencies, 95),
        "latency_p99_s": pct(latencies, 99),
        "latency_mean_s": float(latencies.mean()) if len(latencies) else None,
        "ttft_p50_s": pct(ttfts, 50),
        "ttft_p95_s": pct(ttfts, 95),
        # the median over streams of each stream's own ITL p50 / p95
        "itl_p50_s": pct(itl50, 50),
        "itl_p95_s": pct(itl95, 50),
        "prompt_tokens": sum(r.prompt_tokens for r in records),
        "completion_tokens": sum(r.completion_tokens for r in records),
        "cached_tokens": sum(r.cached_tokens for r in records),
        "cost_usd": sum(r.cost_usd or 0.0 for r in records),
    }


def outcome_of(error: BaseException) -> str:
    """A short label for how a request ended: the exception's class name, or `cancelled`."""
    if isinstance(error, (asyncio.CancelledError, GeneratorExit)):
        return "cancelled"
    return type(error).__name__


class MetricsLayer:
    """Record every request passing through; streams are timed chunk by chunk as the caller reads them.

    `metrics` (a `labkit.monitoring.Metrics`, one is made if not given) gets histograms and counters of every
    finished request. `source_mark` names a `labkit.timing` checkpoint placed right below the cache (for example
    `StageMark("cache_lookup")`): a plain answer that never passed it was served from the cache (streams say so
    themselves in `info["source"]`).
    """

    def __init__(
        self,
        recorder: MetricsRecorder | None = None,
        prices: PriceTable | None = None,
        *,
        metrics: Metrics | None = None,
        source_mark: str | None = None,
    ) -> None:
        self.recorder = recorder or MetricsRecorder()
        self.prices = prices or default_prices()
        self.metrics = metrics if metrics is not None else Metrics()
        self.source_mark = source_mark

    async def __call__(self, request: ChatRequest, call_next: Handler) -> Result:
        record = RequestRecord(key=request.key, model=request.model, stream=request.stream, started=time.perf_counter())
        log = StageLog(record.started)
        try:
            with opened(log):
                result = await call_next(request)
        except BaseException as error:
            self._finish(record, log, outcome_of(error))
            raise
        if isinstance(result, ChunkStream):
            record.source = str(result.info.get("source", "upstream"))
            return result.wrap(lambda chunks: self._observe(record, log, request, chunks))
        passed = self.source_mark is None or log.reached(self.source_mark)
        record.source = "upstream" if passed else "cache"
        self._account(record, result.model, result.usage)
        self._finish(record, log, "ok")
        return result

    async def _observe(
        self, record: RequestRecord, log: StageLog, request: ChatRequest, chunks: AsyncIterator[ChatCompletionChunk]
    ) -> AsyncIterator[ChatCompletionChunk]:
        outcome = "cancelled"  # a caller that stops reading early closed the stream
        parts: list[str] = []
        gaps: list[float] = []
        last = 0.0
        clock = time.perf_counter
        try:
            async for chunk in chunks:
                for choice in chunk.choices:
                    if choice.delta.content:
                        now = clock()
                        if parts:
                            gaps.append(now - last)
                        else:
                            record.ttft_s = now - record.started
                            log.mark("first_token", now)
                        last = now
                        parts.append(choice.delta.content)
                        break
                if chunk.usage is not None:
                    self._account(record, chunk.model, chunk.usage)
                yield chunk
            outcome = "ok"
        except BaseException as error:
            outcome = outcome_of(error)
            raise
        finally:
            record.chunks = len(parts)
            if record.completion_tokens == 0 and parts and outcome != "ok":
                self._estimate(record, request, "".join(parts))
            self._finish(record, log, outcome, gaps)
            if gaps:
                gaps.sort()
                record.itl_p50_s = sorted_percentile(gaps, 50)
                record.itl_p95_s = sorted_percentile(gaps, 95)

    def _estimate(self, record: RequestRecord, request: ChatRequest, text: str) -> None:
        """No usage chunk arrived (stopped or broken stream): count the prompt and the partial text."""
        from labkit.tokens import count_messages, count_text

        record.prompt_tokens = count_messages(request.messages, request.model)
        record.completion_tokens = count_text(text, request.model)
        record.usage_estimated = True
        record.cost_usd = self.prices.cost(request.model, record.prompt_tokens, record.completion_tokens)

    def _account(self, record: RequestRecord, model: str, usage: CompletionUsage | None) -> None:
        if usage is None:
            return
        record.prompt_tokens = usage.prompt_tokens
        record.completion_tokens = usage.completion_tokens
        details = usage.prompt_tokens_details
        record.cached_tokens = (details.cached_tokens or 0) if details is not None else 0
        price_model = model if self.prices.price(model) is not None else record.model
        record.cost_usd = self.prices.cost(
            price_model, record.prompt_tokens, record.completion_tokens, record.cached_tokens
        )

    def _finish(self, record: RequestRecord, log: StageLog, outcome: str, gaps: list[float] | None = None) -> None:
        if record.latency_s is not None:
            return
        end = time.perf_counter()
        record.latency_s = end - record.started
        record.outcome = outcome
        if not record.stream:
            log.mark("response", end)
        else:
            log.mark("decode" if record.ttft_s is not None else "first_token", end)
        record.stages = log.stages()
        self.recorder.add(record)
        self.metrics.record(record, itl=gaps or (), stages=record.stages)


__all__ = ["MetricsLayer", "MetricsRecorder", "RequestRecord", "summarize"]
