"""Spread requests over several endpoints: round robin, least outstanding, peak-EWMA with two choices, weighted.

`Balancer` sits where a transport sits (it is a handler: `Chain(balancer, [metrics, retry, hedge])`), and holds one
`Backend` per endpoint. A backend's `handler` is that endpoint's own little chain, typically
`Chain(OpenAITransport(endpoint), [CircuitBreaker(name), StreamGuard(first_token_timeout_s=...)])`, so each
endpoint has its own breaker and its own timeouts. For every request the balancer:

1. takes the backends whose `available()` is true: a backend's `gate` is anything with `allows() -> bool`, such as
   the `CircuitBreaker` of that endpoint (duck-typed, so this module does not import the breaker);
2. prefers the lowest `tier` that has one (tier 0 = primary; a higher tier is a **fallback**, for example another
   provider or a smaller model via `Backend(model="gpt-4o-mini")`), and within it the backends not named in
   `request.controls["avoid_endpoints"]` (the retry and hedge layers put the endpoints they already tried there;
   if every available backend is to be avoided, the request still goes to one of them);
3. lets the strategy choose among those, sends the request (with the backend's model if it has one) and appends
   the backend's name to `request.controls["route_log"]` when the caller passed a list there. A result served
   with another model than the one asked for says so (`labkit.scope.served_model`), so a cache above stores the
   fallback's answer under the fallback model, not under the primary one a later caller asks for.

Strategies (`strategy=` a name or an object with `choose(backends, rng)`):

- `round_robin`: each in turn; blind to speed and load.
- `least_outstanding`: the one with the fewest requests in flight (ties in turn); sees load, not speed.
- `peak_ewma` (default): power of two choices (Mitzenmacher) over a peak-EWMA latency (Finagle, Linkerd): pick
  two at random, take the lower `latency * (outstanding + 1)`. The EWMA follows a new peak at once and decays with
  time constant `decay_s`, so a backend that slows down is shunned quickly and tried again slowly; `latency` is
  the EWMA or the wait of the oldest request still without a first token, if longer, so a backend that has just
  stalled is shunned before its first slow answer even comes back. Latency is the
  time to the first token for streams (what a reader waits for), the whole call for plain requests; a failure is
  recorded as `elapsed + failure_penalty_s`, so a backend that fails fast does not look fast.
- `weighted`: smooth weighted round robin (nginx) by `Backend.weight`: for capacity known in advance.

`Balancer.snapshot()` gives per-backend picks, failures, outstanding and EWMA, and the count of fallbacks.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Protocol

from openai.types.chat import ChatCompletionChunk

from labkit.attempt import is_first_token
from labkit.chain import Handler, Result
from labkit.errors import NoBackendAvailable
from labkit.request import ChatRequest
from labkit.scope import mark_served
from labkit.stream import ChunkStream

__all__ = [
    "STRATEGIES",
    "Backend",
    "Balancer",
    "LeastOutstanding",
    "PeakEwmaP2C",
    "RoundRobin",
    "Strategy",
    "Weighted",
]


class Gate(Protocol):
    def allows(self) -> bool: ...


@dataclasses.dataclass(eq=False)
class Backend:
    """One endpoint as the balancer sees it: where to send, how much it may take, and its live state."""

    name: str
    handler: Handler
    weight: float = 1.0
    gate: Gate | None = None  # e.g. the endpoint's CircuitBreaker
    model: str | None = None  # serve with this model instead of the request's (a fallback model)
    tier: int = 0  # 0 = primary; higher tiers are used only when no lower tier is available
    decay_s: float = 5.0
    failure_penalty_s: float = 1.0
    # live state
    outstanding: int = 0
    ewma_s: float = 0.0
    picks: int = 0
    failures: int = 0
    _ewma_at: float = dataclasses.field(default=0.0, repr=False)
    # attempt number -> start time, for the requests still waiting for their first token
    _waiting: dict[int, float] = dataclasses.field(default_factory=dict, repr=False)
    _current_weight: float = dataclasses.field(default=0.0, repr=False)

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a Backend needs a name")
        if not self.weight > 0:
            raise ValueError(f"weight of {self.name!r} must be > 0, got {self.weight!r}")
        if not self.decay_s > 0:
            raise ValueError("decay_s must be > 0")

    def available(self) -> bool:
        return self.gate is None or self.gate.allows()

    def observe(self, latency_s: float, now: float | None = None) -> None:
        """Peak EWMA: jump to a higher sample, decay towards a lower one with time constant `decay_s`."""
        now = time.monotonic() if now is None else now
        if self._ewma_at == 0.0 or latency_s > self.ewma_s:
            self.ewma_s = latency_s
        else:
            w = math.exp(-max(0.0, now - self._ewma_at) / self.decay_s)
            self.ewma_s = self.ewma_s * w + latency_s * (1.0 - w)
        self._ewma_at = now

    def latency_s(self, now: float | None = None) -> float:
        """The EWMA, or how long the oldest request still waiting for its first token has waited, if longer.

        Without the second term a backend that just became slow looks fast until its first slow answer comes
        back, and keeps receiving traffic for that whole time."""
        if not self._waiting:
            return self.ewma_s
        now = time.monotonic() if now is None else now
        return max(self.ewma_s, now - min(self._waiting.values()))

    def cost(self, now: float | None = None) -> float:
        return self.latency_s(now) * (self.outstanding + 1)


class Strategy(Protocol):
    name: str

    def choose(self, backends: Sequence[Backend], rng: random.Random) -> Backend: ...


class RoundRobin:
    name = "round_robin"

    def __init__(self) -> None:
        self._next = 0

    def choose(self, backends: Sequence[Backend], rng: random.Random) -> Backend:
        chosen = backends[self._next % len(backends)]
        self._next += 1
        return chosen


class LeastOutstanding:
    name = "least_outstanding"

    def __init__(self) -> None:
        self._next = 0

    def choose(self, backends: Sequence[Backend], rng: random.Random) -> Backend:
        fewest = min(b.outstanding for b in backends)
        tied = [b for b in backends if b.outstanding == fewest]
        chosen = tied[self._next % len(tied)]
        self._next += 1
        return chosen


class PeakEwmaP2C:
    name = "peak_ewma"

    def choose(self, backends: Sequence[Backend], rng: random.Random) -> Backend:
        if len(backends) == 1:
            return backends[0]
        a, b = rng.sample(list(backends), 2)
        now = time.monotonic()
        return a if a.cost(now) <= b.cost(now) else b


class Weighted:
    """Smooth weighted round robin (nginx): over any 'sum of weights' picks, each backend gets its weight."""

    name = "weighted"

    def choose(self, backends: Sequence[Backend], rng: random.Random) -> Backend:
        total = 0.0
        best: Backend | None = None
        for b in backends:
            b._current_weight += b.weight
            total += b.weight
            if best is None or b._current_weight > best._current_weight:
                best = b
        assert best is not None
        best._current_weight -= total
        return best


STRATEGIES: dict[str, Callable[[], Strategy]] = {
    "round_robin": RoundRobin,
    "least_outstanding": LeastOutstanding,
    "peak_ewma": PeakEwmaP2C,
    "weighted": Weighted,
}


class Balancer:
    """A handler that sends each request to one of its backends (see the module docstring)."""

    def __init__(
        self, backends: Sequence[Backend], strategy: str | Strategy = "peak_ewma", *, seed: int | None = None
    ) -> None:
        if not backends:
            raise ValueError("a Balancer needs at least one backend")
        names = [b.name for b in backends]
        if len(set(names)) != len(names):
            raise ValueError(f"backend names must be unique, got {names}")
        if isinstance(strategy, str):
            if strategy not in STRATEGIES:
                raise ValueError(f"unknown strategy {strategy!r}; choose one of {sorted(STRATEGIES)}")
            strategy = STRATEGIES[strategy]()
        self.backends = list(backends)
        self.strategy = strategy
        self.fallbacks = 0
        self.avoided = 0  # picks that had to reuse an endpoint the caller asked to avoid
        self._rng = random.Random(seed)
        self._attempts = itertools.count()

    def backend(self, name: str) -> Backend:
        for b in self.backends:
            if b.name == name:
                return b
        raise KeyError(name)

    def candidates(self, avoid: Sequence[str] = ()) -> list[Backend]:
        """The backends a request may go to now, best group first (see the module docstring, step 2)."""
        if len(self.backends) == 1:  # one endpoint (the default chain's): no groups to build per request
            only = self.backends[0]
            if not only.available():
                return []
            if only.name in avoid:
                self.avoided += 1
            return [only]
        available = [b for b in self.backends if b.available()]
        if not available:
            return []
        tiers = sorted({b.tier for b in available})
        for tier in tiers:
            fresh = [b for b in available if b.tier == tier and b.name not in avoid]
            if fresh:
                return fresh
        self.avoided += 1
        return [b for b in available if b.tier == tiers[0]]

    def pick(self, request: ChatRequest) -> Backend:
        avoid = request.controls.get("avoid_endpoints", ())
        if isinstance(avoid, str):
            raise TypeError("controls['avoid_endpoints'] must be a list of endpoint names, not a string")
        group = self.candidates(avoid)
        if not group:
            waits = [g.retry_after_s() for g in (b.gate for b in self.backends) if hasattr(g, "retry_after_s")]
            raise NoBackendAvailable(
                f"all {len(self.backends)} endpoints refuse requests (circuits open)", min(waits) if waits else None
            )
        chosen = self.strategy.choose(group, self._rng)
        if chosen.tier > min(b.tier for b in self.backends):
            self.fallbacks += 1
        return chosen

    async def __call__(self, request: ChatRequest) -> Result:
        backend = self.pick(request)
        log = request.controls.get("route_log")
        if isinstance(log, list):
            log.append(backend.name)
        swapped = backend.model is not None and backend.model != request.model
        if swapped:
            request = request.replace(model=backend.model)
        backend.picks += 1
        backend.outstanding += 1
        started = time.monotonic()
        attempt = next(self._attempts)
        backend._waiting[attempt] = started
        try:
            result = await backend.handler(request)
        except BaseException as error:
            backend._waiting.pop(attempt, None)
            backend.outstanding -= 1
            if isinstance(error, Exception):
                backend.failures += 1
                backend.observe(time.monotonic() - started + backend.failure_penalty_s)
            raise
        if swapped:
            mark_served(result, request.model)
        if isinstance(result, ChunkStream):
            result.info["endpoint"] = backend.name
            released = False

            def release() -> None:  # once, whether the stream ends, fails or is closed before it was read
                nonlocal released
                backend._waiting.pop(attempt, None)
                if not released:
                    released = True
                    backend.outstanding -= 1

            async def close() -> None:
                release()
                await result.aclose()

            watched = self._watch(backend, result, started, release, attempt)
            return ChunkStream(watched, close=close, info=result.info)
        backend._waiting.pop(attempt, None)
        backend.outstanding -= 1
        backend.observe(time.monotonic() - started)
        return result

    @staticmethod
    async def _watch(
        backend: Backend,
        chunks: AsyncIterator[ChatCompletionChunk],
        started: float,
        release: Callable[[], None],
        attempt: int,
    ) -> AsyncIterator[ChatCompletionChunk]:
        first = False
        try:
            async for chunk in chunks:
                if not first and is_first_token(chunk):
                    first = True
                    backend._waiting.pop(attempt, None)
                    backend.observe(time.monotonic() - started)
                yield chunk
        except Exception:
            backend.failures += 1
            if not first:
                backend.observe(time.monotonic() - started + backend.failure_penalty_s)
            raise
        finally:
            release()

    def snapshot(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy.name,
            "fallbacks": self.fallbacks,
            "avoided": self.avoided,
            "backends": {
                b.name: {
                    "picks": b.picks,
                    "failures": b.failures,
                    "outstanding": b.outstanding,
                    "ewma_ms": round(b.ewma_s * 1000, 2),
                    "tier": b.tier,
                    "available": b.available(),
                }
                for b in self.backends
            },
        }
