"""Hedged requests: if the first token is late, ask another endpoint too, keep the first answer, cancel the other.

"The Tail at Scale" (Dean and Barroso, 2013): most slow requests are slow because of *where* they went (a queue,
a pause, a sick replica), not because of what they ask. Sending a second copy after the `quantile`-th percentile
of the observed time to first token (95 by default) costs about (100 - quantile) % more requests and cuts the
tail to roughly "that percentile plus one normal answer".

How this layer does it, for streams and plain requests alike:

1. It keeps the last `window` times to first token (or, for plain requests, to the answer) of the attempts that
   answered, and hedges after their `quantile`; with fewer than `min_samples` it does not hedge (or uses
   `delay_s` if given, a fixed delay). Past the first `min_samples`, new times join the window
   `SAMPLE_BATCH` at a time and the delay is worked out again only then: a window of 500 moves little in 16
   answers, and adding each time and reading the quantile on every request were a good part of this layer's
   client CPU per request (`python -m labkit.lessons.overhead --bench --layers`).
2. The primary attempt runs as a task. If it has no first token by the delay, a secondary attempt starts, asking
   the balancer below to avoid the primary's endpoint (`controls["avoid_endpoints"]`, learned from
   `controls["route_log"]`, as the retry layer does).
3. The first attempt to reach its first token wins. The other is **cancelled**: its task is cancelled, which
   closes its HTTP response, so the service sees the client go and stops generating (the simulated service counts
   a disconnect in `/admin/stats`). If one attempt fails, the other may still win; if both fail, the primary's
   error is raised.
4. **A cap**: hedges are paid from a token bucket that gains `max_share` per request (at most `burst`), so hedges
   stay at most `max_share` of the traffic even when everything is slow (when hedging would only add load).
5. **Futile hedges pause**: after `futile_after` hedges in a row that lost (the primary answered first, or both
   failed), only one request in `probe_every` is armed for a hedge (a probe), until a hedge wins; the others run
   without a hedge timer, so a paused hedge costs a request no timer to set, cancel or wake the loop for. A hedge
   helps when the tail is *where* a request went; when it is a queue both copies share (this process's own event
   loop, one busy service), the copy waits in the same queue and only adds load, a second request cancelled
   mid-flight. Both show in this repository: in `python -m labkit.lessons.overhead --bench` (a client whose
   requests queue behind each other's CPU) none of the default chain's hedges wins (its JSON counts them); in
   lesson 10's tail (5 % of first bytes a second late, on a service that is otherwise quick) most do (its hedge
   table counts them). Ten losses in a row is the default: ten hedges all lose with probability 0.2^10 (about 1e-7)
   where four in five win, 0.8^10 (about 0.11) where one in five wins, and every loss before the pause costs a
   second request.

Place it under the retry layer (`[metrics, retry, hedge]` over a balancer): a hedged pair is one attempt for the
retry layer, and both endpoints tried go into its route log.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import dataclasses
import time
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

from labkit.attempt import until_first_token
from labkit.chain import Handler, Result
from labkit.deadlines import Deadline, Deadlines
from labkit.percentiles import sorted_percentile
from labkit.request import ChatRequest
from labkit.stream import ChunkStream

__all__ = ["SAMPLE_BATCH", "HedgeLayer", "HedgeStats", "SampleWindow"]

#: Answers' times kept aside before they join the sample window (once the window has `min_samples`).
SAMPLE_BATCH = 16


@dataclasses.dataclass
class HedgeStats:
    requests: int = 0
    hedged: int = 0  # secondary attempts started
    hedge_won: int = 0  # ... and answered first
    primary_won: int = 0  # the primary answered first although a hedge had started
    losers_cancelled: int = 0
    capped: int = 0  # a hedge was due but the cap said no
    paused: int = 0  # requests sent without a hedge timer: the last `futile_after` hedges had all lost (not a probe)
    both_failed: int = 0

    @property
    def hedge_share(self) -> float:
        return self.hedged / self.requests if self.requests else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "hedge_share": self.hedge_share}


class SampleWindow:
    """The last `maxlen` samples, also kept in sorted order, so a percentile costs a lookup, not a sort.

    The delay is read on every request: copying and sorting the 500 samples each time was one of the larger client
    CPU costs of a request through the default chain (`python -m labkit.lessons.overhead`); keeping them sorted
    costs a binary search and a short move per sample."""

    def __init__(self, maxlen: int) -> None:
        self._order: deque[float] = deque(maxlen=maxlen)
        self._sorted: list[float] = []
        self.version = 0  # changes with every sample: a reader may keep what it worked out from the samples until then

    def append(self, value: float) -> None:
        order = self._order
        if len(order) == order.maxlen:
            del self._sorted[bisect.bisect_left(self._sorted, order[0])]
        order.append(value)
        bisect.insort(self._sorted, value)
        self.version += 1

    def extend(self, values: Iterable[float]) -> None:
        for value in values:
            self.append(value)

    def percentile(self, q: float) -> float | None:
        """The q-th percentile (0-100) as `labkit.percentiles.percentile` computes it; None when empty."""
        return sorted_percentile(self._sorted, q) if self._sorted else None

    def __len__(self) -> int:
        return len(self._order)

    def __iter__(self) -> Iterator[float]:
        return iter(self._order)


class HedgeLayer:
    """A layer that hedges slow first tokens (see the module docstring)."""

    def __init__(
        self,
        *,
        quantile: float = 95.0,
        min_samples: int = 20,
        window: int = 500,
        max_share: float = 0.1,
        burst: float = 5.0,
        delay_s: float | None = None,
        min_delay_s: float = 0.0,
        futile_after: int = 10,
        probe_every: int = 10,
    ) -> None:
        if not 0.0 < quantile < 100.0:
            raise ValueError(f"quantile must be in (0, 100), got {quantile!r}")
        if not 0.0 <= max_share <= 1.0:
            raise ValueError(f"max_share must be in [0, 1], got {max_share!r}")
        if not isinstance(min_samples, int) or min_samples < 1 or not isinstance(window, int) or window < min_samples:
            raise ValueError("min_samples must be an integer >= 1 and window an integer >= min_samples")
        if delay_s is not None and not delay_s >= 0:
            raise ValueError(f"delay_s must be >= 0 or None, got {delay_s!r}")
        if burst < 1:
            raise ValueError("burst must be >= 1 (one hedge)")
        if not isinstance(futile_after, int) or futile_after < 1 or not isinstance(probe_every, int) or probe_every < 1:
            raise ValueError("futile_after and probe_every must be integers >= 1")
        self.quantile = quantile
        self.min_samples = min_samples
        self.max_share = max_share
        self.burst = burst
        self.fixed_delay_s = delay_s
        self.min_delay_s = min_delay_s
        self.samples = SampleWindow(window)
        self.stats = HedgeStats()
        self._tokens = burst if max_share > 0 else 0.0
        self._timers = Deadlines()  # one loop timer for every request's hedge delay
        self.futile_after = futile_after
        self.probe_every = probe_every
        self._lost = 0  # hedges lost in a row (reset by a win)
        self._passed_over = 0  # requests sent without a hedge timer since the last probe
        self._fresh: list[float] = []  # answers' times not in `samples` yet (see the module docstring)
        self._delay: float | None = None
        self._delay_of = -1  # the `samples.version` `_delay` was worked out from

    def delay_s(self) -> float | None:
        """When to hedge: the fixed delay, else the quantile of recent samples (None: not enough samples)."""
        if self.fixed_delay_s is not None:
            return self.fixed_delay_s
        samples = self.samples
        if samples.version != self._delay_of:
            self._delay_of = samples.version
            enough = len(samples) >= self.min_samples
            self._delay = max(self.min_delay_s, float(samples.percentile(self.quantile) or 0.0)) if enough else None
        return self._delay

    async def __call__(self, request: ChatRequest, call_next: Handler) -> Result:
        self.stats.requests += 1
        self._tokens = min(self.burst, self._tokens + self.max_share)
        delay = self.delay_s()
        outer_log = request.controls.get("route_log")
        if isinstance(outer_log, list):  # the primary notes its endpoints in the caller's log: no copy of the request
            primary, log_a = request, _Log(outer_log, len(outer_log))
        else:
            log_a = _Log([], 0)
            primary = request.with_controls(route_log=log_a.entries)
        log_b: list[str] = []
        try:
            if delay is None or self._pausing():
                return self._keep(await _attempt(primary, call_next))
            return await self._hedged(request, primary, call_next, delay, log_a, log_b)
        finally:
            if isinstance(outer_log, list) and log_b:
                outer_log.extend(log_b)

    async def _hedged(
        self,
        request: ChatRequest,
        primary: ChatRequest,
        call_next: Handler,
        delay: float,
        log_a: _Log,
        log_b: list[str],
    ) -> Result:
        """The primary attempt runs in the caller's own task and a timer starts the secondary as a task at `delay`.

        No task and no `asyncio.wait` per request for the primary (that was most of this layer's client CPU on
        a request that is never hedged). A secondary that reaches its first token first stops the primary the way
        `asyncio.timeout` stops a body: it cancels the caller's task, and the cancellation, caught here, is
        turned into the secondary's answer (a cancellation of the caller's own still propagates)."""
        task = asyncio.current_task()
        assert task is not None
        race = _Race()

        def secondary_done(secondary: asyncio.Task[Any]) -> None:
            if race.settled or secondary.cancelled() or secondary.exception() is not None:
                return
            race.won = True
            task.cancel()

        def start_secondary() -> None:
            race.timer = None
            if race.settled:
                return
            if self._tokens < 1.0:
                self.stats.capped += 1
                return
            self._tokens -= 1.0
            self.stats.hedged += 1
            avoid = [*request.controls.get("avoid_endpoints", ()), *log_a.picked()]
            second = request.with_controls(route_log=log_b, avoid_endpoints=avoid)
            race.secondary = asyncio.get_running_loop().create_task(_attempt(second, call_next))
            race.secondary.add_done_callback(secondary_done)

        race.timer = self._timers.call_later(delay, start_secondary)
        cancelling = task.cancelling()
        try:
            started = time.monotonic()  # `_attempt`, inlined for the primary: one coroutine less per request
            result = await call_next(primary)
            if isinstance(result, ChunkStream):
                result = await until_first_token(result)
            outcome = (result, time.monotonic() - started)
        except asyncio.CancelledError:
            race.settled = True
            if race.won and task.uncancel() <= cancelling:  # our own cancellation: the secondary won
                self._won()
                self.stats.losers_cancelled += 1
                assert race.secondary is not None
                return self._keep(race.secondary.result())
            await self._stop(race)  # the caller gave up: the secondary goes too
            raise
        except Exception as error:
            race.settled = True
            if race.won:  # the secondary won while the primary was failing: the cancellation was not delivered
                task.uncancel()
                self._won()
                assert race.secondary is not None
                return self._keep(race.secondary.result())
            if race.timer is not None or race.secondary is None:  # no hedge running: the primary's error is it
                await self._stop(race)
                raise
            try:  # the hedge may still answer
                outcome = await race.secondary
            except asyncio.CancelledError:
                await self._stop(race)
                raise
            except Exception:
                self.stats.both_failed += 1
                self._lost += 1
                raise error from None  # both failed: the primary's error, as before a hedge
            self._won()
            return self._keep(outcome)
        race.settled = True
        if race.won:  # the primary finished although its cancellation was asked for: keep it, undo the request
            task.uncancel()
        if race.secondary is not None:
            self.stats.primary_won += 1
            self._lost += 1
            await self._stop(race)
        elif race.timer is not None:  # the common end: no hedge started, only its timer to cancel (no await)
            race.timer.cancel()
        return self._keep(outcome)

    def _pausing(self) -> bool:
        """Whether this request runs without a hedge timer: hedges keep losing, and it is not the probe."""
        if self._lost < self.futile_after:
            return False
        if self._passed_over < self.probe_every - 1:
            self._passed_over += 1
            self.stats.paused += 1
            return True
        self._passed_over = 0
        return False

    def _won(self) -> None:
        self.stats.hedge_won += 1
        self._lost = 0

    async def _stop(self, race: _Race) -> None:
        """No hedge after this: cancel the timer, and stop a running or finished secondary attempt."""
        if race.timer is not None:
            race.timer.cancel()
            race.timer = None
        if race.secondary is not None:
            await self._cancel(race.secondary)

    def _keep(self, outcome: tuple[Result, float]) -> Result:
        result, first_s = outcome
        fresh = self._fresh
        fresh.append(first_s)
        if len(fresh) >= SAMPLE_BATCH or len(self.samples) < self.min_samples:
            self.samples.extend(fresh)
            fresh.clear()
        return result

    async def _cancel(self, task: asyncio.Task[Any]) -> None:
        """Stop a losing attempt upstream: cancel it, or close the stream it already returned. A loser that
        already failed has nothing to stop; its error is read here (it is not the caller's)."""
        if not task.done():
            self.stats.losers_cancelled += 1
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            return
        if task.cancelled() or task.exception() is not None:
            return
        self.stats.losers_cancelled += 1
        result, _ = task.result()
        if isinstance(result, ChunkStream):
            await result.aclose()


class _Log(NamedTuple):
    """Where the primary attempt notes its endpoints: a list, from `start` on (the caller's route log, or its own)."""

    entries: list[str]
    start: int

    def picked(self) -> list[str]:
        return self.entries[self.start :]


class _Race:
    """One hedged request's state, shared with the timer and the secondary's done-callback."""

    __slots__ = ("secondary", "settled", "timer", "won")

    def __init__(self) -> None:
        self.timer: Deadline | None = None
        self.secondary: asyncio.Task[Any] | None = None
        self.settled = False  # the primary's outcome is in: the secondary can no longer interrupt it
        self.won = False  # the secondary reached its first token first and the caller's task was cancelled


async def _attempt(request: ChatRequest, call_next: Handler) -> tuple[Result, float]:
    """One attempt up to its first token (or its whole answer), and how long that took."""
    started = time.monotonic()
    result = await call_next(request)
    if isinstance(result, ChunkStream):
        result = await until_first_token(result)
    return result, time.monotonic() - started
