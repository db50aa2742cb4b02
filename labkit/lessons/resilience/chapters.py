"""The plumbing of chapters 09 (retries) and 10 (breakers, balancing, hedging), so their cells show mechanisms.

A harness that sends calls under injected faults and reads what the services counted (`measure`,
`upstream_per_call`), a progress bar (`Ticker`), the arrival peaks of retry schedules (`arrival_peaks`), and one
function per chart, table and results dict. Nothing here is a mechanism the chapters teach: those are written in
the notebooks' cells, and labkit's versions live in `labkit.layers`.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from labkit.lab import viz
from labkit.lab.progress import Ticker
from labkit.lessons.resilience.headline import HEADLINE_ARMS
from labkit.lessons.resilience.routing import BALANCING_PHASES
from labkit.lessons.resilience.workload import fault_mix

__all__ = [
    "HEADLINE_ARMS",
    "Ticker",
    "arrival_peaks",
    "balancer_chart",
    "balancer_table",
    "balancing_phases",
    "breakers_results",
    "breakers_seen",
    "headline_chart",
    "headline_table",
    "hedge_chart",
    "hedge_table",
    "measure",
    "retries_results",
    "retries_seen",
    "set_faults",
    "share_of",
    "timed",
    "timeline_chart",
    "upstream_per_call",
]


# -- the harness ---------------------------------------------------------------------------------------------


async def set_faults(lab: Any, faults: float | Mapping[str, Any] | None, seed: int = 0) -> None:
    """Reset every service of the lab (counters too) and switch on `faults`: a share for `fault_mix` (each service
    its own fault seed, so they do not fail in lockstep), a fault config, or None for none."""
    for i, sim in enumerate(lab.sims):
        await sim.areset()
        if isinstance(faults, (int, float)):
            await sim.aset_faults(fault_mix(float(faults), seed=seed * 100 + i))
        elif faults:
            await sim.aset_faults(dict(faults))


async def _upstream(lab: Any) -> int:
    return sum([(await sim.astats())["requests_total"] for sim in lab.sims])


async def measure(
    lab: Any,
    call: Callable[[int], Awaitable[Any]],
    n: int,
    *,
    faults: float | Mapping[str, Any] | None,
    concurrency: int = 16,
    deadline_s: float = 5.0,
    seed: int = 0,
    interactive: bool = True,
    title: str = "calls",
) -> dict[str, Any]:
    """Send `call(0)` ... `call(n-1)`, `concurrency` at a time, under `faults`; each fails for the caller if it
    raised or took longer than `deadline_s`. Returns the failed share, the errors by class and the upstream
    requests the services counted per call. Faults are switched off afterwards."""
    await set_faults(lab, faults, seed)
    bar = Ticker(title, n, interactive=interactive)
    errors: dict[str, int] = {}
    left = iter(range(n))

    async def worker() -> None:
        for i in left:
            try:
                async with asyncio.timeout(deadline_s):
                    await call(i)
            except Exception as error:  # the caller's view: any exception, or its own deadline, is a failure
                name = "caller deadline" if type(error) is TimeoutError else type(error).__name__
                errors[name] = errors.get(name, 0) + 1
            bar.tick()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    bar.finish()
    upstream = await _upstream(lab)
    await set_faults(lab, None)
    failed = sum(errors.values())
    return {
        "calls": n,
        "failed": failed,
        "failed_share": failed / n if n else 0.0,
        "upstream_per_call": upstream / n if n else 0.0,
        "wall_s": wall,
        "errors": errors,
    }


async def upstream_per_call(
    lab: Any, call: Callable[[int], Awaitable[Any]], n: int, *, faults: Mapping[str, Any]
) -> float:
    """Upstream requests per call when every call meets `faults` (e.g. a service that answers 503 to all)."""
    row = await measure(lab, call, n, faults=faults, concurrency=n, deadline_s=60.0, interactive=False, title="")
    return row["upstream_per_call"]


def arrival_peaks(
    schedules: Mapping[str, Callable[[int, random.Random], float]], *, clients: int, retries: int, seed: int = 0
) -> dict[str, int]:
    """`clients` fail at t=0 and retry `retries` times, waiting `wait(n, rng)` before the n-th retry (n from 1):
    the most retries that arrive in one 100 ms slot, per schedule (the load spike a recovering server meets)."""
    peaks = {}
    for name, wait in schedules.items():
        rng, arrivals = random.Random(seed), []
        for _ in range(clients):
            t = 0.0
            for n in range(1, retries + 1):
                t += wait(n, rng)
                arrivals.append(t)
        slots = np.floor(np.asarray(arrivals) / 0.1).astype(int)
        peaks[name] = int(np.bincount(slots).max())
    return peaks


# -- chapter 09: tables, chart, results ----------------------------------------------------------------------


def headline_table(head: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """One row per arm of the headline: failures as the caller saw them, what they cost upstream."""
    return viz.table(
        {
            arm: {
                "failed": r["failed"],
                "failed %": 100 * r["failed_share"],
                "extra upstream %": 100 * r["extra_upstream_share"],
                "p50 ms": r["total_p50_ms"],
                "p99 ms": r["total_p99_ms"],
                "errors": ", ".join(f"{v}x {k}" for k, v in sorted(r["errors"].items())) or "none",
            }
            for arm, r in head.items()
        }
    )


def headline_chart(head: Mapping[str, Mapping[str, Any]], fault_share: float) -> go.Figure:
    """The failed share per arm, titled with the first arm's and the best arm's."""
    shares = {arm: 100 * r["failed_share"] for arm, r in head.items()}
    first, best = next(iter(shares)), min(shares, key=lambda a: shares[a])
    title = (
        f"Under {fault_share:.0%} faults: {first} failed {shares[first]:.2f} % of requests, {best} {shares[best]:.2f} %"
    )
    return viz.bars(shares, title=title, unit="requests failed for the caller (%)", text_format=".2f")


def retries_seen(measured: Mapping[str, Any]) -> pd.DataFrame:
    """The run's numbers of chapter 09 in one small table (failed share and upstream requests per call)."""
    rows: dict[str, dict[str, Any]] = {}
    for key, label in (("advice", "guide's @retry over the SDK"), ("minimal", "minimal loop (full jitter)")):
        if key in measured:
            rows[label] = {
                "failed %": 100 * measured[key]["failed_share"],
                "upstream/call": measured[key]["upstream_per_call"],
            }
    for label, row in measured.get("sick_upstream", {}).items():
        rows[f"sick upstream: {label}"] = {"failed %": 100.0, "upstream/call": row["per caller request"]}
    if "budget_minimal" in measured:
        rows["sick upstream: minimal budget"] = {"failed %": 100.0, "upstream/call": measured["budget_minimal"]}
    for arm, r in measured.get("headline", {}).items():
        rows[f"streams: {arm}"] = {"failed %": 100 * r["failed_share"], "upstream/call": 1 + r["extra_upstream_share"]}
    return viz.table(rows)


