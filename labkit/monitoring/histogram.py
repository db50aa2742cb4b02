"""A latency histogram in bounded memory, with a stated relative error, and windows over time.

Why not the common advice's list of every duration: it grows by one float object (32 bytes with its list slot)
per request forever, and every `statistics.quantiles` call sorts all of it. A *sketch* keeps a bounded summary.

Which sketch: `ddsketch` (Datadog's reference implementation, 3.0.1; Masson, Rim & Lee, "DDSketch: a fast and
fully-mergeable quantile sketch with relative-error guarantees", VLDB 2019). Its guarantee is the one a latency
percentile needs: a quantile estimate `x̂` of a true quantile `x` has `|x̂ - x| <= alpha * x` (here alpha = 1 %,
so a p99 of 800 ms is reported within ±8 ms whatever the distribution), it merges exactly (the windows below are
merges of sub-window sketches), and with the collapsing-lowest store its memory is capped at `bin_limit` bins
(at 1 % accuracy, 1 µs to 10^4 s takes about 1 150 bins; only values below the span would be collapsed).
Considered: `hdrhistogram` (integer values, so seconds need a unit scale chosen up front; precision in significant
digits; heavier memory at wide ranges); t-digest (`fastdigest`, `tdigest`: rank error, not value error, so tail
quantiles of skewed latency get no bound); Apache `datasketches` KLL (rank error, a C++ build). Pure Python
costs about 1.8 µs per `add` here (see `build/bench/monitoring.json`): negligible beside a 2 ms SDK call, but not
beside a stream's hundred inter-token gaps replayed from a cache. So `extend` records a batch with numpy: it groups
the values by the sketch's bin (`ceil(log_gamma(x))`) and adds each bin once, with its count as the weight, through
the sketch's public `add(value, weight)`. `observe` (one request's duration) keeps its value aside and adds
what it kept the same way, in a batch, once 1024 have gathered or before the sketch is read: a pure-Python `add`
per value was a visible part of what the metrics layer cost each request (`python -m labkit.lessons.overhead`); the
larger the batch, the more of its values share a bin, so the fewer `add` calls per value.

Beside the sketch, each histogram keeps classic cumulative bucket counts at fixed bounds: those are what a
Prometheus histogram exposes (aggregatable across processes with `histogram_quantile`), and they give an exact
count of requests under an SLO threshold when the threshold is one of the bounds (1 s is).
"""

from __future__ import annotations

import bisect
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Generic, TypeVar

import numpy as np
from ddsketch import LogCollapsingLowestDenseDDSketch

__all__ = ["DEFAULT_BUCKETS", "Histogram", "Rolling", "check_duration", "check_durations"]

#: Bucket upper bounds in seconds: from a cache hit (1 ms) to a long generation (60 s); 1 s is the TTFB SLO.
DEFAULT_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip


def check_duration(value: float) -> None:
    """Refuse what no histogram takes: anything but a finite number of seconds >= 0 (NaN included)."""
    if not (value >= 0.0 and value != math.inf):  # NaN compares false
        raise ValueError(f"a duration must be a finite number >= 0 seconds, got {value!r}")


def check_durations(values: Sequence[float]) -> None:
    """`check_duration` for many values in one pass: the smallest must be >= 0 and the sum finite (a NaN or an
    infinity makes the sum one); only a failing list is walked, to name the bad value with the same message."""
    if values and not (min(values) >= 0.0 and math.isfinite(sum(values))):
        for value in values:
            check_duration(value)


