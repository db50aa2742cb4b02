"""Lesson 06 in one place: assemble the resilience layers, and the experiments the notebook and benchmark share.

The chain (DESIGN §3), outermost first::

    [metrics] -> RetryLayer -> HedgeLayer -> Balancer -> per endpoint: CircuitBreaker -> StreamGuard -> transport

`resilient_chain()` builds it from a few arguments; each piece stays usable alone. The retry and hedge layers
talk to the balancer only through two request controls: `avoid_endpoints` (names the next attempt should not
use) and `route_log` (a list the balancer appends the chosen name to). The breaker is the per-endpoint layer the
balancer consults through `allows()`. Nothing imports anything else's layer.

`python -m labkit.lessons.resilience --bench [--out build/bench/resilience.json]` runs every measurement of lesson 06
against simulated services and writes each figure as JSON: the retry decision table on real errors, the retry
budget against a sick upstream, the breaker/fallback timeline, the balancer comparison, hedging, and the headline
(failure share as the caller sees it with no retries, the SDK's retries and labkit's chain, under 5 % injected
faults, with the extra upstream requests and cost beside it). The notebook calls the same functions.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import platform
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from labkit.chain import Chain, Layer
from labkit.endpoint import Endpoint
from labkit.errors import classify
from labkit.layers.balancer import Backend, Balancer
from labkit.layers.breaker import CircuitBreaker
from labkit.layers.guard import StreamGuard
from labkit.layers.hedge import HedgeLayer
from labkit.layers.retry import RetryBudget, RetryLayer, RetryPolicy
from labkit.percentiles import percentile
from labkit.pricing import cost
from labkit.transports.sdk import OpenAITransport

__all__ = [
    "DECISION_CASES",
    "HEADLINE_ARMS",
    "Resilient",
    "breaker_timeline",
    "compare_balancers",
    "compare_hedging",
    "decision_table",
    "fault_mix",
    "headline",
    "resilient_chain",
    "run_workload",
    "sick_upstream",
    "summarize_runs",
    "upstream_totals",
]


@dataclasses.dataclass
class Resilient:
    """A built chain and its parts, so a notebook can read their counters."""

    chain: Chain
    balancer: Balancer
    retry: RetryLayer | None
    hedge: HedgeLayer | None
    breakers: dict[str, CircuitBreaker]
    transports: list[OpenAITransport]

    async def aclose(self) -> None:
        for transport in self.transports:
            await transport.aclose()

    def counters(self) -> dict[str, Any]:
        return {
            "retry": self.retry.stats.as_dict() if self.retry else None,
            "hedge": self.hedge.stats.as_dict() if self.hedge else None,
            "balancer": self.balancer.snapshot(),
            "breakers": {name: b.snapshot() for name, b in self.breakers.items()},
        }


def _names(endpoints: Sequence[Endpoint], names: Sequence[str] | None) -> list[str]:
    if names is not None:
        if len(names) != len(endpoints):
            raise ValueError(f"{len(names)} names for {len(endpoints)} endpoints")
        return list(names)
    plain = [e.name for e in endpoints]
    return plain if len(set(plain)) == len(plain) else [f"{e.name} #{i}" for i, e in enumerate(endpoints)]


def resilient_chain(
    endpoints: Sequence[Endpoint],
    *,
    names: Sequence[str] | None = None,
    strategy: str = "peak_ewma",
    weights: Sequence[float] | None = None,
    retry: RetryLayer | None = None,
    hedge: HedgeLayer | None = None,
    breaker: Mapping[str, Any] | None = None,
    first_token_timeout_s: float | None = None,
    fallbacks: Sequence[tuple[Endpoint, str | None]] = (),
    sdk_max_retries: int = 0,
    sdk_timeout: float | httpx.Timeout | None = None,
    outer: Sequence[Layer] = (),
    seed: int | None = None,
) -> Resilient:
    """Build `outer -> retry -> hedge -> balancer -> (breaker -> StreamGuard -> OpenAITransport) per endpoint`.

    `breaker=None` leaves breakers out; `{}` uses the defaults; a dict passes `CircuitBreaker` settings.
    `fallbacks` are `(endpoint, model)` pairs used only when every primary endpoint is refusing (tier 1).
    `sdk_max_retries > 0` keeps the SDK's own retries and is refused together with a retry layer (that would retry
    twice: up to `attempts * (sdk_max_retries + 1)` requests for one call).
    """
    if not endpoints:
        raise ValueError("resilient_chain needs at least one endpoint")
    if retry is not None and sdk_max_retries:
        raise ValueError(
            "double retrying: a RetryLayer over a transport with SDK retries on "
            f"(max_retries={sdk_max_retries}); set sdk_max_retries=0 or drop the retry layer"
        )
    if weights is not None and len(weights) != len(endpoints):
        raise ValueError(f"{len(weights)} weights for {len(endpoints)} endpoints")
    transports: list[OpenAITransport] = []
    breakers: dict[str, CircuitBreaker] = {}
    backends: list[Backend] = []
    kwargs: dict[str, Any] = {"max_retries": sdk_max_retries}
    if sdk_timeout is not None:
        kwargs["timeout"] = sdk_timeout
    tiers = [(e, n, None, 0) for e, n in zip(endpoints, _names(endpoints, names), strict=True)]
    tiers += [(e, f"fallback {model or e.name} #{i}", model, 1) for i, (e, model) in enumerate(fallbacks)]
    for i, (endpoint, name, model, tier) in enumerate(tiers):
        transport = OpenAITransport(endpoint, **kwargs)
        transports.append(transport)
        layers: list[Layer] = []
        gate = None
        if breaker is not None:
            gate = CircuitBreaker(name, **dict(breaker))
            breakers[name] = gate
            layers.append(gate)
        if first_token_timeout_s is not None:
            layers.append(StreamGuard(first_token_timeout_s=first_token_timeout_s))
        weight = weights[i] if weights is not None and tier == 0 else 1.0
        backends.append(Backend(name, Chain(transport, layers), weight=weight, gate=gate, model=model, tier=tier))
    balancer = Balancer(backends, strategy, seed=seed)
    layers = [*outer, *(x for x in (retry, hedge) if x is not None)]
    return Resilient(Chain(balancer, layers), balancer, retry, hedge, breakers, transports)


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
) -> list[dict[str, Any]]:
    """Send `n` requests, `concurrency` at a time, and report each as the caller saw it.

    A request fails for the caller if it raised, if its stream ended without a `finish_reason`, or if it was not
    done within `deadline_s` (the caller's patience: the same for every arm of a comparison). `before(i)` runs
    before request `i` starts (a notebook switches faults mid-run with it). Rows carry `ok`, `error` (a class
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


# --------------------------------------------------------------------------------------------------------
# Part 1 and 2 of the lesson: the decision table, the retry budget, the breaker timeline
# --------------------------------------------------------------------------------------------------------


#: One request per failure the simulated service can produce: `label: (faults, request options)`.
DECISION_CASES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "429 rate limit": ({"error_rates": {"429": 1.0}, "retry_after_s": 1.0}, {}),
    "429 insufficient_quota": ({"error_rates": {"insufficient_quota": 1.0}}, {}),
    "500": ({"error_rates": {"500": 1.0}}, {}),
    "502": ({"error_rates": {"502": 1.0}}, {}),
    "503": ({"error_rates": {"503": 1.0}}, {}),
    "400 (max_tokens too large)": ({}, {"max_tokens": 10**6}),
    "404 (unknown model)": ({}, {"model": "gpt-99"}),
    "hang (stream, no first token)": ({"hang_rate": 1.0}, {"stream": True}),
    "drop after the first token": ({"drop_mid_stream_rate": 1.0}, {"stream": True, "max_tokens": 60}),
    "error event after the first token": ({"stream_error_rate": 1.0}, {"stream": True, "max_tokens": 60}),
}


async def _one_failure(
    sim: Any, faults: Mapping[str, Any], *, stream: bool = False, model: str = "gpt-4o", max_tokens: int = 20
) -> BaseException | None:
    """Send one request to `sim` with these faults switched on, without retries; return what it raised."""
    await sim.areset()
    await sim.aset_faults(dict(faults))
    async with OpenAITransport(sim.endpoint) as transport:
        chain = Chain(transport, [StreamGuard(first_token_timeout_s=0.3)] if stream else [])
        try:
            if stream:
                await (await chain.stream("Tell me a story.", model=model, max_tokens=max_tokens)).text()
            else:
                await chain.complete("Tell me a story.", model=model, max_tokens=max_tokens)
        except Exception as error:
            return error
        finally:
            await sim.areset()
    return None


async def decision_table(
    lab: Any,
    *,
    policy: RetryPolicy | None = None,
    deadline_s: float = 5.0,
    seed: int = 0,
    cases: Mapping[str, tuple[Mapping[str, Any], Mapping[str, Any]]] = DECISION_CASES,
) -> list[dict[str, Any]]:
    """One real error per case from the first service, classified, and what `policy` decides about it.

    `decide` is a pure function of the classified error, the attempt number (1 here) and the time left
    (`deadline_s`). One row per case: `failure`, `raised`, `status`, `code`, `retry-after (s)`,
    `after first token`, `labkit retries`, `wait (s)`, `why`, `counts against endpoint`.
    """
    policy = policy or RetryPolicy(max_attempts=4, base_delay_s=0.5)
    rows = []
    for label, (faults, kwargs) in cases.items():
        error = await _one_failure(lab.sims[0], faults, **kwargs)
        info = classify(error) if error is not None else None
        if info is None:
            rows.append({"failure": label, "raised": None, "labkit retries": False, "why": "no error"})
            continue
        decision = policy.decide(info, attempts=1, remaining_s=deadline_s, rng=random.Random(seed))
        rows.append(
            {
                "failure": label,
                "raised": type(error).__name__,
                "status": info.status,
                "code": info.code,
                "retry-after (s)": info.retry_after_s,
                "after first token": info.after_first_token,
                "labkit retries": decision.retry,
                "wait (s)": round(decision.delay_s, 3) if decision.retry else None,
                "why": decision.reason,
                "counts against endpoint": info.counts_against_endpoint,
            }
        )
    return rows


async def sick_upstream(
    lab: Any, *, n: int, budget_ratio: float = 0.1, min_per_s: float = 0.5, max_attempts: int = 3
) -> dict[str, dict[str, float]]:
    """`n` concurrent calls to a service that answers 503 to everything: the SDK's retries vs labkit's budget.

    Returns `{arm: {"upstream requests", "per caller request", "wall (s)"}}` for "SDK retries (max_retries=2)" and
    "labkit retries, budget <ratio> %" (`RetryBudget(ratio=budget_ratio, min_per_s=min_per_s)`).
    """
    if n < 1:
        raise ValueError("n must be >= 1")
    sim = lab.sims[0]

    def sdk() -> tuple[Chain, OpenAITransport]:
        transport = OpenAITransport(sim.endpoint, max_retries=2)
        return Chain(transport), transport

    def budgeted() -> tuple[Chain, OpenAITransport]:
        transport = OpenAITransport(sim.endpoint)
        budget = RetryBudget(ratio=budget_ratio, min_per_s=min_per_s)
        retry = RetryLayer(RetryPolicy(max_attempts=max_attempts, base_delay_s=0.1), budget=budget)
        return Chain(transport, [retry]), transport

    out: dict[str, dict[str, float]] = {}
    for label, make in (
        ("SDK retries (max_retries=2)", sdk),
        (f"labkit retries, budget {budget_ratio * 100:g} %", budgeted),
    ):
        await sim.areset()
        await sim.aset_faults({"error_rates": {"503": 1.0}})
        chain, transport = make()
        started = time.perf_counter()
        try:
            await asyncio.gather(
                *(chain.complete(f"q{i}", model="gpt-4o", max_tokens=5) for i in range(n)), return_exceptions=True
            )
        finally:
            await transport.aclose()
        elapsed = time.perf_counter() - started
        upstream = (await sim.astats())["requests_total"]
        await sim.areset()
        out[label] = {"upstream requests": upstream, "per caller request": upstream / n, "wall (s)": elapsed}
    return out


#: The phases of the breaker timeline, one third of the run each.
BREAKER_PHASES = ("s0 fails", "s0 and s1 fail", "both recover")


async def breaker_timeline(
    lab: Any,
    *,
    n: int,
    deadline_s: float = 5.0,
    first_token_timeout_s: float = 1.0,
    concurrency: int = 4,
    seed: int = 0,
    breaker: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Two primaries (`s0`, `s1`) with breakers and a retry layer, the third service as a `gpt-4o-mini` fallback.

    First `s0` fails every request (503), then `s1` too, then both recover (`BREAKER_PHASES`). Returns the rows
    (each with `served by` and `phase`), breaker `events` (`{breaker: {event: count}}`, zeros filled in),
    `transitions` (`[time s, breaker, old, new]` from the start of the run), `fallback_share`, `caller_failed`,
    `requests` and `by_phase` (`{phase: {served by: count}}`).
    """
    if n < len(BREAKER_PHASES):
        raise ValueError(f"n must be >= {len(BREAKER_PHASES)}")
    for sim in lab.sims:
        await sim.areset()
    built = resilient_chain(
        lab.endpoints[:2],
        names=["s0", "s1"],
        strategy="round_robin",
        retry=RetryLayer(RetryPolicy(max_attempts=4, base_delay_s=0.05), deadline_s=deadline_s),
        breaker=dict(
            breaker
            if breaker is not None
            else {"failure_ratio": 0.5, "min_requests": 8, "window_s": 2.0, "open_s": 1.0, "half_open_probes": 2}
        ),
        fallbacks=[(lab.endpoints[2], "gpt-4o-mini")],
        first_token_timeout_s=first_token_timeout_s,
        seed=seed,
    )
    phase_len = n // len(BREAKER_PHASES)

    async def switch(i: int) -> None:
        if i == 0:
            await lab.sims[0].aset_faults({"error_rates": {"503": 1.0}})
        elif i == phase_len:
            await lab.sims[1].aset_faults({"error_rates": {"503": 1.0}})
        elif i == 2 * phase_len:
            await lab.sims[0].areset()
            await lab.sims[1].areset()

    t0 = time.monotonic()  # the breakers' clock
    try:
        rows = await run_workload(
            built.chain, len(BREAKER_PHASES) * phase_len, concurrency=concurrency, before=switch, max_tokens=20
        )
    finally:
        await built.aclose()
        for sim in lab.sims:
            await sim.areset()
    for row in rows:
        row["served by"] = row["endpoints"][-1] if row["endpoints"] else "none"
        row["phase"] = BREAKER_PHASES[min(row["i"] // phase_len, len(BREAKER_PHASES) - 1)]
    kinds = sorted({kind for b in built.breakers.values() for kind in b.events})
    served = sorted({row["served by"] for row in rows})
    return {
        "rows": rows,
        "events": {name: {kind: int(b.events.get(kind, 0)) for kind in kinds} for name, b in built.breakers.items()},
        "transitions": sorted(
            [t - t0, name, old, new] for name, b in built.breakers.items() for (t, old, new) in b.transitions
        ),
        "fallback_share": sum(r["served by"].startswith("fallback") for r in rows) / len(rows),
        "caller_failed": sum(not r["ok"] for r in rows),
        "requests": len(rows),
        "by_phase": {
            phase: {name: sum(r["served by"] == name for r in rows if r["phase"] == phase) for name in served}
            for phase in BREAKER_PHASES
        },
    }


# --------------------------------------------------------------------------------------------------------
# Benchmark: python -m labkit.lessons.resilience --bench
# --------------------------------------------------------------------------------------------------------


#: The arms of the headline. "labkit chain" is the chain as shipped: its retry layer resumes a reproducible stream
#: that broke after the first token (verified against the delivered text); "labkit chain, no resume" is the
#: ablation with `RetryLayer(resume_streams=False)`, where such a break reaches the caller as `MidStreamError`.
HEADLINE_ARMS = (
    "no retries",
    "SDK retries (max_retries=2)",
    "SDK retries, timeout = first-token timeout",
    "labkit chain",
    "labkit chain, no resume",
)


async def headline(
    lab: Any,
    *,
    n: int,
    concurrency: int,
    faults: float,
    deadline_s: float,
    first_token_timeout_s: float,
    seed: int,
    arms: Sequence[str] = HEADLINE_ARMS,
) -> dict[str, Any]:
    """The failure share seen by the caller under `faults` injected faults, per arm (see the notebook, part 5).

    Each arm gets `counters` (the retry layer's stats: `resumed`, `resume_diverged`, ...) beside its figures.
    """
    endpoints = lab.endpoints
    names = [f"s{i}" for i in range(len(endpoints))]

    def labkit(**retry_options: Any) -> Resilient:
        return resilient_chain(
            endpoints,
            names=names,
            retry=RetryLayer(
                RetryPolicy(max_attempts=4, base_delay_s=0.1),
                budget=RetryBudget(),
                deadline_s=deadline_s,
                **retry_options,
            ),
            breaker={},
            first_token_timeout_s=first_token_timeout_s,
            seed=seed,
        )

    builders: dict[str, Callable[[], Resilient]] = {
        "no retries": lambda: resilient_chain(endpoints, names=names, strategy="round_robin"),
        "SDK retries (max_retries=2)": lambda: resilient_chain(
            endpoints, names=names, strategy="round_robin", sdk_max_retries=2
        ),
        "SDK retries, timeout = first-token timeout": lambda: resilient_chain(
            endpoints,
            names=names,
            strategy="round_robin",
            sdk_max_retries=2,
            sdk_timeout=httpx.Timeout(first_token_timeout_s, connect=5.0),
        ),
        "labkit chain": lambda: labkit(),  # as shipped: the retry layer's default resumes reproducible streams
        "labkit chain, no resume": lambda: labkit(resume_streams=False),
    }
    unknown = set(arms) - set(builders)
    if unknown:
        raise ValueError(f"unknown arm(s) {sorted(unknown)}; choose from {list(builders)}")
    out: dict[str, Any] = {}
    for name in arms:
        build = builders[name]
        for i, sim in enumerate(lab.sims):
            await sim.areset()
            await sim.aset_faults(fault_mix(faults, seed=seed * 100 + i))
        built = build()
        try:
            rows = await run_workload(built.chain, n, concurrency=concurrency, deadline_s=deadline_s + 1.0)
        finally:
            await built.aclose()
        stats = [await sim.astats() for sim in lab.sims]
        summary = summarize_runs(rows)
        prompt = summary["prompt_tokens"] / max(1, n - summary["failed"])
        up = upstream_totals(stats, "gpt-4o", prompt)
        ideal = cost("gpt-4o", summary["prompt_tokens"], summary["completion_tokens"]) or 0.0
        out[name] = {
            **summary,
            **up,
            "extra_upstream_share": up["upstream_requests"] / n - 1.0,
            "delivered_cost_usd": ideal,
            "counters": built.counters(),
            "rows": rows,
        }
    for sim in lab.sims:
        await sim.areset()
    return out


def _bench(args: argparse.Namespace) -> dict[str, Any]:  # pragma: no cover - a tool
    from labkit.lab.services import start_lab

    async def main() -> dict[str, Any]:
        sims = [{"profile": "fast", "seed": args.seed, "ttft": t} for t in (0.03, 0.06, 0.12)]
        lab = await asyncio.to_thread(lambda: start_lab(sims, redis=False, memcached=False))
        try:
            decisions = await decision_table(lab, deadline_s=5.0, seed=args.seed)
            sick = await sick_upstream(lab, n=args.sick_requests)
            timeline = await breaker_timeline(
                lab, n=args.breaker_requests, deadline_s=5.0, first_token_timeout_s=1.0, seed=args.seed
            )
            breaker = {k: v for k, v in timeline.items() if k != "rows"}
            started = time.perf_counter()
            result = _without_rows(
                await headline(
                    lab,
                    n=args.requests,
                    concurrency=args.concurrency,
                    faults=0.05,
                    deadline_s=5.0,
                    first_token_timeout_s=1.0,
                    seed=args.seed,
                )
            )
            head_s = time.perf_counter() - started
            balancing = _without_rows(
                await compare_balancers(lab, n=args.lb_requests, weights=[4, 2, 1], seed=args.seed)
            )
            hedging = _without_rows(await compare_hedging(lab, n=args.hedge_requests, seed=args.seed))
        finally:
            await asyncio.to_thread(lab.stop)
        return {
            "decisions": decisions,
            "sick_upstream": sick,
            "breaker": breaker,
            "balancing": balancing,
            "hedging": hedging,
            "headline": result,
            "headline_wall_s": head_s,
        }

    figures = asyncio.run(main())
    return {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "note": "2 shared cores: latencies are noisy; failure shares and request counts are the robust figures.",
        **figures,
    }


#: Phases of the balancing comparison: what the first backend does in each third of the run.
BALANCING_PHASES: list[tuple[str, dict[str, Any]]] = [
    ("steady", {}),
    ("one slows down", {"slow_first_byte": {"rate": 1.0, "delay_s": 0.5}}),
    ("one fails half its requests", {"error_rates": {"500": 0.5}}),
]


async def compare_balancers(
    lab: Any,
    *,
    n: int,
    strategies: Sequence[str] = ("round_robin", "least_outstanding", "peak_ewma", "weighted"),
    weights: Sequence[float] | None = None,
    phases: Sequence[tuple[str, Mapping[str, Any]]] = BALANCING_PHASES,
    concurrency: int = 8,
    seed: int = 0,
) -> dict[str, Any]:
    """The same workload per strategy; the first backend changes behaviour at each phase (faults at run time).

    Breakers are on (the chain's default), retries off, so what the caller sees is the balancer's doing.
    Returns `{strategy: {"phases": {label: summary}, "picks": {...}, "rows": [...]}}`.
    """
    out: dict[str, Any] = {}
    per_phase = max(1, n // len(phases))
    for strategy in strategies:
        for sim in lab.sims:
            await sim.areset()
        built = resilient_chain(
            lab.endpoints,
            names=[f"s{i}" for i in range(len(lab.sims))],
            strategy=strategy,
            weights=weights if strategy == "weighted" else None,
            breaker={"window_s": 5.0, "min_requests": 10, "open_s": 2.0},
            seed=seed,
        )
        target = lab.sims[0]

        async def before(i: int, target: Any = target) -> None:
            if i % per_phase == 0 and 0 < i // per_phase < len(phases):
                await target.aset_faults({**phases[i // per_phase][1], "seed": seed})

        try:
            rows = await run_workload(built.chain, per_phase * len(phases), concurrency=concurrency, before=before)
        finally:
            await built.aclose()
        for row in rows:
            row["phase"] = phases[min(row["i"] // per_phase, len(phases) - 1)][0]
        out[strategy] = {
            "phases": {label: summarize_runs([r for r in rows if r["phase"] == label]) for label, _ in phases},
            "phase_picks": {label: _picks([r for r in rows if r["phase"] == label]) for label, _ in phases},
            "picks": {k: v["picks"] for k, v in built.balancer.snapshot()["backends"].items()},
            "breakers": {k: dict(b.events) for k, b in built.breakers.items()},
            "rows": rows,
        }
    for sim in lab.sims:
        await sim.areset()
    return out


async def compare_hedging(
    lab: Any,
    *,
    n: int,
    quantile: float = 90.0,
    max_share: float = 0.15,
    tail_rate: float = 0.05,
    tail_delay_s: float = 1.0,
    concurrency: int = 8,
    seed: int = 0,
) -> dict[str, Any]:
    """TTFT without and with hedging when `tail_rate` of first bytes take `tail_delay_s` longer, on every backend."""
    out: dict[str, Any] = {}
    for label, hedge in (
        ("no hedging", None),
        (f"hedge at p{quantile:g}", HedgeLayer(quantile=quantile, min_samples=20, max_share=max_share)),
    ):
        for i, sim in enumerate(lab.sims):
            await sim.areset()
            await sim.aset_faults({"slow_first_byte": {"rate": tail_rate, "delay_s": tail_delay_s}, "seed": seed + i})
        built = resilient_chain(lab.endpoints, names=[f"s{i}" for i in range(len(lab.sims))], hedge=hedge, seed=seed)
        try:
            rows = await run_workload(built.chain, n, concurrency=concurrency)
        finally:
            await built.aclose()
        # a loser cancelled while its service slept on a slow first byte is noticed when the service wakes up
        await asyncio.sleep(tail_delay_s + 0.3)
        stats = [await sim.astats() for sim in lab.sims]
        summary = summarize_runs(rows)
        prompt = summary["prompt_tokens"] / max(1, n - summary["failed"])
        up = upstream_totals(stats, "gpt-4o", prompt)
        out[label] = {
            **summary,
            **up,
            "extra_upstream_share": up["upstream_requests"] / n - 1.0,
            "hedge": built.counters()["hedge"],
            "rows": rows,
        }
    for sim in lab.sims:
        await sim.areset()
    return out


def _picks(rows: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """How many attempts each endpoint got (from the rows' route logs)."""
    counts: dict[str, int] = {}
    for row in rows:
        for name in row.get("endpoints", ()):
            counts[name] = counts.get(name, 0) + 1
    return counts


def _without_rows(result: Mapping[str, Any]) -> dict[str, Any]:
    return {k: {kk: vv for kk, vv in v.items() if kk != "rows"} for k, v in result.items()}


def main(argv: Sequence[str] | None = None) -> int:  # pragma: no cover - a tool
    parser = argparse.ArgumentParser(prog="python -m labkit.lessons.resilience", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bench", action="store_true", help="run the benchmark and write the JSON")
    parser.add_argument("--out", default="build/bench/resilience.json")
    parser.add_argument("--requests", type=int, default=2000, help="requests per arm of the headline")
    parser.add_argument("--lb-requests", type=int, default=600, help="requests per balancing strategy")
    parser.add_argument("--hedge-requests", type=int, default=600, help="requests per hedging arm")
    parser.add_argument("--sick-requests", type=int, default=60, help="calls to the service that fails everything")
    parser.add_argument("--breaker-requests", type=int, default=240, help="requests in the breaker timeline")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not args.bench:
        parser.print_help()
        return 2
    counts = (args.requests, args.lb_requests, args.hedge_requests, args.sick_requests, args.breaker_requests)
    if min(counts) < 10 or args.concurrency < 1:
        parser.error("request counts must be >= 10 and concurrency >= 1")
    figures = _bench(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2), encoding="utf-8")
    for row in figures["decisions"]:
        print(f"{row['failure']:40s} retried: {row['labkit retries']!s:5s} ({row['why']})")
    for arm, r in figures["sick_upstream"].items():
        print(f"sick upstream, {arm:35s} {r['per caller request']:.2f} upstream requests per call")
    b = figures["breaker"]
    print(
        f"breaker timeline: {sum(e.get('opened', 0) for e in b['events'].values())} openings, fallback answered "
        f"{b['fallback_share']:.1%}, caller failures {b['caller_failed']} of {b['requests']}"
    )
    for arm, r in figures["headline"].items():
        print(
            f"{arm:45s} failed {r['failed_share']:7.3%}  upstream +{r['extra_upstream_share']:6.1%}  "
            f"cost ${r['cost_usd']:.4f} (delivered ${r['delivered_cost_usd']:.4f})"
        )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
