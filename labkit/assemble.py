"""The one place that assembles a labkit chain from a `ChainConfig` (see `labkit.chain_config`).

Outermost first::

    caller -> metrics -> cache (L1 memory -> L2 Redis -> L3 SQLite) -> semantic cache -> in-flight de-dup
           [-> Redis flight] -> admission (concurrency + RPM/TPM) -> retry -> hedge -> balancer
           -> per endpoint: circuit breaker -> StreamGuard (first-token timeout) -> upstream tap
              [-> upstream metrics] -> transport

`build_chain(config, upstream)` returns an `Assembled`: the chain, its parts (to read their counters) and which
switches were on and off. Every chain in the repository comes from here: the capstone's full chain and its
ablation (`ChainConfig().without("hedge")`), lessons 09-10's resilience stack (`ChainConfig.preset("resilience")`),
the web chat, lesson 02's measurement and the worker processes. Layers never import each other; this module is
the exception by design. Its imports are plain: a missing dependency fails at import, never as a chain that
silently lacks a layer.

A caller may hand over what a config cannot hold: a ready transport instead of endpoints (`upstream=` a handler,
which its owner closes), and `given={switch: layer}`, an object to use at that switch's place instead of one
built from the config (a lesson's own cache, a budget shared through Redis, a recorder an app reads). The place
of every layer stays the builder's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from redis.asyncio import Redis

from labkit.cache.layer import CacheLayer
from labkit.cache.memory import MemoryTier
from labkit.cache.redis_tier import RedisTier
from labkit.cache.semantic import SemanticCache
from labkit.cache.sqlite_tier import SQLiteTier
from labkit.chain import Chain, Handler, Layer
from labkit.chain_config import DESCRIPTIONS, PRESETS, SWITCHES, ChainConfig, config_from_mapping
from labkit.dedup.redisflight import RedisSingleFlight
from labkit.dedup.singleflight import SingleFlight
from labkit.endpoint import Endpoint
from labkit.layers.admission import AdmissionLayer, LocalBudget
from labkit.layers.admission_spread import SpreadBudget
from labkit.layers.balancer import Backend, Balancer
from labkit.layers.breaker import CircuitBreaker
from labkit.layers.guard import StreamGuard
from labkit.layers.hedge import HedgeLayer
from labkit.layers.metrics import MetricsLayer
from labkit.layers.retry import RetryBudget, RetryLayer, RetryPolicy
from labkit.scope import Scoping
from labkit.transports.lean import LeanTransport
from labkit.transports.per_request import PerRequestClientTransport
from labkit.transports.pool import ClientPool, PoolConfig
from labkit.transports.sdk import OpenAITransport
from labkit.upstream_tap import UpstreamTap

#: The places `build_chain(..., given=...)` accepts an object for (each needs its switch or setting on).
GIVEN_PLACES: tuple[str, ...] = (
    "metrics",
    "cache",
    "semantic",
    "dedup",
    "dedup_redis",
    "admission",
    "retry",
    "hedge",
    "upstream_metrics",
)


@dataclasses.dataclass
class Assembled:
    """A built chain, the parts a notebook reads counters from, and which switches were on and off."""

    config: ChainConfig
    chain: Chain
    layers: dict[str, Any]  # place -> the layer object (a list for "breaker"), for the places that are on
    on: list[str]
    off: list[str]
    upstream: Counter[str]  # attempts per endpoint name (the upstream tap's counts)
    endpoints: list[Endpoint]
    transports: list[Handler]
    closers: list[Any] = dataclasses.field(default_factory=list)
    built_at: float = dataclasses.field(default_factory=time.monotonic)

    @property
    def stream(self) -> bool:
        """Whether callers should stream (the streaming switch)."""
        return self.config.streaming

    @property
    def balancer(self) -> Balancer | None:
        return self.layers.get("balancer")

    @property
    def retry(self) -> RetryLayer | None:
        return self.layers.get("retry")

    @property
    def hedge(self) -> HedgeLayer | None:
        return self.layers.get("hedge")

    @property
    def breakers(self) -> dict[str, CircuitBreaker]:
        """Each endpoint's circuit breaker by endpoint name (empty with the breaker switch off)."""
        return {b.name: b for b in self.layers.get("breaker", [])}

    def describe(self) -> str:
        """What the chain is and which switches are off, for a notebook's output."""
        return "\n".join([repr(self.chain), f"on: {', '.join(self.on) or '-'}", f"off: {', '.join(self.off) or '-'}"])

    def counters(self) -> dict[str, Any]:
        """Each layer's own statistics, as plain dicts."""
        out: dict[str, Any] = {"upstream_attempts": dict(self.upstream)}
        for name, layer in self.layers.items():
            for obj in layer if isinstance(layer, list) else [layer]:
                stats = getattr(obj, "stats", None)
                if stats is not None and hasattr(stats, "as_dict"):
                    out.setdefault(name, []).append(stats.as_dict())
                elif stats is not None and dataclasses.is_dataclass(stats):
                    out.setdefault(name, []).append(dataclasses.asdict(stats))
                elif hasattr(obj, "snapshot"):
                    out.setdefault(name, []).append(obj.snapshot())
        return {k: (v[0] if isinstance(v, list) and len(v) == 1 else v) for k, v in out.items()}

    async def aclose(self) -> None:
        """Close what the assembly opened (pool, transports, cache, Redis clients); given objects stay open."""
        for closer in reversed(self.closers):
            with contextlib.suppress(Exception):  # closing must not hide a caller's own error
                await closer()
        self.closers.clear()

    async def __aenter__(self) -> Assembled:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def _upstream_of(upstream: Any) -> tuple[list[Endpoint], Handler | None]:
    """The endpoints to build transports for, or a ready transport (a handler) and its endpoint if it has one."""
    if isinstance(upstream, Endpoint):
        return [upstream], None
    if hasattr(upstream, "endpoints"):
        return list(upstream.endpoints), None
    if callable(upstream):
        endpoint = getattr(upstream, "endpoint", None)
        return ([endpoint] if isinstance(endpoint, Endpoint) else []), upstream
    endpoints = list(upstream)
    if not endpoints or not all(isinstance(e, Endpoint) for e in endpoints):
        raise TypeError("build_chain takes a Lab, an Endpoint, a list of Endpoints or a transport")
    return endpoints, None


