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
bounded whatever the traffic. A value is written once, into the current sub-window; when the next sub-window
starts, the finished one is merged into the totals (once a `slot_s`, whatever the traffic), and the totals read
that merge plus the sub-window still being written. Writing every value twice, into the totals and the window,
made the metrics layer one of the larger client CPU costs of a request (`python -m labkit.lessons.overhead`).
`record` keeps a finished request aside and writes what it kept in a batch: when `BATCH` have gathered, when the
sub-window changes, and before anything reads, counts or observes, so no reader ever sees a stale figure. Written
one at a time, between the HTTP client's work, the same lines cost more than in a loop over a batch (the code and
the histograms have gone cold in the processor's caches; `python -m labkit.lessons.overhead` measures the chain's
client CPU per request over a real transport). A record with a duration no histogram takes (negative, infinite,
NaN) is refused at `record`, as before, with nothing recorded.
All in the event loop's thread: no locks (the Prometheus endpoint is an aiohttp route on the same loop,
`labkit.monitoring.exposition`).
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from labkit.monitoring.histogram import DEFAULT_BUCKETS, Histogram, Rolling, check_duration, check_durations

__all__ = ["Metrics", "MetricsView"]

Labels = tuple[tuple[str, str], ...]
QUANTILES = (0.5, 0.95, 0.99)
#: Finished requests `Metrics.record` keeps aside before it writes them in one pass.
BATCH = 64


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

    __slots__ = ("counts", "hists")

    def __init__(self) -> None:
        self.hists: dict[str, Histogram] = {}
        self.counts: Counter[tuple[str, Labels]] = Counter()

    def absorb(self, other: _Slot, template: Histogram) -> None:
        """Add another slot's histograms and counters to this one."""
        for name, hist in other.hists.items():
            mine = self.hists.get(name)
            if mine is None:
                mine = self.hists[name] = template.empty_like()
            mine.merge(hist)
        self.counts.update(other.counts)


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
        self.total = _Slot()  # every finished sub-window, merged
        self.rolling: Rolling[_Slot] = Rolling(_Slot, window_s, slot_s, clock)
        self._live: _Slot | None = None  # the sub-window being written (not in `total` yet)
        self.started = clock()
        # finished requests not written yet, and the sub-window they finished in
        self._pending: list[tuple[_Record, list[float], Mapping[str, float] | None]] = []
        self._pending_slot: _Slot | None = None

    @property
    def window_s(self) -> float:
        return self.rolling.window_s

    # -- recording --------------------------------------------------------------------------------------------

    def _slot(self) -> _Slot:
        """The sub-window to write to now (what `record` kept aside is written first)."""
        self.flush()
        return self._enter(self.rolling.current())

    def _enter(self, slot: _Slot) -> _Slot:
        """Write to `slot` from now on; the one it follows, finished, is merged into the totals first."""
        if slot is not self._live:
            if self._live is not None:
                self.total.absorb(self._live, self._template)
            self._live = slot
        return slot

    def _hist(self, slot: _Slot, name: str) -> Histogram:
        hist = slot.hists.get(name)
        if hist is None:
            hist = slot.hists[name] = self._template.empty_like()
        return hist

    def observe(self, name: str, values: float | Iterable[float]) -> None:
        """Add one or more durations (s) to histogram `name` (the totals and the current sub-window see it)."""
        hist = self._hist(self._slot(), name)
        if isinstance(values, (int, float)):
            hist.observe(values)
        else:
            hist.extend(np.fromiter(values, dtype=float))

    def count(self, name: str, amount: float = 1.0, **labels: str) -> None:
        """Add `amount` to counter `name` with these labels (counters only go up)."""
        if amount < 0:
            raise ValueError(f"a counter only goes up; got {amount!r} for {name}")
        self._slot().counts[(name, tuple(sorted(labels.items())))] += amount

    def record(self, record: _Record, *, itl: Iterable[float] = (), stages: Mapping[str, float] | None = None) -> None:
        """Account one finished request (what `MetricsLayer` calls), in the sub-window it finished in.

        Kept aside and written in a batch (see the module docstring); a duration no histogram takes is refused
        here, with nothing recorded."""
        for value in (record.latency_s, record.ttft_s, *(stages.values() if stages else ())):
            if value is not None:
                check_duration(value)
        gaps = itl if isinstance(itl, list) else list(itl)
        check_durations(gaps)
        slot = self.rolling.current()
        if slot is not self._pending_slot:
            self.flush()
            self._pending_slot = slot
        self._pending.append((record, gaps, stages))
        if len(self._pending) >= BATCH:
            self.flush()

    def flush(self) -> None:
        """Write the finished requests `record` kept aside (every reader calls it first)."""
        pending = self._pending
        if not pending:
            return
        self._pending = []
        assert self._pending_slot is not None
        self._write(self._enter(self._pending_slot), pending)

    def _write(self, slot: _Slot, pending: list[tuple[_Record, list[float], Mapping[str, float] | None]]) -> None:
        """Count a batch of requests in `slot`: each histogram's values in one `observe_many` (every gap between
        chunks in one `extend`), the token and cost counters once per batch."""
        counts = slot.counts
        values: defaultdict[str, list[float]] = defaultdict(list)
        durations, ttfb, ttft, gaps = values["request_duration"], values["ttfb"], values["ttft"], []
        tokens = [0, 0, 0]  # input, output, cached
        cost = {"upstream": 0.0, "cache": 0.0}
        for record, itl, stages in pending:
            outcome = outcome_class(record.outcome)
            source = record.source
            counts[("requests", (("outcome", outcome), ("source", source)))] += 1  # labels sorted by name
            if outcome == "error":
                counts[("errors", (("error", record.outcome),))] += 1
            latency = record.latency_s
            if outcome == "ok" and latency is not None:
                durations.append(latency)
            if record.ttft_s is not None:
                ttft.append(record.ttft_s)
                ttfb.append(record.ttft_s)
            elif not record.stream and outcome == "ok" and latency is not None:
                ttfb.append(latency)
            if itl:
                gaps += itl
            if stages:
                for stage, seconds in stages.items():
                    values[f"stage:{stage}"].append(seconds)
            tokens[0] += record.prompt_tokens
            tokens[1] += record.completion_tokens
            tokens[2] += record.cached_tokens
            if record.cost_usd:
                cost["upstream" if source == "upstream" else "cache"] += record.cost_usd
        for name, observed in values.items():
            if observed:
                self._hist(slot, name).observe_many(observed)
        if gaps:
            self._hist(slot, "itl").extend(gaps)
        for kind, n in zip(("input", "output", "cached"), tokens, strict=True):
            if n:
                counts[("tokens", (("kind", kind),))] += n
        for source, usd in cost.items():
            if usd:
                counts[("cost_usd", (("source", source),))] += usd

    def reset(self) -> None:
        self._pending, self._pending_slot = [], None
        self.total = _Slot()
        self.rolling = Rolling(_Slot, self.rolling.window_s, self.rolling.slot_s, self.clock)
        self._live = None
        self.started = self.clock()

    # -- reading ----------------------------------------------------------------------------------------------

    def view(self, window_s: float | None = None) -> MetricsView:
        """Totals (`None`) or the last `window_s` seconds (at most the rolling window), merged."""
        self.flush()
        if window_s is None:
            span = self.clock() - self.started
            live = [self._live] if self._live is not None else []
            return MetricsView([self.total, *live], self._template, span)
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