class Histogram:
    """Observations in seconds: quantiles within `relative_accuracy`, bucket counts, count, sum, min, max."""

    __slots__ = (
        "_buckets",
        "_counts",
        "_log_gamma",
        "_pending",
        "_sketch",
        "bin_limit",
        "count",
        "max",
        "min",
        "relative_accuracy",
        "sum",
    )

    def __init__(
        self,
        relative_accuracy: float = 0.01,
        buckets: Sequence[float] = DEFAULT_BUCKETS,
        bin_limit: int = 2048,
    ) -> None:
        if not 0.0 < relative_accuracy < 1.0:
            raise ValueError(f"relative_accuracy must be in (0, 1), got {relative_accuracy!r}")
        if list(buckets) != sorted(set(buckets)) or not all(b > 0 and math.isfinite(b) for b in buckets):
            raise ValueError("buckets must be increasing, positive and finite")
        self.relative_accuracy = relative_accuracy
        self.bin_limit = bin_limit
        self._buckets = tuple(float(b) for b in buckets)
        self._counts = [0] * (len(self._buckets) + 1)  # the last one is +Inf
        self._sketch = LogCollapsingLowestDenseDDSketch(relative_accuracy=relative_accuracy, bin_limit=bin_limit)
        # the sketch's bin width (DDSketch: gamma = (1 + alpha) / (1 - alpha)), to group a batch by bin in `extend`
        self._log_gamma = math.log((1.0 + relative_accuracy) / (1.0 - relative_accuracy))
        self._pending: list[float] = []  # observed, not yet in the sketch (the counts and sums have them)
        self.count = 0
        self.sum = 0.0
        self.min = math.inf
        self.max = -math.inf

    def observe(self, value: float) -> None:
        """Add one duration in seconds (>= 0, finite); anything else is refused and nothing is recorded."""
        check_duration(value)
        pending = self._pending
        pending.append(value)
        if len(pending) >= _FOLD_AT:
            self._fold()
        self._counts[bisect.bisect_left(self._buckets, value)] += 1
        self.count += 1
        self.sum += value
        if value < self.min:
            self.min = value
        if value > self.max:
            self.max = value

    def observe_many(self, values: Sequence[float]) -> None:
        """`observe` for each of a few values, in one pass (the metrics' batches: `labkit.monitoring.registry`).

        Refused whole, with nothing recorded, if any value is not a finite number >= 0. For thousands of values
        `extend` is cheaper; for a batch of tens this pure-Python loop is (numpy's per-call cost dominates)."""
        if not values:
            return
        check_durations(values)
        low, total = min(values), sum(values)
        pending = self._pending
        pending.extend(values)
        if len(pending) >= _FOLD_AT:
            self._fold()
        counts, buckets = self._counts, self._buckets
        for value in values:
            counts[bisect.bisect_left(buckets, value)] += 1
        self.count += len(values)
        self.sum += total
        if low < self.min:
            self.min = low
        high = max(values)
        if high > self.max:
            self.max = high

    def extend(self, values: Iterable[float]) -> None:
        """Add many durations at once (what `observe` would record for each, at a fraction of the cost).

        Refused whole, with nothing recorded, if any value is not a finite number >= 0."""
        array = np.asarray(values, dtype=float) if isinstance(values, np.ndarray) else np.fromiter(values, dtype=float)
        if not array.size:
            return
        if not (np.isfinite(array).all() and (array >= 0.0).all()):
            bad = array[~(np.isfinite(array) & (array >= 0.0))][0]
            raise ValueError(f"a duration must be a finite number >= 0 seconds, got {float(bad)!r}")
        self._add_to_sketch(array)
        for index, n in enumerate(np.bincount(np.searchsorted(self._buckets, array, side="left")).tolist()):
            self._counts[index] += n
        self.count += int(array.size)
        self.sum += float(array.sum())
        self.min = min(self.min, float(array.min()))
        self.max = max(self.max, float(array.max()))

    def _add_to_sketch(self, array: np.ndarray) -> None:
        """Add checked values to the sketch: each bin once, weighted by how many of them fall in it."""
        sketch = self._sketch
        positive = array[array > 0.0]
        if positive.size < array.size:
            sketch.add(0.0, weight=float(array.size - positive.size))
        if positive.size:
            bins = np.ceil(np.log(positive) / self._log_gamma)
            _, first, counts = np.unique(bins, return_index=True, return_counts=True)
            for value, weight in zip(positive[first].tolist(), counts.tolist(), strict=True):
                sketch.add(value, weight=float(weight))  # a value of that bin stands for all of them

    def _fold(self) -> None:
        """Move the values `observe` kept aside into the sketch."""
        if self._pending:
            array = np.array(self._pending, dtype=float)
            self._pending.clear()
            self._add_to_sketch(array)

    def quantile(self, q: float) -> float | None:
        """The q-quantile (0..1), within ±relative_accuracy of the exact one (numpy's `method="lower"`)."""
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"q must be in [0, 1], got {q!r}")
        if not self.count:
            return None
        self._fold()
        value = self._sketch.get_quantile_value(q)
        # the sketch answers with a bin's midpoint; never report outside what was seen
        return min(max(float(value), self.min), self.max) if value is not None else None

    def quantiles(self, qs: Iterable[float] = (0.5, 0.95, 0.99)) -> dict[float, float | None]:
        return {q: self.quantile(q) for q in qs}

    @property
    def mean(self) -> float | None:
        return self.sum / self.count if self.count else None

    @property
    def buckets(self) -> tuple[float, ...]:
        return self._buckets

    def cumulative(self) -> list[tuple[float, int]]:
        """`(upper bound, observations <= bound)` for every bucket, ending with `(inf, count)` (Prometheus `le`)."""
        out: list[tuple[float, int]] = []
        running = 0
        for bound, n in zip((*self._buckets, math.inf), self._counts, strict=True):
            running += n
            out.append((bound, running))
        return out

    def count_at_most(self, threshold: float) -> float:
        """Observations <= threshold: exact when the threshold is a bucket bound, else from the sketch's ranks."""
        i = bisect.bisect_left(self._buckets, threshold)
        if i < len(self._buckets) and self._buckets[i] == threshold:
            return float(sum(self._counts[: i + 1]))
        if not self.count:
            return 0.0
        low, high = 0.0, 1.0  # the largest q whose quantile is <= threshold (quantile() is monotone in q)
        for _ in range(30):
            mid = (low + high) / 2
            value = self.quantile(mid)
            low, high = (mid, high) if value is not None and value <= threshold else (low, mid)
        return low * self.count

    def merge(self, other: Histogram) -> None:
        """Add another histogram's observations (same accuracy and bounds) to this one."""
        if other.relative_accuracy != self.relative_accuracy or other._buckets != self._buckets:
            raise ValueError("only histograms with the same accuracy and buckets can be merged")
        if not other.count:
            return
        self._fold()
        other._fold()
        self._sketch.merge(other._sketch)
        self._counts = [a + b for a, b in zip(self._counts, other._counts, strict=True)]
        self.count += other.count
        self.sum += other.sum
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)

    def empty_like(self) -> Histogram:
        return Histogram(self.relative_accuracy, self._buckets, self.bin_limit)

    def __repr__(self) -> str:
        if not self.count:
            return "Histogram(empty)"
        p50, p95, p99 = (self.quantile(q) or 0.0 for q in (0.5, 0.95, 0.99))
        return f"Histogram(n={self.count}, p50={p50 * 1e3:.1f}ms, p95={p95 * 1e3:.1f}ms, p99={p99 * 1e3:.1f}ms)"


