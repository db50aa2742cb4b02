"""Lesson 10: circuit breakers with a fallback model, balancing strategies, and hedging.

Each experiment builds lessons 09-10's chain from `ChainConfig.preset("resilience")` with the settings it varies
(`labkit.assemble.build_chain`), switches faults on the simulated services while the workload runs, and returns
what the caller saw beside what the breakers, the balancer and the hedge layer did.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from labkit.assemble import ChainConfig, build_chain
from labkit.lessons.resilience.workload import run_workload, summarize_runs, upstream_totals

#: The phases of the breaker timeline, one third of the run each.
BREAKER_PHASES = ("s0 fails", "s0 and s1 fail", "both recover")

#: The breaker settings of the timeline: quick to open and to probe again, so a short run shows every transition.
TIMELINE_BREAKER = {"failure_ratio": 0.5, "min_requests": 8, "window_s": 2.0, "open_s": 1.0, "half_open_probes": 2}


def breaker_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """`CircuitBreaker` keyword arguments (`{"open_s": 1.0}`) as `ChainConfig` settings (`breaker_open_s=1.0`)."""
    return {f"breaker_{name}": value for name, value in settings.items()}


async def breaker_timeline(
    lab: Any,
    *,
    n: int,
    deadline_s: float = 5.0,
    first_token_timeout_s: float = 1.0,
    concurrency: int = 4,
    seed: int = 0,
    breaker: Mapping[str, Any] | None = None,
    tick: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Two primaries (`s0`, `s1`) with breakers and a retry layer, the third service as a `gpt-4o-mini` fallback.

    First `s0` fails every request (503), then `s1` too, then both recover (`BREAKER_PHASES`). `breaker` holds
    `CircuitBreaker` settings (default `TIMELINE_BREAKER`). Returns the rows (each with `served by` and `phase`),
    breaker `events` (`{breaker: {event: count}}`, zeros filled in), `transitions` (`[time s, breaker, old, new]`
    from the start of the run), `fallback_share`, `caller_failed`, `requests` and `by_phase`
    (`{phase: {served by: count}}`).
    """
    if n < len(BREAKER_PHASES):
        raise ValueError(f"n must be >= {len(BREAKER_PHASES)}")
    for sim in lab.sims:
        await sim.areset()
    config = ChainConfig.preset(
        "resilience",
        endpoint_names=("s0", "s1"),
        fallback_models=("gpt-4o-mini",),
        strategy="round_robin",
        retry_base_delay_s=0.05,
        retry_deadline_s=deadline_s,
        first_token_timeout_s=first_token_timeout_s,
        seed=seed,
        **breaker_settings(TIMELINE_BREAKER if breaker is None else breaker),
    )
    built = build_chain(config, lab.endpoints[:3])
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
            built.chain,
            len(BREAKER_PHASES) * phase_len,
            concurrency=concurrency,
            before=switch,
            max_tokens=20,
            tick=tick,
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
    tick: Callable[[], None] | None = None,
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
        config = ChainConfig.preset(
            "resilience",
            retry=False,
            strategy=strategy,
            endpoint_names=tuple(f"s{i}" for i in range(len(lab.sims))),
            weights=tuple(weights) if weights is not None and strategy == "weighted" else None,
            first_token_timeout_s=None,
            seed=seed,
            **breaker_settings({"window_s": 5.0, "min_requests": 10, "open_s": 2.0}),
        )
        built = build_chain(config, lab.endpoints)
        target = lab.sims[0]

        async def before(i: int, target: Any = target) -> None:
            if i % per_phase == 0 and 0 < i // per_phase < len(phases):
                await target.aset_faults({**phases[i // per_phase][1], "seed": seed})

        try:
            rows = await run_workload(
                built.chain, per_phase * len(phases), concurrency=concurrency, before=before, tick=tick
            )
        finally:
            await built.aclose()
        for row in rows:
            row["phase"] = phases[min(row["i"] // per_phase, len(phases) - 1)][0]
        assert built.balancer is not None
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
    tick: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """TTFT without and with hedging when `tail_rate` of first bytes take `tail_delay_s` longer, on every backend."""
    out: dict[str, Any] = {}
    plain = ChainConfig.preset(
        "resilience",
        retry=False,
        breaker=False,
        endpoint_names=tuple(f"s{i}" for i in range(len(lab.sims))),
        first_token_timeout_s=None,
        seed=seed,
    )
    hedged = plain.replace(hedge=True, hedge_quantile=quantile, hedge_min_samples=20, hedge_max_share=max_share)
    for label, config in (("no hedging", plain), (f"hedge at p{quantile:g}", hedged)):
        for i, sim in enumerate(lab.sims):
            await sim.areset()
            await sim.aset_faults({"slow_first_byte": {"rate": tail_rate, "delay_s": tail_delay_s}, "seed": seed + i})
        built = build_chain(config, lab.endpoints)
        try:
            rows = await run_workload(built.chain, n, concurrency=concurrency, tick=tick)
        finally:
            await built.aclose()
        stats = await _settled_stats(lab, built.hedge, wait_s=tail_delay_s + 0.3)
        summary = summarize_runs(rows)
        prompt = summary["prompt_tokens"] / max(1, n - summary["failed"])
        up = upstream_totals(stats, "gpt-4o", prompt)
        out[label] = {
            **summary,
            **up,
            "extra_upstream_share": up["upstream_requests"] / n - 1.0,
            "hedge": built.hedge.stats.as_dict() if built.hedge is not None else None,
            "rows": rows,
        }
    for sim in lab.sims:
        await sim.areset()
    return out


async def _settled_stats(lab: Any, hedge: Any, *, wait_s: float) -> list[dict[str, Any]]:
    """The services' counters once the hedge's cancelled losers have reached them.

    A loser cancelled while its service slept on a slow first byte is noticed only when the service wakes up, up to
    `wait_s` later, so the counters are read again until every cancelled loser shows as a disconnect or `wait_s`
    passed; without a hedge (`hedge` None) there is no loser to wait for.
    """
    deadline = time.monotonic() + (wait_s if hedge is not None else 0.0)
    while True:
        stats = [await sim.astats() for sim in lab.sims]
        settled = hedge is None or sum(s["disconnects"] for s in stats) >= hedge.stats.losers_cancelled
        if settled or time.monotonic() >= deadline:
            return stats
        await asyncio.sleep(0.05)


def _picks(rows: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """How many attempts each endpoint got (from the rows' route logs)."""
    counts: dict[str, int] = {}
    for row in rows:
        for name in row.get("endpoints", ()):
            counts[name] = counts.get(name, 0) + 1
    return counts


__all__ = [
    "BALANCING_PHASES",
    "BREAKER_PHASES",
    "TIMELINE_BREAKER",
    "breaker_settings",
    "breaker_timeline",
    "compare_balancers",
    "compare_hedging",
]
