"""One call per chart or table, so a lesson's cells stay about the technique and not about plotting.

Every chart takes plain data (a mapping from an arm's name to its values), a title that states the finding,
and the unit of its axis; it returns the plotly `Figure` (a notebook displays it by leaving it last in a cell;
tests read `fig.data`). Tables are small pandas frames with their numbers rounded for reading.

The helpers are deliberately few: bars for one figure per arm, grouped bars for several figures per arm,
distributions (a CDF) for latencies, lines for anything over time or over a swept parameter.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

__all__ = ["bars", "cdf", "grouped_bars", "lines", "table"]

_HEIGHT = 360


def _layout(fig: go.Figure, title: str, x_title: str, y_title: str, **more: Any) -> go.Figure:
    fig.update_layout(
        title=title, xaxis_title=x_title, yaxis_title=y_title, height=_HEIGHT, margin={"t": 60, "b": 40}, **more
    )
    return fig


def bars(
    values: Mapping[str, float], *, title: str, unit: str, log: bool = False, text_format: str = ".3g"
) -> go.Figure:
    """One bar per arm (`{"loop": 12.1, "gather": 3.4}`), each labelled with its value."""
    names = list(values)
    ys = [values[n] for n in names]
    fig = go.Figure(go.Bar(x=names, y=ys, text=[format(y, text_format) for y in ys], textposition="outside"))
    return _layout(fig, title, "", unit, yaxis_type="log" if log else None)


def grouped_bars(rows: Mapping[str, Mapping[str, float]], *, title: str, unit: str, log: bool = False) -> go.Figure:
    """Several figures per arm: `{"arm": {"p50": 1.0, "p95": 2.0}}` draws one group per arm, one colour per figure."""
    arms = list(rows)
    series = list(dict.fromkeys(k for row in rows.values() for k in row))
    fig = go.Figure([go.Bar(name=s, x=arms, y=[rows[a].get(s) for a in arms]) for s in series])
    return _layout(fig, title, "", unit, barmode="group", yaxis_type="log" if log else None)


def cdf(samples: Mapping[str, Sequence[float]], *, title: str, unit: str, log: bool = False) -> go.Figure:
    """The distribution of each arm's samples as a cumulative curve: read a percentile across, a value up."""
    fig = go.Figure()
    for name, values in samples.items():
        xs = np.sort(np.asarray(values, dtype=float))
        if xs.size:
            fig.add_trace(go.Scatter(x=xs, y=np.arange(1, xs.size + 1) / xs.size, mode="lines", name=name))
    return _layout(fig, title, unit, "share of requests at or below", xaxis_type="log" if log else None)


def lines(
    series: Mapping[str, tuple[Iterable[float], Iterable[float]]],
    *,
    title: str,
    x_unit: str,
    y_unit: str,
    markers: bool = True,
    log_y: bool = False,
) -> go.Figure:
    """One line per arm from `(xs, ys)` pairs: a value over time, or over a swept parameter."""
    mode = "lines+markers" if markers else "lines"
    fig = go.Figure([go.Scatter(x=list(xs), y=list(ys), mode=mode, name=name) for name, (xs, ys) in series.items()])
    return _layout(fig, title, x_unit, y_unit, yaxis_type="log" if log_y else None)


def table(rows: Sequence[Mapping[str, Any]] | Mapping[str, Mapping[str, Any]], *, digits: int = 3) -> pd.DataFrame:
    """A small frame for reading: a list of row dicts, or `{row name: {column: value}}`; floats rounded."""
    frame = pd.DataFrame.from_dict(rows, orient="index") if isinstance(rows, Mapping) else pd.DataFrame(list(rows))
    return frame.apply(lambda col: col.map(lambda v: _round(v, digits)))


def _round(value: Any, digits: int) -> Any:
    if isinstance(value, float) and np.isfinite(value):
        return float(f"{value:.{digits}g}")
    return value
