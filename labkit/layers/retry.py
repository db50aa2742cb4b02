"""Retries that respect the server: full-jitter backoff, `retry-after`, a retry budget and a deadline.

The official SDK already retries (connection errors, 408, 409, 429, >= 500; `x-should-retry`, `retry-after-ms`,
`retry-after`; else `min(0.5 * 2^n, 8)` s times a jitter in (0.75, 1]; `max_retries=2`). What it cannot do, and
this layer does:

- **Never retry what cannot succeed**: `insufficient_quota` (a 429 that means "out of credit") and permanent
  client errors (400, 401, 403, 404, 422), whatever their headers say. The rules live in `labkit.errors`.
- **Full jitter** (`uniform(0, min(cap, base * 2^n))`, AWS Architecture Blog, "Exponential Backoff and Jitter"):
  clients that failed together do not come back together; the SDK's 25 % jitter keeps them in lockstep.
- **A retry budget** (Finagle's `RetryBudget`; gRPC's retry throttling is the same idea): retries may add at
  most `ratio` of the traffic (plus a small floor per second), so when an upstream is sick the clients do not
  triple its load; the SDK retries every request twice however many fail.
- **An overall deadline per request** (`deadline_s`, or `controls={"deadline_s": ...}`): attempts, waits and a
  `retry-after` that would overshoot it are not started; the SDK's `timeout` is per attempt.
- **Another endpoint** for the next attempt: each attempt asks the balancer below to avoid the endpoints already
  tried (`controls["avoid_endpoints"]`), and learns where it went from `controls["route_log"]` (a list the
  balancer appends the endpoint's name to). Layers share those two control names, never code.
- **Streams**: an attempt counts as done at the first token (`labkit.attempt.until_first_token`), so a failure
  before it (an error status, a hang caught by `StreamGuard`'s first-token timeout, a drop before any text) is
  retried invisibly. A failure after it is *never silently replayed*: text the reader has seen is not sent
  twice. By default (`resume_streams=True`) the layer tries a **verified resume**, and only for a reproducible
  request (temperature 0 or a `seed`): it replays the request and continues the stream only if the replay
  starts with exactly the text already delivered, so the reader gets the rest of the very answer it was reading
  (`stats.resumed`). If the replay diverges (`stats.resume_diverged`), fails, or the request is sampled
  (temperature > 0 and no seed), the caller gets a `MidStreamError` carrying the partial text. The resume
  relies on the provider reproducing the same text at temperature 0: reproducible replicas (the simulated
  service, a self-hosted server with deterministic decoding) do; hosted APIs do not promise bit-identical
  output, so against them the replay mostly diverges and the layer raises, as it would with
  `resume_streams=False` (which turns the resume off: every failure after the first token raises).
- **No double retrying**: put this layer over a transport with the SDK's retries off (`OpenAITransport` defaults
  to `max_retries=0`); `labkit.chain_config.ChainConfig` refuses `retry` together with `sdk_max_retries`.

The retry loop is hand-written rather than `tenacity`'s: an attempt here is not one call (a stream is held to
its first token), the wait comes from the server's headers, the budget is shared by every request of the layer,
and the next attempt is told where not to go. `tenacity` would wrap all of that in callbacks around ~30 lines.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from openai.types.chat import ChatCompletionChunk

from labkit.attempt import chunk_text, until_first_token
from labkit.chain import Handler, Result
from labkit.deadlines import Deadlines
from labkit.errors import DeadlineExceeded, ErrorInfo, MidStreamError, StreamError, classify
from labkit.request import ChatRequest
from labkit.stream import ChunkStream

__all__ = ["RetryBudget", "RetryDecision", "RetryLayer", "RetryPolicy", "RetryStats", "sdk_backoff_s"]


def sdk_backoff_s(retries_taken: int, max_retries: int = 2, rng: random.Random | None = None) -> float:
    """The official SDK's wait without a `retry-after` header (`_calculate_retry_timeout`), for comparison."""
    if not 0 <= retries_taken < max_retries:
        raise ValueError(f"retries_taken must be in [0, {max_retries}), got {retries_taken!r}")
    sleep = min(0.5 * 2.0**retries_taken, 8.0)
    return sleep * (1 - 0.25 * (rng or random).random())


