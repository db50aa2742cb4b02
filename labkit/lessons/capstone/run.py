"""Running a workload open loop: each request starts at its scheduled time, whatever the client is doing.

Open loop, as real users are: a slow answer does not slow the arrivals down. Each request is timed from its
*scheduled* arrival, with the caller's patience as its deadline. The schedule runs on the client's own event loop,
so a client whose CPU saturates that loop sends its requests late and bunched (each summary's `p95_start_lag_s`
says how late); they are still timed from their schedule. `chain_caller` and `naive_caller` adapt the two clients
the capstone compares to one call signature.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

from labkit.lessons.capstone.workload import Item, Workload

Call = Callable[[Item], Awaitable[dict[str, Any]]]


class IncompleteAnswer(RuntimeError):
    """A stream that ended without a finish_reason: the caller did not get a whole answer."""


def _cached(usage: Any) -> tuple[int, int]:
    """(prompt tokens, of which cached) of an answer's usage: what provider prompt caching billed lower."""
    if usage is None:
        return 0, 0
    details = getattr(usage, "prompt_tokens_details", None)
    return int(usage.prompt_tokens or 0), int(getattr(details, "cached_tokens", 0) or 0) if details else 0


def chain_caller(assembled: Any, *, model: str, max_tokens: int | None) -> Call:
    """Send an item through an `labkit.assemble.Assembled` chain; streams when its streaming switch is on.
    `max_tokens=None` sends none (the model's own length: the "before" arm)."""
    chain = assembled.chain
    stream = assembled.stream
    limit = {"max_tokens": max_tokens} if max_tokens is not None else {}

    async def call(item: Item) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        log: list[str] = []
        controls = {"upstream_log": log}
        first = None
        tokens = 0
        source = None
        usage = None
        if stream:
            result = await chain.stream(list(item.messages), model=model, temperature=0, controls=controls, **limit)
            source = result.info.get("cache_tier")
            finished = False
            async with result:
                async for chunk in result:
                    for choice in chunk.choices:
                        if first is None and choice.delta.content:
                            first = loop.time()
                        if choice.finish_reason:
                            finished = True
                    if chunk.usage is not None:
                        tokens, usage = chunk.usage.completion_tokens, chunk.usage
            if not finished:
                raise IncompleteAnswer("the stream ended without a finish_reason")
        else:
            completion = await chain.complete(
                list(item.messages), model=model, temperature=0, controls=controls, **limit
            )
            usage = completion.usage
            tokens = usage.completion_tokens if usage else 0
        done = loop.time()
        upstream = bool(log)
        if upstream:
            source = "upstream"
        elif source is None:
            source = "no upstream call" if not stream else "coalesced"
        prompt, cached = _cached(usage) if upstream else (0, 0)
        return {
            "prompt_tokens": prompt,
            "cached_tokens": cached,
            "first": first or done,
            "done": done,
            "upstream": upstream,
            "attempts": len(log),
            "source": source,
            "completion_tokens": tokens,
        }

    return call


def naive_caller(naive: Any, *, model: str, max_tokens: int | None) -> Call:
    """Send an item through a `labkit.lessons.naive.NaiveClient` (whole answers: first byte = whole answer)."""
    limit = {"max_tokens": max_tokens} if max_tokens is not None else {}

    async def call(item: Item) -> dict[str, Any]:
        _text, usage, source = await naive.ask(list(item.messages), model=model, temperature=0, **limit)
        done = asyncio.get_running_loop().time()
        prompt, cached = _cached(usage)
        return {
            "prompt_tokens": prompt,
            "cached_tokens": cached,
            "first": done,
            "done": done,
            "upstream": source == "upstream",
            "attempts": int(source == "upstream"),
            "source": source,
            "completion_tokens": usage.completion_tokens if usage else 0,
        }

    return call


@dataclasses.dataclass
class RunResult:
    rows: list[dict[str, Any]]
    wall_s: float
    peak_outstanding: int
    boundary_stats: Any = None  # what `on_measure_start` returned (the services' counters at the boundary)
    end_stats: Any = None


