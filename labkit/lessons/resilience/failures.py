"""Lesson 09: what each real failure is and whether it is retried, and the retry budget.

`decision_table` provokes one real error per failure the simulated service can produce and shows how
`labkit.errors.classify` sees it and what `RetryPolicy.decide` makes of it; `sick_upstream` sends calls to a
service that fails everything, through the SDK's own retries and through labkit's retry layer with its budget.
Every chain comes from `labkit.assemble.build_chain` (the "bare" preset: a pooled SDK client, nothing else, with
the one setting each part varies).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Mapping
from typing import Any

from labkit.assemble import ChainConfig, build_chain
from labkit.errors import classify
from labkit.layers.retry import RetryPolicy

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
    # a stream gets a short first-token timeout, so a hang shows as the error it is
    config = ChainConfig.preset("bare", streaming=stream, first_token_timeout_s=0.3)
    async with build_chain(config, sim.endpoint) as built:
        try:
            if stream:
                await (await built.chain.stream("Tell me a story.", model=model, max_tokens=max_tokens)).text()
            else:
                await built.chain.complete("Tell me a story.", model=model, max_tokens=max_tokens)
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
    """One real error per case, classified, and what `policy` decides about it.

    `decide` is a pure function of the classified error, the attempt number (1 here) and the time left
    (`deadline_s`). One row per case: `failure`, `raised`, `status`, `code`, `retry-after (s)`,
    `after first token`, `labkit retries`, `wait (s)`, `why`, `counts against endpoint`. The cases are spread over
    the lab's services, one case at a time per service (each switches its own faults on), so a lab of three
    provokes three errors at once.
    """
    policy = policy or RetryPolicy(max_attempts=4, base_delay_s=0.5)
    sims = list(lab.sims)
    turns = [asyncio.Lock() for _ in sims]

    async def provoke(k: int, faults: Mapping[str, Any], kwargs: Mapping[str, Any]) -> BaseException | None:
        async with turns[k % len(sims)]:
            return await _one_failure(sims[k % len(sims)], faults, **kwargs)

    errors = await asyncio.gather(*(provoke(k, *case) for k, case in enumerate(cases.values())))
    rows = []
    for label, error in zip(cases, errors, strict=True):
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
    """`n` concurrent calls to a service that answers 503 to everything: the SDK's retries vs labkit's budget
    (each arm on a service of its own, at the same time, where the lab has two).

    Returns `{arm: {"upstream requests", "per caller request", "wall (s)"}}` for "SDK retries (max_retries=2)" and
    "labkit retries, budget <ratio> %" (a retry budget of `budget_ratio` retries per request plus `min_per_s`).
    """
    if n < 1:
        raise ValueError("n must be >= 1")
    budgeted = ChainConfig.preset(
        "bare",
        retry=True,
        retry_max_attempts=max_attempts,
        retry_base_delay_s=0.1,
        retry_budget_ratio=budget_ratio,
        retry_budget_min_per_s=min_per_s,
        retry_deadline_s=None,
    )
    arms = {
        "SDK retries (max_retries=2)": ChainConfig.preset("bare", sdk_max_retries=2),
        f"labkit retries, budget {budget_ratio * 100:g} %": budgeted,
    }

    async def arm(sim: Any, config: ChainConfig) -> dict[str, float]:
        await sim.areset()
        await sim.aset_faults({"error_rates": {"503": 1.0}})
        started = time.perf_counter()
        async with build_chain(config, sim.endpoint) as built:
            await asyncio.gather(
                *(built.chain.complete(f"q{i}", model="gpt-4o", max_tokens=5) for i in range(n)),
                return_exceptions=True,
            )
        elapsed = time.perf_counter() - started
        upstream = (await sim.astats())["requests_total"]
        await sim.areset()
        return {"upstream requests": upstream, "per caller request": upstream / n, "wall (s)": elapsed}

    if len(lab.sims) >= 2:  # each arm on a service of its own, both at once
        rows = await asyncio.gather(*(arm(sim, config) for sim, config in zip(lab.sims, arms.values(), strict=False)))
    else:
        rows = [await arm(lab.sims[0], config) for config in arms.values()]
    return dict(zip(arms, rows, strict=True))


__all__ = ["DECISION_CASES", "decision_table", "sick_upstream"]
