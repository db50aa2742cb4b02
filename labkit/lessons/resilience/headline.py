"""Lesson 09, the headline: the failure share the caller sees under injected faults, per client, and what it cost.

Each arm is a config of the one builder (`labkit.assemble.build_chain`): lesson 09's chain
(`ChainConfig.preset("resilience")`) with the retry layer and the breakers off, with the SDK's own retries instead,
or as shipped. `headline_configs` lists them, so the benchmark, the notebook and a reader see the same arms.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from labkit.assemble import Assembled, ChainConfig, build_chain
from labkit.lessons.resilience.workload import fault_mix, run_workload, summarize_runs, upstream_totals
from labkit.pricing import cost

#: The arms of the headline. "labkit chain" is the chain as shipped: its retry layer resumes a reproducible stream
#: that broke after the first token (verified against the delivered text); "labkit chain, no resume" is the
#: ablation with `retry_resume_streams=False`, where such a break reaches the caller as `MidStreamError`.
HEADLINE_ARMS = (
    "no retries",
    "SDK retries (max_retries=2)",
    "SDK retries, timeout = first-token timeout",
    "labkit chain",
    "labkit chain, no resume",
)


#: How long the caller waits for a request, as a multiple of the retry layer's deadline (6 s at lesson 09's 5 s).
CALLER_PATIENCE = 1.2


def headline_configs(
    n_endpoints: int, *, deadline_s: float, first_token_timeout_s: float, seed: int
) -> dict[str, ChainConfig]:
    """The chain of each arm of `HEADLINE_ARMS`, over `n_endpoints` endpoints named `s0`, `s1`, ..."""
    shipped = ChainConfig.preset(
        "resilience",
        endpoint_names=tuple(f"s{i}" for i in range(n_endpoints)),
        retry_max_attempts=4,
        retry_base_delay_s=0.1,
        retry_deadline_s=deadline_s,
        first_token_timeout_s=first_token_timeout_s,
        seed=seed,
    )
    # no retry layer, no breakers, no first-token timeout: what a client without labkit's layers does
    bare = shipped.replace(retry=False, breaker=False, strategy="round_robin", first_token_timeout_s=None)
    sdk = bare.replace(sdk_max_retries=2)
    return {
        "no retries": bare,
        "SDK retries (max_retries=2)": sdk,
        # the SDK's timeout is per read, so set to the first-token timeout it also bounds the wait for a hang
        "SDK retries, timeout = first-token timeout": sdk.replace(total_timeout_s=first_token_timeout_s),
        "labkit chain": shipped,
        "labkit chain, no resume": shipped.replace(retry_resume_streams=False),
    }


def chain_counters(built: Assembled) -> dict[str, Any]:
    """What the retry and hedge layers, the balancer and the breakers of a built chain counted (None: off)."""
    return {
        "retry": built.retry.stats.as_dict() if built.retry is not None else None,
        "hedge": built.hedge.stats.as_dict() if built.hedge is not None else None,
        "balancer": built.balancer.snapshot() if built.balancer is not None else None,
        "breakers": {name: b.snapshot() for name, b in built.breakers.items()},
    }


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
    tick: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """The failure share seen by the caller under `faults` injected faults, per arm (see the notebook, part 5).

    The caller waits `CALLER_PATIENCE` times `deadline_s` for each request, every arm alike: a little longer than
    the retry layer's own deadline, so that layer gives up first where it is on. Each arm gets `counters`
    (`chain_counters`: the retry layer's `resumed`, `resume_diverged`, ...) beside its figures. `tick()` is called
    after each request (a progress bar).
    """
    configs = headline_configs(
        len(lab.endpoints), deadline_s=deadline_s, first_token_timeout_s=first_token_timeout_s, seed=seed
    )
    unknown = set(arms) - set(configs)
    if unknown:
        raise ValueError(f"unknown arm(s) {sorted(unknown)}; choose from {list(configs)}")
    out: dict[str, Any] = {}
    for name in arms:
        for i, sim in enumerate(lab.sims):
            await sim.areset()
            await sim.aset_faults(fault_mix(faults, seed=seed * 100 + i))
        async with build_chain(configs[name], lab.endpoints) as built:
            patience = CALLER_PATIENCE * deadline_s
            rows = await run_workload(built.chain, n, concurrency=concurrency, deadline_s=patience, tick=tick)
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
            "counters": chain_counters(built),
            "rows": rows,
        }
    for sim in lab.sims:
        await sim.areset()
    return out


__all__ = ["HEADLINE_ARMS", "chain_counters", "headline", "headline_configs"]