def retries_results(measured: Mapping[str, Any]) -> dict[str, Any]:
    """Chapter 09's results JSON: every section's figures, the headline without its per-request rows."""
    out = {k: v for k, v in measured.items() if k != "headline"}
    if "headline" in measured:
        out["headline"] = {
            arm: {k: v for k, v in r.items() if k not in ("rows", "counters")} | {"retry": r["counters"]["retry"]}
            for arm, r in measured["headline"].items()
        }
    return out


# -- chapter 10: the breaker timeline, the balancers, hedging -------------------------------------------------


def timeline_chart(bt: Mapping[str, Any]) -> go.Figure:
    """Which endpoint answered each request over time (x: failed), with the breakers' transitions marked."""
    fig = go.Figure()
    served = sorted({r["served by"] for r in bt["rows"]})
    for name in served:
        rows = [r for r in bt["rows"] if r["served by"] == name]
        fig.add_trace(
            go.Scatter(
                x=[r["t_end"] for r in rows],
                y=[name] * len(rows),
                mode="markers",
                name=name,
                marker={"symbol": ["circle" if r["ok"] else "x" for r in rows], "size": 6},
            )
        )
    for t, name, old, new in bt["transitions"]:
        fig.add_annotation(x=t, y=name, text=f"{old}→{new}", showarrow=True, arrowhead=1, ay=-30, font={"size": 9})
    opened = sum(e.get("opened", 0) for e in bt["events"].values())
    title = (
        f"Breakers opened {opened} time(s), the fallback answered {bt['fallback_share']:.0%}; "
        f"the caller saw {bt['caller_failed']} failure(s) in {bt['requests']}"
    )
    return viz._layout(fig, title, "time (s)", "endpoint that answered")


