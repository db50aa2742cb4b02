"""Lessons 09 and 10's workload: requests sent the way a caller sends them, and what the caller and the services saw.

`run_workload` sends `n` requests through any chain and reports each as the caller saw it (a stream that ended
without a `finish_reason`, or an answer later than the caller's deadline, is a failure); `summarize_runs` turns the
rows into failure shares and latency percentiles; `upstream_totals` reads what the services counted and what it
would have cost; `fault_mix` is the injected fault configuration of the headline.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from labkit.chain import Chain
from labkit.percentiles import percentile
from labkit.pricing import cost


def fault_mix(total: float = 0.05, retry_after_s: float = 0.5, seed: int | None = None) -> dict[str, Any]:
    """A fault config where about `total` of requests fail: 429s with retry-after, 500/502/503, hangs, drops.

    Shares of the faults: 25 % rate limits, 36 % server errors (12 % each), 19 % hangs, 20 % drops mid-stream.
    Hangs and drops are drawn independently of the error statuses, so the share of requests with any fault is
    `1 - (1 - e)(1 - h)(1 - d)`, which this function solves for `total`.
    """
    if not 0.0 <= total < 1.0:
        raise ValueError(f"total must be in [0, 1), got {total!r}")
    # scale s so that 1 - (1 - 0.61 s)(1 - 0.19 s)(1 - 0.20 s) = total (bisection: monotone in s)
    low, high = 0.0, 1.0 / 0.61
    for _ in range(60):
        mid = (low + high) / 2
        value = 1 - (1 - 0.61 * mid) * (1 - 0.19 * mid) * (1 - 0.20 * mid)
        low, high = (mid, high) if value < total else (low, mid)
    s = low
    config: dict[str, Any] = {
        "error_rates": {"429": 0.25 * s, "500": 0.12 * s, "502": 0.12 * s, "503": 0.12 * s},
        "retry_after_s": retry_after_s,
        "hang_rate": 0.19 * s,
        "drop_mid_stream_rate": 0.20 * s,
    }
    if seed is not None:
        config["seed"] = seed
    return config


async def _one(
    chain: Chain, i: int, *, model: str, max_tokens: int, deadline_s: float, stream: bool, params: Mapping[str, Any]
) -> dict[str, Any]:
    messages = [{"role": "user", "content": f"Question {i}: what makes a retry safe? Answer briefly."}]
    started = time.perf_counter()
    row: dict[str, Any] = {"i": i, "ok": False, "error": None, "ttft_s": None, "total_s": None, "partial_chars": 0}
    route: list[str] = []
    controls = {"route_log": route}
    parts: list[str] = []
    try:
        async with asyncio.timeout(deadline_s):
            if stream:
                result = await chain.stream(messages, model=model, max_tokens=max_tokens, controls=controls, **params)
                finished = False
                async with result:
                    async for chunk in result:
                        for choice in chunk.choices:
                            if choice.delta.content:
                                if row["ttft_s"] is None:
                                    row["ttft_s"] = time.perf_counter() - started
                                parts.append(choice.delta.content)
                            if choice.finish_reason:
                                finished = True
                        if chunk.usage is not None:
                            row["prompt_tokens"] = chunk.usage.prompt_tokens
                            row["completion_tokens"] = chunk.usage.completion_tokens
                if not finished:
                    raise RuntimeError("the stream ended without a finish_reason")
            else:
                completion = await chain.complete(
                    messages, model=model, max_tokens=max_tokens, controls=controls, **params
                )
                row["ttft_s"] = time.perf_counter() - started
                if completion.usage is not None:
                    row["prompt_tokens"] = completion.usage.prompt_tokens
                    row["completion_tokens"] = completion.usage.completion_tokens
        row["ok"] = True
    except TimeoutError as error:  # the caller's own deadline (or a DeadlineExceeded from the retry layer)
        row["error"] = type(error).__name__ if type(error) is not TimeoutError else "caller deadline"
    except Exception as error:
        row["error"] = type(error).__name__
    row["total_s"] = time.perf_counter() - started
    row["partial_chars"] = len("".join(parts)) if not row["ok"] else 0
    row["endpoints"] = route
    row["t_end"] = time.perf_counter()
    return row


async def run_workload(
    chain: Chain,
    n: int,
    *,
    model: str = "gpt-4o",
    concurrency: int = 16,
    max_tokens: int = 12,
    deadline_s: float = 10.0,
    stream: bool = True,
    params: Mapping[str, Any] | None = None,
    before: Callable[[int], Awaitable[None]] | None = None,
    tick: Callable[[], None] | None = None,
) -> list[dict[str, Any]]:
    """Send `n` requests, `concurrency` at a time, and report each as the caller saw it.

    A request fails for the caller if it raised, if its stream ended without a `finish_reason`, or if it was not
    done within `deadline_s` (the caller's patience: the same for every arm of a comparison). `before(i)` runs
    before request `i` starts (a notebook switches faults mid-run with it); `tick()` after each one ends (a
    progress bar). Rows carry `ok`, `error` (a class
    name), `ttft_s`, `total_s`, usage and the endpoints tried (from `route_log`, where the chain has a balancer).
    """
    if n < 0 or concurrency < 1:
        raise ValueError("n must be >= 0 and concurrency >= 1")
    params = dict(params if params is not None else {"temperature": 0, "seed": 7})
    queue = iter(range(n))
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()

    async def worker() -> None:
        for i in queue:
            if before is not None:
                await before(i)
            row = await _one(
                chain, i, model=model, max_tokens=max_tokens, deadline_s=deadline_s, stream=stream, params=params
            )
            row["t_end"] -= t0
            rows.append(row)
            if tick is not None:
                tick()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    rows.sort(key=lambda r: r["i"])
    return rows


def summarize_runs(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Failure share and latency percentiles (ms) of a run, as the caller saw it."""
    n = len(rows)
    ok = [r for r in rows if r["ok"]]
    totals = [r["total_s"] for r in ok]
    ttfts = [r["ttft_s"] for r in ok if r["ttft_s"] is not None]
    errors: dict[str, int] = {}
    for r in rows:
        if not r["ok"]:
            errors[r["error"]] = errors.get(r["error"], 0) + 1

    def ms(values: Sequence[float], q: float) -> float | None:
        p = percentile(values, q)
        return None if p is None else p * 1000

    return {
        "requests": n,
        "failed": n - len(ok),
        "failed_share": (n - len(ok)) / n if n else 0.0,
        "errors": errors,
        "total_mean_ms": sum(totals) / len(totals) * 1000 if totals else None,
        **{f"total_p{q}_ms": ms(totals, q) for q in (50, 95, 99)},
        **{f"ttft_p{q}_ms": ms(ttfts, q) for q in (50, 95, 99)},
        "prompt_tokens": sum(r.get("prompt_tokens", 0) for r in ok),
        "completion_tokens": sum(r.get("completion_tokens", 0) for r in ok),
    }


def upstream_totals(stats: Sequence[Mapping[str, Any]], model: str, prompt_tokens_per_request: float) -> dict[str, Any]:
    """What the services saw, summed over them, and what it would have cost.

    Billed: every request that reached generation (not rejected with 429/5xx before it) pays its prompt, and
    every token a service generated is paid, also those of dropped or cancelled streams (providers bill what they
    generated). It is an estimate from the services' counters, the same for every arm.
    """
    requests = sum(s["requests_total"] for s in stats)
    rejected = sum(
        v for s in stats for status, v in s["requests_by_status"].items() if status in {"429", "500", "502", "503"}
    )
    generated = sum(s["tokens_generated"] for s in stats)
    billed = requests - rejected
    return {
        "upstream_requests": requests,
        "rejected_before_generation": rejected,
        "disconnects": sum(s["disconnects"] for s in stats),
        "tokens_generated": generated,
        "cost_usd": cost(model, round(billed * prompt_tokens_per_request), generated) or 0.0,
    }


__all__ = ["fault_mix", "run_workload", "summarize_runs", "upstream_totals"]
