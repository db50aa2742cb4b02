"""The dashboard: a background task samples the metrics and updates the widget by assigning trace data."""

import asyncio

import pytest

from labkit.lab.dashboard import TRACES, Dashboard
from labkit.layers.metrics import RequestRecord
from labkit.monitoring import Metrics


async def test_the_task_updates_the_widget_while_requests_are_recorded():
    metrics = Metrics()
    dashboard = Dashboard(metrics, interval_s=0.02)
    widget = dashboard.widget
    dashboard.start()
    for _ in range(5):
        metrics.record(RequestRecord(key="k", model="gpt-4o", stream=False, started=0.0, latency_s=0.4, outcome="ok"))
        await asyncio.sleep(0.03)
    await dashboard.stop()
    assert dashboard.refreshes >= 3 and len(widget.data[0].x) == len(dashboard.rows)
    p50 = widget.data[[c for _, c, _, _ in TRACES].index("p50_ms")].y[-1]
    assert p50 == pytest.approx(400, rel=0.01)


def test_the_static_figure_has_every_panel():
    metrics = Metrics()
    dashboard = Dashboard(metrics)
    dashboard.sample()
    figure = dashboard.figure("title")
    assert len(figure.data) == len(TRACES) and figure.layout.title.text == "title"


def test_a_window_longer_than_the_metrics_keep_is_refused():
    with pytest.raises(ValueError, match="longer than"):
        Dashboard(Metrics(window_s=10), window_s=30)


async def test_starting_twice_is_refused():
    dashboard = Dashboard(Metrics(), interval_s=0.01)
    dashboard.start()
    with pytest.raises(RuntimeError):
        dashboard.start()
    await dashboard.stop()
