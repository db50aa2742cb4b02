"""Lesson 06 in one place: assemble the resilience layers, and the experiments the notebook and benchmark share.

The chain (DESIGN §3), outermost first::

    [metrics] -> RetryLayer -> HedgeLayer -> Balancer -> per endpoint: CircuitBreaker -> StreamGuard -> transport

`resilient_chain()` builds it from a few arguments; each piece stays usable alone. The retry and hedge layers
talk to the balancer only through two request controls: `avoid_endpoints` (names the next attempt should not
use) and `route_log` (a list the balancer appends the chosen name to). The breaker is the per-endpoint layer the
balancer consults through `allows()`. Nothing imports anything else's layer.

`python -m labkit.resilience --bench [--out build/bench/resilience.json]` runs the headline (failure share as the
caller sees it with no retries, the SDK's retries and labkit's chain, under 5 % injected faults), the balancer
comparison and the hedging measurement against simulated services, and writes every figure as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import platform
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from labkit.balancer import Backend, Balancer
from labkit.breaker import CircuitBreaker
from labkit.chain import Chain, Layer
from labkit.endpoint import Endpoint
from labkit.hedge import HedgeLayer
from labkit.percentiles import percentile
from labkit.pricing import cost
from labkit.retry import RetryLayer
from labkit.streaming import StreamGuard
from labkit.transport import OpenAITransport

__all__ = [
    "Resilient",
    "fault_mix",
    "resilient_chain",
    "run_workload",
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
# Benchmark: python -m labkit.resilience --bench
# --------------------------------------------------------------------------------------------------------


HEADLINE_ARMS = (
    "no retries",
    "SDK retries (max_retries=2)",
    "SDK retries, timeout = first-token timeout",
    "labkit chain",
    "labkit chain + verified resume",
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
    """The failure share seen by the caller under `faults` injected faults, per arm (see the notebook, part 5)."""
    from labkit.retry import RetryBudget, RetryPolicy

    endpoints = lab.endpoints
    names = [f"s{i}" for i in range(len(endpoints))]
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
        "labkit chain": lambda: resilient_chain(
            endpoints,
            names=names,
            retry=RetryLayer(
                RetryPolicy(max_attempts=4, base_delay_s=0.1), budget=RetryBudget(), deadline_s=deadline_s
            ),
            breaker={},
            first_token_timeout_s=first_token_timeout_s,
            seed=seed,
        ),
        "labkit chain + verified resume": lambda: resilient_chain(
            endpoints,
            names=names,
            retry=RetryLayer(
                RetryPolicy(max_attempts=4, base_delay_s=0.1),
                budget=RetryBudget(),
                deadline_s=deadline_s,
                resume_streams=True,
            ),
            breaker={},
            first_token_timeout_s=first_token_timeout_s,
            seed=seed,
        ),
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
    from labkit.services import start_lab

    async def main() -> dict[str, Any]:
        sims = [{"profile": "fast", "seed": args.seed, "ttft": t} for t in (0.03, 0.06, 0.12)]
        lab = await asyncio.to_thread(lambda: start_lab(sims, redis=False, memcached=False))
        try:
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
        return {"headline": result, "headline_wall_s": head_s, "balancing": balancing, "hedging": hedging}

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
    parser = argparse.ArgumentParser(prog="python -m labkit.resilience", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bench", action="store_true", help="run the benchmark and write the JSON")
    parser.add_argument("--out", default="build/bench/resilience.json")
    parser.add_argument("--requests", type=int, default=2000, help="requests per arm of the headline")
    parser.add_argument("--lb-requests", type=int, default=600, help="requests per balancing strategy")
    parser.add_argument("--hedge-requests", type=int, default=600, help="requests per hedging arm")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not args.bench:
        parser.print_help()
        return 2
    if min(args.requests, args.lb_requests, args.hedge_requests) < 10 or args.concurrency < 1:
        parser.error("request counts must be >= 10 and concurrency >= 1")
    figures = _bench(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2), encoding="utf-8")
    for arm, r in figures["headline"].items():
        print(
            f"{arm:45s} failed {r['failed_share']:7.3%}  upstream +{r['extra_upstream_share']:6.1%}  "
            f"cost ${r['cost_usd']:.4f} (delivered ${r['delivered_cost_usd']:.4f})"
        )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
