"""Lesson 02's measurement: one workload through four chains (no de-dup, exact cache, coalescing, both).

Each chain has a metrics layer on top (what callers see: latency, and the tokens they would have paid for)
and one at the bottom, just above the transport (what actually went upstream: calls, tokens, cost). The
difference between the two is what de-duplication saved. The chains come from the one builder
(`labkit.assemble.build_chain`, config `DEDUP_CHAIN` with the cache and de-dup switches of each config); the
cache is this lesson's small `ExactCache`, given to the builder for the cache's place.
"""

from __future__ import annotations

import time
from typing import Any

from labkit.assemble import Assembled, ChainConfig, build_chain
from labkit.chain import Handler, Layer
from labkit.dedup.policy import SamplingPolicy
from labkit.dedup.singleflight import SingleFlight
from labkit.lab.workload import Arrival, SimCallCounter, Workload, replay
from labkit.layers.metrics import MetricsLayer, MetricsRecorder
from labkit.lessons.dedup.caches import ExactCache
from labkit.request import ChatRequest

#: config name -> (exact cache on, coalescing on)
CONFIGS: dict[str, tuple[bool, bool]] = {
    "none": (False, False),
    "cache": (True, False),
    "coalesce": (False, True),
    "both": (True, True),
}
LABELS: dict[str, str] = {
    "none": "no de-dup",
    "cache": "exact cache only",
    "coalesce": "coalescing only",
    "both": "cache + coalescing",
}


#: metrics (callers) -> [cache] -> [single-flight] -> metrics (upstream) -> the given transport; nothing else.
DEDUP_CHAIN = ChainConfig.preset("bare", metrics=True, upstream_metrics=True)


def dedup_chain(transport: Handler, config: str, policy: SamplingPolicy | None = None) -> Assembled:
    """The chain of one config of `CONFIGS` over `transport`, with two metrics recorders.

    `layers["metrics"].recorder` saw what callers saw, `layers["upstream_metrics"].recorder` what went upstream;
    `layers["cache"]` (an `ExactCache`) and `layers["dedup"]` (a `SingleFlight`) are there when switched on.
    """
    use_cache, use_coalescing = CONFIGS[config]
    given: dict[str, Layer] = {
        "metrics": MetricsLayer(MetricsRecorder()),
        "upstream_metrics": MetricsLayer(MetricsRecorder()),
    }
    if use_cache:
        given["cache"] = ExactCache(policy)
    if use_coalescing:
        given["dedup"] = SingleFlight(policy)
    return build_chain(DEDUP_CHAIN.replace(cache=use_cache, dedup=use_coalescing), transport, given=given)


async def measure(
    transport: Handler,
    workload: Workload,
    config: str,
    *,
    model: str,
    params: dict[str, Any] | None = None,
    policy: SamplingPolicy | None = None,
    sim: Any = None,
) -> dict[str, Any]:
    """Replay `workload` through the chain of `config` and return what it cost upstream and for callers."""
    parts = dedup_chain(transport, config, policy)
    single_flight, cache = parts.layers.get("dedup"), parts.layers.get("cache")
    params = dict(params or {})
    counter = SimCallCounter(sim) if sim is not None else None

    async def send(arrival: Arrival) -> Any:
        request = ChatRequest.create(
            model, workload.messages(arrival), metadata={"request_id": f"r{arrival.index}"}, **params
        )
        return await parts.chain(request)

    started = time.perf_counter()
    try:
        outcomes = await replay(workload, send)
    finally:
        await parts.aclose()  # the transport stays open: it is the caller's
    wall_s = time.perf_counter() - started
    callers = parts.layers["metrics"].recorder.summary()
    upstream = parts.layers["upstream_metrics"].recorder.summary()
    latencies = sorted(o.latency_s for o in outcomes if o.ok)
    n = len(outcomes)
    row: dict[str, Any] = {
        "config": config,
        "label": LABELS[config],
        "requests": n,
        "errors": sum(not o.ok for o in outcomes),
        "duplicate_share": workload.duplicate_share,
        "exponent": workload.spec.exponent,
        "upstream_calls": upstream["requests"],
        "saved_calls": n - upstream["requests"],
        "saved_share": (n - upstream["requests"]) / n,
        "upstream_tokens": upstream["prompt_tokens"] + upstream["completion_tokens"],
        "caller_tokens": callers["prompt_tokens"] + callers["completion_tokens"],
        "upstream_cost_usd": upstream["cost_usd"],
        "caller_cost_usd": callers["cost_usd"],
        "latency_p50_s": callers["latency_p50_s"],
        "latency_p95_s": callers["latency_p95_s"],
        "latency_mean_s": sum(latencies) / len(latencies) if latencies else None,
        "wall_s": wall_s,
        "coalesced": single_flight.stats.coalesced if single_flight else 0,
        "cache_hits": cache.stats.hits if cache else 0,
    }
    if counter is not None:
        row["sim_chat_requests"] = counter.since_mark()
    return row


__all__ = ["CONFIGS", "DEDUP_CHAIN", "LABELS", "dedup_chain", "measure"]