def _names(config: ChainConfig, primaries: Sequence[Endpoint]) -> list[str]:
    if config.endpoint_names is not None:
        if len(config.endpoint_names) != len(primaries):
            raise ValueError(f"{len(config.endpoint_names)} endpoint names for {len(primaries)} primary endpoints")
        return list(config.endpoint_names)
    names = [e.name for e in primaries]
    return names if len(set(names)) == len(names) else [f"{e.name} #{i}" for i, e in enumerate(primaries)]


Target = tuple[Endpoint | None, str | None, int]  # endpoint (None: a given transport's), served model, tier


def _targets(config: ChainConfig, endpoints: list[Endpoint], ready: Handler | None) -> tuple[list[Target], list[str]]:
    """The backends to build, primaries first (tier 0), then fallbacks (tier 1, behind a balancer), and their names."""
    n_fallbacks = len(config.fallback_models)
    if ready is not None:
        names = list(config.endpoint_names or [endpoints[0].name if endpoints else "upstream"])
        if n_fallbacks or len(names) != 1:
            raise ValueError("a given transport is one endpoint: one name at most, no fallbacks")
        return [(endpoints[0] if endpoints else None, None, 0)], names
    if n_fallbacks and (not config.balancer or len(endpoints) <= n_fallbacks):
        raise ValueError(f"{n_fallbacks} fallback(s) need the balancer and at least one primary endpoint besides")
    primaries = endpoints[: len(endpoints) - n_fallbacks]
    if not config.balancer:
        primaries = primaries[:1]
    fallbacks = list(zip(endpoints[len(endpoints) - n_fallbacks :], config.fallback_models, strict=True))
    if config.weights is not None and len(config.weights) != len(primaries):
        raise ValueError(f"{len(config.weights)} weights for {len(primaries)} primary endpoints")
    names = _names(config, primaries) + [f"fallback {m or e.name} #{i}" for i, (e, m) in enumerate(fallbacks)]
    return [(e, None, 0) for e in primaries] + [(e, m, 1) for e, m in fallbacks], names


def _sim_limits(lab: Any) -> tuple[float | None, float | None]:
    """The RPM/TPM limits the first simulated service enforces (the published limits of a real key)."""
    sims = getattr(lab, "sims", ())
    if not sims:
        return None, None
    try:
        limits = sims[0].limits()
    except Exception:
        return None, None
    rpm, tpm = limits.get("rpm"), limits.get("tpm")
    return (float(rpm) if rpm else None, float(tpm) if tpm else None)


def _pool(config: ChainConfig) -> ClientPool:
    return ClientPool(
        PoolConfig(
            max_connections=config.max_connections,
            max_keepalive=config.max_connections,
            keepalive_expiry=30.0,
            timeout=config.total_timeout_s,
            max_retries=config.sdk_max_retries,
        )
    )


