"""Alerts on the service-level objectives of the capstone, as multi-window burn rates.

The guide's targets (关键性能指标): time to first byte under 1 s, availability 99.9 %, cache hit rate 80 %. As
SLOs, each is a share of good events with an objective; `1 - objective` is the *error budget*. The *burn rate* over
a window is `bad share / budget`: 1 spends the budget exactly over the SLO period, 14.4 spends 2 % of a 30-day
budget in one hour. Google's SRE workbook ("Alerting on SLOs") pages when the burn rate is high over a long window
*and* a short one (1/12 of it): the long window says it matters, the short one that it is still happening, so an
alert resets soon after the fault ends. The lab compresses time: the long window is the last minute, the short
one 5 s (both parameters).

The hit rate is a target, not a budget to burn (its budget is 20 % misses, so a burn above 5 is impossible): its
rule fires when the hit rate is below the objective over both windows (burn rate above 1).
Each window needs `min_events` events before it may fire: two misses out of two requests are no signal.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from labkit.monitoring.registry import Metrics, MetricsView

__all__ = ["DEFAULT_SLOS", "SLO", "Alert", "AlertRule", "Alerts", "availability_slo", "cache_hit_slo", "ttfb_slo"]

Sli = Callable[[MetricsView], tuple[float, float]]  # (good, total) events in a view


@dataclasses.dataclass(frozen=True)
class AlertRule:
    severity: str
    burn_rate: float
    long_s: float = 60.0
    short_s: float = 5.0

    def __post_init__(self) -> None:
        if not self.burn_rate > 0 or not 0 < self.short_s <= self.long_s:
            raise ValueError("an alert rule needs burn_rate > 0 and 0 < short_s <= long_s")


@dataclasses.dataclass(frozen=True)
class SLO:
    name: str
    objective: float  # share of good events, e.g. 0.999
    sli: Sli
    description: str
    rules: tuple[AlertRule, ...]
    min_events: int = 20

    def __post_init__(self) -> None:
        if not 0.0 < self.objective < 1.0:
            raise ValueError(f"objective must be in (0, 1), got {self.objective!r}")

    @property
    def budget(self) -> float:
        return 1.0 - self.objective


def ttfb_slo(threshold_s: float = 1.0, objective: float = 0.95, **kw: Any) -> SLO:
    """Share of answers whose first byte came within `threshold_s` (the guide: < 1 s; the capstone: at p95)."""

    def sli(view: MetricsView) -> tuple[float, float]:
        hist = view.hist("ttfb")
        return hist.count_at_most(threshold_s), float(hist.count)

    rules = kw.pop("rules", (AlertRule("page", 6.0), AlertRule("ticket", 2.0, short_s=15.0)))
    return SLO("ttfb", objective, sli, f"first byte within {threshold_s:g} s for {objective:.1%}", rules, **kw)


def availability_slo(objective: float = 0.999, **kw: Any) -> SLO:
    """Share of requests that succeeded (requests the caller cancelled do not count either way)."""

    def sli(view: MetricsView) -> tuple[float, float]:
        ok, errors = view.counter("requests", outcome="ok"), view.counter("requests", outcome="error")
        return ok, ok + errors

    rules = kw.pop("rules", (AlertRule("page", 14.4), AlertRule("ticket", 6.0, short_s=15.0)))
    return SLO("availability", objective, sli, f"{objective:.1%} of requests succeed", rules, **kw)


def cache_hit_slo(objective: float = 0.80, **kw: Any) -> SLO:
    """Share of requests answered from the cache (see the module docstring: a target, burn rate 1)."""

    def sli(view: MetricsView) -> tuple[float, float]:
        return view.counter("requests", source="cache"), view.counter("requests")

    rules = kw.pop("rules", (AlertRule("ticket", 1.0, short_s=15.0),))
    return SLO("cache_hit_rate", objective, sli, f"{objective:.0%} of requests served from the cache", rules, **kw)


DEFAULT_SLOS: tuple[SLO, ...] = (ttfb_slo(), availability_slo(), cache_hit_slo())


@dataclasses.dataclass(frozen=True)
class Alert:
    """One rule of one SLO, evaluated at one time."""

    at_s: float
    slo: str
    severity: str
    firing: bool
    burn_long: float | None
    burn_short: float | None
    good_share_long: float | None
    events_long: float

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Alerts:
    """Evaluate SLOs against a `Metrics`' rolling windows; keep the history of evaluations and firings."""

    def __init__(self, metrics: Metrics, slos: Sequence[SLO] = DEFAULT_SLOS) -> None:
        for slo in slos:
            for rule in slo.rules:
                if rule.long_s > metrics.window_s:
                    raise ValueError(
                        f"{slo.name}: a {rule.long_s:g} s window needs Metrics(window_s>={rule.long_s:g}); "
                        f"it keeps {metrics.window_s:g} s"
                    )
        self.metrics = metrics
        self.slos = tuple(slos)
        self.history: list[Alert] = []

    def _burn(self, slo: SLO, view: MetricsView) -> tuple[float | None, float | None, float]:
        good, total = slo.sli(view)
        if total < slo.min_events:
            return None, (good / total if total else None), total
        bad_share = max(0.0, 1.0 - good / total)
        return bad_share / slo.budget, good / total, total

    def evaluate(self) -> list[Alert]:
        """Every rule of every SLO now; the results are appended to `history` and returned."""
        now = self.metrics.clock() - self.metrics.started
        views: dict[float, MetricsView] = {}
        out = []
        for slo in self.slos:
            for rule in slo.rules:
                for span in (rule.long_s, rule.short_s):
                    if span not in views:
                        views[span] = self.metrics.view(span)
                burn_long, share_long, events = self._burn(slo, views[rule.long_s])
                burn_short, _, _ = self._burn(slo, views[rule.short_s])
                firing = (
                    burn_long is not None
                    and burn_short is not None
                    and burn_long >= rule.burn_rate
                    and burn_short >= rule.burn_rate
                )
                out.append(Alert(now, slo.name, rule.severity, firing, burn_long, burn_short, share_long, events))
        self.history.extend(out)
        return out

    def firing(self) -> list[Alert]:
        """The alerts firing at the last evaluation."""
        if not self.history:
            return []
        last = self.history[-1].at_s
        return [a for a in self.history if a.at_s == last and a.firing]

    def frame(self) -> Any:
        import pandas as pd

        return pd.DataFrame([a.as_dict() for a in self.history])
