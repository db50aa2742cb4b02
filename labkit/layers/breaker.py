"""A circuit breaker per endpoint: stop sending to an endpoint that keeps failing, probe it, come back.

States (as in resilience4j and Polly's "advanced" breaker):

- **closed**: requests pass; outcomes are counted in a sliding time window (`window_s`, ten buckets). When the
  window holds at least `min_requests` outcomes and the failure share reaches `failure_ratio`, the circuit opens.
- **open**: requests are refused at once with `CircuitOpenError` (nothing is sent, so a sick endpoint gets no
  load and the caller no wait). A balancer above asks `allows()` first and skips the endpoint. After `open_s` it
  turns half-open.
- **half-open**: at most `half_open_probes` requests at a time go through as probes. `half_open_probes`
  successes close the circuit (with an empty window); one failure opens it again.

What counts as a failure comes from `labkit.errors.classify`: evidence about the endpoint's health (connection
errors, timeouts, 5xx, a stream that broke, `insufficient_quota`), not the caller's mistakes (400, 404) nor a
429 rate limit (the endpoint is healthy, the key is busy; the retry layer honours its `retry-after`). A stream
counts when it ends: a drop after the first token is a failure; a stream the caller closes early is neither.

Every transition and refusal is counted in `events`, and the transitions are kept (bounded) with their times.

Hand-written: `pybreaker`, `aiobreaker` and `circuitbreaker` open after N *consecutive* failures, which at 5 %
random faults and high traffic either never opens or flaps; the failure share over a window with a minimum of
requests is what the lesson needs, and it is a small state machine.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

from openai.types.chat import ChatCompletionChunk

from labkit.chain import Handler, Result
from labkit.errors import CircuitOpenError, classify
from labkit.request import ChatRequest
from labkit.stream import ChunkStream

__all__ = ["CircuitBreaker", "State"]

State = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    """A layer (place it per endpoint, right above its transport) and the state machine it runs."""

    def __init__(
        self,
        name: str = "endpoint",
        *,
        failure_ratio: float = 0.5,
        min_requests: int = 20,
        window_s: float = 10.0,
        open_s: float = 5.0,
        half_open_probes: int = 3,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0.0 < failure_ratio <= 1.0:
            raise ValueError(f"failure_ratio must be in (0, 1], got {failure_ratio!r}")
        if not isinstance(min_requests, int) or min_requests < 1:
            raise ValueError(f"min_requests must be an integer >= 1, got {min_requests!r}")
        if not window_s > 0 or not open_s > 0:
            raise ValueError("window_s and open_s must be > 0")
        if not isinstance(half_open_probes, int) or half_open_probes < 1:
            raise ValueError(f"half_open_probes must be an integer >= 1, got {half_open_probes!r}")
        self.name = name
        self.failure_ratio = failure_ratio
        self.min_requests = min_requests
        self.window_s = window_s
        self.open_s = open_s
        self.half_open_probes = half_open_probes
        self._clock = clock
        self._state: State = "closed"
        self._opened_at = 0.0
        self._buckets: deque[list[float]] = deque()  # [start, successes, failures]
        self._probes_in_flight = 0
        self._probe_successes = 0
        self.events: Counter[str] = Counter()
        self.transitions: deque[tuple[float, State, State]] = deque(maxlen=1000)

    # -- the state machine ---------------------------------------------------------------------------------

    @property
    def state(self) -> State:
        """The current state (an open circuit whose `open_s` has passed reads as half-open)."""
        if self._state == "open" and self._clock() >= self._opened_at + self.open_s:
            self._to("half_open")
        return self._state

    def retry_after_s(self) -> float:
        """Seconds until an open circuit lets a probe through (0 when it would now)."""
        if self.state != "open":
            return 0.0
        return max(0.0, self._opened_at + self.open_s - self._clock())

    def allows(self) -> bool:
        """Would a request be let through now? (What a balancer asks before picking this endpoint.)"""
        state = self.state
        if state == "closed":
            return True
        if state == "half_open":
            return self._probes_in_flight < self.half_open_probes
        return False

    def acquire(self) -> bool:
        """Let one request through or raise `CircuitOpenError`; returns True if it is a half-open probe."""
        if not self.allows():
            self.events["rejected"] += 1
            raise CircuitOpenError(self.name, self.retry_after_s())
        if self._state == "half_open":
            self._probes_in_flight += 1
            return True
        return False

    def record(self, outcome: Literal["success", "failure", "ignored"], probe: bool = False) -> None:
        """The outcome of a request let through by `acquire()`."""
        if probe:
            self._probes_in_flight = max(0, self._probes_in_flight - 1)
        if outcome == "ignored":
            return
        self.events["successes" if outcome == "success" else "failures"] += 1
        if self._state == "half_open":
            if not probe:  # a request admitted while closed that ended after the circuit changed: no verdict
                return
            if outcome == "failure":
                self.events["probe_failures"] += 1
                self._open()
            else:
                self._probe_successes += 1
                if self._probe_successes >= self.half_open_probes:
                    self._to("closed")
            return
        if self._state == "open":
            return
        bucket = self._bucket()
        bucket[1 if outcome == "success" else 2] += 1
        if outcome == "failure":
            successes, failures = self.window()
            total = successes + failures
            if total >= self.min_requests and failures / total >= self.failure_ratio:
                self._open()

    def window(self) -> tuple[int, int]:
        """(successes, failures) in the sliding window."""
        self._bucket()
        return int(sum(b[1] for b in self._buckets)), int(sum(b[2] for b in self._buckets))

    def _bucket(self) -> list[float]:
        now = self._clock()
        while self._buckets and self._buckets[0][0] <= now - self.window_s:
            self._buckets.popleft()
        if not self._buckets or now >= self._buckets[-1][0] + self.window_s / 10:
            self._buckets.append([now, 0.0, 0.0])
        return self._buckets[-1]

    def _open(self) -> None:
        self._opened_at = self._clock()
        self._to("open")

    def _to(self, state: State) -> None:
        if state == self._state:
            return
        self.transitions.append((self._clock(), self._state, state))
        self.events[{"open": "opened", "half_open": "half_opened", "closed": "closed"}[state]] += 1
        self._state = state
        self._probes_in_flight = 0
        self._probe_successes = 0
        if state == "closed":
            self._buckets.clear()

    # -- the layer ---------------------------------------------------------------------------------------

    async def __call__(self, request: ChatRequest, call_next: Handler) -> Result:
        probe = self.acquire()
        try:
            result = await call_next(request)
        except BaseException as error:
            self.record(_verdict(error), probe)
            raise
        if isinstance(result, ChunkStream):
            recorded = False

            def settle(outcome: Literal["success", "failure", "ignored"]) -> None:  # once per stream
                nonlocal recorded
                if not recorded:
                    recorded = True
                    self.record(outcome, probe)

            async def close() -> None:
                settle("ignored")  # closed by the caller before it ended: no verdict
                await result.aclose()

            return ChunkStream(self._watch(result, settle), close=close, info=result.info)
        self.record("success", probe)
        return result

    @staticmethod
    async def _watch(
        chunks: AsyncIterator[ChatCompletionChunk], settle: Callable[[Literal["success", "failure", "ignored"]], None]
    ) -> AsyncIterator[ChatCompletionChunk]:
        try:
            async for chunk in chunks:
                yield chunk
        except BaseException as error:
            settle(_verdict(error))
            raise
        settle("success")

    def snapshot(self) -> dict[str, Any]:
        successes, failures = self.window()
        return {
            "name": self.name,
            "state": self.state,
            "window_successes": successes,
            "window_failures": failures,
            "events": dict(self.events),
        }

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.name!r}, state={self.state})"


def _verdict(error: BaseException) -> Literal["success", "failure", "ignored"]:
    if not isinstance(error, Exception):  # cancelled, GeneratorExit: the caller stopped, the endpoint did nothing
        return "ignored"
    return "failure" if classify(error).counts_against_endpoint else "ignored"
