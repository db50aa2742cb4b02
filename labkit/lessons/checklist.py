"""The guide's checklist and roadmap, each answered by what the lessons measured.

The checklist is the guide's own (`../shared/guide/performance-guide.zh.txt`, 性能优化清单), in its order and
grouping. Each item names the lesson that measures it, what that lesson measures, and how to read the gain out of
the lesson's results JSON (what `write_results` wrote at the end of its run). The tables are filled from the
results a run left in `build/results/` (`./lab run` writes one per lesson), so every figure in them comes from a
run on this machine; an item whose lesson has not run yet says so instead of showing a number.

The roadmap (立即开始优化) is the guide's order of work; the capstone answers it by measurement: each lever turned
on alone over "before", the one that moves each row most is where to start (`capstone.json` of
`./lab bench-all --only capstone`, else the capstone notebook's own smaller run).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from IPython.display import Markdown

from labkit.lab.notebook import LESSONS

Results = Mapping[str, Any]


def _batching(r: Results) -> str:
    s = r["strategies"]
    loop, gather, admission = s["sequential loop"], s["unbounded gather"], s["labkit admission"]
    return (
        f"wall time {loop['wall_s']:.1f} s (loop) → {admission['wall_s']:.1f} s (admission); "
        f"429s {gather['429']} (gather) → {admission['429']}"
    )


def _dedup(r: Results) -> str:
    b = r["bursts"]
    n, single = b["no de-dup"], b["labkit SingleFlight"]
    return (
        f"{n['requests']} identical requests at once: {n['upstream_calls']} → {single['upstream_calls']} upstream call"
    )


def _lever(r: Results, name: str, counted: str, unit: str, timed: str, label: str) -> str:
    """One request-side lever of lesson 04: a count, a time and the cost, before → after."""
    before, after = r["levers"][name]["before"], r["levers"][name]["after"]
    saved = 1 - after["cost_usd"] / before["cost_usd"]
    return (
        f"{before[counted]:.0f} → {after[counted]:.0f} {unit}, "
        f"{label} {before[timed]:.2f} → {after[timed]:.2f} s, cost -{saved:.0%}"
    )


def _prompt(r: Results) -> str:
    return "trimmed history: " + _lever(r, "history", "prompt_tokens", "prompt tokens", "ttft_s", "TTFT")


def _max_tokens(r: Results) -> str:
    return _lever(r, "max_tokens", "completion_tokens", "answer tokens", "total_s", "total")


def _pool(r: Results) -> str:
    return (
        f"{r['pooled_over_per_request_rps']:.1f}x the requests/s and {r['per_request_over_pooled_cpu']:.1f}x less "
        "client CPU than a client per request"
    )


def _tiers(r: Results) -> str:
    guide, ours = r["stacks"]
    guide_us, ours_us = guide["hit p50 (µs)"], ours["hit p50 (µs)"]
    return f"hit p50 {guide_us:.0f} µs (the guide's Redis first) → {ours_us:.0f} µs (memory first)"


def _http2(r: Results) -> str:
    snippet = r["guide_snippet"]
    asked = "asked for HTTP/2" if snippet["http2_requested"] else "HTTP/2 not asked for"
    return f"the guide's client {asked}, spoke {snippet['http_version']} (ALPN decides)"


def _balance(r: Results) -> str:
    b = r["balancing"]
    rr, ewma = (b[s]["phases"]["one slows down"]["total_mean_ms"] for s in ("round_robin", "peak_ewma"))
    return f"one endpoint slows: mean {rr:.0f} ms (round robin) → {ewma:.0f} ms (P2C peak EWMA)"


def _distribution(r: Results) -> str:
    m = r["memory"]
    kept, sketch = m["the guide's list"][-1], m["labkit Histogram"][-1]
    return (
        f"p95 of {kept['observations']:,} latencies: {kept['MB']:.2f} MB (the guide's list) → {sketch['MB']:.3f} MB, "
        f"error {sketch['p95_rel_error']:.1%}"
    )


def _tokens(r: Results) -> str:
    s = r["snapshot"]
    return (
        f"{s['output_tokens']:.0f} answer tokens, ${s['cost_usd']:.4f} spent, ${s['saved_usd']:.4f} saved by the cache"
    )


def _retries(r: Results) -> str:
    h = r["headline"]
    none, chain = h["no retries"], h["labkit chain"]
    return (
        f"failed {none['failed_share']:.1%} (no retries) → {chain['failed_share']:.1%} (labkit chain), "
        f"+{chain['extra_upstream_share']:.0%} upstream calls"
    )


def _hit_rate(r: Results) -> str:
    run = r["workload"]["run"]
    return f"hit rate {run['hit rate']:.0%} of {run['requests']} requests, {run['wrong answers served']} wrong answers"


def _stream(r: Results) -> str:
    longest = r["longest"]
    return f"first text {longest['plain_first_text_s']:.2f} s → {longest['stream_ttft_s']:.2f} s"


def _progress(r: Results) -> str:
    live = r["live"][0]
    return f"live view: first text at {live['ttft_s']:.2f} s of {live['total_s']:.2f} s"


def _graceful(r: Results) -> str:
    def statuses(bad: Results) -> str:
        return "/".join(str(bad[k]["status"]) for k in ("empty", "malformed", "oversized"))

    return f"empty/malformed/oversized input: {statuses(r['route_bad_input'])} → {statuses(r['webchat']['bad_input'])}"


def _cancel(r: Results) -> str:
    stop = r["stop"]
    return f"stopped after {stop['completion_tokens']} tokens; the upstream saw {stop['disconnects']} disconnect"


class Item(NamedTuple):
    item: str
    zh: str
    lesson: str
    measures: str
    gain: Callable[[Results], str]


#: The guide's checklist, grouped as it groups it.
CHECKLIST: dict[str, list[Item]] = {
    "Requests · 请求优化": [
        Item("Batch to cut the number of requests", "使用批处理减少请求次数", "01", "wall time and 429s", _batching),
        Item("De-duplicate requests", "实现请求去重机制", "02", "upstream calls for identical requests", _dedup),
        Item("Shorten the prompt", "优化prompt长度", "04", "TTFT and cost across prompt lengths", _prompt),
        Item("Set a sensible max_tokens", "设置合理的max_tokens", "04", "tokens, total time and cost", _max_tokens),
    ],
    "System · 系统优化": [
        Item("Manage connections with a pool", "使用连接池管理", "08", "requests/s and client CPU", _pool),
        Item("Cache in several tiers", "实施多级缓存策略", "06", "hit latency per tier", _tiers),
        Item("Switch on HTTP/2", "启用HTTP/2协议", "08", "which protocol is really spoken", _http2),
        Item("Balance the load", "配置负载均衡", "10", "latency when one endpoint slows", _balance),
    ],
    "Monitoring · 监控指标": [
        Item(
            "Track the response-time distribution", "追踪响应时间分布", "11", "memory and error of p95", _distribution
        ),
        Item("Watch token usage", "监控Token使用量", "11", "tokens and cost per request", _tokens),
        Item("Record error rates and retries", "记录错误率和重试", "09", "failures the caller sees", _retries),
        Item("Analyse the cache hit rate", "分析缓存命中率", "06", "hits on a Zipf workload", _hit_rate),
    ],
    "User experience · 用户体验": [
        Item("Stream the response", "使用流式响应", "03", "first visible text vs total time", _stream),
        Item("Show a progress indicator", "实现进度指示器", "03", "a live view as chunks arrive", _progress),
        Item("Handle errors gracefully", "优雅的错误处理", "05", "bad input answered as an error", _graceful),
        Item("Let the user cancel", "提供取消操作", "03", "a stopped stream stops the generation", _cancel),
    ],
}

#: The guide's three steps (立即开始优化), each with the lessons that measure them.
ROADMAP: list[tuple[str, str, list[str]]] = [
    ("Step 1: streaming and basic caching", "第一步 实施流式响应和基础缓存", ["03", "06"]),
    ("Step 2: batching and connection pooling", "第二步 优化请求批处理和连接池", ["01", "08"]),
    ("Step 3: monitoring, and keep optimising", "第三步 建立监控体系,持续优化", ["11"]),
]

#: Where the lab's runs leave their results, seen from the notebooks folder.
RESULTS_DIR = Path("../build/results")
CAPSTONE_BENCH = Path("../build/bench/capstone.json")


def _lesson_file(number: str) -> str:
    return next(name for name, _, _ in LESSONS if name.startswith(number))


def load_results(results_dir: str | Path = RESULTS_DIR) -> dict[str, Results]:
    """Each lesson's last results JSON in `results_dir`, by lesson number ("01"); lessons not run are absent."""
    found = {}
    for name, _, _ in LESSONS:
        path = Path(results_dir) / f"{Path(name).stem}.json"
        if path.exists():
            found[name[:2]] = json.loads(path.read_text(encoding="utf-8"))
    return found


