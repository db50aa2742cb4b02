"""The lab's chart and table helpers: one call returns a figure whose data are the values given."""

from __future__ import annotations

import math

from labkit.lab import viz


def test_bars_draw_one_bar_per_arm_in_order() -> None:
    fig = viz.bars({"loop": 12.0, "gather": 3.0}, title="gather is 4x faster", unit="s")
    assert list(fig.data[0].x) == ["loop", "gather"] and list(fig.data[0].y) == [12.0, 3.0]
    assert fig.layout.title.text == "gather is 4x faster" and fig.layout.yaxis.title.text == "s"


def test_grouped_bars_draw_one_series_per_figure() -> None:
    fig = viz.grouped_bars({"a": {"p50": 1.0, "p95": 2.0}, "b": {"p50": 3.0}}, title="t", unit="ms")
    assert [trace.name for trace in fig.data] == ["p50", "p95"]
    assert list(fig.data[1].y) == [2.0, None]


def test_cdf_ends_at_one_and_is_sorted() -> None:
    fig = viz.cdf({"x": [3.0, 1.0, 2.0]}, title="t", unit="ms")
    assert list(fig.data[0].x) == [1.0, 2.0, 3.0] and math.isclose(fig.data[0].y[-1], 1.0)


def test_lines_keep_each_series_points() -> None:
    fig = viz.lines({"rps": ([1, 2], [10.0, 20.0])}, title="t", x_unit="s", y_unit="requests/s")
    assert list(fig.data[0].x) == [1, 2] and list(fig.data[0].y) == [10.0, 20.0]


def test_table_rounds_floats_and_keeps_other_values() -> None:
    frame = viz.table({"loop": {"wall_s": 12.34567, "ok": 40, "note": "slow"}}, digits=3)
    assert frame.loc["loop", "wall_s"] == 12.3 and frame.loc["loop", "ok"] == 40 and frame.loc["loop", "note"] == "slow"
