"""Live views of streamed answers in a notebook: text as it arrives, TTFT, tokens/s, a Stop button.

The widget rules of docs/ARCHITECTURE.md ("Notebooks"), in code:

- The stream runs as an `asyncio` task on the kernel's loop, started in one cell (`pane.start(...)`, which
  returns at once) and awaited in a later one (`await pane.result()`). While a cell runs, the kernel does not
  deliver button clicks; between cells it does, so the Stop button works while the task streams.
- The task updates the view only by assigning widget traits, at most every `refresh_s` seconds (a fast
  stream would otherwise flood the front end with one message per token), and once more at the end.
- Stop cancels the task: the stream is closed, which closes the HTTP connection (the service sees the
  disconnect and stops generating); the partial text stays on screen and in the outcome, whose usage is
  estimated from the partial text with `labkit.tokens` when no usage chunk arrived.
- Under papermill nothing clicks: `await pane.stop_after(tokens=...)` is the scripted stand-in, and it runs
  the same code as the button.
"""

from __future__ import annotations

import asyncio
import html
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import ipywidgets as widgets
from IPython.display import display

from labkit.stream import ChunkStream
from labkit.streaming import StreamOutcome, StreamTiming, consume

__all__ = ["LiveBoard", "LivePane"]

OpenStream = Callable[[], Awaitable[ChunkStream]]

_TEXT_STYLE = (
    "white-space: pre-wrap; font-family: var(--jp-code-font-family, monospace); font-size: 12px; "
    "min-height: 6em; max-height: 16em; overflow-y: auto; border: 1px solid #ddd; padding: 4px;"
)