def gains(lesson: str, results: Results) -> dict[str, str]:
    """What `lesson`'s results say of each checklist item it measures: {item: gain}. A results JSON that lacks a
    figure (a section skipped against a real endpoint) reads "not measured: <field>"."""
    out = {}
    for group in CHECKLIST.values():
        for entry in group:
            if entry.lesson != lesson:
                continue
            try:
                out[entry.item] = entry.gain(results)
            except (KeyError, IndexError, TypeError, ZeroDivisionError) as missing:
                out[entry.item] = f"not measured: {missing}"
    return out


def _link(number: str, folder: str | Path) -> str:
    """`[NN · title](file)` when the lesson's notebook is in `folder`, else its title marked planned."""
    name, title, _ = next(lesson for lesson in LESSONS if lesson[0].startswith(number))
    return f"[{number} · {title}]({name})" if (Path(folder) / name).exists() else f"{number} · {title} (planned)"


def checklist_rows(results: Mapping[str, Results]) -> list[dict[str, str]]:
    """One row per checklist item: group, item, 中文, lesson, what it measures and the gain measured there."""
    rows = []
    for group, items in CHECKLIST.items():
        for entry in items:
            measured = gains(entry.lesson, results[entry.lesson]) if entry.lesson in results else {}
            gain = measured.get(entry.item, f"not run yet: run {_lesson_file(entry.lesson)}")
            rows.append({"group": group, "item": entry.item, "中文": entry.zh, "lesson": entry.lesson, "gain": gain})
    return rows


