"""Admission: send no more than the service will accept, so a batch runs at the rate limit with zero 429s.

`asyncio.gather` over every item sends everything at once; against RPM/TPM limits that is a 429 storm, and
every rejected attempt costs a round trip and a back-off. The admission layer instead *schedules* requests:

- bounded concurrency (a semaphore) caps how much is in flight;
- two token buckets, one for requests and one for tokens, pace departures at the published limits. A
  request is charged its *estimated* tokens (prompt counted with the real tokenizer, `labkit.tokens`, plus
  `max_tokens`), the same rule the service charges by, and the estimate is corrected by the response's actual
  `usage` when it arrives. While the token bucket is far from binding (more than half full after the charge,
  and the request under 1 % of it), the prompt is charged its UTF-8 length instead, which no BPE count exceeds
  (a token is at least one byte): counting costs a few µs per short prompt and grows with its length, and far
  from the limit a precise charge changes nothing, since the refund from `usage` settles the difference. Near
  the limit every request is counted exactly;
- the buckets are kept in step with the `x-ratelimit-*` headers the service returns: `remaining` lowers a
  level (another client on the same key, or a wrong estimate, shows up there first), `limit` lowers a rate
  configured above the published one, and `limit` with `remaining` and `reset` tells how much the service's
  bucket holds, which ours never exceeds; a 429 that still slips through pauses everyone for its
  `retry-after`. The headers are read at most once every `sync_interval_s` (25 ms: half the staleness a budget
  already accepts in a header, `LocalBudget.slack_s`) and after every 429: picking out and parsing six headers of
  every answer is work on every request (`python -m labkit.lessons.overhead` measures the chain's share), for news
  that a budget could not act on sooner than the headers' own staleness anyway.

The buckets are hand-written, not taken from a library (aiolimiter, limits): they need to be charged a
*variable* amount that is corrected afterwards and re-synchronised from headers, which those do not offer.
Waiters queue in arrival order behind one lock and only the head of the queue waits for the budget. Charging
every waiter up front instead (Guava-style reservations) fixes each one's departure time from estimates, so
the refunds that arrive later (an answer shorter than `max_tokens`) would not move anyone forward, and a
token-bound batch would run below the limit by about as much as the estimates overshoot the actual usage.

Lesson 01's benchmark (``python -m labkit.lessons.admission --bench``) measures the sustained throughput as a
fraction of the rate the limits allow (target: 90% at zero 429s).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import openai
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from labkit.chain import Handler, Result
from labkit.durations import parse_duration
from labkit.request import ChatRequest
from labkit.stream import ChunkStream
from labkit.tokens import REPLY_PRIMER, TOKENS_PER_MESSAGE, TOKENS_PER_NAME, count_messages, message_text

__all__ = [
    "AdmissionLayer",
    "AdmissionStats",
    "Budget",
    "LocalBudget",
    "TokenBucket",
    "estimate_tokens",
    "little_concurrency",
    "parse_duration",
    "ratelimit_headers",
    "token_bound",
]

DEFAULT_COMPLETION_ESTIMATE = 256  # what OpenAI-style services charge when max_tokens is absent


def _completion_cap(request: ChatRequest, default_completion: int) -> int:
    params = request.params
    cap = params.get("max_completion_tokens") or params.get("max_tokens") or default_completion
    return int(cap) * int(params.get("n") or 1)


def estimate_tokens(request: ChatRequest, default_completion: int = DEFAULT_COMPLETION_ESTIMATE) -> int:
    """What the service charges a request on arrival: prompt tokens plus the completion cap."""
    return count_messages(request.messages, request.model) + _completion_cap(request, default_completion)


def token_bound(request: ChatRequest, default_completion: int = DEFAULT_COMPLETION_ESTIMATE) -> int:
    """An upper bound of `estimate_tokens` without the tokenizer: each text's UTF-8 length (a byte-level BPE
    token covers at least one byte) plus the chat framing `count_messages` adds."""
    total = REPLY_PRIMER
    for message in request.messages:
        total += TOKENS_PER_MESSAGE + len(str(message.get("role", "")).encode("utf-8"))
        total += len(message_text(message.get("content")).encode("utf-8"))
        if message.get("name"):
            total += TOKENS_PER_NAME + len(str(message["name"]).encode("utf-8"))
    return total + _completion_cap(request, default_completion)


class TokenBucket:
    """A bucket refilled at ``rate`` per second up to ``capacity``; charges may overdraw it (reservations)."""

    def __init__(
        self, rate: float, capacity: float, *, level: float | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate <= 0 or capacity <= 0:
            raise ValueError(f"a token bucket needs a positive rate and capacity, got {rate=} {capacity=}")
        self.rate = float(rate)
        self.capacity = float(capacity)
        self.level = self.capacity if level is None else float(level)
        self._clock = clock
        self._t = clock()

    def _refill(self) -> None:
        now = self._clock()
        self.level = min(self.capacity, self.level + (now - self._t) * self.rate)
        self._t = now

    def available(self) -> float:
        self._refill()
        return self.level

    def wait_time(self, amount: float) -> float:
        """Seconds until ``amount`` is available (a charge larger than the capacity waits for a full bucket)."""
        self._refill()
        need = min(amount, self.capacity)
        return max(0.0, (need - self.level) / self.rate)

    def take(self, amount: float) -> None:
        """Charge ``amount`` (the level may go below zero for a charge larger than the capacity)."""
        self._refill()
        self.level -= amount

    def refund(self, amount: float) -> None:
        """Give back part of a charge (an estimate that was too high, a request never sent)."""
        self._refill()
        self.level = min(self.capacity, self.level + amount)

    def sync(self, remaining: float) -> None:
        """Never believe there is more left than the service says: lower the level to ``remaining``."""
        self._refill()
        self.level = min(self.level, float(remaining))

    def set_rate(self, rate: float) -> None:
        """Refill at ``rate`` per second from now on (what has refilled so far is kept)."""
        if rate <= 0:
            raise ValueError(f"a token bucket needs a positive rate, got {rate}")
        self._refill()
        self.rate = float(rate)

    def set_capacity(self, capacity: float) -> None:
        """Hold at most ``capacity`` from now on (a level above it is cut to it)."""
        if capacity <= 0:
            raise ValueError(f"a token bucket needs a positive capacity, got {capacity}")
        self._refill()
        self.capacity = float(capacity)
        self.level = min(self.level, self.capacity)


class Budget(Protocol):
    """Where admission charges requests: in this process (`LocalBudget`) or shared (`RedisBudget`)."""

    async def try_acquire(self, tokens: int) -> float:
        """Charge one request and ``tokens`` and return 0, or charge nothing and return the seconds to wait."""
        ...

    async def refund(self, tokens: int, requests: int = 0, ticket: int = 0) -> None:
        """Give back part of the charge of the request admitted as ``ticket``."""
        ...

    def sync(self, headers: Mapping[str, str], ticket: int = 0) -> None:
        """Align with the remaining budget the service reported in the response to ``ticket``."""
        ...

    def ticket(self) -> int:
        """A number for the request just admitted, increasing in admission order."""
        ...


class LocalBudget:
    """RPM and TPM buckets of one process. ``burst_s`` is how many seconds of the rate a full bucket holds:
    keep it at or below the service's own (`sync` lowers it to what the service's headers say it holds),
    because requests bunch up in transit and a full bucket at the service cannot bank the refill that our
    spacing earned."""

    def __init__(
        self, rpm: float, tpm: float, *, burst_s: float = 0.5, headroom: float = 0.03, slack_s: float = 0.05
    ) -> None:
        if not 0 <= headroom < 1:
            raise ValueError("headroom must be in [0, 1)")
        self.rpm, self.tpm = rpm, tpm
        scale = 1.0 - headroom
        self.requests = TokenBucket(rpm * scale / 60.0, max(1.0, rpm * scale * burst_s / 60.0))
        self.tokens = TokenBucket(tpm * scale / 60.0, max(1.0, tpm * scale * burst_s / 60.0))
        self.slack_s = slack_s
        self.headroom = headroom
        self.syncs_lowered = 0
        self.limit_syncs = 0  # times the published limit or the service's bucket size tightened ours
        self._tickets = 0
        self._epoch = 0

    async def try_acquire(self, tokens: int) -> float:
        return self.try_acquire_now(tokens)

    def try_acquire_now(self, tokens: int) -> float:
        """`try_acquire` without an await (an optional method of a budget): the admission layer's fast path."""
        wait = max(self.requests.wait_time(1), self.tokens.wait_time(tokens))
        if wait == 0:  # both buckets were refilled just now: charge them without reading the clock again
            self.requests.level -= 1
            self.tokens.level -= tokens
            self._tickets += 1
        return wait

    def roomy(self, tokens: int) -> bool:
        """Whether a charge of `tokens` is small (under 1 % of the token bucket) and leaves it more than half full:
        far from the limit, where the admission layer may charge an upper bound instead of counting (an optional
        method of a budget; a budget without it is always charged the count). The level is the one the last charge
        or refund left, without a refill: it only grows with time, so the answer errs toward counting, and the
        charge that follows refills the bucket anyway."""
        bucket = self.tokens
        return tokens * 100 <= bucket.capacity and bucket.level - tokens >= bucket.capacity / 2

    def ticket(self) -> int:
        return self._tickets

    async def refund(self, tokens: int, requests: int = 0, ticket: int = 0) -> None:
        self.refund_now(tokens, requests, ticket)

    def refund_now(self, tokens: int, requests: int = 0, ticket: int = 0) -> None:
        """`refund` without an await (an optional method of a budget): the admission layer's fast path."""
        if ticket <= self._epoch:
            return  # it may be in the headers we synced to already: never count a give-back twice
        if tokens:
            self.tokens.refund(tokens)
        if requests:
            self.requests.refund(requests)

    def sync(self, headers: Mapping[str, str], ticket: int = 0) -> None:
        """Keep the buckets in step with the six `x-ratelimit-*` headers of an answer. Only ever tighter:

        - `limit` is the published per-minute limit: a lower one than configured becomes the refill rate;
        - `limit`, `remaining` and `reset` together give the service's bucket size (`remaining` plus what
          refills in `reset` at the published rate): ours never holds more, so a burst we release fits
          within what the service holds (OpenAI's buckets hold a minute; other services hold less);
        - `remaining` below our level (another client on the key, or estimates below what the service charges)
          lowers the level. A header is read when the service *admitted* the request, so it is stale by one
          latency: a gap smaller than ``slack_s`` seconds of the rate is that staleness, not news. And the
          header already counts the give-backs of requests that finished at the service while their answers
          were still on the way to us: after lowering, the refunds of every request admitted so far are
          dropped, so none is counted twice.
        """
        lowered = False
        scale = 1.0 - self.headroom
        buckets = (self.requests, self.tokens)
        for bucket, (limit_name, remaining_name, reset_name) in zip(buckets, _HEADERS, strict=True):
            limit = _number(headers.get(limit_name))
            remaining = _number(headers.get(remaining_name))
            reset_s = _duration(headers.get(reset_name))
            if limit is not None and limit > 0:
                if limit * scale / 60.0 < bucket.rate * 0.999:
                    bucket.set_rate(limit * scale / 60.0)
                    self.limit_syncs += 1
                if remaining is not None and reset_s is not None:
                    service_capacity = remaining + reset_s * limit / 60.0
                    if (service_capacity + 1.0) * scale < bucket.capacity:  # + 1: `remaining` is rounded down
                        bucket.set_capacity(max(1.0, service_capacity * scale))
                        self.limit_syncs += 1
            if remaining is not None and remaining < bucket.available() - bucket.rate * self.slack_s:
                bucket.sync(remaining)
                lowered = True
        if lowered:
            self.syncs_lowered += 1
            self._epoch = self._tickets


