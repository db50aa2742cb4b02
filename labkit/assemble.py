"""The one place that assembles labkit's full chain from a config (DESIGN §3), each layer switchable.

Outermost first::

    caller -> metrics -> cache (L1 memory -> L2 Redis -> L3 SQLite) -> semantic cache -> in-flight de-dup
           -> admission (concurrency + RPM/TPM) -> retry -> hedge -> balancer
           -> per endpoint: circuit breaker -> StreamGuard (first-token timeout) -> upstream tap -> transport

`build_chain(ChainConfig(...), lab)` returns an `Assembled`: the chain, its parts (to read their counters) and
which layers were on, off or *missing* (a module that is not importable yet). Every layer is a switch, so the
capstone's ablation removes exactly one at a time: `ChainConfig().without("hedge")`.

Layers never import each other; this module is the exception by design (DESIGN §3: "the chain is assembled in
one place from a config"). It imports each layer's module lazily and degrades to "missing" rather than failing,
so the assembly says what it could build while the library grows.

Two small pieces are written here because no layer module offers them yet (see the capstone's report):

- `UpstreamTap`, the innermost layer of each endpoint: it counts upstream attempts per endpoint and appends the
  endpoint's name to `controls["upstream_log"]` when the caller passed a list there, so a caller learns whether
  *its* request went upstream (a cache hit or a coalesced request did not). It reads nothing else.
- `SemanticStreams`: `SemanticCache` passes streams through untouched (lesson 04 keeps the two apart), but the
  capstone streams. This adapter uses the semantic cache's public `scope_of`/`embed`/`match`/`add` to look a
  streamed request up (a hit is replayed as a short stream) and to store a streamed answer once it completed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import os
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Literal

from openai import AsyncOpenAI
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from labkit.chain import Chain, Handler, Layer, Result
from labkit.endpoint import Endpoint
from labkit.request import ChatRequest
from labkit.stream import ChunkStream, assemble, completion_chunks

TransportKind = Literal["lean", "sdk", "sdk-per-request"]

#: The switches of `ChainConfig`, in chain order (outermost first); the ablation walks this list.
SWITCHES: tuple[str, ...] = (
    "metrics",
    "streaming",
    "cache",
    "semantic",
    "dedup",
    "admission",
    "retry",
    "hedge",
    "balancer",
    "breaker",
    "pooling",
    "lean",
)

#: What each switch is, in a few words (the notebook's ablation chart labels).
DESCRIPTIONS: dict[str, str] = {
    "metrics": "metrics layer (records every request)",
    "streaming": "streamed answers (first token early) and the first-token timeout",
    "cache": "exact cache: L1 memory, L2 Redis, L3 SQLite",
    "semantic": "semantic cache for paraphrases",
    "dedup": "in-flight de-duplication (single-flight)",
    "admission": "admission: bounded concurrency and RPM/TPM pacing",
    "retry": "retries (full jitter, retry-after, budget, deadline)",
    "hedge": "hedged first tokens",
    "balancer": "a second endpoint behind a balancer",
    "breaker": "per-endpoint circuit breakers",
    "pooling": "one pooled HTTP client per endpoint (off: a new client per request)",
    "lean": "lean aiohttp transport (off: the official SDK on the pool)",
}

#: The module each layer lives in (checked by `available_layers`).
LAYER_MODULES: dict[str, str] = {
    "metrics": "labkit.layers.metrics",
    "streaming": "labkit.streaming",
    "cache": "labkit.cache",
    "semantic": "labkit.cache.semantic",
    "dedup": "labkit.dedup",
    "admission": "labkit.layers.admission",
    "retry": "labkit.layers.retry",
    "hedge": "labkit.layers.hedge",
    "balancer": "labkit.layers.balancer",
    "breaker": "labkit.layers.breaker",
    "pooling": "labkit.transports.pool",
    "lean": "labkit.transports.lean",
}


def available_layers() -> dict[str, bool]:
    """Which layer modules import here (a teammate's module may not exist yet, or miss a dependency)."""
    found = {}
    for name, module in LAYER_MODULES.items():
        try:
            importlib.import_module(module)
            found[name] = True
        except ImportError:
            found[name] = False
    return found


@dataclasses.dataclass(frozen=True)
class ChainConfig:
    """Everything `build_chain` needs to know. Each boolean is one layer; numbers are that layer's settings."""

    metrics: bool = True
    streaming: bool = True
    cache: bool = True
    cache_redis: bool = True  # L2 (only when a Redis URL is given)
    cache_sqlite: bool = True  # L3 (a file in `sqlite_path`, or a temporary one)
    cache_ttl_s: float = 3600.0
    cache_clear_on_close: bool = True  # an experiment's entries (its own Redis prefix, a temporary SQLite file) go
    cache_op_timeout_s: float = 1.0  # a remote tier slower than this is marked down and bypassed (fail-open)
    # how a cached stream is replayed: "merged" (the whole text in one chunk: cheapest), "instant" or "paced"
    cache_replay: str = "merged"
    semantic: bool = True
    semantic_threshold: float | None = None  # None: the cache lesson's measured default
    # embed in a worker thread (the loop keeps serving meanwhile) or inline; with a busy loop on a small machine the
    # worker threads wait for the GIL behind it (measured here: 1.5 s per 11 ms embedding), so inline is the default
    semantic_in_thread: bool = False
    dedup: bool = True
    admission: bool = True
    rpm: float | None = None  # per endpoint; None: the limits the (simulated) service reports, else no pacing
    tpm: float | None = None
    max_concurrency: int = 256
    retry: bool = True
    retry_deadline_s: float = 8.0
    # continue a stream dropped after its first token by replaying the request, only when it is reproducible
    # (temperature 0 or a seed) and the replay starts with exactly the text already delivered (labkit.layers.retry)
    retry_resume_streams: bool = True
    hedge: bool = True
    hedge_quantile: float = 95.0
    hedge_max_share: float = 0.1
    balancer: bool = True
    strategy: str = "peak_ewma"
    breaker: bool = True
    first_token_timeout_s: float = 4.0
    total_timeout_s: float = 30.0
    pooling: bool = True
    # the lean aiohttp transport: `python -m labkit.lessons.pooling` (lesson 05, part 5) measures it adding the least
    # TTFT and client CPU of the three transports at 100, 500 and 1000 concurrent streams, the capstone's range
    lean: bool = True
    max_connections: int = 1024
    seed: int = 0

    def __post_init__(self) -> None:
        for name in (
            "cache_ttl_s",
            "cache_op_timeout_s",
            "retry_deadline_s",
            "first_token_timeout_s",
            "total_timeout_s",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"ChainConfig.{name} must be > 0, got {getattr(self, name)!r}")
        if self.max_concurrency < 1 or self.max_connections < 1:
            raise ValueError("max_concurrency and max_connections must be at least 1")
        if not 0 <= self.hedge_max_share <= 1:
            raise ValueError("hedge_max_share must be in [0, 1]")
        for name in ("rpm", "tpm"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"ChainConfig.{name} must be > 0 or None, got {value!r}")

    def without(self, *switches: str) -> ChainConfig:
        """The same config with the named layers switched off (the ablation); `"a+b"` names two at once."""
        switches = tuple(part for name in switches for part in name.split("+"))
        unknown = [s for s in switches if s not in SWITCHES]
        if unknown:
            raise ValueError(f"unknown layer switch(es) {unknown}; known: {list(SWITCHES)}")
        return dataclasses.replace(self, **dict.fromkeys(switches, False))

    @classmethod
    def naive_like(cls) -> ChainConfig:
        """Every layer off: a bare pooled SDK transport to one endpoint."""
        return cls().without(*SWITCHES)

    def switches(self) -> dict[str, bool]:
        return {name: bool(getattr(self, name)) for name in SWITCHES}

    @property
    def transport(self) -> TransportKind:
        if not self.pooling:
            return "sdk-per-request"
        return "lean" if self.lean else "sdk"


# ------------------------------------------------------------------------------------------------------------
# Two small layers the assembly needs (see the module docstring)
# ------------------------------------------------------------------------------------------------------------


class UpstreamTap:
    """Innermost layer of an endpoint: count attempts and tell the caller where its request went."""

    def __init__(self, name: str, counter: Counter[str]) -> None:
        self.name = name
        self.counter = counter

    async def __call__(self, request: ChatRequest, call_next: Handler) -> Result:
        self.counter[self.name] += 1
        log = request.controls.get("upstream_log")
        if isinstance(log, list):
            log.append(self.name)
        return await call_next(request)


def completion_stream(completion: ChatCompletion, info: dict[str, Any] | None = None) -> ChunkStream:
    """A whole completion replayed as a short stream, in the shape of a merged cache replay
    (`labkit.stream.completion_chunks`: the role, the text and the finish in one chunk, then the usage)."""
    chunks = completion_chunks(completion)

    async def source() -> AsyncIterator[ChatCompletionChunk]:
        for chunk in chunks:
            yield chunk

    return ChunkStream(source(), info={"source": "cache", **(info or {})})


class SemanticStreams:
    """The semantic cache for streamed requests too (plain requests go to the `SemanticCache` itself)."""

    def __init__(self, semantic: Any) -> None:
        self.semantic = semantic

    async def __call__(self, request: ChatRequest, call_next: Handler) -> Result:
        if not request.stream:
            return await self.semantic(request, call_next)
        from labkit.cache import CacheControls
        from labkit.cache.semantic import last_user_text
        from labkit.dedup import is_sampled

        semantic = self.semantic
        stats = semantic.stats
        stats.requests += 1
        ctl = CacheControls.of(request.controls)
        text = last_user_text(request)
        if text is None or (is_sampled(request) and not semantic.cache_sampled):
            stats.bypassed += 1
            return await call_next(request)
        scope = semantic.scope_of(request, ctl)
        vector = await semantic.embed(text)
        if not ctl.no_cache and (found := semantic.match(scope, text, vector)) is not None:
            stored, score = found
            stats.hits += 1
            if semantic.on_hit is not None:
                semantic.on_hit(text, stored.text, score)
            return completion_stream(stored.completion, {"cache_tier": "semantic", "semantic_score": score})
        stats.misses += 1
        result = await call_next(request)
        if ctl.no_store:
            return result
        if isinstance(result, ChatCompletion):
            semantic.add(scope, text, vector, result, ctl.ttl_s or semantic.ttl_s)
            return result
        if semantic.knows(scope, text):  # a coalesced copy of an answer being stored already
            return result

        async def keep(chunks: AsyncIterator[ChatCompletionChunk]) -> AsyncIterator[ChatCompletionChunk]:
            seen: list[ChatCompletionChunk] = []
            finished = False
            async for chunk in chunks:
                seen.append(chunk)
                finished = finished or any(c.finish_reason for c in chunk.choices)
                yield chunk
            if finished and not semantic.knows(scope, text):  # only a complete answer, and only once

                async def replay_seen() -> AsyncIterator[ChatCompletionChunk]:
                    for chunk in seen:
                        yield chunk

                semantic.add(scope, text, vector, await assemble(replay_seen()), ctl.ttl_s or semantic.ttl_s)

        return result.wrap(keep)


class SpreadBudget:
    """An admission budget for `n` endpoints behind a balancer, each with its own RPM/TPM limit.

    `AdmissionLayer` keeps its buckets in step with the `x-ratelimit-remaining-*` headers, which describe *one*
    endpoint's key; taken as the total they would cut the budget of `n` endpoints to one endpoint's. So a header is
    read as `n` times what it says (the balancer spreads the load evenly) before the wrapped budget syncs to it.
    """

    def __init__(self, budget: Any, n: int) -> None:
        self.budget = budget
        self.n = n

    async def try_acquire(self, tokens: int) -> float:
        return await self.budget.try_acquire(tokens)

    async def refund(self, tokens: int, requests: int = 0, ticket: int = 0) -> None:
        await self.budget.refund(tokens, requests, ticket)

    def ticket(self) -> int:
        return self.budget.ticket()

    def sync(self, headers: Mapping[str, str], ticket: int = 0) -> None:
        scaled = dict(headers)
        for name in ("x-ratelimit-remaining-requests", "x-ratelimit-remaining-tokens"):
            value = headers.get(name)
            if value is not None:
                try:
                    scaled[name] = str(float(value) * self.n)
                except ValueError:
                    scaled.pop(name)
        self.budget.sync(scaled, ticket)


class PerRequestClientTransport:
    """The anti-pattern the pooling lesson measures: a new `AsyncOpenAI` (new connections) for every request.

    Used only by the ablation (`pooling=False`). A stream keeps its client until the stream is closed.
    """

    def __init__(self, endpoint: Endpoint, timeout: float = 60.0) -> None:
        self.endpoint = endpoint
        self.timeout = timeout

    async def __call__(self, request: ChatRequest) -> Result:
        from labkit.transports.sdk import OpenAITransport

        client = AsyncOpenAI(
            base_url=self.endpoint.base_url, api_key=self.endpoint.api_key, max_retries=0, timeout=self.timeout
        )
        transport = OpenAITransport(client=client, endpoint=self.endpoint)
        try:
            result = await transport(request)
        except BaseException:
            await client.close()
            raise
        if isinstance(result, ChunkStream):

            async def closing(chunks: AsyncIterator[ChatCompletionChunk]) -> AsyncIterator[ChatCompletionChunk]:
                try:
                    async for chunk in chunks:
                        yield chunk
                finally:
                    await client.close()

            return result.wrap(closing)
        await client.close()
        return result

    async def aclose(self) -> None:
        return None


# ------------------------------------------------------------------------------------------------------------
# The assembly
# ------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Assembled:
    """A built chain, the parts a notebook reads counters from, and what was on, off or missing."""

    config: ChainConfig
    chain: Chain
    layers: dict[str, Any]  # switch name -> the layer object (or list of them), for the switches that are on
    on: list[str]
    off: list[str]
    missing: list[str]  # switched on but its module is not available: left out
    upstream: Counter[str]
    endpoints: list[Endpoint]
    closers: list[Any] = dataclasses.field(default_factory=list)
    built_at: float = dataclasses.field(default_factory=time.monotonic)

    @property
    def stream(self) -> bool:
        """Whether callers should stream (the streaming switch)."""
        return self.config.streaming and "streaming" not in self.missing

    def describe(self) -> str:
        """One line per fact: what the chain is and what was left out, for a notebook's output."""
        lines = [repr(self.chain), f"on: {', '.join(self.on) or '-'}", f"off: {', '.join(self.off) or '-'}"]
        if self.missing:
            lines.append(f"MISSING (switched on, module not available, left out): {', '.join(self.missing)}")
        return "\n".join(lines)

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
        for closer in reversed(self.closers):
            with contextlib.suppress(Exception):  # closing must not hide a caller's own error
                await closer()


def _endpoints_of(lab: Any) -> list[Endpoint]:
    if isinstance(lab, Endpoint):
        return [lab]
    if hasattr(lab, "endpoints"):
        return list(lab.endpoints)
    endpoints = list(lab)
    if not endpoints or not all(isinstance(e, Endpoint) for e in endpoints):
        raise TypeError("build_chain takes a Lab, an Endpoint or a list of Endpoints")
    return endpoints


def _unique_names(endpoints: Sequence[Endpoint]) -> list[str]:
    names = [e.name for e in endpoints]
    return names if len(set(names)) == len(names) else [f"{e.name} #{i}" for i, e in enumerate(endpoints)]


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


def build_chain(
    config: ChainConfig,
    lab: Any,
    *,
    redis_url: str | None = None,
    sqlite_path: str | None = None,
    embedder: Any = None,
    extra_outer: Sequence[Layer] = (),
) -> Assembled:
    """Assemble the chain `config` describes over the endpoints of `lab` (a `Lab`, an `Endpoint` or a list).

    `redis_url` defaults to the lab's Redis; `sqlite_path` to a fresh temporary file. A switched-on layer whose
    module cannot be imported is left out and listed in `Assembled.missing` (the output says so).
    `extra_outer` layers go outside everything (a live dashboard's recorder, for instance).
    """
    endpoints = _endpoints_of(lab)
    if redis_url is None and getattr(lab, "redis", None) is not None:
        redis_url = lab.redis.url
    present = available_layers()
    switches = config.switches()
    on = [n for n, v in switches.items() if v and present[n]]
    missing = [n for n, v in switches.items() if v and not present[n]]
    off = [n for n, v in switches.items() if not v]
    active = set(on)
    layers: dict[str, Any] = {}
    closers: list[Any] = []
    upstream: Counter[str] = Counter()

    # -- per endpoint: breaker -> StreamGuard -> tap -> transport ---------------------------------------------
    pool = None
    if "pooling" in active:
        from labkit.transports.pool import ClientPool, PoolConfig

        pool = ClientPool(
            PoolConfig(
                max_connections=config.max_connections,
                max_keepalive=config.max_connections,
                keepalive_expiry=30.0,
                timeout=config.total_timeout_s,
                max_retries=0,
            )
        )
        closers.append(pool.aclose)
    used = endpoints if "balancer" in active else endpoints[:1]
    names = _unique_names(used)
    backends_chains: list[tuple[str, Chain, Any]] = []
    breakers = []
    for endpoint, name in zip(used, names, strict=True):
        if pool is None:
            transport: Any = PerRequestClientTransport(endpoint, timeout=config.total_timeout_s)
        elif "lean" in active:
            from labkit.transports.lean import LeanTransport

            transport = LeanTransport(endpoint, pool=pool, timeout=config.total_timeout_s)
        else:
            from labkit.transports.sdk import OpenAITransport

            transport = OpenAITransport(endpoint, pool=pool)
        per: list[Layer] = []
        gate = None
        if "breaker" in active:
            from labkit.layers.breaker import CircuitBreaker

            gate = CircuitBreaker(name)
            breakers.append(gate)
            per.append(gate)
        if "streaming" in active or present["streaming"]:
            from labkit.layers.guard import StreamGuard

            first = config.first_token_timeout_s if "streaming" in active else None
            # no whole-stream limit here (the transport's timeout bounds an attempt): a limit costs a timer per chunk
            per.append(StreamGuard(first_token_timeout_s=first))
        per.append(UpstreamTap(name, upstream))
        backends_chains.append((name, Chain(transport, per), gate))
    if breakers:
        layers["breaker"] = breakers

    bottom: Handler
    if "balancer" in active:
        from labkit.layers.balancer import Backend, Balancer

        balancer = Balancer(
            [Backend(name, chain, gate=gate) for name, chain, gate in backends_chains],
            config.strategy,
            seed=config.seed,
        )
        layers["balancer"] = balancer
        bottom = balancer
    else:
        bottom = backends_chains[0][1]

    # -- the outer layers, outermost first ---------------------------------------------------------------------
    outer: list[Layer] = list(extra_outer)
    if "metrics" in active:
        from labkit.layers.metrics import MetricsLayer

        layers["metrics"] = MetricsLayer()
        outer.append(layers["metrics"])
    if "cache" in active:
        from labkit.cache import CacheLayer, MemoryTier

        tiers: list[Any] = [MemoryTier()]
        if config.cache_redis and redis_url:
            from labkit.cache import RedisTier

            tiers.append(RedisTier(redis_url, prefix=f"labkit:capstone:{os.getpid()}:{id(tiers)}:"))
        if config.cache_sqlite:
            from labkit.cache import SQLiteTier

            path = sqlite_path or os.path.join(tempfile.mkdtemp(prefix="labkit-capstone-"), "cache.sqlite")
            tiers.append(SQLiteTier(path))
        # the de-dup layer below coalesces misses; without it the cache's own stampede protection would do the
        # same job and the ablation could not tell the two apart
        cache = CacheLayer(
            tiers,
            ttl_s=config.cache_ttl_s,
            stampede_protection=False,
            op_timeout_s=config.cache_op_timeout_s,
            replay_pace=config.cache_replay,
            seed=config.seed,
        )
        layers["cache"] = cache
        outer.append(cache)
        closers.append(cache.aclose)
        if config.cache_clear_on_close:
            closers.append(cache.clear)  # closers run last-first: cleared, then closed
    if "semantic" in active:
        from labkit.cache import SemanticCache

        kwargs: dict[str, Any] = {"ttl_s": config.cache_ttl_s, "embed_in_thread": config.semantic_in_thread}
        if config.semantic_threshold is not None:
            kwargs["threshold"] = config.semantic_threshold
        semantic = SemanticCache(embedder, **kwargs)
        layers["semantic"] = semantic
        outer.append(SemanticStreams(semantic))
    if "dedup" in active:
        from labkit.dedup import SingleFlight

        layers["dedup"] = SingleFlight()
        outer.append(layers["dedup"])
    if "admission" in active:
        from labkit.layers.admission import AdmissionLayer, LocalBudget

        rpm, tpm = config.rpm, config.tpm
        if rpm is None or tpm is None:
            sim_rpm, sim_tpm = _sim_limits(lab)
            rpm, tpm = rpm or sim_rpm, tpm or sim_tpm
        n = len(used)
        budget = LocalBudget(rpm * n if rpm else 1e9, tpm * n if tpm else 1e12)
        admission = AdmissionLayer(
            budget=SpreadBudget(budget, n) if n > 1 else budget, max_concurrency=config.max_concurrency
        )
        layers["admission"] = admission
        outer.append(admission)
    if "retry" in active:
        from labkit.layers.retry import RetryLayer

        layers["retry"] = RetryLayer(
            deadline_s=config.retry_deadline_s, resume_streams=config.retry_resume_streams, seed=config.seed
        )
        outer.append(layers["retry"])
    if "hedge" in active:
        from labkit.layers.hedge import HedgeLayer

        layers["hedge"] = HedgeLayer(quantile=config.hedge_quantile, max_share=config.hedge_max_share)
        outer.append(layers["hedge"])

    transports = [chain.transport for _, chain, _ in backends_chains]
    for transport in transports:
        if hasattr(transport, "aclose") and pool is not None:
            closers.append(transport.aclose)
    return Assembled(
        config=config,
        chain=Chain(bottom, outer),
        layers=layers,
        on=on,
        off=off,
        missing=missing,
        upstream=upstream,
        endpoints=list(used),
        closers=closers,
    )


def config_from_mapping(values: Mapping[str, Any]) -> ChainConfig:
    """A `ChainConfig` from a plain mapping (a config file's section); unknown keys are an error."""
    known = {f.name for f in dataclasses.fields(ChainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown chain setting(s) {unknown}; known: {sorted(known)}")
    return ChainConfig(**dict(values))


__all__ = [
    "DESCRIPTIONS",
    "SWITCHES",
    "Assembled",
    "ChainConfig",
    "PerRequestClientTransport",
    "SemanticStreams",
    "SpreadBudget",
    "UpstreamTap",
    "available_layers",
    "build_chain",
    "completion_stream",
    "config_from_mapping",
]
