"""Hedged requests: if the first token is late, ask another endpoint too, keep the first answer, cancel the other.

"The Tail at Scale" (Dean and Barroso, 2013): most slow requests are slow because of *where* they went (a queue,
a pause, a sick replica), not because of what they ask. Sending a second copy after the `quantile`-th percentile
of the observed time to first token (95 by default) costs about (100 - quantile) % more requests and cuts the
tail to roughly "that percentile plus one normal answer".

How this layer does it, for streams and plain requests alike:

1. It keeps the last `window` times to first token (or, for plain requests, to the answer) of the attempts that
   answered, and hedges after their `quantile`; with fewer than `min_samples` it does not hedge (or uses
   `delay_s` if given, a fixed delay).
2. The primary attempt runs as a task. If it has no first token by the delay, a secondary attempt starts, asking
   the balancer below to avoid the primary's endpoint (`controls["avoid_endpoints"]`, learned from
   `controls["route_log"]`, as the retry layer does).
3. The first attempt to reach its first token wins. The other is **cancelled**: its task is cancelled, which
   closes its HTTP response, so the service sees the client go and stops generating (the simulated service counts
   a disconnect in `/admin/stats`). If one attempt fails, the other may still win; if both fail, the primary's
   error is raised.
4. **A cap**: hedges are paid from a token bucket that gains `max_share` per request (at most `burst`), so hedges
   stay at most `max_share` of the traffic even when everything is slow (when hedging would only add load).

Place it under the retry layer (`[metrics, retry, hedge]` over a balancer): a hedged pair is one attempt for the
retry layer, and both endpoints tried go into its route log.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections import deque
from typing import Any

from labkit.attempt import until_first_token
from labkit.chain import Handler, Result
from labkit.percentiles import percentile
from labkit.request import ChatRequest
from labkit.stream import ChunkStream

__all__ = ["HedgeLayer", "HedgeStats"]


@dataclasses.dataclass
class HedgeStats:
    requests: int = 0
    hedged: int = 0  # secondary attempts started
    hedge_won: int = 0  # ... and answered first
    primary_won: int = 0  # the primary answered first although a hedge had started
    losers_cancelled: int = 0
    capped: int = 0  # a hedge was due but the cap said no
    both_failed: int = 0

    @property
    def hedge_share(self) -> float:
        return self.hedged / self.requests if self.requests else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "hedge_share": self.hedge_share}


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
        self.quantile = quantile
        self.min_samples = min_samples
        self.max_share = max_share
        self.burst = burst
        self.fixed_delay_s = delay_s
        self.min_delay_s = min_delay_s
        self.samples: deque[float] = deque(maxlen=window)
        self.stats = HedgeStats()
        self._tokens = burst if max_share > 0 else 0.0

    def delay_s(self) -> float | None:
        """When to hedge: the fixed delay, else the quantile of recent samples (None: not enough samples)."""
        if self.fixed_delay_s is not None:
            return self.fixed_delay_s
        if len(self.samples) < self.min_samples:
            return None
        return max(self.min_delay_s, float(percentile(list(self.samples), self.quantile) or 0.0))

    async def __call__(self, request: ChatRequest, call_next: Handler) -> Result:
        self.stats.requests += 1
        self._tokens = min(self.burst, self._tokens + self.max_share)
        delay = self.delay_s()
        outer_log = request.controls.get("route_log")
        avoid = list(request.controls.get("avoid_endpoints", ()))
        log_a: list[str] = []
        log_b: list[str] = []
        primary = asyncio.create_task(_attempt(request.with_controls(route_log=log_a), call_next))
        tasks = [primary]
        kept: asyncio.Task[Any] | None = None  # the attempt whose outcome the caller gets
        try:
            if delay is not None:
                await asyncio.wait([primary], timeout=delay)
            if delay is None or primary.done():
                kept = primary
                return self._keep(await primary)
            if self._tokens < 1.0:
                self.stats.capped += 1
                kept = primary
                return self._keep(await primary)
            self._tokens -= 1.0
            self.stats.hedged += 1
            secondary = asyncio.create_task(
                _attempt(request.with_controls(route_log=log_b, avoid_endpoints=[*avoid, *log_a]), call_next)
            )
            tasks.append(secondary)
            kept = await self._race(primary, secondary)
            if kept is secondary:
                self.stats.hedge_won += 1
            else:
                self.stats.primary_won += 1
            return self._keep(kept.result())
        finally:
            # every other attempt is stopped upstream and its outcome read (a failed loser's error is not the
            # caller's, and must not be reported as never retrieved), also when the caller itself gave up
            for task in tasks:
                if task is not kept or not task.done():
                    await self._cancel(task)
            if isinstance(outer_log, list):
                outer_log.extend([*log_a, *log_b])

    @staticmethod
    async def _race(primary: asyncio.Task[Any], secondary: asyncio.Task[Any]) -> asyncio.Task[Any]:
        pending = {primary, secondary}
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in (primary, secondary):  # the primary first when both finished in the same turn
                if task in done and task.exception() is None:
                    return task
        errors = [primary.exception(), secondary.exception()]  # read both, so neither is reported as unretrieved
        raise errors[0] or errors[1]  # type: ignore[misc]

    def _keep(self, outcome: tuple[Result, float]) -> Result:
        result, first_s = outcome
        self.samples.append(first_s)
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


async def _attempt(request: ChatRequest, call_next: Handler) -> tuple[Result, float]:
    """One attempt up to its first token (or its whole answer), and how long that took."""
    started = time.monotonic()
    result = await call_next(request)
    if isinstance(result, ChunkStream):
        result = await until_first_token(result)
    return result, time.monotonic() - started
