"""Exposition: the Prometheus text format on an HTTP endpoint, and snapshots for notebooks.

`prometheus_client` (the official Python client, 0.26) writes the format; `LabkitCollector` is a custom
collector that reads `Metrics` and the chain's layers at scrape time (nothing is copied on the request path).
Names follow the Prometheus conventions: a `labkit_` prefix, base units in the name (`_seconds`), counters end in
`_total`, dimensions are labels (`outcome`, `source`, `kind`, `stage`, `layer`):

- `labkit_requests_total{outcome,source}`, `labkit_request_errors_total{error}`,
  `labkit_tokens_total{kind}`, `labkit_cost_usd_total{source}` (upstream spend; `source="cache"` is money saved);
- histograms (classic buckets, aggregatable with `histogram_quantile`): `labkit_request_duration_seconds`,
  `labkit_time_to_first_byte_seconds`, `labkit_time_to_first_token_seconds`, `labkit_inter_token_latency_seconds`,
  `labkit_request_stage_duration_seconds{stage}`;
- summaries from the sketches over the rolling window (±1 %): the same names with `_window` before the unit
  (`labkit_request_duration_window_seconds{quantile="0.95"}`), with `_count`/`_sum` over that window;
- every layer's counters from `labkit.monitoring.collector` (`labkit_retry_retries_total{layer="retry"}` ...).

The endpoint is an aiohttp route on the notebook's own event loop (`MetricsServer`): a scrape reads the
histograms in the same thread that writes them, so no lock is needed. (`prometheus_client.start_http_server`
would serve from a thread, racing the event loop's writes.)
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from labkit.monitoring.collector import read_layers
from labkit.monitoring.histogram import Histogram
from labkit.monitoring.registry import Metrics, MetricsView

__all__ = ["CONTENT_TYPE_LATEST", "LabkitCollector", "MetricsServer", "make_registry", "render"]

HISTOGRAMS = {
    "request_duration": ("labkit_request_duration", "Duration of successful requests as the caller saw it"),
    "ttfb": ("labkit_time_to_first_byte", "Time to the first byte a caller can show (first token, or whole answer)"),
    "ttft": ("labkit_time_to_first_token", "Time to the first content token of streams"),
    "itl": ("labkit_inter_token_latency", "Gap between consecutive content chunks of streams"),
}


def _buckets(hist: Histogram) -> list[tuple[str, float]]:
    return [("+Inf" if math.isinf(le) else repr(le), float(n)) for le, n in hist.cumulative()]


def _summary(name: str, doc: str, hist: Histogram, window_s: float, labels: dict[str, str]) -> Metric:
    metric = Metric(name, f"{doc} (last {window_s:g} s, quantiles within ±1 %)", "summary")
    for q in (0.5, 0.9, 0.95, 0.99):
        value = hist.quantile(q)
        metric.add_sample(name, {**labels, "quantile": str(q)}, math.nan if value is None else value)
    metric.add_sample(f"{name}_count", labels, float(hist.count))
    metric.add_sample(f"{name}_sum", labels, hist.sum)
    return metric


class LabkitCollector:
    """A `prometheus_client` collector over a `Metrics` and (optionally) a chain whose layers have `stats`."""

    def __init__(self, metrics: Metrics | None = None, chain: Any = None) -> None:
        if metrics is None and chain is None:
            raise ValueError("LabkitCollector needs metrics, a chain, or both")
        self.metrics = metrics
        self.chain = chain

    def collect(self) -> Iterator[Metric]:
        if self.metrics is not None:
            yield from self._own(self.metrics.view(), self.metrics.view(self.metrics.window_s))
        if self.chain is not None:
            yield from self._layers()

    def _own(self, total: MetricsView, window: MetricsView) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "labkit_requests",
            "Requests finished, by outcome and by where the answer came from",
            labels=["outcome", "source"],
        )
        for outcome in ("ok", "error", "cancelled"):
            for source, n in sorted(self._split(total, "requests", outcome).items()):
                requests.add_metric([outcome, source], n)
        yield requests
        errors = CounterMetricFamily("labkit_request_errors", "Failed requests by exception class", labels=["error"])
        for error, n in sorted(total.by_label("errors", "error").items()):
            errors.add_metric([error], n)
        yield errors
        tokens = CounterMetricFamily(
            "labkit_tokens", "Tokens by kind (cached: prompt tokens billed at the cached rate)", labels=["kind"]
        )
        for kind in ("input", "output", "cached"):
            tokens.add_metric([kind], total.counter("tokens", kind=kind))
        yield tokens
        cost = CounterMetricFamily(
            "labkit_cost_usd", "Spend in US dollars: upstream, or saved by the cache", labels=["source"]
        )
        for source in ("upstream", "cache"):
            cost.add_metric([source], total.counter("cost_usd", source=source))
        yield cost
        for key, (base, doc) in HISTOGRAMS.items():
            hist = total.hist(key)
            family = HistogramMetricFamily(f"{base}_seconds", doc, unit="")
            family.add_metric([], _buckets(hist), sum_value=hist.sum)
            yield family
            yield _summary(f"{base}_window_seconds", doc, window.hist(key), self.metrics.window_s, {})  # type: ignore[union-attr]
        stages = HistogramMetricFamily(
            "labkit_request_stage_duration_seconds", "Time spent in each stage of a request", labels=["stage"]
        )
        for stage in total.stages():
            hist = total.hist(f"stage:{stage}")
            stages.add_metric([stage], _buckets(hist), sum_value=hist.sum)
        yield stages

    @staticmethod
    def _split(view: MetricsView, name: str, outcome: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for (n, labels), value in view.counts.items():
            ls = dict(labels)
            if n == name and ls.get("outcome") == outcome:
                out[ls.get("source", "")] = out.get(ls.get("source", ""), 0.0) + value
        return out

    def _layers(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for reading in read_layers(self.chain):
            label_names = [k for k, _ in reading.labels]
            key = reading.name
            family = families.get(key)
            if family is None:
                if reading.kind == "counter":
                    family = CounterMetricFamily(key.removesuffix("_total"), reading.help, labels=label_names)
                else:
                    family = GaugeMetricFamily(key, reading.help, labels=label_names)
                families[key] = family
            family.add_metric([v for _, v in reading.labels], reading.value)  # type: ignore[attr-defined]
        yield from families.values()


def make_registry(metrics: Metrics | None = None, chain: Any = None) -> CollectorRegistry:
    """A registry of its own (not the process-wide default) holding one `LabkitCollector`."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(LabkitCollector(metrics, chain))
    return registry


def render(registry: CollectorRegistry) -> str:
    """The Prometheus text exposition format (version 0.0.4), what a scrape returns."""
    return generate_latest(registry).decode("utf-8")


class MetricsServer:
    """`GET /metrics` on an aiohttp server in the running event loop: `await MetricsServer(registry).start()`."""

    def __init__(self, registry: CollectorRegistry, host: str = "127.0.0.1", port: int = 0) -> None:
        self.registry = registry
        self.host = host
        self.port = port
        self.scrapes = 0
        self._runner: Any = None

    async def _handle(self, request: Any) -> Any:
        from aiohttp import web

        self.scrapes += 1
        return web.Response(body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def start(self) -> MetricsServer:
        from aiohttp import web

        if self._runner is not None:
            raise RuntimeError("this MetricsServer is already running")
        app = web.Application()
        app.router.add_get("/metrics", self._handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        await site.start()
        self.port = runner.addresses[0][1]
        self._runner = runner
        return self

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    async def aclose(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> MetricsServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
