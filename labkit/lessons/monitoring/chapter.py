"""Plumbing for lesson 11 (性能监控), so its cells stay about the monitor, the sketch and the burn rate.

What lives here is what the notebook does not teach: seeded durations, the memory sweep under `tracemalloc`,
the clock-step experiment, the load generator and its progress bar, the capstone-like chain the load runs
through, scraping and parsing `/metrics`, the stage examples, and the charts and tables of the run.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any
from unittest import mock

import aiohttp
import numpy as np
import pandas as pd
import plotly.graph_objects as go
from prometheus_client.parser import text_string_to_metric_families

from labkit.cache import CacheLayer, MemoryTier
from labkit.chain import Chain
from labkit.dedup.singleflight import SingleFlight
from labkit.lab import viz
from labkit.layers.admission import AdmissionLayer
from labkit.layers.retry import RetryLayer, RetryPolicy
from labkit.monitoring.alerts import SLO, AlertRule, availability_slo, cache_hit_slo, ttfb_slo
from labkit.monitoring.stages import STAGE_ORDER, StageMark

__all__ = [
    "LoadBar",
    "alert_summary",
    "burn_chart",
    "clock_step",
    "durations",
    "every",
    "memory_chart",
    "memory_sweep",
    "monitored_chain",
    "parse_exposition",
    "quantile_check",
    "run_load",
    "scrape",
    "slos",
    "stage_chart",
    "stage_examples",
]


def durations(n: int, seed: int = 0) -> list[float]:
    """Log-normal response times (median 0.6 s, a long right tail): the shape real latencies have."""
    rng = random.Random(seed)
    return [rng.lognormvariate(-0.5, 0.8) for _ in range(n)]


def memory_sweep(
    build: Callable[[list[float]], Any], p95: Callable[[Any], float | None], sizes: Sequence[int], seed: int = 0
) -> list[dict[str, float]]:
    """For each size: the bytes `build(durations)` keeps (tracemalloc), one `p95(kept)` read timed, its error."""
    rows = []
    for n in sizes:
        values = durations(n, seed)
        tracemalloc.start()
        try:
            kept = build(values)
            kept_bytes = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        started = time.perf_counter()
        estimate = p95(kept)
        read_ms = (time.perf_counter() - started) * 1000
        exact = float(np.quantile(values, 0.95, method="lower"))
        error = abs(estimate - exact) / exact if estimate is not None else None
        rows.append({"observations": n, "MB": kept_bytes / 1e6, "p95_read_ms": read_ms, "p95_rel_error": error})
        del kept, values
    return rows


def memory_chart(sweeps: Mapping[str, Sequence[Mapping[str, float]]]) -> go.Figure:
    """Memory kept against requests observed, one line per structure, log-log; the title compares the largest."""
    last = {name: rows[-1] for name, rows in sweeps.items()}
    most, least = max(last, key=lambda k: last[k]["MB"]), min(last, key=lambda k: last[k]["MB"])
    n = int(last[most]["observations"])
    title = (
        f"At {n:,} requests {most} keeps {last[most]['MB']:.1f} MB, "
        f"{least} {last[least]['MB'] * 1000:.0f} kB ({last[most]['MB'] / max(last[least]['MB'], 1e-9):,.0f}× less)"
    )
    series = {name: ([r["observations"] for r in rows], [r["MB"] for r in rows]) for name, rows in sweeps.items()}
    fig = viz.lines(series, title=title, x_unit="requests observed", y_unit="memory kept (MB)", log_y=True)
    return fig.update_xaxes(type="log")


def clock_step(monitor_cls: type, steps: Mapping[int, float] | None = None, n: int = 40) -> dict[str, Any]:
    """Time `n` operations of 20 ms with the monitor's own `measure_time` while `time.time()` is stepped.

    We cannot move this machine's clock, so `time.time` is patched to add an offset: one step back by 0.5 s (NTP
    correcting a fast clock), two forward by 0.3 s (a virtual machine paused and resumed)."""
    steps = dict(steps or {15: -0.5, 30: 0.3, 35: 0.3})
    real_time, offset = time.time, [0.0]
    monitor, true_ms = monitor_cls(), []
    with mock.patch("time.time", lambda: real_time() + offset[0]):
        for i in range(n):
            started = time.perf_counter()
            with monitor.measure_time("sleep 20 ms"):
                time.sleep(0.02)
                offset[0] += steps.get(i, 0.0)
            true_ms.append((time.perf_counter() - started) * 1000)
    wall_ms = [d * 1000 for d in monitor.metrics["response_times"]]
    stats = monitor.get_stats()
    return {
        "adjustable": {name: time.get_clock_info(name).adjustable for name in ("time", "perf_counter", "monotonic")},
        "wall_ms": wall_ms,
        "true_ms": true_ms,
        "wall_min_ms": min(wall_ms),
        "wall_max_ms": max(wall_ms),
        "true_p95_ms": float(np.percentile(true_ms, 95)),
        "guide_p95_ms": stats["p95_response_time"] * 1000,
        "guide_mean_ms": stats["avg_response_time"] * 1000,
    }


def monitored_chain(transport: Any, metrics_layer: Any, *, max_concurrency: int, seed: int) -> Chain:
    """The capstone's chain minus what this lesson does not need; the metrics layer outermost, so it sees what
    the caller sees. Two `StageMark`s close the cache-lookup and admission stages of each request's breakdown."""
    return Chain(
        transport,
        [
            metrics_layer,
            CacheLayer([MemoryTier()]),
            StageMark("cache_lookup"),
            SingleFlight(),
            AdmissionLayer(rpm=30_000, tpm=30_000_000, max_concurrency=max_concurrency),
            StageMark("admission_wait"),
            RetryLayer(RetryPolicy(base_delay_s=0.05, max_delay_s=0.5), seed=seed),
        ],
    )