@dataclasses.dataclass(frozen=True)
class RetryDecision:
    retry: bool
    delay_s: float
    reason: str


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """What to retry and how long to wait: a pure function of the failure, the attempt and the time left."""

    max_attempts: int = 4  # attempts in all, the first one included
    base_delay_s: float = 0.5
    max_delay_s: float = 8.0
    max_retry_after_s: float = 60.0  # a server asking for longer than this is treated as "do not retry"

    def __post_init__(self) -> None:
        if not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise ValueError(f"max_attempts must be an integer >= 1, got {self.max_attempts!r}")
        if not self.base_delay_s > 0 or not self.max_delay_s >= self.base_delay_s:
            raise ValueError("base_delay_s must be > 0 and max_delay_s >= base_delay_s")
        if not self.max_retry_after_s >= 0:
            raise ValueError("max_retry_after_s must be >= 0")

    def backoff_s(self, retry_number: int, rng: random.Random | None = None) -> float:
        """Full jitter: uniform in [0, min(max_delay, base * 2^(n-1))] for the n-th retry."""
        ceiling = min(self.max_delay_s, self.base_delay_s * 2.0 ** max(0, retry_number - 1))
        return (rng or random).uniform(0.0, ceiling)

    def decide(
        self, info: ErrorInfo, attempts: int, remaining_s: float | None = None, rng: random.Random | None = None
    ) -> RetryDecision:
        """After `attempts` attempts ended with `info`: retry or not, after how long, and why."""
        if not info.retryable:
            return RetryDecision(False, 0.0, info.reason)
        if attempts >= self.max_attempts:
            return RetryDecision(False, 0.0, "attempts exhausted")
        if info.kind == "circuit_open":  # the balancer will pick another endpoint: no need to wait
            delay, reason = 0.0, "circuit open: another endpoint"
        elif info.retry_after_s is not None:
            if info.retry_after_s > self.max_retry_after_s:
                return RetryDecision(False, 0.0, "retry-after too long")
            delay, reason = info.retry_after_s, "retry-after"
        else:
            delay, reason = self.backoff_s(attempts, rng), "backoff"
        if remaining_s is not None and delay >= remaining_s:
            return RetryDecision(False, 0.0, "deadline")
        return RetryDecision(True, delay, reason)


class RetryBudget:
    """Retries may add at most `ratio` of the requests of the last `ttl_s` seconds, plus `min_per_s` per second.

    Finagle's `RetryBudget`: every request deposits `ratio` of a retry, every retry withdraws one; a reserve of
    `min_per_s * ttl_s` lets a quiet client still retry. Counters are kept in ten time buckets, so memory does not
    grow with traffic.
    """

    def __init__(
        self,
        ratio: float = 0.2,
        min_per_s: float = 10.0,
        ttl_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0.0 <= ratio <= 1000.0:
            raise ValueError(f"ratio must be between 0 and 1000, got {ratio!r}")
        if min_per_s < 0 or ttl_s <= 0:
            raise ValueError("min_per_s must be >= 0 and ttl_s > 0")
        self.ratio, self.min_per_s, self.ttl_s = ratio, min_per_s, ttl_s
        self._clock = clock
        self._width = ttl_s / 10.0
        self._buckets: deque[list[float]] = deque()  # [start, deposits, withdrawals]

    def _current(self) -> list[float]:
        now = self._clock()
        while self._buckets and self._buckets[0][0] <= now - self.ttl_s:
            self._buckets.popleft()
        if not self._buckets or now >= self._buckets[-1][0] + self._width:
            self._buckets.append([now, 0.0, 0.0])
        return self._buckets[-1]

    def deposit(self) -> None:
        """One request was made."""
        self._current()[1] += 1

    def balance(self) -> float:
        """Retries allowed right now."""
        self._current()
        deposits = sum(b[1] for b in self._buckets)
        withdrawals = sum(b[2] for b in self._buckets)
        return self.min_per_s * self.ttl_s + self.ratio * deposits - withdrawals

    def try_withdraw(self) -> bool:
        """Take one retry from the budget if there is one."""
        if self.balance() < 1.0:
            return False
        self._current()[2] += 1
        return True


@dataclasses.dataclass
class RetryStats:
    """What the layer did: the notebook and the benchmark report these beside the failure rates."""

    requests: int = 0
    attempts: int = 0
    retries: int = 0
    recovered: int = 0  # requests that succeeded after at least one retry
    waited_s: float = 0.0
    retry_after_honoured: int = 0
    resumed: int = 0  # streams continued after a verified replay
    resume_diverged: int = 0
    failures: Counter[str] = dataclasses.field(default_factory=Counter)  # by ErrorInfo.kind
    gave_up: Counter[str] = dataclasses.field(default_factory=Counter)  # by reason

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "failures": dict(self.failures), "gave_up": dict(self.gave_up)}


def _reproducible(request: ChatRequest) -> bool:
    return request.params.get("temperature") == 0 or request.params.get("seed") is not None