async def run_open_loop(
    call: Call,
    workload: Workload,
    *,
    patience_s: float = 10.0,
    on_measure_start: Callable[[], Awaitable[Any]] | None = None,
    on_end: Callable[[], Awaitable[Any]] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> RunResult:
    """Start each request at its scheduled time, whatever the client is doing, and time it from that moment; the run
    ends when every measured request has (warm-up requests still pending then are cancelled, not awaited).

    A request fails for the caller if it raised, its stream was incomplete, or it took longer than `patience_s`
    (the user gave up: `"gave up (patience)"`; a layer's own timeout, such as `FirstTokenTimeout` or
    `DeadlineExceeded`, is named by its class). `on_measure_start` runs (as a task) when the first measured request
    is due; its result and `on_end`'s are kept (the services' counters at the boundary and at the end, for the cost).
    """
    if patience_s <= 0:
        raise ValueError("patience_s must be > 0")
    loop = asyncio.get_running_loop()
    rows: list[dict[str, Any]] = []
    outstanding = peak = 0
    done_count = 0
    total = len(workload.items)
    t0 = loop.time() + 0.05
    boundary: asyncio.Task[Any] | None = None

    async def one(item: Item) -> None:
        nonlocal outstanding, done_count
        scheduled = t0 + item.at_s
        row: dict[str, Any] = {
            "index": item.index,
            "at_s": item.at_s,
            "warmup": item.warmup,
            "wording": item.wording,
            "ok": False,
            "error": None,
            "ttfb_s": None,
            "total_s": None,
            "upstream": None,
            "attempts": 0,
            "source": None,
            "completion_tokens": 0,
            "prompt_tokens": 0,
            "cached_tokens": 0,
            "start_lag_s": loop.time() - scheduled,
        }
        patience = asyncio.timeout(patience_s)
        try:
            async with patience:
                out = await call(item)
            row.update(
                ok=True,
                ttfb_s=out["first"] - scheduled,
                total_s=out["done"] - scheduled,
                upstream=out["upstream"],
                attempts=out["attempts"],
                source=out["source"],
                completion_tokens=out["completion_tokens"],
                prompt_tokens=out.get("prompt_tokens", 0),
                cached_tokens=out.get("cached_tokens", 0),
            )
        except TimeoutError as error:
            # the caller's patience ran out, or a layer's own timer fired (a first-token timeout, a retry deadline:
            # labkit's timeouts are TimeoutErrors too): two different outcomes, named apart
            row["error"] = "gave up (patience)" if patience.expired() else type(error).__name__
        except Exception as error:  # every failure is a measured outcome, never fatal to the run
            row["error"] = type(error).__name__
        except asyncio.CancelledError:
            row["error"] = "not awaited (warm-up)"
            raise
        finally:
            outstanding -= 1
            done_count += 1
            if row["total_s"] is None:
                row["total_s"] = loop.time() - scheduled
            rows.append(row)
            if progress is not None:
                progress(done_count, total)

    tasks: list[asyncio.Task[None]] = []
    for item in workload.items:
        delay = t0 + item.at_s - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        if not item.warmup and boundary is None and on_measure_start is not None:
            boundary = asyncio.create_task(on_measure_start())
        outstanding += 1  # outstanding from its arrival: issued by the user, not yet answered
        peak = max(peak, outstanding)
        tasks.append(asyncio.create_task(one(item)))
    if tasks:
        measured = [task for task, item in zip(tasks, workload.items, strict=True) if not item.warmup]
        await asyncio.wait(measured or tasks)
        # A warm-up request still pending when every measured one has ended is not measured (its cost is, through
        # the services' counters): waiting for it would only lengthen the run (a hang waits out the patience).
        stragglers = [task for task in tasks if not task.done()]
        for task in stragglers:
            task.cancel()
        if stragglers:
            await asyncio.wait(stragglers)
    wall_s = loop.time() - t0
    end = await on_end() if on_end is not None else None
    rows.sort(key=lambda r: r["index"])
    return RunResult(rows, wall_s, peak, await boundary if boundary is not None else None, end)


__all__ = ["Call", "IncompleteAnswer", "RunResult", "chain_caller", "naive_caller", "run_open_loop"]
