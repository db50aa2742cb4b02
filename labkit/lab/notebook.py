"""Small helpers the notebooks share: chart set-up, results files, a live stream view, source display.

They keep notebook cells about the lesson rather than plumbing. Widget updates happen only by assigning
traits (never `print` from a background task), batched so a fast stream does not flood the front end;
under papermill the widgets still execute and the final text is also shown as plain output.
"""

from __future__ import annotations

import inspect
import json
import math
import re
import time
from pathlib import Path
from typing import Any

import ipywidgets as widgets
from IPython.display import Code, Markdown, display


def setup_plotting() -> None:
    """Plotly output that renders in JupyterLab and in saved notebooks without embedding plotly.js."""
    import plotly.io as pio

    pio.renderers.default = "plotly_mimetype+notebook_connected"
    pio.templates.default = "plotly_white"


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


#: Sections this kernel skipped, in order: name -> why. `write_results` records them under "skipped".
_SKIPPED: dict[str, str] = {}
#: Cost estimates shown before a section spent money on a real endpoint: name -> USD (None: model not priced).
_ESTIMATES: dict[str, float | None] = {}


def skip_section(name: str, why: str) -> None:
    """Say in one visible line that a section skips, and why; the results JSON lists it under "skipped"."""
    if name not in _SKIPPED:
        _SKIPPED[name] = why
        display(Markdown(f"⏭ **Skipped: {name}.** {why}"))


def sim_section(lab: Any, name: str, needs: str) -> bool:
    """True when `lab` started its simulated service; otherwise announce the skip of a section that needs the
    service's admin routes (faults, limits, counters) and return False, so the cell's body does not run."""
    if getattr(lab, "simulated", False):
        return True
    skip_section(name, f"It needs {needs}, which only the simulated service the lab starts has.")
    return False


def estimate_cost(name: str, model: str, requests: int, prompt_tokens: float, max_tokens: int) -> float | None:
    """Show the most a section can spend on a real endpoint (every answer at `max_tokens`) before it runs."""
    from labkit.pricing import cost, default_prices

    usd = cost(model, round(requests * prompt_tokens), requests * max_tokens)
    _ESTIMATES[name] = usd
    table = default_prices()
    price = f"at most **${usd:.4f}**" if usd is not None else f"an unknown amount ({model} is not in the table)"
    display(
        Markdown(
            f"💲 {name}: {requests} requests of about {prompt_tokens:.0f} prompt + {max_tokens} output tokens to "
            f"`{model}` cost {price} at the list prices of `data/pricing.json` ({table.as_of})."
        )
    )
    return usd


def write_results(path: str | Path | None, results: dict[str, Any]) -> dict[str, Any]:
    """Write what a notebook measured as JSON (the notebook tests assert on it) and return it.

    It adds "skipped" (the sections `skip_section` announced) and, when any were shown, "cost_estimates"."""
    results = {**results, "skipped": list(_SKIPPED)}
    if _ESTIMATES:
        results["cost_estimates"] = dict(_ESTIMATES)
    clean = _jsonable(results)
    if path:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(clean, indent=2, ensure_ascii=False), encoding="utf-8")
    return clean


def show_source(obj: Any) -> None:
    """Show the source of a labkit object in the notebook, so lessons show library code without copying it."""
    display(Code(inspect.getsource(obj), language="python"))


class StreamView:
    """A live view of one streamed answer: the text so far, time to first token, tokens/s and count."""

    def __init__(self, title: str = "", refresh_s: float = 0.05) -> None:
        self.refresh_s = refresh_s
        self.title = widgets.HTML(f"<b>{title}</b>" if title else "")
        self.stats = widgets.HTML("waiting for the first token…")
        self.text = widgets.Textarea(value="", layout=widgets.Layout(width="100%", height="8em"), disabled=True)
        self.widget = widgets.VBox([self.title, self.stats, self.text])
        self._parts: list[str] = []
        self._tokens = 0
        self._started = time.perf_counter()
        self._first: float | None = None
        self._last_refresh = 0.0

    def _ipython_display_(self) -> None:
        display(self.widget)

    def start(self) -> None:
        self._started = time.perf_counter()

    def add(self, delta: str) -> None:
        """Append one streamed delta; the widget is refreshed at most every `refresh_s` seconds."""
        now = time.perf_counter()
        if self._first is None:
            self._first = now - self._started
        self._parts.append(delta)
        self._tokens += 1
        if now - self._last_refresh >= self.refresh_s:
            self._refresh(now)

    def finish(self, note: str = "") -> None:
        self._refresh(time.perf_counter(), note)

    def _refresh(self, now: float, note: str = "") -> None:
        self._last_refresh = now
        self.text.value = "".join(self._parts)
        if self._first is None:
            return
        decoding = now - self._started - self._first
        rate = (self._tokens - 1) / decoding if decoding > 0 and self._tokens > 1 else 0.0
        self.stats.value = (
            f"TTFT <b>{self._first * 1000:.0f} ms</b> · {self._tokens} chunks · {rate:.0f} chunks/s {note}"
        )

    @property
    def value(self) -> str:
        return "".join(self._parts)