def slos(long_s: float, short_s: float, min_events: int = 5) -> list[SLO]:
    """The guide's targets as SLOs: TTFB < 1 s for 95 %, availability 99.9 % (pages), cache hit rate 80 % (ticket)."""
    return [
        ttfb_slo(1.0, 0.95, rules=(AlertRule("page", 6.0, long_s, short_s),), min_events=min_events),
        availability_slo(0.999, rules=(AlertRule("page", 14.4, long_s, short_s),), min_events=min_events),
        cache_hit_slo(0.80, rules=(AlertRule("ticket", 1.0, long_s, short_s),), min_events=min_events),
    ]


class LoadBar:
    """A progress bar for the load, updated only by assigning widget traits (safe from a task)."""

    def __init__(self, total: int) -> None:
        import ipywidgets as w

        self.bar = w.IntProgress(value=0, min=0, max=max(total, 1), description="load")
        self.label = w.HTML()
        self.widget = w.HBox([self.bar, self.label])
        self.started = self.done = 0

    def update(self, phase: str) -> None:
        self.bar.value = min(self.started, self.bar.max)
        self.label.value = f"{phase}: {self.started} requests started, {self.done} finished"

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)


async def every(interval_s: float, fn: Callable[[], Any]) -> None:
    """Call `fn` every `interval_s` seconds until cancelled (the alerts' evaluation loop)."""
    while True:
        fn()
        await asyncio.sleep(interval_s)


async def _one(chain: Chain, prompt: str, temperature: float, model: str, max_tokens: int, bar: LoadBar) -> None:
    try:
        stream = await chain.stream(prompt, model=model, temperature=temperature, max_tokens=max_tokens)
        async with stream:
            async for _ in stream:
                pass
    except Exception:  # the metrics layer has recorded it; the load goes on
        pass
    finally:
        bar.done += 1


async def run_load(
    chain: Chain,
    *,
    clock: Callable[[], float],
    set_faults: Callable[[dict[str, Any]], Awaitable[Any]] | None,
    faults: Mapping[str, Any],
    bar: LoadBar,
    model: str,
    rate_rps: float,
    phase_s: float,
    max_tokens: int,
    n_prompts: int,
    zipf_s: float,
    unique_share: float,
    seed: int,
) -> dict[str, Any]:
    """`rate_rps` streamed requests a second for `phase_s` seconds healthy, then as long with `faults` on.

    Most prompts follow a Zipf popularity (popular ones repeat: cache hits); a `unique_share` are one-off
    conversations at temperature 0.7 that no exact cache serves. `clock()` gives the metrics' time, so the
    returned `faults_at_s` lines up with the dashboard and the alerts. Faults are switched off at the end."""
    prompts = [f"Monitoring question {i}: which percentile should an SLO use, and why?" for i in range(n_prompts)]
    weights = [1 / (rank + 1) ** zipf_s for rank in range(n_prompts)]
    pick, tasks, started, faults_at = random.Random(seed), [], time.perf_counter(), None
    for phase in ("healthy", "faults"):
        if phase == "faults":
            faults_at = clock()
            if set_faults is not None:
                await set_faults({**faults, "seed": seed})
        end = time.perf_counter() + phase_s
        while time.perf_counter() < end:
            if pick.random() < unique_share:
                prompt, temperature = f"Conversation {len(tasks)}: summarize our discussion so far.", 0.7
            else:
                prompt, temperature = pick.choices(prompts, weights)[0], 0.0
            tasks.append(asyncio.create_task(_one(chain, prompt, temperature, model, max_tokens, bar)))
            bar.started = len(tasks)
            bar.update(phase)
            await asyncio.sleep(1 / rate_rps)
    await asyncio.gather(*tasks)
    bar.update("done")
    if set_faults is not None:
        await set_faults({"error_rates": {}, "slow_first_byte": {"rate": 0.0}})
    return {"requests": len(tasks), "seconds": time.perf_counter() - started, "faults_at_s": faults_at}


