"""Lesson 00's helpers: the request timeline chart, the runs table and the results dict, so the landing page's
cells stay about measuring a request. The guide's checklist and roadmap live in `labkit.lessons.checklist`.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from labkit.layers.metrics import MetricsRecorder
from labkit.lessons.checklist import CHECKLIST


def timeline(runs: Mapping[str, Sequence[Mapping[str, float]]], *, title: str) -> go.Figure:
    """Each request as a bar from its start to its end (s), one row per request, one colour per run: requests
    one after another make a staircase, requests at once stack up in the same span of time."""
    fig = go.Figure()
    for run, calls in runs.items():
        t0 = min(c["start"] for c in calls)
        fig.add_trace(
            go.Bar(
                name=run,
                orientation="h",
                base=[c["start"] - t0 for c in calls],
                x=[c["end"] - c["start"] for c in calls],
                y=[f"{run} #{i + 1}" for i in range(len(calls))],
            )
        )
    fig.update_layout(
        title=title, xaxis_title="seconds since the run's first request", height=360, margin={"t": 60, "b": 40}
    )
    fig.update_yaxes(autorange="reversed")
    return fig


def recorder_row(recorder: MetricsRecorder) -> dict[str, Any]:
    """The plain calls a `MetricsRecorder` holds summarised as the harness summarises its runs, plus the last
    stream's TTFT and total and what only the layer knows (errors, tokens, cost)."""
    calls = [r for r in recorder.records if not r.stream and r.latency_s is not None]
    streams = [r for r in recorder.records if r.stream]
    wall = max(r.started + r.latency_s for r in calls) - min(r.started for r in calls)
    summary = recorder.summary()
    return {
        "requests": len(calls),
        "wall_s": wall,
        "requests_per_s": len(calls) / wall,
        "latency_p50_s": statistics.median(r.latency_s for r in calls),
        "latency_sum_s": sum(r.latency_s for r in calls),
        "errors": summary["errors"],
        "stream": {"ttft_s": streams[-1].ttft_s, "total_s": streams[-1].latency_s} if streams else None,
        **{k: summary[k] for k in ("prompt_tokens", "completion_tokens", "cost_usd")},
    }


#: The runs of the notebook, in the order they are measured, as the table names them.
_RUNS = {
    "guide_loop": "the guide's loop (stopwatch)",
    "guide_gather": "the guide's gather (stopwatch)",
    "sequential": "harness, one after another",
    "concurrent": "harness, all at once",
    "labkit": "MetricsLayer, one after another",
}


def runs_table(measured: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """One row per run measured so far: requests, wall time, requests/s and the median latency where known."""
    columns = {"requests": "requests", "wall_s": "wall (s)", "requests_per_s": "requests/s"}
    columns["latency_p50_s"] = "median latency (s)"
    return {
        label: {title: measured[key].get(column) for column, title in columns.items()}
        for key, label in _RUNS.items()
        if key in measured
    }


def results(measured: Mapping[str, Any], folder: str | Path = ".") -> dict[str, Any]:
    """What the notebook measured plus the lesson list and the checklist's coverage, for the results JSON."""
    from labkit.lab.notebook import lesson_rows

    items = [entry.lesson for group in CHECKLIST.values() for entry in group]
    return {
        **measured,
        "lessons": lesson_rows(folder),
        "checklist": {"items": len(items), "lessons": sorted(set(items))},
    }
