"""Small helpers the notebooks share: chart set-up, results files, a live stream view, source display.

They keep notebook cells about the lesson rather than plumbing. Widget updates happen only by assigning
traits (never `print` from a background task), batched so a fast stream does not flood the front end;
under papermill the widgets still execute and the final text is also shown as plain output.
"""

from __future__ import annotations

import inspect
import json
import math
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
    ("03_streaming.ipynb", "Streaming responses and the live view", "流式响应"),
    ("04_request_levers.ipynb", "Request-side levers: prompt length, max_tokens, history, prefix caching", "流式响应"),
    ("05_webchat.ipynb", "A streaming chat page in the browser", "流式响应"),
    ("06_cache_tiers.ipynb", "Cache tiers: memory, Redis, SQLite", "智能缓存"),
    ("07_semantic_cache.ipynb", "The semantic cache and its guard", "智能缓存"),
    ("08_pooling.ipynb", "Connection pooling and HTTP clients", "连接池"),
    ("09_retries.ipynb", "Retries, jitter and retry budgets", "自动重试"),
    ("10_breakers.ipynb", "Circuit breaking, load balancing and hedging", "自动重试"),
    ("11_monitoring.ipynb", "Monitoring: percentiles, tokens, cost", "性能监控"),
    ("12_capstone.ipynb", "Capstone: the before/after table, measured", "优化效果"),
]


def lesson_table(folder: str | Path = ".") -> Any:
    """A Markdown table of the lessons, linking those present in `folder` and marking the rest as planned."""
    from IPython.display import Markdown

    rows = ["| # | lesson | 中文 | status |", "|---|---|---|---|"]
    for name, title, term in LESSONS:
        present = (Path(folder) / name).exists()
        link = f"[{title}]({name})" if present else title
        rows.append(f"| {name[:2]} | {link} | {term} | {'ready' if present else 'planned'} |")
    return Markdown("\n".join(rows))