def balancing_phases(names: Sequence[str] | None = None) -> list[tuple[str, dict[str, Any]]]:
    """The phases of labkit's balancer comparison named in `names`, in their order (None: all of them)."""
    known = [label for label, _ in BALANCING_PHASES]
    unknown = set(names or ()) - set(known)
    if unknown:
        raise ValueError(f"unknown phase(s) {sorted(unknown)}; choose from {known}")
    return [(label, dict(faults)) for label, faults in BALANCING_PHASES if names is None or label in names]


def share_of(picks: Mapping[str, int], name: str = "s0") -> float:
    """The share of attempts `name` got among `picks` (`{endpoint: attempts}`)."""
    return picks.get(name, 0) / max(1, sum(picks.values()))


def balancer_table(balancing: Mapping[str, Any]) -> pd.DataFrame:
    """Per strategy and phase: mean and p99 request time, failed share, and the share `s0` got."""
    return viz.table(
        [
            {
                "strategy": strategy,
                "phase": phase,
                "mean ms": s["total_mean_ms"],
                "p99 ms": s["total_p99_ms"],
                "failed %": 100 * s["failed_share"],
                "s0 share %": 100 * share_of(r["phase_picks"][phase]),
            }
            for strategy, r in balancing.items()
            for phase, s in r["phases"].items()
        ]
    ).set_index(["strategy", "phase"])


def balancer_chart(balancing: Mapping[str, Any], phase: str = "one slows down") -> go.Figure:
    """p50/p95/p99 per strategy in one phase, titled with the best and worst mean and what each sent to `s0`."""
    rows = {s: {q: r["phases"][phase][f"total_{q}_ms"] for q in ("p50", "p95", "p99")} for s, r in balancing.items()}
    means = {s: r["phases"][phase]["total_mean_ms"] for s, r in balancing.items()}
    best, worst = min(means, key=lambda s: means[s]), max(means, key=lambda s: means[s])
    shares = {s: share_of(r["phase_picks"][phase]) for s, r in balancing.items()}
    title = (
        f"When s0 slows down, {best} sends it {shares[best]:.0%} (mean {means[best]:.0f} ms); "
        f"{worst} {shares[worst]:.0%} (mean {means[worst]:.0f} ms)"
    )
    return viz.grouped_bars(rows, title=title, unit="request time (ms)")


def hedge_table(hedging: Mapping[str, Any]) -> pd.DataFrame:
    """Per arm: TTFT percentiles, extra upstream requests, hedges sent and won, disconnects (cancelled losers) and
    cost."""
    keys = ("ttft_p50_ms", "ttft_p95_ms", "ttft_p99_ms", "extra_upstream_share", "disconnects", "cost_usd")
    rows = {}
    for arm, r in hedging.items():
        stats = r.get("hedge") or {}
        rows[arm] = {
            **{k: r[k] for k in keys},
            "hedges_sent": stats.get("hedged", 0),
            "hedges_won": stats.get("hedge_won", 0),
        }
    return viz.table(rows)


def hedge_chart(hedging: Mapping[str, Any]) -> go.Figure:
    """TTFT p50/p95/p99 per arm, titled with the p99 before and after and the extra requests."""
    arms = list(hedging)
    rows = {a: {q: hedging[a][f"ttft_{q}_ms"] for q in ("p50", "p95", "p99")} for a in arms}
    before, after = hedging[arms[0]]["ttft_p99_ms"], hedging[arms[-1]]["ttft_p99_ms"]
    extra = hedging[arms[-1]]["extra_upstream_share"]
    title = f"{arms[-1]}: p99 time to first token {before:.0f} → {after:.0f} ms for {extra:+.0%} upstream requests"
    return viz.grouped_bars(rows, title=title, unit="time to first token (ms)")


