"""A live progress bar for a batch: done, in flight, failed, tokens and spend, with a cancel button.

It observes a `labkit.batch.BatchRun` and updates only by assigning widget traits (safe from a task; a
`print` or `with out:` from a task lands in whatever cell runs at that moment). Under papermill, or with
``interactive=False``, there is no widget: `finish()` prints one plain line from the cell that awaited the batch.
"""

from __future__ import annotations

import time
from typing import Any

from labkit.batch import BatchResult, BatchRun, ItemResult, ItemStatus
from labkit.pricing import cost

__all__ = ["BatchProgress", "Ticker"]


class BatchProgress:
    """Observer of a batch (pass it as ``observer=``); ``show()`` displays it, ``attach(run)`` arms Cancel."""

    def __init__(self, title: str = "batch", *, interactive: bool = True, min_interval_s: float = 0.1) -> None:
        self.title = title
        self.interactive = interactive
        self.min_interval_s = min_interval_s
        self.total = self.done = self.in_flight = self.failed = self.cancelled = 0
        self.tokens = 0
        self.spend_usd = 0.0
        self._last = 0.0
        self._t0 = time.perf_counter()
        self._run: BatchRun[Any, Any] | None = None
        self.widget: Any = None
        if interactive:
            import ipywidgets as w

            self._bar = w.IntProgress(value=0, min=0, max=1, description=title, bar_style="info")
            self._label = w.HTML()
            self._button = w.Button(description="Cancel", button_style="warning", icon="stop")
            self._button.on_click(lambda _: self.cancel())
            self.widget = w.HBox([self._bar, self._label, self._button])

    # -- display -------------------------------------------------------------------------------------------

    def show(self) -> BatchProgress:
        if self.widget is not None:
            from IPython.display import display

            display(self.widget)
        return self

    def attach(self, run: BatchRun[Any, Any]) -> BatchRun[Any, Any]:
        """Let the Cancel button stop ``run``."""
        self._run = run
        return run

    def cancel(self) -> None:
        if self._run is not None:
            self._run.cancel()
        if self.widget is not None:
            self._button.disabled = True
            self._button.description = "Cancelling"

    def text(self) -> str:
        elapsed = time.perf_counter() - self._t0
        parts = [
            f"{self.title}: {self.done}/{self.total} done",
            f"{self.in_flight} in flight",
            f"{self.failed} failed",
            f"{self.tokens} tokens",
            f"${self.spend_usd:.4f}",
            f"{elapsed:.1f} s",
        ]
        if self.cancelled:
            parts.insert(3, f"{self.cancelled} cancelled")
        return ", ".join(parts)

    def finish(self) -> None:
        """Final state: the widget freezes, or (without widgets) one plain line is printed here."""
        if self.widget is None:
            print(self.text())
            return
        self._render(force=True)
        self._button.disabled = True

    # -- observer --------------------------------------------------------------------------------------------

    def batch_started(self, total: int) -> None:
        self.total = total
        self._t0 = time.perf_counter()
        if self.widget is not None:
            self._bar.max = max(1, total)
        self._render(force=True)

    def item_started(self, index: int) -> None:
        self.in_flight += 1
        self._render()

    def item_finished(self, result: ItemResult[Any]) -> None:
        self.in_flight -= 1
        if result.status is ItemStatus.OK:
            self.done += 1
            self._account(result.value)
        elif result.status is ItemStatus.CANCELLED:
            self.cancelled += 1
        else:
            self.failed += 1
        self._render()

    def batch_finished(self, result: BatchResult[Any]) -> None:
        if self.widget is not None:
            self._bar.bar_style = "warning" if result.cancelled else ("danger" if self.failed else "success")
        self._render(force=True)

    def _account(self, value: Any) -> None:
        usage = getattr(value, "usage", None)
        if usage is None:
            return
        self.tokens += usage.total_tokens
        details = getattr(usage, "prompt_tokens_details", None)
        cached = (getattr(details, "cached_tokens", 0) or 0) if details else 0
        usd = cost(getattr(value, "model", ""), usage.prompt_tokens, usage.completion_tokens, cached)
        self.spend_usd += usd or 0.0

    def _render(self, force: bool = False) -> None:
        if self.widget is None:
            return
        now = time.perf_counter()
        if not force and now - self._last < self.min_interval_s:
            return
        self._last = now
        self._bar.value = self.done + self.failed + self.cancelled
        self._label.value = f"<code>{self.text().split(': ', 1)[1]}</code>"


class Ticker:
    """A progress bar a measurement ticks once per finished call; redrawn at most every `every_s` seconds, by
    trait assignment only (safe from a task), so the ticks cost next to nothing inside a CPU measurement.
    Non-interactive (papermill) it draws nothing and `finish()` prints one line."""

    def __init__(self, title: str, total: int, *, interactive: bool = True, every_s: float = 0.2) -> None:
        self.title, self.total, self.done, self.every_s = title, total, 0, every_s
        self._t0 = self._last = time.perf_counter()
        self._bar: Any = None
        if interactive:
            import ipywidgets as w
            from IPython.display import display

            self._bar = w.IntProgress(value=0, min=0, max=max(total, 1), description=title[:20])
            self._label = w.Label()
            display(w.HBox([self._bar, self._label]))

    def tick(self) -> None:
        self.done += 1
        now = time.perf_counter()
        if self._bar is not None and (now - self._last >= self.every_s or self.done >= self.total):
            self._last = now
            self._bar.value = self.done
            self._label.value = f"{self.done}/{self.total} in {now - self._t0:.0f} s"

    def finish(self) -> None:
        if self._bar is None and self.title:
            print(f"{self.title}: {self.done}/{self.total} in {time.perf_counter() - self._t0:.1f} s")
