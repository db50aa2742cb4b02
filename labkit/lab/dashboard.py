"""A live dashboard in the notebook: plotly figure widgets updated while a load runs, and a static twin.

Six panels from one `Metrics`: throughput (requests/s), latency p50/p95/p99 and TTFB p95 against the 1 s SLO (over
the last `window_s` seconds, from the sketches), error rate, cache hit rate (same window) and cumulative spend. The
widget rules of docs/ARCHITECTURE.md ("Notebooks"), in code: `start()` runs the sampling loop as an asyncio task on
the kernel's loop (the cell returns at once; a later cell awaits `stop()`); the task changes the figure only by
assigning trace data inside `batch_update()` (one message per refresh, never `print`); under papermill the task runs
the same way and `figure()` gives a static `go.Figure` of what was sampled, which saved notebooks and reports can
show without a widget manager.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from labkit.monitoring.registry import Metrics

__all__ = ["Dashboard"]

PANELS = (
    "throughput (requests/s)",
    "latency, last window (ms)",
    "error rate, last window (%)",
    "cache hit rate, last window (%)",
    "spend (US$, cumulative)",
    "TTFB p95 vs the 1 s SLO (ms)",
)
# (panel index, column of the sample, legend name, dash)
TRACES = (
    (0, "throughput_rps", "throughput", None),
    (1, "p50_ms", "p50", None),
    (1, "p95_ms", "p95", "dash"),
    (1, "p99_ms", "p99", "dot"),
    (2, "error_rate_pct", "errors", None),
    (3, "cache_hit_pct", "cache hits", None),
    (4, "spend_usd", "spend", None),
    (5, "ttfb_p95_ms", "TTFB p95", None),
)


class Dashboard:
    """Sample `metrics` every `interval_s` into rows; show them live (`widget`) or statically (`figure()`)."""

    def __init__(self, metrics: Metrics, *, window_s: float = 5.0, interval_s: float = 0.5, ttfb_slo_s: float = 1.0):
        if not interval_s > 0 or not window_s > 0:
            raise ValueError("interval_s and window_s must be > 0")
        if window_s > metrics.window_s:
            raise ValueError(f"window_s={window_s:g} is longer than the {metrics.window_s:g} s the metrics keep")
        self.metrics = metrics
        self.window_s = window_s
        self.interval_s = interval_s
        self.ttfb_slo_s = ttfb_slo_s
        self.rows: list[dict[str, Any]] = []
        self.refreshes = 0
        self._widget: Any = None
        self._task: asyncio.Task[None] | None = None
        self._last: tuple[float, float] | None = None

    def sample(self) -> dict[str, Any]:
        """One row: the figures of the last window and the cumulative ones, now."""
        now = self.metrics.clock() - self.metrics.started
        total = self.metrics.view()
        window = self.metrics.view(self.window_s).summary()
        done = total.counter("requests")
        rate = None
        if self._last is not None and now > self._last[0]:
            rate = (done - self._last[1]) / (now - self._last[0])
        self._last = (now, done)

        def ms(key: str) -> float | None:
            value = window.get(key)
            return value * 1000 if value is not None else None

        row = {
            "t_s": now,
            "requests": done,
            "throughput_rps": rate,
            "p50_ms": ms("request_duration_p50_s"),
            "p95_ms": ms("request_duration_p95_s"),
            "p99_ms": ms("request_duration_p99_s"),
            "ttfb_p95_ms": ms("ttfb_p95_s"),
            "error_rate_pct": window["error_rate"] * 100 if window["error_rate"] is not None else None,
            "cache_hit_pct": window["cache_hit_rate"] * 100 if window["cache_hit_rate"] is not None else None,
            "spend_usd": total.counter("cost_usd", source="upstream"),
        }
        self.rows.append(row)
        return row

    def _layout(self, fig: go.Figure, title: str) -> None:
        fig.add_hline(y=self.ttfb_slo_s * 1000, line_dash="dot", line_color="red", row=2, col=3)
        for i in range(6):
            fig.update_xaxes(title_text="time since start (s)" if i >= 3 else None, row=i // 3 + 1, col=i % 3 + 1)
        fig.update_yaxes(rangemode="tozero")
        fig.update_layout(height=560, title=title, legend={"orientation": "h", "y": -0.15})

    def _empty(self, factory: Any) -> Any:
        fig = factory(make_subplots(rows=2, cols=3, subplot_titles=PANELS, horizontal_spacing=0.07))
        for panel, _column, name, dash in TRACES:
            fig.add_trace(
                go.Scatter(x=[], y=[], name=name, mode="lines", line={"dash": dash}),
                row=panel // 3 + 1,
                col=panel % 3 + 1,
            )
        return fig

    @property
    def widget(self) -> Any:
        """The live `go.FigureWidget` (made on first use; needs `anywidget` with plotly >= 6)."""
        if self._widget is None:
            self._widget = self._empty(go.FigureWidget)
            self._layout(self._widget, f"live: last {self.window_s:g} s, refreshed every {self.interval_s:g} s")
        return self._widget

    def _push(self) -> None:
        fig = self._widget
        if fig is None:
            return
        xs = [r["t_s"] for r in self.rows]
        with fig.batch_update():  # trait assignments only, one message per refresh
            for trace, (_panel, column, _name, _dash) in zip(fig.data, TRACES, strict=True):
                trace.x = xs
                trace.y = [r[column] for r in self.rows]
        self.refreshes += 1

    async def _run(self) -> None:
        while True:
            self.sample()
            self._push()
            await asyncio.sleep(self.interval_s)

    def start(self) -> asyncio.Task[None]:
        """Start sampling (and refreshing the widget, if it was shown) in a background task; returns at once."""
        if self._task is not None and not self._task.done():
            raise RuntimeError("the dashboard is already running")
        self._task = asyncio.get_running_loop().create_task(self._run(), name="labkit-dashboard")
        return self._task

    async def stop(self) -> None:
        """Stop the task (re-raising anything it failed with) and take one last sample."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.sample()
        self._push()

    def frame(self) -> Any:
        import pandas as pd

        return pd.DataFrame(self.rows)

    def figure(self, title: str | None = None) -> go.Figure:
        """A static figure of everything sampled (for papermill, reports and saved notebooks)."""
        fig = self._empty(go.Figure)
        xs = [r["t_s"] for r in self.rows]
        for trace, (_panel, column, _name, _dash) in zip(fig.data, TRACES, strict=True):
            trace.x = xs
            trace.y = [r[column] for r in self.rows]
        self._layout(fig, title or f"dashboard: {len(self.rows)} samples, last {self.window_s:g} s windows")
        return fig