class LivePane:
    """One live stream: a title, a stats line, the text so far and a Stop button."""

    def __init__(self, title: str = "", *, refresh_s: float = 0.1, width: str = "100%") -> None:
        self.refresh_s = refresh_s
        self.title = widgets.HTML(f"<b>{html.escape(title)}</b>")
        self.stats = widgets.HTML("idle")
        self.stats.add_class("lk-live-stats")
        self.text = widgets.HTML("")
        self.text.add_class("lk-live-text")
        self.stop_button = widgets.Button(description="Stop", icon="stop", button_style="danger", disabled=True)
        self.stop_button.on_click(lambda _button: self.stop())
        self.widget = widgets.VBox(
            [self.title, self.stats, self.text, self.stop_button], layout=widgets.Layout(width=width)
        )
        self.widget.add_class("lk-live-pane")
        self.task: asyncio.Task[StreamOutcome] | None = None
        self.timing = StreamTiming()
        self.outcome: StreamOutcome | None = None
        self.refreshes = 0
        self._parts: list[str] = []
        self._stop_requested = False
        self._last_refresh = 0.0

    def _ipython_display_(self) -> None:
        display(self.widget)

    # -- running ----------------------------------------------------------------------------------------

    def start(
        self,
        open_stream: OpenStream,
        *,
        messages: Sequence[Mapping[str, Any]] = (),
        model: str = "gpt-4o",
    ) -> asyncio.Task[StreamOutcome]:
        """Start streaming in a background task and return it at once (await `result()` in a later cell)."""
        if self.task is not None and not self.task.done():
            raise RuntimeError("this pane is already streaming; stop it or await result() first")
        self._parts = []
        self._stop_requested = False
        self.outcome = None
        self.refreshes = 0
        self.timing = StreamTiming()
        self.text.value = ""
        self.stats.value = "waiting for the first token…"
        self.stop_button.disabled = False
        self.task = asyncio.get_running_loop().create_task(self._run(open_stream, messages, model))
        return self.task

    async def _run(self, open_stream: OpenStream, messages: Sequence[Mapping[str, Any]], model: str) -> StreamOutcome:
        try:
            outcome = await consume(
                open_stream,
                messages=messages,
                model=model,
                on_text=self._on_text,
                timing=self.timing,
                stop_requested=lambda: self._stop_requested,
            )
        finally:
            self.stop_button.disabled = True
        self.outcome = outcome
        self._refresh(final=True)
        return outcome

    def stop(self) -> None:
        """What the Stop button does: cancel the stream (its connection is closed upstream)."""
        if self.task is not None and not self.task.done():
            self._stop_requested = True
            self.stop_button.disabled = True
            self.stats.value += " · stopping…"
            self.task.cancel()

    async def stop_after(self, tokens: int, timeout: float = 60.0) -> None:  # noqa: ASYNC109
        """The scripted click for papermill: press Stop once `tokens` text chunks have arrived."""
        deadline = time.perf_counter() + timeout
        while self.task is not None and not self.task.done() and len(self._parts) < tokens:
            if time.perf_counter() > deadline:
                break
            await asyncio.sleep(0.005)
        self.stop()

    async def result(self) -> StreamOutcome:
        """Wait for the stream to end (finished, stopped or failed) and return its outcome."""
        if self.task is None:
            raise RuntimeError("start() the pane first")
        return await self.task

    @property
    def value(self) -> str:
        """The text received so far."""
        return "".join(self._parts)

    # -- drawing (trait assignments only) ---------------------------------------------------------------

    def _on_text(self, delta: str, timing: StreamTiming) -> None:
        self._parts.append(delta)
        now = time.perf_counter()
        if now - self._last_refresh >= self.refresh_s:
            self._last_refresh = now
            self._refresh()

    def _refresh(self, final: bool = False) -> None:
        self.refreshes += 1
        self.text.value = f'<div style="{_TEXT_STYLE}">{html.escape(self.value)}</div>'
        t = self.timing
        if t.ttft_s is None:
            line = "waiting for the first token…" if not final else "no text received"
        else:
            rate = t.tokens_per_s()
            line = f"TTFT <b>{t.ttft_s * 1000:.0f} ms</b> · {t.chunks} tokens · {rate or 0:.0f} tokens/s"
        if final and self.outcome is not None:
            o = self.outcome
            kind = "estimated from the partial text" if o.usage_estimated else "reported"
            status = {"ok": "done", "stopped": "⏹ stopped", "error": "⚠ error"}[o.status]
            line += f" · {status} after {t.total_s or 0:.2f} s · usage: {o.completion_tokens} tokens ({kind})"
            if o.status == "error" and o.error is not None:
                line += f"<br><span style='color:#b00'>{html.escape(str(o.error))}</span>"
        self.stats.value = line


class LiveBoard:
    """Several live panes side by side (the same prompt on different endpoints or models)."""

    def __init__(self, titles: Sequence[str], *, refresh_s: float = 0.1) -> None:
        width = f"{100 / max(1, len(titles)) - 1:.0f}%"
        self.panes = [LivePane(title, refresh_s=refresh_s, width=width) for title in titles]
        self.stop_all_button = widgets.Button(description="Stop all", icon="stop")
        self.stop_all_button.on_click(lambda _button: self.stop())
        self.widget = widgets.VBox([widgets.HBox([p.widget for p in self.panes]), self.stop_all_button])

    def _ipython_display_(self) -> None:
        display(self.widget)

    def start(
        self, openers: Sequence[OpenStream], *, messages: Sequence[Mapping[str, Any]] = (), models: Sequence[str] = ()
    ) -> list[asyncio.Task[StreamOutcome]]:
        """Start one stream per pane (`openers[i]` opens pane i's stream); returns at once."""
        models = list(models) or ["gpt-4o"] * len(self.panes)
        return [
            pane.start(opener, messages=messages, model=model)
            for pane, opener, model in zip(self.panes, openers, models, strict=True)
        ]

    def stop(self) -> None:
        for pane in self.panes:
            pane.stop()

    async def results(self) -> list[StreamOutcome]:
        return list(await asyncio.gather(*(pane.result() for pane in self.panes)))
