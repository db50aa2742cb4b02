"""The capstone's experiments on running services: one measured run, the throughput ladder, the concurrency test,
the naive-vs-full comparison and the ablation.

Throughput is defined honestly: the highest offered rate (requests/s, Poisson) a client *sustains* (at most
`ERROR_BUDGET` of requests fail or time out), found by doubling the rate from the table's rate. Both clients climb
the same ladder against the same services; the ladder's resolution is a factor of 2, so a "≥" marks a client that
sustained the top rung (its real ceiling is higher).
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from labkit.lessons.capstone.run import Call, chain_caller, naive_caller, run_open_loop
from labkit.lessons.capstone.table import ablation_shares, before_after, best_cost_change, summarize
from labkit.lessons.capstone.workload import Workload, WorkloadSpec, burst, generate, settings
from labkit.percentiles import percentile

#: A rate is "sustained" while at most this share of its requests fail or time out (the throughput row's rule).
ERROR_BUDGET = 0.02


async def max_sustainable_rate(
    run_at: Callable[[float, int], Awaitable[dict[str, Any]]],
    *,
    start_rate: float,
    max_rate: float,
    error_budget: float = ERROR_BUDGET,
    refine: int = 1,
    floor_rate: float | None = None,
) -> dict[str, Any]:
    """Double the offered rate from `start_rate` until the client fails a step (more than `error_budget` failed or
    timed out) or `max_rate` is passed; then `refine` bisection steps (geometric) between the last rate sustained
    (or `floor_rate`, one known to be sustained) and the first that failed. `run_at(rate, step)` runs one step and
    returns its `summarize` dict. The answer is the completed rate of the highest sustained step."""
    if not 0 < start_rate <= max_rate:
        raise ValueError("need 0 < start_rate <= max_rate")
    steps: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    k = 0

    async def step(rate: float) -> bool:
        nonlocal best, k
        s = await run_at(rate, k)
        k += 1
        ok = s["error_rate"] <= error_budget
        steps.append({"offered_rps": rate, "completed_rps": s["completed_rps"], "error_rate": s["error_rate"],
                      "p95_ttfb_s": s["p95_ttfb_s"], "sustained": ok})  # fmt: skip
        if ok and (best is None or rate > best["offered_rps"]):
            best = steps[-1]
        return ok

    rate, low, high = start_rate, floor_rate, None
    while rate <= max_rate * (1 + 1e-9):
        if not await step(rate):
            high = rate
            break
        low, rate = rate, rate * 2
    for _ in range(refine if high is not None and low is not None else 0):
        middle = math.sqrt(low * high)
        if await step(middle):
            low = middle
        else:
            high = middle
    return {
        "throughput_rps": best["completed_rps"] if best is not None else None,
        "sustained_rps": best["offered_rps"] if best is not None else None,
        "first_failed_rps": high,
        "steps": steps,
        "capped": high is None,  # sustained the top rung: the real ceiling is higher
        "error_budget": error_budget,
    }


def start_capstone_lab(*, profile: str | None = None, endpoints: int | None = None, seed: int = 0) -> Any:
    """The simulated services (each with the file's limits and the workloads' fault mix) and Redis."""
    from labkit.lab.services import start_lab
    from labkit.lessons.resilience import fault_mix

    conf = settings()
    limits = conf["limits_per_endpoint"]
    faults = fault_mix(0.05, retry_after_s=0.5)
    # The same seed for every endpoint: replicas of one deployment give the same answer to the same request (what
    # the retry layer's stream resumption relies on); their faults are seeded apart (`set_faults`).
    sims = [
        {
            "profile": profile or conf["profile"],
            "rpm": limits["rpm"],
            "tpm": limits["tpm"],
            "faults": faults,
            "seed": seed,
        }
        for _ in range(endpoints or conf["endpoints"])
    ]
    return start_lab(sims=sims, redis=True, memcached=False, seed=seed)


async def set_faults(lab: Any, total: float, retry_after_s: float, *, scale: float = 1.0) -> None:
    """Reset each simulated service, then set the fault mix and the limits (enforced per second, as OpenAI may:
    a full bucket holds one second of the RPM/TPM, not a whole minute). `scale` > 1 multiplies the limits for a
    time-compressed lab (`labkit.lessons.capstone.arms`)."""
    from labkit.lessons.resilience import fault_mix

    limits = settings()["limits_per_endpoint"]
    for i, sim in enumerate(lab.sims):
        await sim.areset()
        await sim.aset_faults(fault_mix(total, retry_after_s=retry_after_s, seed=1000 + i))
        await sim.aset_limits(
            rpm=round(limits["rpm"] * scale), tpm=round(limits["tpm"] * scale), burst_s=limits.get("burst_s", 1.0)
        )


async def await_idle(lab: Any, *, timeout_s: float = 30.0, poll_s: float = 0.05) -> float:
    """Wait until no simulated service is still generating (no active or queued sequence); the seconds waited.

    A caller that gives up does not stop the service: a whole answer the previous run abandoned is generated to
    its end (as a real provider bills and computes it). Without this wait the next run's first requests queue
    behind that work, and the arm measured after "before" (whose uncapped answers it abandons at its patience)
    pays for it (measured: labkit's average response 0.14 s alone, 0.8-2.1 s right after "before", 150 requests
    at 8x). Gives up after `timeout_s` (a hung request can hold a connection but no sequence)."""
    import asyncio

    loop = asyncio.get_running_loop()
    start = loop.time()
    while loop.time() - start < timeout_s:
        stats = [await sim.astats() for sim in lab.sims]
        if all(s.get("active_sequences", 0) == 0 and s.get("queued", 0) == 0 for s in stats):
            break
        await asyncio.sleep(poll_s)
    return loop.time() - start


async def measure(
    lab: Any,
    client: str | Any,
    workload: Workload,
    *,
    model: str = "gpt-4o",
    patience_s: float = 10.0,
    monthly_requests: float = 1_000_000,
    naive_cache: str = "redis",
    prompt_tokens: Sequence[int] | None = None,
    keep: bool = False,
    max_tokens: int | str | None = "spec",
    scale: float = 1.0,
) -> dict[str, Any]:
    """One run: fresh services state, a fresh client (`"naive"` or a `ChainConfig`), the workload, its summary.

    With `keep=True` the client is returned open in `result["client"]` (the ladder reuses it, caches warm).
    `max_tokens`: `"spec"` sends the workload's, None sends none. `scale`: the lab's time compression (limits).
    """
    from labkit.assemble import ChainConfig, build_chain
    from labkit.lessons.naive import NaiveClient

    limit = workload.spec.max_tokens if max_tokens == "spec" else max_tokens
    assert limit is None or isinstance(limit, int)
    await await_idle(lab, timeout_s=60.0 / scale)  # the previous run's abandoned answers are not this run's load
    await set_faults(lab, workload.spec.fault_total, workload.spec.retry_after_s, scale=scale)
    if client == "naive":
        naive = NaiveClient(lab.endpoints[0], cache=naive_cache, redis_url=lab.redis.url if lab.redis else None)
        naive.clear()  # its Redis keys outlive the client: every run starts as cold as the chain's caches
        call, closer, describe = naive_caller(naive, model=model, max_tokens=limit), naive, None
    elif isinstance(client, ChainConfig):
        assembled = build_chain(client, lab)
        call = chain_caller(assembled, model=model, max_tokens=limit)
        closer, describe = assembled, assembled
    else:  # an already built client, reused (the ladder)
        call, closer, describe = client["call"], client["closer"], client.get("describe")
    summary = await run_workload(
        lab,
        call,
        workload,
        patience_s=patience_s,
        model=model,
        monthly_requests=monthly_requests,
        prompt_tokens=prompt_tokens,
    )
    if describe is not None:
        summary["layers"] = {"on": describe.on, "off": describe.off}
        summary["counters"] = jsonable(describe.counters())
    elif client == "naive":
        summary["counters"] = naive.stats()
    if keep:
        summary["client"] = {"call": call, "closer": closer, "describe": describe}
    else:
        await closer.aclose()
    return summary


async def run_workload(
    lab: Any,
    call: Call,
    workload: Workload,
    *,
    patience_s: float,
    model: str,
    monthly_requests: float,
    prompt_tokens: Sequence[int] | None = None,
) -> dict[str, Any]:
    async def snapshot() -> list[dict[str, Any]]:
        return [await sim.astats() for sim in lab.sims]

    async def snapshot_when_idle() -> list[dict[str, Any]]:
        await await_idle(lab)  # answers a caller abandoned (or a warm-up left unawaited) are generated, and billed
        return await snapshot()

    # the services' counters before the first request and after the last: cost is counted over the whole run,
    # warm-up included (a window starting mid-run would also count the warm-up's answers still being generated)
    start = await snapshot() if lab.sims else None
    result = await run_open_loop(call, workload, patience_s=patience_s, on_end=snapshot_when_idle)
    result.boundary_stats = start
    return summarize(result, workload, model=model, monthly_requests=monthly_requests, prompt_tokens=prompt_tokens)


def jsonable(value: Any) -> Any:
    """`value` as plain JSON types (what cannot be serialised becomes its `str`), for the results file."""
    return json.loads(json.dumps(value, default=str))


async def capacity(
    lab: Any,
    client: Mapping[str, Any],
    spec: WorkloadSpec,
    *,
    start_rate: float,
    max_rate: float,
    step_s: float,
    patience_s: float,
    model: str = "gpt-4o",
    refine: int = 1,
    floor_rate: float | None = None,
    error_budget: float = ERROR_BUDGET,
) -> dict[str, Any]:
    """The throughput row: the doubling ladder with an open client (caches warm from the table's run)."""

    async def run_at(rate: float, k: int) -> dict[str, Any]:
        await set_faults(lab, spec.fault_total, spec.retry_after_s)
        wl = generate(spec.replace(rate_per_s=rate, duration_s=step_s, warmup_s=0.0, seed=spec.seed + 101 + k))
        return await run_workload(lab, client["call"], wl, patience_s=patience_s, model=model, monthly_requests=1)

    return await max_sustainable_rate(
        run_at,
        start_rate=start_rate,
        max_rate=max_rate,
        refine=refine,
        floor_rate=floor_rate,
        error_budget=error_budget,
    )


async def concurrency_test(
    lab: Any, client: Mapping[str, Any], workload: Workload, *, users: int, patience_s: float
) -> dict[str, Any]:
    """`users` requests at the same instant through an open (warm) client: the "1000 concurrent" objective."""
    if users < 1:
        raise ValueError("users must be at least 1")
    await set_faults(lab, workload.spec.fault_total, workload.spec.retry_after_s)
    result = await run_open_loop(client["call"], burst(workload, users), patience_s=patience_s)
    ok = [r for r in result.rows if r["ok"]]
    ttfb = [r["ttfb_s"] for r in ok]
    return {
        "users": users,
        "peak_outstanding": result.peak_outstanding,
        "availability": len(ok) / len(result.rows) if result.rows else 0.0,
        "errors": dict(Counter(r["error"] for r in result.rows if not r["ok"])),
        "p95_ttfb_s": percentile(ttfb, 95),
        "avg_response_s": statistics.fmean(ttfb) if ttfb else None,
        "hit_rate": sum(1 for r in ok if r["upstream"] is False) / len(ok) if ok else 0.0,
        "wall_s": result.wall_s,
    }


async def compare(
    lab: Any,
    spec: WorkloadSpec,
    *,
    full: Any = None,
    patience_s: float = 8.0,
    ladder: bool = True,
    ladder_step_s: float = 3.0,
    ladder_refine: int = 1,
    max_rate: float = 640.0,
    burst_users: int = 0,
    naive_cache: str = "redis",
    model: str = "gpt-4o",
    monthly_requests: float = 1_000_000,
) -> dict[str, Any]:
    """Naive vs the full chain on one workload: both summaries, the ceiling, the table; the throughput ladder for
    each (caches warm from the table's run); with `burst_users`, the concurrency test on the warm full chain."""
    from labkit.assemble import ChainConfig

    full = full or ChainConfig()
    workload = generate(spec)
    tokens = workload.prompt_tokens()
    out: dict[str, Any] = {"spec": dataclasses.asdict(spec), "ceiling": workload.ceiling()}
    for name, client in (("naive", "naive"), ("full", full)):
        s = await measure(
            lab,
            client,
            workload,
            model=model,
            patience_s=patience_s,
            naive_cache=naive_cache,
            monthly_requests=monthly_requests,
            prompt_tokens=tokens,
            keep=True,
        )
        opened = s.pop("client")
        sustained_here = s["error_rate"] <= ERROR_BUDGET
        if ladder and sustained_here:
            s["ladder"] = await capacity(
                lab,
                opened,
                spec,
                start_rate=spec.rate_per_s * 2,
                max_rate=max_rate,
                step_s=ladder_step_s,
                patience_s=patience_s,
                model=model,
                refine=ladder_refine,
                floor_rate=spec.rate_per_s,
            )
            top = s["ladder"]["throughput_rps"]
            s["throughput_rps"] = top if top is not None else s["completed_rps"]
            ladder_ = s["ladder"]
            if ladder_["capped"]:
                s["throughput_note"] = ">= (sustained the top rung)"
            elif ladder_["sustained_rps"] is not None:
                up, down = ladder_["sustained_rps"], ladder_["first_failed_rps"]
                s["throughput_note"] = f"(sustained {up:.0f}/s offered, failed at {down:.0f}/s)"
            else:
                s["throughput_note"] = f"(failed at {ladder_['first_failed_rps']:.0f}/s)"
        else:
            s["throughput_rps"] = s["completed_rps"]
            s["throughput_note"] = "at the table's rate (no ladder)" if sustained_here else "not sustained"
        if name == "full" and burst_users:
            out["concurrency"] = await concurrency_test(lab, opened, workload, users=burst_users, patience_s=patience_s)
        await opened["closer"].aclose()
        out[name] = s
    ceiling = out["ceiling"]["ceiling"]
    out["hit_share_of_ceiling"] = out["full"]["hit_rate"] / ceiling if ceiling else None
    out["min_upstream_requests"] = len({item.meaning for item in workload.items})
    out["best_cost_change"] = best_cost_change(
        out["min_upstream_requests"], out["naive"]["upstream"]["upstream_requests"]
    )
    out["table"] = before_after(out["naive"], out["full"])
    return out


async def ablation(
    lab: Any,
    spec: WorkloadSpec,
    switches: Sequence[str],
    *,
    patience_s: float = 8.0,
    model: str = "gpt-4o",
    monthly_requests: float = 1_000_000,
    progress: Callable[[str], None] | None = None,
    baseline: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The full chain with each of `switches` removed in turn (`"a+b"` removes two), plus naive and full, on the
    same workload. A `compare` result on the very same spec may be passed as `baseline`: its naive and full runs
    are reused instead of run again."""
    from labkit.assemble import ChainConfig

    workload = generate(spec)
    tokens = workload.prompt_tokens()
    runs: dict[str, dict[str, Any]] = {}
    if baseline is not None and baseline.get("spec") == dataclasses.asdict(spec):
        runs = {k: {**baseline[k], "throughput_rps": None} for k in ("naive", "full")}
    for name in ("naive", "full", *switches):
        if name in runs:
            continue
        if progress is not None:
            progress(name)
        client = "naive" if name == "naive" else ChainConfig() if name == "full" else ChainConfig().without(name)
        s = await measure(
            lab,
            client,
            workload,
            model=model,
            patience_s=patience_s,
            monthly_requests=monthly_requests,
            prompt_tokens=tokens,
        )
        s["throughput_rps"] = None  # the ladder per variant is left out (time); see the notebook
        runs[name] = s
    variants = {k: v for k, v in runs.items() if k not in ("naive", "full")}
    return {"runs": runs, "shares": ablation_shares(runs["naive"], runs["full"], variants)}


__all__ = [
    "ERROR_BUDGET",
    "ablation",
    "await_idle",
    "capacity",
    "compare",
    "concurrency_test",
    "jsonable",
    "max_sustainable_rate",
    "measure",
    "run_workload",
    "set_faults",
    "start_capstone_lab",
]