_HEADERS = tuple(
    (f"x-ratelimit-limit-{name}", f"x-ratelimit-remaining-{name}", f"x-ratelimit-reset-{name}")
    for name in ("requests", "tokens")
)
_RATELIMIT_PREFIX = "x-ratelimit-"
_RATELIMIT_PREFIX_BYTES = _RATELIMIT_PREFIX.encode()
_PREFIX_LEN = len(_RATELIMIT_PREFIX)


def ratelimit_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The `x-ratelimit-*` headers of a response as a plain dict with lower-case names, read in one pass.

    A budget reads six of them per answer. In httpx's `Headers` each look-up lower-cases the name and scans every
    header, six times per answer on the hot path of every request; one pass over the raw pairs does it once."""
    raw = getattr(headers, "raw", None)  # httpx: (name, value) bytes pairs as received
    if raw is not None:
        return {
            name.lower().decode("latin-1"): value.decode("latin-1")
            for name, value in raw
            if name[:_PREFIX_LEN].lower() == _RATELIMIT_PREFIX_BYTES
        }
    return {name.lower(): value for name, value in headers.items() if name[:_PREFIX_LEN].lower() == _RATELIMIT_PREFIX}


_DURATIONS: dict[str, float | None] = {}


def _duration(value: str | None) -> float | None:
    """`parse_duration`, remembered: a service sends the same few reset values (`6ms`, `1s`) again and again."""
    if value is None:
        return None
    try:
        return _DURATIONS[value]
    except KeyError:
        if len(_DURATIONS) >= 1024:
            _DURATIONS.clear()
        seconds = _DURATIONS[value] = parse_duration(value)
        return seconds


def _number(value: str | None) -> float | None:
    """A header's number, or None when it is absent or unreadable (a malformed header is ignored, not fatal)."""
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) and number >= 0 else None