class RetryLayer:
    """A layer: retry failed attempts by `policy`, within `budget` and the request's deadline (see module doc).

    `resume_streams` (default on) resumes a reproducible stream that broke after its first token, verified against
    the text already delivered; `resume_streams=False` makes every such failure raise `MidStreamError`.
    """

    def __init__(
        self,
        policy: RetryPolicy | None = None,
        *,
        budget: RetryBudget | None = None,
        deadline_s: float | None = None,
        resume_streams: bool = True,
        seed: int | None = None,
        sleep: Callable[[float], Any] = asyncio.sleep,
    ) -> None:
        if deadline_s is not None and not deadline_s > 0:
            raise ValueError(f"deadline_s must be > 0 or None, got {deadline_s!r}")
        self.policy = policy or RetryPolicy()
        self.budget = budget if budget is not None else RetryBudget()
        self.deadline_s = deadline_s
        self.resume_streams = resume_streams
        self.stats = RetryStats()
        self._rng = random.Random(seed)
        self._sleep = sleep
        self._timers = Deadlines()  # one loop timer for every request's deadline

    async def __call__(self, request: ChatRequest, call_next: Handler) -> Result:
        stats = self.stats
        stats.requests += 1
        self.budget.deposit()
        loop = asyncio.get_running_loop()
        deadline_s = request.controls.get("deadline_s", self.deadline_s)
        if deadline_s is not None and (
            isinstance(deadline_s, bool) or not isinstance(deadline_s, int | float) or not deadline_s > 0
        ):
            raise ValueError(f"controls['deadline_s'] must be a positive number, got {deadline_s!r}")
        deadline_at = loop.time() + deadline_s if deadline_s is not None else None
        outer_log = request.controls.get("route_log")
        base_avoid = list(request.controls.get("avoid_endpoints", ()))
        tried: list[str] = []
        attempts = 0
        last_error: BaseException | None = None
        while True:
            attempts += 1
            stats.attempts += 1
            picked: list[str] = []
            attempt = request.with_controls(avoid_endpoints=[*base_avoid, *tried], route_log=picked)
            try:
                result = await self._attempt(attempt, call_next, deadline_at, deadline_s, attempts, last_error)
            except DeadlineExceeded:
                _extend(outer_log, picked)
                stats.failures["deadline"] += 1
                stats.gave_up["deadline"] += 1
                raise
            except Exception as error:
                tried.extend(picked)
                _extend(outer_log, picked)
                info = classify(error)
                stats.failures[info.kind] += 1
                remaining = None if deadline_at is None else deadline_at - loop.time()
                decision = self.policy.decide(info, attempts, remaining, self._rng)
                if decision.retry and not self.budget.try_withdraw():
                    decision = RetryDecision(False, 0.0, "retry budget exhausted")
                if not decision.retry:
                    stats.gave_up[decision.reason] += 1
                    raise
                last_error = error
                stats.retries += 1
                stats.waited_s += decision.delay_s
                if decision.reason == "retry-after":
                    stats.retry_after_honoured += 1
                await self._sleep(decision.delay_s)
                continue
            _extend(outer_log, picked)
            if attempts > 1:
                stats.recovered += 1
            if isinstance(result, ChunkStream):
                return ChunkStream(self._tail(result, request, call_next), close=result.aclose, info=result.info)
            return result

    async def _attempt(
        self,
        request: ChatRequest,
        call_next: Handler,
        deadline_at: float | None,
        deadline_s: float | None,
        attempts: int,
        last_error: BaseException | None,
    ) -> Result:
        if deadline_at is None:
            return await _until_answer(request, call_next)
        # What `asyncio.timeout_at` does, without its state machine and its two coroutines: every request sets one
        # (the default chain has an 8 s deadline), and it was the larger part of this layer's own CPU per request.
        task = asyncio.current_task()
        assert task is not None
        cancelling = task.cancelling()
        expired: list[bool] = []

        def expire() -> None:
            expired.append(True)
            task.cancel()

        timer = self._timers.call_at(deadline_at, expire)
        try:
            result = await call_next(request)  # `_until_answer`, inlined: one coroutine less per request
            if isinstance(result, ChunkStream):
                result = await until_first_token(result)
        except asyncio.CancelledError:
            if expired and task.uncancel() <= cancelling:  # ours, not the caller's: the deadline passed
                raise DeadlineExceeded(
                    f"no answer within the request's {deadline_s:g} s deadline ({attempts} attempt(s))"
                ) from (last_error or TimeoutError())
            raise
        except BaseException:
            if expired:  # the attempt ended otherwise in the turn the deadline passed: withdraw our cancellation
                task.uncancel()
            raise
        finally:
            timer.cancel()
        if expired:
            task.uncancel()
        return result

    async def _tail(
        self, stream: ChunkStream, request: ChatRequest, call_next: Handler
    ) -> AsyncIterator[ChatCompletionChunk]:
        """Pass the stream on; a failure after the first token raises with the partial text (or resumes)."""
        delivered: list[str] = []
        current = stream
        resumes = 0
        try:
            while True:
                try:
                    async for chunk in current:
                        text = chunk_text(chunk)
                        if text:
                            delivered.append(text)
                        yield chunk
                    return
                except Exception as error:
                    await current.aclose()
                    text = "".join(delivered)
                    broken = _as_mid_stream(error, text, len(delivered))
                    self.stats.failures["mid_stream"] += 1
                    if not (self.resume_streams and text and _reproducible(request)):
                        reason = "failed after the first token"
                        if self.resume_streams and text:
                            reason += " (sampled: not resumed)"
                        self.stats.gave_up[reason] += 1
                        raise broken from error
                    resumes += 1
                    resumed = await self._resume(request, call_next, text, resumes, broken)
                    current = resumed
        finally:
            await current.aclose()

    async def _resume(
        self, request: ChatRequest, call_next: Handler, text: str, resumes: int, broken: StreamError
    ) -> ChunkStream:
        """Replay the request; continue only if the replay starts with exactly `text`."""
        stats = self.stats
        attempts = resumes
        while True:
            if attempts >= self.policy.max_attempts:
                stats.gave_up["attempts exhausted (resume)"] += 1
                raise broken
            if not self.budget.try_withdraw():
                stats.gave_up["retry budget exhausted"] += 1
                raise broken
            attempts += 1
            stats.attempts += 1
            stats.retries += 1
            try:
                replay = await _until_answer(request.with_controls(route_log=[]), call_next)
                if not isinstance(replay, ChunkStream):  # pragma: no cover - a layer answered a stream plainly
                    raise broken
                continued = await _skip_prefix(replay, text)
            except Exception as error:
                stats.failures[classify(error).kind] += 1
                if not classify(error).retryable:
                    raise broken from error
                await self._sleep(self.policy.backoff_s(attempts, self._rng))
                continue
            if continued is None:
                stats.resume_diverged += 1
                stats.gave_up["replay diverged"] += 1
                raise broken
            stats.resumed += 1
            return continued