def breakers_seen(measured: Mapping[str, Any]) -> pd.DataFrame:
    """The run's numbers of chapter 10 in one small table."""
    rows: dict[str, Any] = {}
    if "minimal_breaker" in measured:
        m = measured["minimal_breaker"]
        rows["minimal breaker: upstream requests / calls to a sick service"] = f"{m['upstream']} / {m['calls']}"
    if "minimal_p2c" in measured:
        for arm, share in measured["minimal_p2c"].items():
            rows[f"minimal {arm}: share to the slow s0"] = f"{share:.0%}"
    if "minimal_hedge" in measured:
        for arm, row in measured["minimal_hedge"].items():
            rows[f"minimal {arm}: p99 ms"] = f"{row['p99_ms']:.0f}"
    if "breaker" in measured:
        b = measured["breaker"]
        rows["labkit breakers: fallback share"] = f"{b['fallback_share']:.0%}"
        rows["labkit breakers: caller failures"] = f"{b['caller_failed']} / {b['requests']}"
    for strategy, r in measured.get("balancing", {}).items():
        rows[f"labkit {strategy}: mean ms while s0 is slow"] = f"{r['phases']['one slows down']['total_mean_ms']:.0f}"
    for arm, r in measured.get("hedging", {}).items():
        rows[f"labkit {arm}: p99 TTFT ms"] = f"{r['ttft_p99_ms']:.0f}"
    return pd.DataFrame({"value": rows})


def breakers_results(measured: Mapping[str, Any]) -> dict[str, Any]:
    """Chapter 10's results JSON: per-request rows dropped."""
    out = dict(measured)
    if "breaker" in out:
        out["breaker"] = {k: v for k, v in out["breaker"].items() if k != "rows"}
    if "balancing" in out:
        out["balancing"] = {
            s: {k: r[k] for k in ("phases", "picks", "phase_picks", "breakers")} for s, r in out["balancing"].items()
        }
    if "hedging" in out:
        out["hedging"] = {a: {k: v for k, v in r.items() if k != "rows"} for a, r in out["hedging"].items()}
    return out


async def timed(
    lab: Any,
    call: Callable[[int], Awaitable[Any]],
    n: int,
    *,
    faults: Mapping[str, Any] | None,
    on: tuple[int, ...] | None = None,
    concurrency: int = 8,
    interactive: bool = True,
    title: str = "calls",
) -> dict[str, Any]:
    """Send `call(0)` ... `call(n-1)` under `faults` (on the services numbered `on`, default all; a fault seed per
    service) and time each: p50/p90/p99 in ms, failed share, upstream requests per call and per service (`upstream`).
    Faults are switched off afterwards."""
    for i, sim in enumerate(lab.sims):
        await sim.areset()
        if faults and (on is None or i in on):
            await sim.aset_faults({**faults, "seed": i})
    bar = Ticker(title, n, interactive=interactive)
    seconds: list[float] = []
    failed = 0
    left = iter(range(n))

    async def worker() -> None:
        nonlocal failed
        for i in left:
            started = time.perf_counter()
            try:
                await call(i)
                seconds.append(time.perf_counter() - started)
            except Exception:
                failed += 1
            bar.tick()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    bar.finish()
    per_sim = {f"s{i}": (await sim.astats())["requests_total"] for i, sim in enumerate(lab.sims)}
    await set_faults(lab, None)
    upstream = sum(per_sim.values())
    ms = np.asarray(seconds) * 1000 if seconds else np.asarray([float("nan")])
    return {
        "calls": n,
        "failed": failed,
        "failed_share": failed / n if n else 0.0,
        "upstream": per_sim,
        "p50_ms": float(np.percentile(ms, 50)),
        "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)),
        "upstream_per_call": upstream / n if n else 0.0,
    }