@dataclass
class AdmissionStats:
    """What the layer did: requests admitted, time spent waiting for the budget, 429s it still saw."""

    admitted: int = 0
    in_flight: int = 0
    peak_in_flight: int = 0
    waited_s: float = 0.0
    rate_limited: int = 0
    estimated_tokens: int = 0
    used_tokens: int = 0
    header_syncs: int = 0  # answers whose rate-limit headers were read (at most one per `sync_interval_s`)
    first_admitted_at: float | None = None  # time.monotonic() of the first and last admission
    last_admitted_at: float | None = None


class AdmissionLayer:
    """Bounded concurrency plus an RPM/TPM budget, as a chain layer (see the module docstring).

    ``rpm``/``tpm`` are the published limits; give a ``budget`` instead to share one across processes.
    """

    def __init__(
        self,
        rpm: float | None = None,
        tpm: float | None = None,
        *,
        max_concurrency: int = 64,
        budget: Budget | None = None,
        burst_s: float = 0.5,
        headroom: float = 0.03,
        default_completion: int = DEFAULT_COMPLETION_ESTIMATE,
        max_poll_s: float = 0.05,
        sync_interval_s: float = 0.025,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        if not sync_interval_s >= 0:
            raise ValueError(f"sync_interval_s must be >= 0 seconds, got {sync_interval_s!r}")
        if budget is None:
            if rpm is None or tpm is None:
                raise ValueError("AdmissionLayer needs rpm and tpm (the published limits) or a shared budget")
            budget = LocalBudget(rpm, tpm, burst_s=burst_s, headroom=headroom)
        self.budget = budget
        self.max_concurrency = max_concurrency
        self.default_completion = default_completion
        self.stats = AdmissionStats()
        self.max_poll_s = max_poll_s
        self.sync_interval_s = sync_interval_s
        self._next_sync = 0.0  # time.monotonic() before which an answer's headers are not read
        self._slots = asyncio.Semaphore(max_concurrency)
        self._queue = asyncio.Lock()  # FIFO: asyncio's lock wakes waiters in arrival order
        self._queued = 0  # requests in `_wait_for_budget`: while any is, a newcomer queues behind them
        # a budget in this process may offer these without an await (optional methods of a budget)
        self._take_now: Callable[[int], float] | None = getattr(budget, "try_acquire_now", None)
        self._refund_now: Callable[[int, int, int], None] | None = getattr(budget, "refund_now", None)
        self._roomy: Callable[[int], bool] | None = getattr(budget, "roomy", None)
        self._paused_until = 0.0

    async def __call__(self, request: ChatRequest, call_next: Handler) -> Result:
        await self._slots.acquire()
        release = True
        try:
            estimate = self._estimate(request)
            now = time.monotonic()
            if not self._admit_now(estimate, now):
                await self._wait_for_budget(estimate, now)
                now = time.monotonic()
            ticket = self.budget.ticket()
            stats = self.stats
            if stats.first_admitted_at is None:
                stats.first_admitted_at = now
            stats.last_admitted_at = now
            stats.admitted += 1
            stats.estimated_tokens += estimate
            stats.in_flight += 1
            if stats.in_flight > stats.peak_in_flight:
                stats.peak_in_flight = stats.in_flight
            try:
                result = await call_next(request)
            except openai.APIStatusError as error:
                self.stats.in_flight -= 1
                await self._on_error(error, estimate, ticket)
                raise
            except BaseException:
                self.stats.in_flight -= 1
                raise
            if isinstance(result, ChunkStream):
                release = False
                return result.wrap(lambda chunks: self._watch(chunks, result, estimate, ticket))
            self.stats.in_flight -= 1
            used = result.usage.total_tokens if result.usage else None
            if self._refund_now is None:
                await self._settle(estimate, used, result, ticket)
            else:  # a budget in this process: settled without an await
                self._settle_now(estimate, used, result, ticket)
            return result
        finally:
            if release:
                self._slots.release()

    def _estimate(self, request: ChatRequest) -> int:
        """The tokens to charge: the exact estimate, or its cheap upper bound while the budget is roomy."""
        roomy = self._roomy
        if roomy is not None:
            bound = token_bound(request, self.default_completion)
            if roomy(bound):
                return bound
        return estimate_tokens(request, self.default_completion)

    def _admit_now(self, estimate: int, now: float) -> bool:
        """Admit at once, without an await, when nobody is queued, no 429 pause holds and a budget in this process
        has room: the queue's lock and the budget's coroutines were most of this layer's CPU on an admission that
        waits for nothing. Otherwise `_wait_for_budget` queues the request."""
        take_now = self._take_now
        return not self._queued and self._paused_until <= now and take_now is not None and take_now(estimate) <= 0

    async def _wait_for_budget(self, estimate: int, t0: float) -> None:
        """Queue in arrival order; the head waits until the budget covers it (refunds may shorten the wait)."""
        self._queued += 1
        try:
            async with self._queue:
                while True:
                    pause = self._paused_until - time.monotonic()  # a 429 told everyone to back off
                    wait = pause if pause > 0 else await self.budget.try_acquire(estimate)
                    if wait <= 0:
                        break
                    await asyncio.sleep(min(wait, self.max_poll_s))
        finally:
            self._queued -= 1
        self.stats.waited_s += time.monotonic() - t0

    async def _settle(self, estimate: int, used: int | None, answer: Result, ticket: int) -> None:
        """Correct the charge with the actual usage, then align with what the service says is left."""
        overcharged = self._overcharged(estimate, used)
        if overcharged:
            await self.budget.refund(overcharged, ticket=ticket)
        self._sync(answer, ticket)

    def _settle_now(self, estimate: int, used: int | None, answer: ChatCompletion, ticket: int) -> None:
        """`_settle` for a budget in this process (its `refund_now`), without an await."""
        overcharged = self._overcharged(estimate, used)
        if overcharged and self._refund_now is not None:
            self._refund_now(overcharged, 0, ticket)
        self._sync(answer, ticket)

    def _overcharged(self, estimate: int, used: int | None) -> int:
        """What the charge exceeded the answer's actual usage by (0 when usage is unknown)."""
        if used is None:
            return 0
        self.stats.used_tokens += used
        return max(0, estimate - used)

    def _sync(self, answer: Result, ticket: int) -> None:
        """Align the budget with the answer's rate-limit headers, read at most once every `sync_interval_s`. The
        clock is checked before the headers are looked up: on a completion they are a private attribute of a
        pydantic model, not a cheap read. An answer without them (a service that sends none) also waits out the
        interval: looking again on the next answer would find none there either."""
        now = time.monotonic()
        if now < self._next_sync:
            return
        self._next_sync = now + self.sync_interval_s
        headers = _headers(answer)
        if headers:
            self.stats.header_syncs += 1
            self.budget.sync(ratelimit_headers(headers), ticket)

    async def _on_error(self, error: openai.APIStatusError, estimate: int, ticket: int) -> None:
        if error.status_code != 429:
            return
        self.stats.rate_limited += 1
        headers = error.response.headers
        # The service charged nothing for it, but the charge is *not* given back: a 429 means our budget is
        # ahead of the service's (measured: workers that refunded rejected requests fed a 429 cascade).
        self.budget.sync(ratelimit_headers(headers), ticket)
        retry_ms = headers.get("retry-after-ms")
        wait = float(retry_ms) / 1000 if retry_ms else float(headers.get("retry-after") or 1.0)
        self._paused_until = max(self._paused_until, time.monotonic() + wait)

    async def _watch(
        self, chunks: AsyncIterator[ChatCompletionChunk], stream: ChunkStream, estimate: int, ticket: int
    ) -> AsyncIterator[ChatCompletionChunk]:
        used: int | None = None
        try:
            async for chunk in chunks:
                if chunk.usage is not None:
                    used = chunk.usage.total_tokens
                yield chunk
        finally:
            self.stats.in_flight -= 1
            self._slots.release()
            await self._settle(estimate, used, stream, ticket)


def _headers(answer: Result) -> Mapping[str, str] | None:
    """The response headers a transport keeps with an answer: a stream's `info["headers"]`, a completion's private
    `_headers` attribute (absent for a cached answer)."""
    if isinstance(answer, ChunkStream):
        headers: Mapping[str, str] | None = answer.info.get("headers")
        return headers
    return getattr(answer, "_headers", None)


def little_concurrency(rpm: float, latency_s: float) -> int:
    """Little's law: the concurrency that sends ``rpm`` requests a minute when each takes ``latency_s``."""
    return max(1, math.floor(rpm / 60.0 * latency_s))
