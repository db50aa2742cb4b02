"""Plumbing of lessons 03-05 (streaming, request levers, the web chat): timed calls, sweeps, charts, tables.

The mechanisms themselves (a stream reader timing TTFT and ITL, a history trimmer, a streaming route) are
written in the notebooks' cells; this module only runs them many times, shapes what they return for reading
and builds the results JSON, so the cells stay about the technique.
"""

from __future__ import annotations

import asyncio
import codecs
import difflib
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from labkit.lab import viz
from labkit.lab.progress import Ticker
from labkit.pricing import cost
from labkit.streaming import StreamOutcome, consume
from labkit.tokens import count_messages

__all__ = [
    "FILLER",
    "chain_calls",
    "conversation",
    "decode_reads",
    "lever_pair",
    "lever_rows",
    "prefill_slope",
    "prompt_of",
    "read_times",
    "snippet_diff",
    "sweep",
    "timing_chart",
]

#: About 200 tokens of neutral words, to grow prompts to a known length.
FILLER = " ".join(["latency", "token", "stream", "server", "cache", "the", "of", "model"] * 25)

Call = Callable[[list[dict], int | None], Awaitable[dict[str, Any]]]
FIELDS = ("prompt_tokens", "ttft_s", "total_s", "itl_p50_s", "tpot_s", "completion_tokens", "cached_tokens", "cost_usd")


def prompt_of(tokens: int, model: str = "gpt-4o") -> list[dict]:
    """A unique prompt of about `tokens` prompt tokens (a fresh id first, so no prefix is served from cache)."""
    text = f"Request {uuid.uuid4()}. Summarize these notes: "
    filler_tokens = count_messages([{"role": "user", "content": FILLER}], model)
    while count_messages([{"role": "user", "content": text}], model) + filler_tokens < tokens:
        text += FILLER + " "
    return [{"role": "user", "content": text + "Now answer briefly."}]


def conversation(turns: int, *, session: str | None = None) -> list[dict]:
    """A long chat: a system prompt, `turns` earlier question/answer pairs, and the new question."""
    messages = [{"role": "system", "content": f"Session {session or uuid.uuid4()}. You are a helpful support agent."}]
    for turn in range(turns):
        messages.append({"role": "user", "content": f"Question {turn}: " + FILLER[:600]})
        messages.append({"role": "assistant", "content": f"Answer {turn}: " + FILLER[:900]})
    return [*messages, {"role": "user", "content": "So what should I do next?"}]


def outcome_row(outcome: StreamOutcome, model: str) -> dict[str, Any]:
    """One streamed call read by labkit's `consume()`, as the row every sweep and lever table uses."""
    if outcome.status != "ok":
        raise outcome.error or RuntimeError(outcome.status)
    n, t = outcome.completion_tokens, outcome.timing
    return {
        "prompt_tokens": outcome.prompt_tokens,
        "ttft_s": t.ttft_s,
        "total_s": t.total_s,
        "itl_p50_s": t.itl_p50_s,
        "tpot_s": t.tpot_s(n),
        "completion_tokens": n,
        "cached_tokens": outcome.cached_tokens,
        "cost_usd": cost(model, outcome.prompt_tokens, n, outcome.cached_tokens) or 0.0,
    }


def chain_calls(chain: Any, model: str) -> dict[str, Call]:
    """A plain and a streamed call through a labkit chain, each returning the times a reader experiences."""

    async def plain(messages: list[dict], max_tokens: int | None) -> dict[str, Any]:
        params = {} if max_tokens is None else {"max_tokens": max_tokens}
        started = time.perf_counter()
        completion = await chain.complete(messages, model=model, **params)
        total, usage = time.perf_counter() - started, completion.usage
        details = usage.prompt_tokens_details
        cached = (details.cached_tokens or 0) if details else 0
        return {
            "prompt_tokens": usage.prompt_tokens,
            "ttft_s": total,  # a plain call's first visible text is its last
            "total_s": total,
            "completion_tokens": usage.completion_tokens,
            "cached_tokens": cached,
            "cost_usd": cost(model, usage.prompt_tokens, usage.completion_tokens, cached) or 0.0,
        }

    async def stream(messages: list[dict], max_tokens: int | None) -> dict[str, Any]:
        params = {} if max_tokens is None else {"max_tokens": max_tokens}
        outcome = await consume(lambda: chain.stream(messages, model=model, **params), messages=messages, model=model)
        return outcome_row(outcome, model)

    return {"plain": plain, "stream": stream}


