"""The metrics store the `MetricsLayer` feeds: histograms and counters, as totals and over a rolling window.

One `Metrics` holds, for every finished request:

- histograms (seconds, ±1 % quantiles, `labkit.monitoring.histogram`): `request_duration` (successful requests),
  `ttfb` (time to the first byte the caller can show: the first token of a stream, the whole answer of a plain
  call), `ttft` (streams), `itl` (every gap between two content chunks), and one `stage:<name>` per stage of the
  per-request breakdown (`labkit.timing`);
- counters: `requests` by outcome (`ok`, `error`, `cancelled`) and source (`upstream`, `cache`, `coalesced`),
  `errors` by exception class, `tokens` by kind (`input`, `output`, `cached`), `cost_usd` by source (a cache hit
  costs nothing upstream: its would-be cost is counted under `source="cache"` as money saved).

Everything is kept twice: since the start (totals) and in a ring of sub-windows (`Rolling`) covering the last
`window_s` seconds, so "p95 over the last minute" and "error rate over the last 5 s" are cheap, and memory stays
bounded whatever the traffic. All in the event loop's thread: no locks (the Prometheus endpoint is an aiohttp
route on the same loop, `labkit.monitoring.exposition`).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from labkit.monitoring.histogram import DEFAULT_BUCKETS, Histogram, Rolling

__all__ = ["Metrics", "MetricsView"]

Labels = tuple[tuple[str, str], ...]
QUANTILES = (0.5, 0.95, 0.99)


class _Record(Protocol):  # labkit.layers.metrics.RequestRecord, without importing it (it imports this module)
    stream: bool
    latency_s: float | None
    ttft_s: float | None
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    cost_usd: float | None
    outcome: str
    source: str


class _Slot:
    """One (sub-)window: histograms by name and counters by (name, labels)."""

    __slots__ = ("counts", "first", "hists", "last")

    def __init__(self) -> None:
        self.hists: dict[str, Histogram] = {}
        self.counts: Counter[tuple[str, Labels]] = Counter()
        self.first = 0.0
        self.last = 0.0


def outcome_class(outcome: str) -> str:
    """`ok`, `cancelled` (the caller stopped: neither good nor bad for availability) or `error`."""
    return outcome if outcome in ("ok", "cancelled") else "error"


class MetricsView:
    """Histograms and counters merged over a set of slots (a window, or the totals)."""

    def __init__(self, slots: Sequence[_Slot], template: Histogram, span_s: float) -> None:
        self._template = template
        self.span_s = span_s
        self.hists: dict[str, Histogram] = {}
        self.counts: Counter[tuple[str, Labels]] = Counter()
        for slot in slots:
            for name, hist in slot.hists.items():
                if name not in self.hists:
                    self.hists[name] = template.empty_like()
                self.hists[name].merge(hist)
            self.counts.update(slot.counts)

    def hist(self, name: str) -> Histogram:
        return self.hists.get(name) or self._template.empty_like()

    def counter(self, name: str, **labels: str) -> float:
        """The sum of counter `name` over every label set that includes `labels`."""
        want = set(labels.items())
        return float(sum(v for (n, ls), v in self.counts.items() if n == name and want <= set(ls)))

    def by_label(self, name: str, label: str) -> dict[str, float]:
        out: Counter[str] = Counter()
        for (n, ls), v in self.counts.items():
            if n == name:
                out[dict(ls).get(label, "")] += v
        return dict(out)

    def stages(self) -> list[str]:
        return [name.removeprefix("stage:") for name in self.hists if name.startswith("stage:")]

    def summary(self) -> dict[str, Any]:
        """The headline figures, flat (times in seconds, rates as shares)."""
        requests = self.counter("requests")
        ok = self.counter("requests", outcome="ok")
        errors = self.counter("requests", outcome="error")
        cancelled = self.counter("requests", outcome="cancelled")
        judged = ok + errors
        hits = self.counter("requests", source="cache")
        out: dict[str, Any] = {
            "span_s": self.span_s,
            "requests": requests,
            "ok": ok,
            "errors": errors,
            "cancelled": cancelled,
            "throughput_rps": requests / self.span_s if self.span_s > 0 else None,
            "error_rate": errors / judged if judged else None,
            "cache_hits": hits,
            "cache_hit_rate": hits / requests if requests else None,
            "coalesced": self.counter("requests", source="coalesced"),
        }
        for name in ("request_duration", "ttfb", "ttft", "itl"):
            hist = self.hist(name)
            for q in QUANTILES:
                out[f"{name}_p{round(q * 100)}_s"] = hist.quantile(q)
            out[f"{name}_mean_s"] = hist.mean
            out[f"{name}_count"] = hist.count
        ttfb = self.hist("ttfb")
        out["ttfb_under_1s_share"] = ttfb.count_at_most(1.0) / ttfb.count if ttfb.count else None
        for kind in ("input", "output", "cached"):
            out[f"{kind}_tokens"] = self.counter("tokens", kind=kind)
        out["cost_usd"] = self.counter("cost_usd", source="upstream")
        out["saved_usd"] = self.counter("cost_usd") - out["cost_usd"]
        return out

    def stage_table(self) -> list[dict[str, Any]]:
        """Per stage: how many requests went through it, mean and p50/p95 (s), and its share of the summed mean."""
        rows = []
        for stage in self.stages():
            hist = self.hist(f"stage:{stage}")
            rows.append(
                {
                    "stage": stage,
                    "requests": hist.count,
                    "mean_s": hist.mean,
                    "p50_s": hist.quantile(0.5),
                    "p95_s": hist.quantile(0.95),
                    "total_s": hist.sum,
                }
            )
        grand = sum(r["total_s"] for r in rows) or 1.0
        for row in rows:
            row["share_of_time"] = row["total_s"] / grand
        return rows


class Metrics:
    """What the `MetricsLayer` records, as totals and over the last `window_s` seconds (see the module docstring)."""

    def __init__(
        self,
        *,
        window_s: float = 60.0,
        slot_s: float = 1.0,
        relative_accuracy: float = 0.01,
        buckets: Sequence[float] = DEFAULT_BUCKETS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._template = Histogram(relative_accuracy, buckets)
        self.relative_accuracy = relative_accuracy
        self.clock = clock
        self.total = _Slot()
        self.rolling: Rolling[_Slot] = Rolling(_Slot, window_s, slot_s, clock)
        self.started = clock()

    @property
    def window_s(self) -> float:
        return self.rolling.window_s

    # -- recording --------------------------------------------------------------------------------------------

    def _slots(self) -> tuple[_Slot, _Slot]:
        now = self.clock()
        current = self.rolling.current()
        for slot in (self.total, current):
            if not slot.first:
                slot.first = now
            slot.last = now
        return self.total, current

    def observe(self, name: str, values: float | Iterable[float]) -> None:
        """Add one or more durations (s) to histogram `name`, in the totals and the current sub-window."""
        one = isinstance(values, (int, float))
        batch = values if one else np.fromiter(values, dtype=float)
        for slot in self._slots():
            hist = slot.hists.get(name)
            if hist is None:
                hist = slot.hists[name] = self._template.empty_like()
            if one:
                hist.observe(batch)
            else:
                hist.extend(batch)

    def count(self, name: str, amount: float = 1.0, **labels: str) -> None:
        """Add `amount` to counter `name` with these labels (counters only go up)."""
        if amount < 0:
            raise ValueError(f"a counter only goes up; got {amount!r} for {name}")
        key = (name, tuple(sorted(labels.items())))
        for slot in self._slots():
            slot.counts[key] += amount

    def record(self, record: _Record, *, itl: Iterable[float] = (), stages: Mapping[str, float] | None = None) -> None:
        """Account one finished request (what `MetricsLayer` calls)."""
        outcome = outcome_class(record.outcome)
        self.count("requests", outcome=outcome, source=record.source)
        if outcome == "error":
            self.count("errors", error=record.outcome)
        if outcome == "ok" and record.latency_s is not None:
            self.observe("request_duration", record.latency_s)
        if record.ttft_s is not None:
            self.observe("ttft", record.ttft_s)
            self.observe("ttfb", record.ttft_s)
        elif not record.stream and outcome == "ok" and record.latency_s is not None:
            self.observe("ttfb", record.latency_s)
        gaps = list(itl)
        if gaps:
            self.observe("itl", gaps)
        for stage, seconds in (stages or {}).items():
            self.observe(f"stage:{stage}", seconds)
        for kind, n in (
            ("input", record.prompt_tokens),
            ("output", record.completion_tokens),
            ("cached", record.cached_tokens),
        ):
            if n:
                self.count("tokens", n, kind=kind)
        if record.cost_usd:
            self.count("cost_usd", record.cost_usd, source="upstream" if record.source == "upstream" else "cache")

    def reset(self) -> None:
        self.total = _Slot()
        self.rolling = Rolling(_Slot, self.rolling.window_s, self.rolling.slot_s, self.clock)
        self.started = self.clock()

    # -- reading ----------------------------------------------------------------------------------------------

    def view(self, window_s: float | None = None) -> MetricsView:
        """Totals (`None`) or the last `window_s` seconds (at most the rolling window), merged."""
        if window_s is None:
            span = self.clock() - self.started
            return MetricsView([self.total], self._template, span)
        slots = self.rolling.within(window_s)
        span = min(window_s, self.clock() - self.started)
        return MetricsView(slots, self._template, span)

    def snapshot(self, window_s: float | None = None) -> dict[str, Any]:
        """The headline figures as a flat dict (see `MetricsView.summary`)."""
        return {"window_s": window_s, **self.view(window_s).summary()}

    def to_frame(self, windows: Sequence[float | None] = (None,)) -> Any:
        """The snapshot as a pandas DataFrame: one column per window ("total" or "last N s")."""
        import pandas as pd

        columns = {("total" if w is None else f"last {w:g} s"): self.snapshot(w) for w in windows}
        frame = pd.DataFrame(columns)
        return frame.drop(index="window_s")

    def stage_frame(self, window_s: float | None = None) -> Any:
        import pandas as pd

        return pd.DataFrame(self.view(window_s).stage_table())