_FOLD_AT = 1024  # values `observe` keeps aside before adding them to the sketch in one batch

T = TypeVar("T")


class Rolling(Generic[T]):
    """The last `window_s` seconds as a ring of `window_s / slot_s` sub-windows, each made by `factory`.

    Memory is bounded by the number of slots; a query over the last `s` seconds reads the slots that began in
    it (so its span is `s` rounded up to a slot). The clock is monotonic: a wall-clock step cannot reorder slots.
    """

    def __init__(
        self,
        factory: Callable[[], T],
        window_s: float = 60.0,
        slot_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not slot_s > 0 or not window_s >= slot_s:
            raise ValueError("need 0 < slot_s <= window_s")
        self.factory = factory
        self.window_s = window_s
        self.slot_s = slot_s
        self.clock = clock
        self._slots: deque[tuple[int, T]] = deque(maxlen=max(1, math.ceil(window_s / slot_s)))

    def current(self) -> T:
        """The sub-window that `now` falls in (created on first use)."""
        index = int(self.clock() // self.slot_s)
        if not self._slots or self._slots[-1][0] != index:
            self._slots.append((index, self.factory()))
        return self._slots[-1][1]

    def within(self, seconds: float | None = None) -> list[T]:
        """The sub-windows of the last `seconds` (default: the whole window), oldest first."""
        seconds = self.window_s if seconds is None else seconds
        if seconds > self.window_s + 1e-9:
            raise ValueError(f"this window keeps {self.window_s} s; asked for {seconds} s")
        now_index = int(self.clock() // self.slot_s)
        first = now_index - max(1, math.ceil(seconds / self.slot_s - 1e-9)) + 1
        return [slot for index, slot in self._slots if index >= first]
