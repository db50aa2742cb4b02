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
from IPython.display import Code, display


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


def write_results(path: str | Path | None, results: dict[str, Any]) -> dict[str, Any]:
    """Write what a notebook measured as JSON (the notebook tests assert on it) and return it."""
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
    ("04_caching.ipynb", "Multi-level and semantic caching", "智能缓存"),
    ("05_pooling.ipynb", "Connection pooling and HTTP clients", "连接池"),
    ("06_resilience.ipynb", "Retries, circuit breaking, load balancing", "自动重试"),
    ("07_monitoring.ipynb", "Monitoring: percentiles, tokens, cost", "性能监控"),
    ("08_capstone.ipynb", "Capstone: the before/after table, measured", "优化效果"),
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