#: The course, in order: (file, title, the Chinese guide's term for it).
LESSONS: list[tuple[str, str, str]] = [
    ("00_index.ipynb", "The lab and the naive baseline", "性能优化最佳实践"),
    ("01_batching.ipynb", "Batching under rate limits", "批处理请求"),
    ("02_dedup.ipynb", "De-duplication and the canonical fingerprint", "请求去重"),
    ("03_streaming.ipynb", "Streaming responses", "流式响应"),
    ("04_request_levers.ipynb", "Request-side levers", "优化prompt长度, max_tokens"),
    ("05_webchat.ipynb", "The web chat: streaming to a browser", "前端流式处理"),
    ("06_cache_tiers.ipynb", "Cache tiers", "智能缓存"),
    ("07_semantic_cache.ipynb", "Semantic cache", "智能缓存"),
    ("08_pooling.ipynb", "Connection pooling", "连接池"),
    ("09_retries.ipynb", "Retries", "自动重试"),
    ("10_breakers.ipynb", "Circuit breakers, balancing, hedging", "配置负载均衡"),
    ("11_monitoring.ipynb", "Monitoring: percentiles, burn rates, dashboards", "性能监控"),
    ("12_capstone.ipynb", "Capstone: the before/after table, measured", "优化效果对比"),
]


_DURATION = re.compile(
    r"(?P<low>\d+)(?:\s*[-–]\s*(?P<high>\d+))?\s*(?P<unit>s|seconds?|min|minutes?)\b"
    r"|(?P<word>a|one|two)\s+(?P<wunit>minutes?)\b",
    re.IGNORECASE,
)
_WORDS = {"a": 1, "one": 1, "two": 2}


def stated_run_time(markdown: str) -> tuple[str, float] | None:
    """The run time a chapter states in its opening cell, as (the text as written, seconds; a range's top).

    The rule: take the sentences of the cell (emphasis `*` removed, lines joined) that say "run time" or
    "at the defaults", in order, and return the first duration found in one of them: "N s", "N-M s",
    "N seconds", "N min(utes)", "a/one/two minute(s)". A placeholder ("about RUNTIME s") or no such sentence
    gives None, which the lesson table shows as "—". Chapters phrase it freely ("**Run time** at the defaults:
    about 45 s", "About 30 s at the defaults", "about a minute"), so the rule reads phrasings, not one template.
    """
    text = " ".join(markdown.replace("*", "").split())
    for sentence in re.split(r"(?<=[.!?])\s+", text):
        lowered = sentence.lower()
        if "run time" not in lowered and "at the defaults" not in lowered:
            continue
        match = _DURATION.search(sentence)
        if match is None:
            continue
        if match["word"]:
            return match[0], 60.0 * _WORDS[match["word"].lower()]
        seconds = float(match["high"] or match["low"]) * (60 if match["unit"].lower().startswith("m") else 1)
        return match[0], seconds
    return None


def lesson_rows(folder: str | Path = ".") -> list[dict[str, Any]]:
    """One row per lesson of `LESSONS`: whether its notebook exists in `folder`, and the run time it states."""
    rows = []
    for name, title, term in LESSONS:
        path = Path(folder) / name
        stated = None
        if path.exists():
            cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
            first = next((c for c in cells if c["cell_type"] == "markdown"), None)
            stated = stated_run_time("".join(first["source"])) if first else None
        rows.append(
            {
                "file": name,
                "title": title,
                "term": term,
                "present": path.exists(),
                "run_time": stated[0] if stated else None,
                "run_time_s": stated[1] if stated else None,
            }
        )
    return rows


def lesson_table(folder: str | Path = ".") -> Any:
    """A Markdown table of the lessons with the run time each states at the learner defaults (`stated_run_time`),
    linking those present in `folder` and marking the rest as planned; the last row adds the stated times up."""
    rows = lesson_rows(folder)
    lines = ["| # | lesson | 中文 | run time at the defaults |", "|---|---|---|---|"]
    for row in rows:
        link = f"[{row['title']}]({row['file']})" if row["present"] else row["title"]
        when = (row["run_time"] or "—") if row["present"] else "planned"
        lines.append(f"| {row['file'][:2]} | {link} | {row['term']} | {when} |")
    timed = [r["run_time_s"] for r in rows if r["run_time_s"] is not None]
    lines.append(f"| | **all {len(timed)} lessons that state one** | | **about {sum(timed) / 60:.0f} min** |")
    return Markdown("\n".join(lines))