async def sweep(
    calls: Mapping[str, Call],
    points: Mapping[Any, Callable[[], tuple[list[dict], int | None]]],
    *,
    repeats: int,
    concurrency: int,
    interactive: bool = True,
    title: str = "sweep",
) -> dict[str, dict[str, dict[str, float | None]]]:
    """Run every call mode `repeats` times at every point (a fresh `(messages, max_tokens)` each time), at most
    `concurrency` at once, with a progress bar; the median of each field per point and mode."""
    gate = asyncio.Semaphore(concurrency)
    # every request is built before any is sent: building a long prompt is CPU work that would stall the reads
    # of the streams already in flight, and inflate the times measured
    jobs = [(point, mode, points[point]()) for point in points for mode in calls for _ in range(repeats)]
    ticker = Ticker(title, len(jobs), interactive=interactive)

    async def one(point: Any, mode: str, request: tuple[list[dict], int | None]) -> tuple[Any, str, dict[str, Any]]:
        async with gate:
            row = await calls[mode](*request)
        ticker.tick()
        return point, mode, row

    rows = await asyncio.gather(*(one(*job) for job in jobs))
    ticker.finish()
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for point in points:
        for mode in calls:
            mine = [r for p, m, r in rows if p == point and m == mode]
            out.setdefault(str(point), {})[mode] = {k: _median([r.get(k) for r in mine]) for k in FIELDS}
    return out


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(statistics.median(present)) if present else None


def timing_chart(by_point: Mapping[str, Mapping[str, Mapping[str, Any]]], *, title: str, x_unit: str) -> go.Figure:
    """First visible text and total time of each mode over the swept points (x: the point itself)."""
    xs = [float(p) for p in by_point]
    modes = list(next(iter(by_point.values())))
    series = {}
    for mode in modes:
        series[f"{mode}: first text"] = (xs, [by_point[p][mode]["ttft_s"] for p in by_point])
        series[f"{mode}: total"] = (xs, [by_point[p][mode]["total_s"] for p in by_point])
    return viz.lines(series, title=title, x_unit=x_unit, y_unit="seconds")


def sweep_table(by_point: Mapping[str, Mapping[str, Mapping[str, Any]]], point: str) -> pd.DataFrame:
    """The sweep's medians, one row per (point, mode), in ms where a reader compares small times."""
    rows = []
    for p, modes in by_point.items():
        for mode, m in modes.items():
            rows.append(
                {
                    point: p,
                    "mode": mode,
                    "prompt tokens": m["prompt_tokens"],
                    "first text s": m["ttft_s"],
                    "total s": m["total_s"],
                    "ITL p50 ms": None if m["itl_p50_s"] is None else m["itl_p50_s"] * 1000,
                    "output tokens": m["completion_tokens"],
                }
            )
    return viz.table(rows)