def _transport(config: ChainConfig, endpoint: Endpoint, pool: ClientPool | None) -> Handler:
    if pool is None:
        return PerRequestClientTransport(endpoint, timeout=config.total_timeout_s, max_retries=config.sdk_max_retries)
    if config.lean:
        return LeanTransport(endpoint, pool=pool, timeout=config.total_timeout_s)
    return OpenAITransport(endpoint, pool=pool)


def _given(config: ChainConfig, given: Mapping[str, Layer] | None) -> dict[str, Layer]:
    given = dict(given or {})
    unknown = sorted(set(given) - set(GIVEN_PLACES))
    if unknown:
        raise ValueError(f"build_chain cannot take {unknown}; it takes objects for {list(GIVEN_PLACES)}")
    unused = [place for place in given if not getattr(config, place) or (place == "dedup_redis" and not config.dedup)]
    if unused:
        raise ValueError(f"given layer(s) {unused} would not be used: switch them on in the config")
    return given


def build_chain(
    config: ChainConfig,
    upstream: Any,
    *,
    redis_url: str | None = None,
    sqlite_path: str | None = None,
    embedder: Any = None,
    extra_outer: Sequence[Layer] = (),
    given: Mapping[str, Layer] | None = None,
) -> Assembled:
    """Assemble the chain `config` describes over `upstream`: a `Lab`, an `Endpoint`, a list of them, or a transport.

    `redis_url` defaults to the lab's Redis; `sqlite_path` to a fresh temporary file. `extra_outer` layers go
    outside everything (a live dashboard's recorder, for instance). `given` maps a place of `GIVEN_PLACES` to the
    object to use there instead of one built from the config; given objects and a given transport are their
    owner's to close.
    """
    endpoints, ready = _upstream_of(upstream)
    given = _given(config, given)
    if redis_url is None and getattr(upstream, "redis", None) is not None:
        redis_url = upstream.redis.url
    switches = config.switches()
    on = [n for n, v in switches.items() if v]
    off = [n for n, v in switches.items() if not v]
    layers: dict[str, Any] = {}
    closers: list[Any] = []
    upstream_counter: Counter[str] = Counter()

    targets, names = _targets(config, endpoints, ready)
    used = [e for e, _, _ in targets if e is not None]
    n_primary = sum(tier == 0 for _, _, tier in targets)
    scoping = Scoping.of_endpoints(used)  # the tenant of the chain's keys, not a shared "public" one

    # -- per endpoint: breaker -> StreamGuard -> tap -> [upstream metrics] -> transport ------------------------
    pool = _pool(config) if ready is None and config.pooling else None
    if pool is not None:
        closers.append(pool.aclose)
    upstream_metrics = None
    if config.upstream_metrics:
        upstream_metrics = given.get("upstream_metrics") or MetricsLayer()
        layers["upstream_metrics"] = upstream_metrics
    first_token = config.first_token_timeout_s if config.streaming else None
    transports: list[Handler] = []
    backends: list[Backend] = []
    breakers: list[CircuitBreaker] = []
    for i, ((endpoint, model, tier), name) in enumerate(zip(targets, names, strict=True)):
        transport = ready if ready is not None else _transport(config, endpoint, pool)  # type: ignore[arg-type]
        transports.append(transport)
        per: list[Layer] = []
        gate = None
        if config.breaker:
            gate = CircuitBreaker(
                name,
                failure_ratio=config.breaker_failure_ratio,
                min_requests=config.breaker_min_requests,
                window_s=config.breaker_window_s,
                open_s=config.breaker_open_s,
                half_open_probes=config.breaker_half_open_probes,
            )
            breakers.append(gate)
            per.append(gate)
        # the whole-stream limit is off by default (the transport's timeout bounds an attempt): it costs a timer
        # per chunk
        per.append(StreamGuard(first_token_timeout_s=first_token, total_timeout_s=config.stream_timeout_s))
        per.append(UpstreamTap(name, upstream_counter))
        if upstream_metrics is not None:
            per.append(upstream_metrics)
        weight = config.weights[i] if config.weights is not None and tier == 0 else 1.0
        backends.append(Backend(name, Chain(transport, per), weight=weight, gate=gate, model=model, tier=tier))
    if breakers:
        layers["breaker"] = breakers
    bottom: Handler
    if config.balancer:
        layers["balancer"] = bottom = Balancer(backends, config.strategy, seed=config.seed)
    else:
        bottom = backends[0].handler

    # -- the outer layers, outermost first ---------------------------------------------------------------------
    outer: list[Layer] = list(extra_outer)

    def place(name: str, make: Any) -> Layer:
        layer = given[name] if name in given else make()
        layers[name] = layer
        outer.append(layer)
        return layer

    if config.metrics:
        place("metrics", MetricsLayer)
    if config.cache:
        cache = place("cache", lambda: _cache(config, scoping, redis_url, sqlite_path))
        if "cache" not in given:
            closers.append(cache.aclose)
            if config.cache_clear_on_close:
                closers.append(cache.clear)  # closers run last-first: cleared, then closed
    if config.semantic:
        kwargs: dict[str, Any] = {"ttl_s": config.cache_ttl_s, "embed_in_thread": config.semantic_in_thread}
        if config.semantic_threshold is not None:
            kwargs["threshold"] = config.semantic_threshold
        place("semantic", lambda: SemanticCache(embedder, scoping=scoping, streams=True, **kwargs))
    if config.dedup:
        place("dedup", lambda: SingleFlight(scoping=scoping))
        if config.dedup_redis:
            place("dedup_redis", lambda: _redis_flight(config, scoping, redis_url, closers))
    if config.admission:
        place("admission", lambda: _admission(config, upstream, n_primary))
    if config.retry:
        policy = RetryPolicy(max_attempts=config.retry_max_attempts, base_delay_s=config.retry_base_delay_s)
        budget = RetryBudget(ratio=config.retry_budget_ratio, min_per_s=config.retry_budget_min_per_s)
        place(
            "retry",
            lambda: RetryLayer(
                policy,
                budget=budget,
                deadline_s=config.retry_deadline_s,
                resume_streams=config.retry_resume_streams,
                seed=config.seed,
            ),
        )
    if config.hedge:
        place(
            "hedge",
            lambda: HedgeLayer(
                quantile=config.hedge_quantile, min_samples=config.hedge_min_samples, max_share=config.hedge_max_share
            ),
        )

    if ready is None and pool is not None:
        closers.extend(t.aclose for t in transports if hasattr(t, "aclose"))
    return Assembled(
        config=config,
        chain=Chain(bottom, outer),
        layers=layers,
        on=on,
        off=off,
        upstream=upstream_counter,
        endpoints=list(used),
        transports=transports,
        closers=closers,
    )