def quantile_check(records: Sequence[Any], snapshot: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The histogram's p50/p95/p99 against exact percentiles of the successful requests' latencies."""
    ok = np.array([r.latency_s for r in records if r.outcome == "ok"])
    rows = []
    for q in (0.5, 0.95, 0.99):
        exact = float(np.quantile(ok, q, method="lower"))
        estimate = snapshot[f"request_duration_p{round(q * 100)}_s"]
        rows.append(
            {"quantile": f"p{round(q * 100)}", "exact (s)": exact, "histogram (s)": estimate,
             "relative error": abs(estimate - exact) / exact}
        )  # fmt: skip
    return rows


async def scrape(url: str) -> tuple[str, str]:
    """GET the exposition as Prometheus would: (body, content type)."""
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return await response.text(), response.headers["Content-Type"]


WANTED = (
    "labkit_requests_total",
    'labkit_time_to_first_byte_seconds_bucket{le="1.0"}',
    "labkit_request_duration_window_seconds{quantile",
    "labkit_cost_usd_total",
    "labkit_retry_retries_total",
    "labkit_cache_tier_hits_total",
    "labkit_single_flight_coalesced_total",
)


def parse_exposition(text: str) -> dict[str, Any]:
    """Parse with prometheus_client's own parser: families, the layers' samples, and a few lines to read."""
    families = {f.name: f for f in text_string_to_metric_families(text)}
    layer_rows = [
        {"metric": s.name, **s.labels, "value": s.value}
        for f in families.values()
        if any("layer" in s.labels for s in f.samples)
        for s in f.samples
    ]
    lines = text.splitlines()
    return {
        "families": families,
        "layer_rows": layer_rows,
        "lines": len(lines),
        "excerpt": "\n".join(line for line in lines if line.startswith(WANTED)),
        "recovered": next((s.value for s in families["labkit_retry_recovered"].samples), 0.0)
        if "labkit_retry_recovered" in families
        else 0.0,
    }


def stage_examples(records: Sequence[Any]) -> dict[str, Any]:
    """One request of each kind from the run, the mean stages of all misses, and how well stages tile latency."""

    def first(pred: Callable[[Any], bool]) -> Any:
        return next((r for r in records if pred(r)), None)

    examples = {
        "cold miss (first request)": records[0] if records else None,
        "miss": first(lambda r: r.source == "upstream" and r.outcome == "ok" and "client" in (r.stages or {})
                      and r is not records[0]),
        "cache hit": first(lambda r: r.source == "cache" and r.outcome == "ok"),
        "joined an identical request": first(lambda r: r.source == "coalesced" and r.outcome == "ok"),
        "slow first byte (fault)": max((r for r in records if r.outcome == "ok" and r.ttft_s),
                                       key=lambda r: r.ttft_s, default=None),
    }  # fmt: skip
    misses = [r for r in records if r.source == "upstream" and r.outcome == "ok" and r.stages]
    gaps = [abs(sum(r.stages.values()) - r.latency_s) for r in records if r.stages]
    return {
        "stages": {k: dict(v.stages) for k, v in examples.items() if v is not None},
        "mean_miss": pd.DataFrame([r.stages for r in misses]).fillna(0).mean().to_dict() if misses else {},
        "misses": len(misses),
        "hit_ms": examples["cache hit"].latency_s * 1000 if examples["cache hit"] else None,
        "stage_sum_max_gap_s": max(gaps) if gaps else None,
    }


def stage_chart(found: Mapping[str, Any]) -> go.Figure:
    """Stacked horizontal bars: where each kind of request spent its time, stage by stage (ms)."""
    bars = {**found["stages"], f"mean of {found['misses']} misses": found["mean_miss"]}
    mean = found["mean_miss"] or {"?": 0.0}
    top = max(mean, key=mean.get)
    share = mean[top] / max(sum(mean.values()), 1e-9)
    hit = f"{found['hit_ms']:.1f} ms" if found["hit_ms"] is not None else "n/a"
    fig = go.Figure(
        [
            go.Bar(y=list(bars), x=[bars[k].get(s, 0.0) * 1000 for k in bars], name=s, orientation="h")
            for s in STAGE_ORDER
        ]
    )
    fig.update_layout(barmode="stack", xaxis_title="milliseconds", height=380,
                      title=f"A miss spends {share:.0%} of its time in '{top}'; a cache hit takes {hit}")  # fmt: skip
    return fig


def alert_summary(history: pd.DataFrame, faults_at_s: float | None) -> dict[str, Any]:
    """When each SLO's alert first fired, which fired before the faults, and each SLO's worst burn rate."""
    fired = history[history.firing]
    before = fired[fired.at_s < faults_at_s] if faults_at_s is not None else fired.iloc[0:0]
    table = history.groupby("slo").agg(
        fired=("firing", "any"), evaluations=("firing", "size"), firing_share=("firing", "mean"),
        worst_burn_long=("burn_long", "max"),
    )  # fmt: skip
    return {
        "faults_at_s": faults_at_s,
        "first_fire_s": fired.groupby("slo").at_s.min().to_dict(),
        "fired_before_faults": sorted(set(before.slo)),
        "summary": table.reset_index().to_dict(orient="records"),
    }


def burn_chart(history: pd.DataFrame, alerts: Mapping[str, Any]) -> go.Figure:
    """Each SLO's burn rate over the long and the short window, with the moment the faults began."""
    fig = go.Figure()
    for (slo, severity), part in history.groupby(["slo", "severity"]):
        fig.add_trace(go.Scatter(x=part.at_s, y=part.burn_long, name=f"{slo} ({severity}): long", mode="lines"))
        fig.add_trace(go.Scatter(x=part.at_s, y=part.burn_short, name=f"{slo}: short", mode="lines", line_dash="dot"))
    if alerts["faults_at_s"] is not None:
        fig.add_vline(x=alerts["faults_at_s"], line_dash="dash", annotation_text="faults on")
    first = alerts["first_fire_s"]
    title = ", ".join(f"{k} fired at {v:.0f} s" for k, v in first.items()) if first else "no alert fired"
    fig.update_yaxes(type="log", title="burn rate (× the error budget)")
    fig.update_layout(xaxis_title="time since start (s)", height=420, title=f"Burn rates: {title}")
    return fig


def mean_and_p95(values: Sequence[float]) -> tuple[float, float]:
    """Mean and p95 (numpy, lower) of a list: a baseline for the guide's figures."""
    return statistics.fmean(values), float(np.quantile(values, 0.95, method="lower"))


def numbers(measured: Mapping[str, Any]) -> pd.DataFrame:
    """The run's numbers in one small table: what each finding of the lesson rests on, from what the sections put
    in `measured` (`memory`, `sketch_check`, `quantile_check`, `clock`, `load`, `alerts`); a section that has not
    run adds no row."""
    rows: dict[str, dict[str, Any]] = {}
    for name, sweep in measured.get("memory", {}).items():
        last = sweep[-1]
        rows[f"{name}: memory at {int(last['observations']):,} requests"] = {"value": last["MB"], "unit": "MB"}
        rows[f"{name}: one p95 read"] = {"value": last["p95_read_ms"], "unit": "ms"}
    if "sketch_check" in measured:
        worst = max(r["relative error"] for r in measured["sketch_check"])
        rows["MiniSketch: worst quantile error (100k durations)"] = {"value": 100 * worst, "unit": "%"}
    if "quantile_check" in measured:
        worst = max(r["relative error"] for r in measured["quantile_check"])
        rows["labkit Histogram: worst quantile error (the load)"] = {"value": 100 * worst, "unit": "%"}
    if "clock" in measured:
        rows["guide's p95 of 20 ms calls, clock stepped"] = {"value": measured["clock"]["guide_p95_ms"], "unit": "ms"}
    if "load" in measured:
        rows["requests in the load"] = {"value": measured["load"]["requests"], "unit": "requests"}
    alerts = measured.get("alerts", {"first_fire_s": {}})
    for slo, at in alerts["first_fire_s"].items():
        if alerts["faults_at_s"] is not None and at >= alerts["faults_at_s"]:
            rows[f"{slo} alert: first fired after the faults began"] = {
                "value": at - alerts["faults_at_s"],
                "unit": "s",
            }
    return viz.table(rows)
