"""Monitoring (性能监控, lesson 11): bounded histograms, counters, windows, per-stage timing, Prometheus, alerts.

- `histogram`: `Histogram` (DDSketch quantiles within ±1 % plus Prometheus buckets) and `Rolling` windows.
- `registry`: `Metrics`, what `labkit.layers.metrics.MetricsLayer` feeds (totals and the last minute).
- `stages`: `StageMark` (a layer that closes a stage of `labkit.timing`) and `traced_http_client` (connect timing).
- `collector`: reads every layer's `stats` in a chain (layers never import this package).
- `exposition`: Prometheus text format (`prometheus_client`) on an aiohttp route; snapshots for notebooks.
- `dashboard`: a live plotly dashboard driven by an asyncio task, and its static twin.
- `alerts`: the capstone's service-level objectives and multi-window burn-rate alerts.

Only the first two are imported here, so `labkit.layers.metrics` stays light; import the others by their module.
"""

from labkit.monitoring.histogram import DEFAULT_BUCKETS, Histogram, Rolling
from labkit.monitoring.registry import Metrics, MetricsView

__all__ = ["DEFAULT_BUCKETS", "Histogram", "Metrics", "MetricsView", "Rolling"]
