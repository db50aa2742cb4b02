"""Lesson 02's measurement: one workload through four chains (no de-dup, exact cache, coalescing, both).

Each chain has a metrics layer on top (what callers see: latency, and the tokens they would have paid for)
and one at the bottom, just above the transport (what actually went upstream: calls, tokens, cost). The
difference between the two is what de-duplication saved.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from labkit.chain import Chain, Handler, Layer
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


@dataclasses.dataclass
class DedupChain:
    """A chain for one config, with handles on the parts the measurement reads."""

    config: str
    chain: Chain
    callers: MetricsRecorder
    upstream: MetricsRecorder
    cache: ExactCache | None
    single_flight: SingleFlight | None


def build_chain(transport: Handler, config: str, policy: SamplingPolicy | None = None) -> DedupChain:
    """metrics (callers) -> [exact cache] -> [single-flight] -> metrics (upstream) -> transport."""
    use_cache, use_coalescing = CONFIGS[config]
    callers, upstream = MetricsRecorder(), MetricsRecorder()
    cache = ExactCache(policy) if use_cache else None
    single_flight = SingleFlight(policy) if use_coalescing else None
    layers: list[Layer] = [MetricsLayer(callers)]
    layers += [layer for layer in (cache, single_flight) if layer is not None]
    layers.append(MetricsLayer(upstream))
    return DedupChain(config, Chain(transport, layers), callers, upstream, cache, single_flight)


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
    parts = build_chain(transport, config, policy)
    params = dict(params or {})
    counter = SimCallCounter(sim) if sim is not None else None

    async def send(arrival: Arrival) -> Any:
        request = ChatRequest.create(
            model, workload.messages(arrival), metadata={"request_id": f"r{arrival.index}"}, **params
        )
        return await parts.chain(request)

    started = time.perf_counter()
    outcomes = await replay(workload, send)
    wall_s = time.perf_counter() - started
    callers, upstream = parts.callers.summary(), parts.upstream.summary()
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
        "coalesced": parts.single_flight.stats.coalesced if parts.single_flight else 0,
        "cache_hits": parts.cache.stats.hits if parts.cache else 0,
    }
    if counter is not None:
        row["sim_chat_requests"] = counter.since_mark()
    return row


__all__ = ["CONFIGS", "LABELS", "DedupChain", "build_chain", "measure"]