def checklist_table(folder: str | Path = ".", results_dir: str | Path = RESULTS_DIR) -> Markdown:
    """The guide's checklist as one table, with the gain each lesson measured in its last run."""
    results = load_results(results_dir)
    rows = ["| item | 中文 | measured in | what is measured | gain measured |", "|---|---|---|---|---|"]
    group = None
    for row in checklist_rows(results):
        if row["group"] != group:
            group = row["group"]
            rows.append(f"| **{group}** | | | | |")
        entry = next(e for e in CHECKLIST[group] if e.item == row["item"])
        rows.append(
            f"| {row['item']} | {row['中文']} | {_link(row['lesson'], folder)} | {entry.measures} | {row['gain']} |"
        )
    return Markdown("\n".join(rows))


def roadmap_measured(results_dir: str | Path = RESULTS_DIR, bench: str | Path = CAPSTONE_BENCH) -> dict[str, Any]:
    """The capstone's answer to "where to start": per workload and row, the lever that moves it most when turned
    on first, with its change; from the capstone bench when it has run, else from the capstone notebook's run."""
    bench = Path(bench)
    if bench.exists():
        workloads = json.loads(bench.read_text(encoding="utf-8"))["workloads"]
        return {"source": str(bench), "workloads": {name: w["roadmap"] for name, w in workloads.items()}}
    capstone = load_results(results_dir).get("12")
    if capstone and capstone.get("levers"):
        levers = capstone["levers"]
        return {"source": "12_capstone (learner sizes)", "workloads": {n: lv["roadmap"] for n, lv in levers.items()}}
    return {"source": None, "workloads": {}}


_ROWS = {
    "avg_response_s": "average response",
    "cost_month_usd": "cost",
    "error_rate": "errors",
    "p95_ttfb_s": "p95 first token",
}


def roadmap_table(folder: str | Path = ".", results_dir: str | Path = RESULTS_DIR) -> Markdown:
    """The guide's three steps with their lessons, then the lever measured to move each row most, per workload."""
    rows = ["| step | 中文 | lessons |", "|---|---|---|"]
    for step, zh, lessons in ROADMAP:
        rows.append(f"| {step} | {zh} | {', '.join(_link(n, folder) for n in lessons)} |")
    measured = roadmap_measured(results_dir, Path(results_dir).parent / "bench" / "capstone.json")
    if not measured["workloads"]:
        rows.append("\n*Measured answer: not run yet (run 12_capstone.ipynb or `./lab bench-all --only capstone`).*")
        return Markdown("\n".join(rows))
    rows += [
        "",
        f"Measured first lever ({measured['source']}):",
        "",
        "| workload | " + " | ".join(_ROWS.values()) + " |",
    ]
    rows.append("|---" * (len(_ROWS) + 1) + "|")
    for name, answer in measured["workloads"].items():
        cells = [f"{a['lever']} ({a['change']:+.0%})" if (a := answer.get(key)) else "—" for key in _ROWS]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return Markdown("\n".join(rows))
