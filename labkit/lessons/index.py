"""Lesson 00's helpers: the guide's checklist and roadmap mapped to the lessons, the request timeline chart and
the results dict, so the landing page's cells stay about measuring a request.

The checklist is the guide's own (`../shared/guide/performance-guide.zh.txt`, 性能优化清单), in its order and
grouping; each item names the lesson that measures it and what that lesson measures.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
from IPython.display import Markdown

from labkit.lab.notebook import LESSONS
from labkit.layers.metrics import MetricsRecorder

#: The guide's checklist, grouped as it groups it: group -> [(item, 中文 as the guide writes it, lesson number,
#: what that lesson measures for it)].
CHECKLIST: dict[str, list[tuple[str, str, str, str]]] = {
    "Requests · 请求优化": [
        (
            "Batch to cut the number of requests",
            "使用批处理减少请求次数",
            "01",
            "wall time and 429s: loop, gather, token bucket",
        ),
        ("De-duplicate requests", "实现请求去重机制", "02", "upstream calls for repeated and concurrent requests"),
        ("Shorten the prompt", "优化prompt长度", "04", "TTFT across prompt lengths; prefix caching"),
        ("Set a sensible max_tokens", "设置合理的max_tokens", "04", "tokens, total time and cost with a fitted cap"),
    ],
    "System · 系统优化": [
        ("Manage connections with a pool", "使用连接池管理", "08", "requests/s and CPU: client per request vs pooled"),
        ("Cache in several tiers", "实施多级缓存策略", "06", "hit latency per tier; savings on a workload"),
        ("Switch on HTTP/2", "启用HTTP/2协议", "08", "which protocol is really spoken (ALPN); transports"),
        ("Balance the load", "配置负载均衡", "10", "which endpoint answers; p50/p99 with a P2C balancer"),
    ],
    "Monitoring · 监控指标": [
        ("Track the response-time distribution", "追踪响应时间分布", "11", "a sketch's percentiles against exact ones"),
        ("Watch token usage", "监控Token使用量", "11", "tokens and cost per request through MetricsLayer"),
        (
            "Record error rates and retries",
            "记录错误率和重试",
            "09",
            "failures the caller sees; upstream calls per call",
        ),
        ("Analyse the cache hit rate", "分析缓存命中率", "06", "hits per tier and what they save on a workload"),
    ],
    "User experience · 用户体验": [
        ("Stream the response", "使用流式响应", "03", "first visible text vs total time"),
        ("Show a progress indicator", "实现进度指示器", "03", "a live view: TTFT, chunks/s as they arrive"),
        ("Handle errors gracefully", "优雅的错误处理", "05", "an error page shown as an error, not as the answer"),
        ("Let the user cancel", "提供取消操作", "03", "a stopped stream stops the upstream generation"),
    ],
}

#: The guide's three steps (立即开始优化), each with the lessons that measure them.
ROADMAP: list[tuple[str, str, list[str]]] = [
    ("Step 1: streaming and basic caching", "第一步 实施流式响应和基础缓存", ["03", "06"]),
    ("Step 2: batching and connection pooling", "第二步 优化请求批处理和连接池", ["01", "08"]),
    ("Step 3: monitoring, and keep optimising", "第三步 建立监控体系,持续优化", ["11"]),
]


def _link(number: str, folder: str | Path) -> str:
    """`[NN · title](file)` when the lesson's notebook is in `folder`, else its title marked planned."""
    name, title, _ = next(lesson for lesson in LESSONS if lesson[0].startswith(number))
    return f"[{number} · {title}]({name})" if (Path(folder) / name).exists() else f"{number} · {title} (planned)"


def checklist_table(folder: str | Path = ".") -> Markdown:
    """The guide's checklist as one table: item, its Chinese wording, the lesson that measures it and what."""
    rows = ["| | item | 中文 | measured in | what is measured |", "|---|---|---|---|---|"]
    for group, items in CHECKLIST.items():
        rows.append(f"| **{group}** | | | | |")
        for item, zh, lesson, measure in items:
            rows.append(f"| ✅ | {item} | {zh} | {_link(lesson, folder)} | {measure} |")
    return Markdown("\n".join(rows))


def roadmap_table(folder: str | Path = ".") -> Markdown:
    """The guide's three-step roadmap with the lessons that measure each step."""
    rows = ["| step | 中文 | lessons |", "|---|---|---|"]
    for step, zh, lessons in ROADMAP:
        rows.append(f"| {step} | {zh} | {', '.join(_link(n, folder) for n in lessons)} |")
    return Markdown("\n".join(rows))


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

    items = [(zh, lesson) for group in CHECKLIST.values() for _, zh, lesson, _ in group]
    return {
        **measured,
        "lessons": lesson_rows(folder),
        "checklist": {"items": len(items), "lessons": sorted({lesson for _, lesson in items})},
    }