def _cache(config: ChainConfig, scoping: Scoping, redis_url: str | None, sqlite_path: str | None) -> CacheLayer:
    tiers: list[Any] = [MemoryTier()]
    if config.cache_redis and redis_url:
        tiers.append(RedisTier(redis_url, prefix=f"labkit:capstone:{os.getpid()}:{id(tiers)}:"))
    if config.cache_sqlite:
        # a temporary file of its own is private (a miss for a key it never wrote costs no read) and holds what L1
        # evicts (it is cleared on close, so it adds room, never persistence); a file the caller names gets every answer
        path = sqlite_path or os.path.join(tempfile.mkdtemp(prefix="labkit-capstone-"), "cache.sqlite")
        own = sqlite_path is None
        tiers.append(SQLiteTier(path, write_behind_s=config.cache_sqlite_write_behind_s, private=own, spill=own))
    # the de-dup layer below coalesces misses; without it the cache's own stampede protection would do the same
    # job and the ablation could not tell the two apart
    return CacheLayer(
        tiers,
        ttl_s=config.cache_ttl_s,
        stampede_protection=False,
        scoping=scoping,
        op_timeout_s=config.cache_op_timeout_s,
        replay_pace=config.cache_replay,  # type: ignore[arg-type]
        seed=config.seed,
    )


def _redis_flight(config: ChainConfig, scoping: Scoping, redis_url: str | None, closers: list[Any]) -> Layer:
    if not redis_url:
        raise ValueError("dedup_redis needs a Redis: pass redis_url= or a lab with Redis")
    client = Redis.from_url(redis_url)
    closers.append(client.aclose)
    return RedisSingleFlight(client, namespace=config.dedup_namespace, scoping=scoping)


def _admission(config: ChainConfig, lab: Any, n: int) -> AdmissionLayer:
    rpm, tpm = config.rpm, config.tpm
    if rpm is None or tpm is None:
        sim_rpm, sim_tpm = _sim_limits(lab)
        rpm, tpm = rpm or sim_rpm, tpm or sim_tpm
    budget = LocalBudget(rpm * n if rpm else 1e9, tpm * n if tpm else 1e12, burst_s=config.admission_burst_s)
    return AdmissionLayer(budget=SpreadBudget(budget, n) if n > 1 else budget, max_concurrency=config.max_concurrency)


__all__ = [
    "DESCRIPTIONS",
    "GIVEN_PLACES",
    "PRESETS",
    "SWITCHES",
    "Assembled",
    "ChainConfig",
    "build_chain",
    "config_from_mapping",
]