async def _until_answer(request: ChatRequest, call_next: Handler) -> Result:
    result = await call_next(request)
    if isinstance(result, ChunkStream):
        return await until_first_token(result)
    return result


def _extend(log: Any, names: list[str]) -> None:
    if isinstance(log, list):
        log.extend(names)


def _as_mid_stream(error: BaseException, text: str, chunks: int) -> StreamError:
    """The error the caller sees after the first token: a `StreamError` carrying the partial text (StreamGuard's
    own, or a `MidStreamError` wrapping a bare connection error when no StreamGuard sits below)."""
    if isinstance(error, StreamError) and error.partial_text:
        return error
    return MidStreamError("dropped", f"{type(error).__name__}: {error}", partial_text=text, chunks=chunks)


async def _skip_prefix(stream: ChunkStream, text: str) -> ChunkStream | None:
    """Read `stream` past `text`; None (stream closed) if it does not start with exactly that text."""
    seen = ""
    first: ChatCompletionChunk | None = None
    try:
        async for chunk in stream:
            piece = chunk_text(chunk)
            if not piece:
                if chunk.usage is not None or any(c.finish_reason for c in chunk.choices):
                    break  # the replay ended before reaching the delivered text
                continue
            seen += piece
            if len(seen) >= len(text):
                if not seen.startswith(text):
                    break
                surplus = seen[len(text) :]
                if surplus or chunk.choices[0].finish_reason:
                    first = chunk.model_copy(deep=True)
                    first.choices[0].delta.content = surplus
                    first.choices[0].delta.role = None
                break
            if not text.startswith(seen):
                break
        if len(seen) < len(text) or not seen.startswith(text):
            await stream.aclose()
            return None
    except BaseException:
        await stream.aclose()
        raise

    async def rest() -> AsyncIterator[ChatCompletionChunk]:
        if first is not None:
            yield first
        async for chunk in stream:
            yield chunk

    return ChunkStream(rest(), close=stream.aclose, info=stream.info)


def summary(layers: Mapping[str, RetryLayer]) -> dict[str, Any]:
    """`{name: stats}` of several retry layers, for a table."""
    return {name: layer.stats.as_dict() for name, layer in layers.items()}