def longest(by_max_tokens: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> dict[str, Any]:
    """Plain against streamed at the largest `max_tokens` of the sweep."""
    top = max(by_max_tokens, key=float)
    plain, stream = by_max_tokens[top]["plain"], by_max_tokens[top]["stream"]
    return {
        "max_tokens": int(float(top)),
        "stream_ttft_s": stream["ttft_s"],
        "plain_first_text_s": plain["ttft_s"],
        "stream_total_s": stream["total_s"],
        "plain_total_s": plain["total_s"],
    }


def per_extra_token(by_max_tokens: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> float:
    """Seconds of streamed total per extra output token, between the smallest and largest `max_tokens`."""
    low, high = min(by_max_tokens, key=float), max(by_max_tokens, key=float)
    a, b = by_max_tokens[low]["stream"], by_max_tokens[high]["stream"]
    return (b["total_s"] - a["total_s"]) / max(b["completion_tokens"] - a["completion_tokens"], 1)


def prefill_slope(by_prompt: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> float:
    """Milliseconds of streamed TTFT per 1000 prompt tokens: the slope of a straight-line fit."""
    tokens = [m["stream"]["prompt_tokens"] for m in by_prompt.values()]
    ttft = [m["stream"]["ttft_s"] for m in by_prompt.values()]
    return float(np.polyfit(tokens, ttft, 1)[0] * 1e6)


async def lever_rows(
    call: Call, make: Callable[[int], list[dict]], *, repeats: int, max_tokens: int | None, sequential: bool = False
) -> list[dict[str, Any]]:
    """`repeats` calls of `make(i)`; sequential when a call must find the previous one's cache entry."""
    if sequential:
        return [await call(make(i), max_tokens) for i in range(repeats)]
    return list(await asyncio.gather(*(call(make(i), max_tokens) for i in range(repeats))))


def lever_pair(before: Sequence[Mapping[str, Any]], after: Sequence[Mapping[str, Any]]) -> dict[str, dict]:
    """The medians of each field without and with a lever."""
    return {
        side: {k: _median([r.get(k) for r in rows]) for k in FIELDS}
        for side, rows in (("before", before), ("after", after))
    }


def levers_chart(levers: Mapping[str, Mapping[str, Mapping[str, Any]]], *, title: str) -> go.Figure:
    """Time to first token and total time without and with each lever."""
    rows = {}
    for name, pair in levers.items():
        rows[f"{name}: without"] = {"TTFT": pair["before"]["ttft_s"], "total": pair["before"]["total_s"]}
        rows[f"{name}: with"] = {"TTFT": pair["after"]["ttft_s"], "total": pair["after"]["total_s"]}
    return viz.grouped_bars(rows, title=title, unit="seconds (median)")


def levers_table(levers: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> pd.DataFrame:
    """Tokens, times and cost without and with each lever."""
    rows = {}
    for name, pair in levers.items():
        for side, label in (("before", "without"), ("after", "with")):
            m = pair[side]
            rows[f"{name}: {label}"] = {
                "prompt tokens": m["prompt_tokens"],
                "cached tokens": m["cached_tokens"],
                "output tokens": m["completion_tokens"],
                "TTFT s": m["ttft_s"],
                "total s": m["total_s"],
                "cost µ$": (m["cost_usd"] or 0) * 1e6,
            }
    return viz.table(rows)


def metrics_counts(recorder: Any) -> dict[str, int]:
    """How many streams the metrics layer recorded, and how many of them with an inter-token latency."""
    streams = [r for r in recorder.records if r.stream]
    return {"streams": len(streams), "with_itl": sum(r.itl_p50_s is not None for r in streams)}


# ---- lesson 05: the browser side --------------------------------------------------------------------------

#: The guide's front-end snippet, as printed (comments translated).
GUIDE_SNIPPET = """\
// front-end stream handling
async function streamChat(message) {
  const response = await fetch('/api/chat', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ message, stream: true })
  });
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  while (true) {
    const { done, value } = await reader.read();
    if (done) break;
    const chunk = decoder.decode(value);
    // update the UI in real time
    appendToChat(chunk);
  }
}
"""

#: The same function with the three fixes, and nothing else changed.
FIXED_SNIPPET = """\
// front-end stream handling
async function streamChat(message) {
  const response = await fetch('/api/chat', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ message, stream: true })
  });
  if (!response.ok) throw new Error((await response.json()).error.message);
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  while (true) {
    const { done, value } = await reader.read();
    if (done) break;
    const chunk = decoder.decode(value, { stream: true });
    // update the UI in real time
    appendToChat(chunk);  // appendToChat sets node.textContent += chunk, never innerHTML
  }
  appendToChat(decoder.decode());
}
"""


def snippet_diff() -> str:
    """The guide's `fetch` reader against the fixed one, as a unified diff."""
    lines = difflib.unified_diff(
        GUIDE_SNIPPET.splitlines(), FIXED_SNIPPET.splitlines(), "guide.js", "fixed.js", lineterm="", n=1
    )
    return "\n".join(lines)


def decode_reads(reads: Sequence[bytes]) -> dict[str, str]:
    """The same reads decoded one by one (the guide) and with an incremental decoder (`{stream: true}`)."""
    incremental = codecs.getincrementaldecoder("utf-8")(errors="replace")
    streamed = "".join(incremental.decode(r) for r in reads) + incremental.decode(b"", final=True)
    return {"each read alone": "".join(r.decode("utf-8", errors="replace") for r in reads), "stream: true": streamed}


async def read_times(http: Any, url: str, body: Mapping[str, Any]) -> dict[str, Any]:
    """POST `body` and read the response as it comes: its status, content type and when each read arrived."""
    started, times, data = time.perf_counter(), [], []
    async with http.stream("POST", url, json=dict(body)) as response:
        async for piece in response.aiter_raw():
            times.append(time.perf_counter() - started)
            data.append(piece)
    return {
        "status": response.status_code,
        "content_type": response.headers.get("content-type"),
        "reads": len(times),
        "first_read_s": times[0] if times else None,
        "last_read_s": times[-1] if times else None,
        "text": b"".join(data).decode("utf-8", errors="replace"),
    }


async def disconnects_since(lab: Any, before: Mapping[str, Any] | None, stopped: StreamOutcome) -> int | None:
    """Disconnects the simulated service counted since `before` (it notices a closed connection at its next
    write, so poll briefly); None against an endpoint whose counters the lab cannot read."""
    if before is None or not getattr(lab, "simulated", False):
        return None
    after = lab.sim.stats()
    for _ in range(50):
        if after["disconnects"] > before["disconnects"] or stopped.status != "stopped":
            break
        await asyncio.sleep(0.02)
        after = lab.sim.stats()
    return after["disconnects"] - before["disconnects"]


def streaming_summary(measured: Mapping[str, Any]) -> pd.DataFrame:
    """Lesson 03's numbers: first text and total, plain against streamed, and what a Stop kept, from what the
    sections put in `measured` (`longest`, `total_s_per_extra_token`, `itl_p50_s`, `stop`); a section that has not
    run adds no row."""
    rows: dict[str, dict[str, Any]] = {}
    if "longest" in measured:
        top = measured["longest"]
        rows[f"first text, plain (max_tokens={top['max_tokens']})"] = {"value": top["plain_first_text_s"], "unit": "s"}
        rows["first text, streamed"] = {"value": top["stream_ttft_s"], "unit": "s"}
        rows["total, plain"] = {"value": top["plain_total_s"], "unit": "s"}
        rows["total, streamed"] = {"value": top["stream_total_s"], "unit": "s"}
        rows["total per extra output token"] = {"value": measured["total_s_per_extra_token"] * 1000, "unit": "ms"}
        rows["inter-token latency p50"] = {"value": (measured.get("itl_p50_s") or 0) * 1000, "unit": "ms"}
    if "stop" in measured:
        rows["tokens kept by Stop"] = {"value": measured["stop"]["completion_tokens"], "unit": "tokens (estimated)"}
    return viz.table(rows)


def prefill_summary(by_prompt: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> dict[str, Any]:
    """What prompt length did to the first token: the slope, and whether TTFT rose by more than 50 ms and a
    tenth of the shortest prompt's TTFT (a rise a busy machine alone would not make)."""
    first, last = (by_prompt[k]["stream"]["ttft_s"] for k in (min(by_prompt, key=float), max(by_prompt, key=float)))
    return {
        "ttft_ms_per_1k_prompt_tokens": prefill_slope(by_prompt),
        "ttft_moves_with_prompt": last - first > max(0.05, 0.1 * first),
    }


BAD_BODIES = {"empty": b'{"message": ""}', "malformed": b"{oops", "oversized": b'{"message": "' + b"x" * 5000 + b'"}'}


async def bad_inputs(http: Any, url: str) -> dict[str, dict[str, Any]]:
    """What a chat route answers to an empty, a malformed and an oversized body: status and message."""
    out = {}
    for label, body in BAD_BODIES.items():
        response = await http.post(url, content=body)
        try:
            message = response.json()["error"]["message"]
        except ValueError:
            message = response.text[:80]  # not JSON: what a reader without a status check would show
        out[label] = {"status": response.status_code, "message": message}
    return out
