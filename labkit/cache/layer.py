"""The cache layer: read-through across tiers, write-through on a miss, per-request controls, fail-open.

Reading goes down the tiers in order (L1 memory, then Redis or Memcached, then SQLite); a hit in a lower tier is
promoted into the tiers above it (inline for in-process tiers, in the background for remote ones) with the TTL
it has left. A miss goes upstream once per key at a time (stampede protection: lesson 02's `SingleFlight` serves,
keyed by the full cache key), and the answer is written to every tier with a TTL that carries jitter, so entries
written together do not all expire in the same second.

Keys: ``namespace : tenant : p|s : fingerprint``, the request's `labkit.scope.Scope`. The fingerprint is the
request's canonical key (model, messages, every generation parameter). The tenant is a keyed hash of the API key
(the layer's default, which `build_chain` takes from the chain's endpoints, or the one a request's controls name),
never the key in clear, so one tenant's answer is never served to another and a dump of Redis leaks no secret.
An answer a balancer got from a fallback model is stored under that model's key, not the one asked for.
Plain and streamed answers are stored apart: a stream entry keeps its chunks and their timing for replay.

Per-request controls (`ChatRequest.controls`, as LLM gateways offer them):
``no_cache`` (do not read), ``no_store`` (do not write), ``cache_ttl`` (seconds), ``cache_namespace``,
``tenant``, ``api_key`` or an ``Authorization`` header in ``headers`` (the tenant), ``cache_replay``
(``"instant"``, ``"paced"`` or ``"merged"``); LiteLLM's spelling
``cache={"no-cache": True, "no-store": True, "ttl": 60, "namespace": "docs"}`` is accepted too.
Sampled requests (temperature > 0, the API default) are not cached unless `cache_sampled=True`.

Safety: a blob that fails to parse or validate is a miss, deleted and counted (`corrupt`). A remote tier that
raises or times out is marked down and bypassed for `retry_after_s` (a warning is logged once per outage), then
tried again; requests keep succeeding from the other tiers and upstream meanwhile (fail-open).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

from labkit.cache.base import CorruptEntry, Entry, EntryTooLarge, RecordedChunk, Tier
from labkit.cache.memory import MemoryTier
from labkit.cache.replay import REPLAY_PACES, ReplayPace, record, replay
from labkit.chain import Handler, Result
from labkit.dedup.policy import SamplingPolicy, is_sampled
from labkit.dedup.singleflight import SingleFlight
from labkit.request import ChatRequest
from labkit.scope import Scope, Scoping, fingerprint_for, request_tenant, served_model, tenant_of
from labkit.stream import ChunkStream

log = logging.getLogger("labkit.cache")
T = TypeVar("T")


#: The tenant of an API key or tenant id (`labkit.scope.tenant_of`): a keyed hash, never the secret itself.
tenant_hash = tenant_of


@dataclasses.dataclass(frozen=True)
class CacheControls:
    """What one request asks of the cache (parsed from `ChatRequest.controls`); `tenant` is already hashed."""

    no_cache: bool = False
    no_store: bool = False
    ttl_s: float | None = None
    namespace: str | None = None
    tenant: str | None = None
    replay: ReplayPace | None = None

    @classmethod
    def of(cls, controls: Mapping[str, Any]) -> CacheControls:
        """Parse controls; a value of the wrong type or range raises `ValueError` naming it."""
        if not controls:
            return NO_CONTROLS  # the common case, without building a frozen dataclass (about 2 µs) per request
        nested = controls.get("cache") or {}
        if not isinstance(nested, Mapping):
            raise ValueError("controls['cache'] must be a mapping such as {'no-cache': True, 'ttl': 60}")
        no_cache = controls.get("no_cache", nested.get("no-cache", False))
        no_store = controls.get("no_store", nested.get("no-store", False))
        ttl = controls.get("cache_ttl", nested.get("ttl"))
        namespace = controls.get("cache_namespace", nested.get("namespace"))
        replay_pace = controls.get("cache_replay", nested.get("replay"))
        for name, value in (("no_cache", no_cache), ("no_store", no_store)):
            if not isinstance(value, bool):
                raise ValueError(f"cache control {name!r} must be true or false, not {value!r}")
        if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not ttl > 0):
            raise ValueError(f"cache control 'ttl' must be a positive number of seconds, not {ttl!r}")
        if namespace is not None and (not isinstance(namespace, str) or not namespace or ":" in namespace):
            raise ValueError(f"cache control 'namespace' must be a non-empty string without ':', not {namespace!r}")
        if replay_pace is not None and replay_pace not in REPLAY_PACES:
            raise ValueError(f"cache control 'replay' must be one of {', '.join(REPLAY_PACES)}, not {replay_pace!r}")
        tenant = request_tenant(controls, "") or None  # hashed here: no raw key is kept past this call
        return cls(no_cache, no_store, float(ttl) if ttl is not None else None, namespace, tenant, replay_pace)


NO_CONTROLS = CacheControls()


@dataclasses.dataclass
class TierStats:
    """What happened at one tier. `skipped` counts operations not tried because the tier was down."""

    hits: int = 0
    misses: int = 0
    writes: int = 0
    promotions: int = 0
    corrupt: int = 0
    refused: int = 0
    errors: int = 0
    skipped: int = 0
    outages: int = 0
    recoveries: int = 0


@dataclasses.dataclass
class CacheStats:
    """What the layer did: `hits + misses + bypassed == requests`."""

    requests: int = 0
    hits: int = 0
    misses: int = 0
    bypassed: int = 0
    stored: int = 0
    tiers: dict[str, TierStats] = dataclasses.field(default_factory=dict)

    @property
    def hit_rate(self) -> float:
        looked_up = self.hits + self.misses
        return self.hits / looked_up if looked_up else 0.0

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"hit_rate": self.hit_rate}

    def reset(self) -> None:
        self.requests = self.hits = self.misses = self.bypassed = self.stored = 0
        for name in self.tiers:
            self.tiers[name] = TierStats()


@dataclasses.dataclass
class _Health:
    down_until: float = 0.0  # monotonic; 0 while up
    down: bool = False
    last_error: str = ""


class _Skip:
    """A tier operation that did not happen (tier down or failing)."""


_SKIPPED = _Skip()


def _any_key(key: str) -> bool:
    """`may_hold` of a tier that cannot tell without looking."""
    return True


class CacheLayer:
    """Multi-tier read-through / write-through cache of completions and streams, as a chain layer."""

    def __init__(
        self,
        tiers: Sequence[Tier],
        *,
        ttl_s: float = 3600.0,
        jitter: float = 0.1,
        api_key: str | None = None,
        scoping: Scoping | None = None,
        namespace: str = "default",
        replay_pace: ReplayPace = "instant",
        stampede_protection: bool = True,
        cache_sampled: bool = False,
        retry_after_s: float = 5.0,
        op_timeout_s: float = 0.25,
        seed: int | None = 0,
    ) -> None:
        if not tiers:
            raise ValueError("a CacheLayer needs at least one tier")
        names = [t.name for t in tiers]
        if len(set(names)) != len(names):
            raise ValueError(f"tier names must be distinct, got {names}")
        if ttl_s <= 0 or not 0 <= jitter < 1:
            raise ValueError("ttl_s must be positive and jitter in [0, 1)")
        CacheControls.of({"cache_namespace": namespace, "cache_replay": replay_pace})  # validates both
        self.tiers: tuple[Tier, ...] = tuple(tiers)
        self.ttl_s = ttl_s
        self.jitter = jitter
        self.namespace = namespace
        self.replay_pace: ReplayPace = replay_pace
        self.cache_sampled = cache_sampled
        self.retry_after_s = retry_after_s
        self.op_timeout_s = op_timeout_s
        self.stats = CacheStats(tiers={t.name: TierStats() for t in self.tiers})
        # the default tenant, hashed at once: the layer keeps no raw key (and no map of them)
        self.scoping = scoping if scoping is not None else Scoping(api_key=api_key, namespace=namespace)
        self._health = {t.name: _Health() for t in self.tiers}
        # an L1 in the process is looked up inline, without an await (the fast path of a hit and of a miss)
        self._l1: MemoryTier | None = self.tiers[0] if isinstance(self.tiers[0], MemoryTier) else None
        # a spill tier is written with what L1 evicts, not on every store (`SQLiteTier(spill=True)`)
        self._spill = tuple(t for t in self.tiers if getattr(t, "spill", False))
        self._stored_in = tuple(t for t in self.tiers if t not in self._spill)
        # every tier a miss is written to lives in this process (the default chain's: L1, with L3 as its spill)
        self._stored_in_process = all(isinstance(t, MemoryTier) for t in self._stored_in)
        self._may_hold = tuple(getattr(t, "may_hold", _any_key) for t in self.tiers)
        if self._spill:
            if self._l1 is None:
                raise ValueError("a spill tier holds what the memory tier above it evicts: put a MemoryTier first")
            self._l1.on_evict = self._spill_evicted
        self._random = random.Random(seed)
        self._background: set[asyncio.Task[Any]] = set()
        self._flight = (
            SingleFlight(SamplingPolicy.share(), key=self.cache_key, copy_results=True) if stampede_protection else None
        )

    # -- keys ----------------------------------------------------------------------------------------------

    def scope(self, request: ChatRequest, controls: CacheControls | None = None, model: str | None = None) -> Scope:
        """The request's scope; `model` is the model that served it, when a fallback did."""
        ctl = controls if controls is not None else CacheControls.of(request.controls)
        tenant, namespace = ctl.tenant or self.scoping.tenant, ctl.namespace or self.namespace
        if model is None or model == request.model:
            return Scope(tenant, namespace, request.model, request.key)
        return Scope(tenant, namespace, model, fingerprint_for(request, model))

    def cache_key(self, request: ChatRequest, controls: CacheControls | None = None, model: str | None = None) -> str:
        """``namespace:tenant:p|s:fingerprint`` for a request (served by `model`, when a fallback served it)."""
        return self.scope(request, controls, model).key("s" if request.stream else "p")

    def ttl_for(self, controls: CacheControls) -> float:
        """The TTL of a new entry: the request's or the layer's, times a jitter factor in [1 - j, 1 + j]."""
        base = controls.ttl_s or self.ttl_s
        return base * (1.0 + self.jitter * (2.0 * self._random.random() - 1.0)) if self.jitter else base

    # -- the layer -----------------------------------------------------------------------------------------

    async def __call__(self, request: ChatRequest, call_next: Handler) -> Result:
        self.stats.requests += 1
        ctl = CacheControls.of(request.controls)
        if not self.cache_sampled and is_sampled(request):
            self.stats.bypassed += 1
            return await call_next(request)
        key = self.cache_key(request, ctl)
        l1 = self._l1
        if not ctl.no_cache:
            if l1 is not None:  # the L1 fast path
                entry = l1.get_now(key)
                if entry is not None:
                    self.stats.hits += 1
                    self.stats.tiers[l1.name].hits += 1
                    return self._serve(entry, l1.name, request, ctl)
                self.stats.tiers[l1.name].misses += 1
            start = 1 if l1 is not None else 0
            if len(self.tiers) > start and self._may_be_below(key, start):
                found = await self._lookup(key, start)
                if found is not None:
                    self.stats.hits += 1
                    return self._serve(found[0], found[1], request, ctl)
        self.stats.misses += 1
        if self._flight is None or ctl.no_cache:
            return await self._fetch(key, request, call_next, ctl)

        async def fetch(req: ChatRequest) -> Result:
            if l1 is not None and (entry := l1.get_now(key)) is not None:  # a flight that just ended stored it
                return self._serve(entry, l1.name, req, ctl)
            return await self._fetch(key, req, call_next, ctl)

        return await self._flight(request, fetch)

    async def _fetch(self, key: str, request: ChatRequest, call_next: Handler, ctl: CacheControls) -> Result:
        started = asyncio.get_running_loop().time()
        result = await call_next(request)
        if ctl.no_store:
            return result
        served = served_model(result)
        if served is not None and served != request.model:  # a fallback's answer: stored under the model that served it
            key = self.cache_key(request, ctl, served)
        ttl = self.ttl_for(ctl)
        if isinstance(result, ChunkStream):
            if not request.stream:  # a plain request answered from a lower layer's stream
                result = await result.collect()
            else:

                async def store_stream(chunks: list[RecordedChunk]) -> None:
                    await self.store(key, Entry.of_stream(key, chunks, ttl), ttl)

                return record(result, started, store_stream)
        entry = Entry.of_completion(key, result, ttl)
        if self._stored_in_process:  # no await for in-process tiers
            self.stats.stored += 1
            self._write_in_process(key, entry, self._stored_in)
        else:
            await self.store(key, entry, ttl)
        return result

    def _serve(self, entry: Entry, tier: str, request: ChatRequest, ctl: CacheControls) -> Result:
        if entry.kind == "stream":
            info = {"cache_tier": tier, "cache_age_s": max(0.0, time.time() - entry.created_at)}
            pace = ctl.replay or self.replay_pace
            if pace == "merged":  # two chunks rebuilt from the entry's JSON, not the ~150 recorded ones
                return replay((), pace, info=info, merged=entry.merged)
            return replay(entry.chunks, pace, info=info)
        completion = entry.completion  # rebuilt from the entry's JSON: the caller's own
        assert completion is not None
        return completion

    # -- tiers ---------------------------------------------------------------------------------------------

    def _may_be_below(self, key: str, start: int) -> bool:
        """Whether a tier from `start` on may hold `key`. When none may (the default chain's private L3 on a key it
        never stored), each counts its miss here and `_lookup`, a coroutine, is not even started."""
        may_hold = self._may_hold
        for i in range(start, len(may_hold)):
            if may_hold[i](key):
                return True
        for tier in self.tiers[start:]:
            self.stats.tiers[tier.name].misses += 1
        return False

    async def _lookup(self, key: str, start: int = 0) -> tuple[Entry, str] | None:
        """Look `key` up in the tiers from `start` on; a hit is promoted into the tiers above it."""
        for i in range(start, len(self.tiers)):
            tier = self.tiers[i]
            stats = self.stats.tiers[tier.name]
            try:
                if isinstance(tier, MemoryTier):
                    entry = tier.get_now(key)
                elif not self._may_hold[i](key):
                    entry = None  # a tier that knows it never stored the key: no call, no await
                else:
                    got = await self._guarded(tier, lambda t=tier: t.get(key))
                    if got is _SKIPPED:
                        continue
                    entry = got  # type: ignore[assignment]
            except CorruptEntry as error:
                stats.corrupt += 1
                stats.misses += 1
                log.warning("cache tier %s: corrupt entry deleted (%s)", tier.name, error)
                await self._guarded(tier, lambda t=tier: t.delete(key))
                continue
            if entry is None or entry.expired():
                stats.misses += 1
                continue
            stats.hits += 1
            if i:
                self._promote(key, entry, self.tiers[:i])
            return entry, tier.name
        return None

    def _promote(self, key: str, entry: Entry, tiers: Sequence[Tier]) -> None:
        ttl = entry.ttl_left()
        if ttl <= 0:
            return
        remote: list[Tier] = []
        for tier in tiers:
            self.stats.tiers[tier.name].promotions += 1
            if isinstance(tier, MemoryTier):
                tier.set_now(key, entry)
            else:
                remote.append(tier)
        if remote:
            task = asyncio.create_task(self._write(key, entry, ttl, remote, promotion=True))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def store(self, key: str, entry: Entry, ttl_s: float) -> None:
        """Write an entry to every tier (a tier that is down, or refuses it, is skipped)."""
        self.stats.stored += 1
        await self._write(key, entry, ttl_s, self._stored_in)

    def _spill_evicted(self, key: str, entry: Entry) -> None:
        """L1 pushed `entry` out: keep it in the spill tiers for the TTL it has left (a failure only loses it)."""
        ttl = entry.ttl_left()
        if ttl <= 0:
            return
        for tier in self._spill:
            stats = self.stats.tiers[tier.name]
            if self._resting(tier.name):
                stats.skipped += 1
                continue
            try:
                tier.put_now(key, entry, ttl)  # type: ignore[attr-defined]
            except Exception as error:  # called from inside L1's insert: a cache tier must not fail the request
                stats.errors += 1
                log.warning("cache tier %s: a spilled entry was dropped (%s)", tier.name, error)
                continue
            stats.writes += 1

    async def _write(
        self, key: str, entry: Entry, ttl_s: float, tiers: Sequence[Tier], promotion: bool = False
    ) -> None:
        remote = self._write_in_process(key, entry, tiers, promotion)
        if len(remote) == 1:  # no task per write for the one remote tier of most chains
            await self._write_one(remote[0], key, entry, ttl_s, promotion)
        elif remote:
            await asyncio.gather(*(self._write_one(tier, key, entry, ttl_s, promotion) for tier in remote))

    def _write_in_process(self, key: str, entry: Entry, tiers: Sequence[Tier], promotion: bool = False) -> list[Tier]:
        """Write `entry` to the in-process tiers among `tiers` at once; return the others, to be written with I/O."""
        remote = []
        for tier in tiers:
            if isinstance(tier, MemoryTier):
                tier.set_now(key, entry)
                self.stats.tiers[tier.name].writes += not promotion
            else:
                remote.append(tier)
        return remote

    async def _write_one(self, tier: Tier, key: str, entry: Entry, ttl_s: float, promotion: bool) -> None:
        stats = self.stats.tiers[tier.name]
        try:
            done = await self._guarded(tier, lambda: tier.set(key, entry, ttl_s))
        except EntryTooLarge as error:
            stats.refused += 1
            log.info("cache tier %s: %s", tier.name, error)
            return
        if done is not _SKIPPED and not promotion:
            stats.writes += 1

    def _resting(self, name: str) -> bool:
        """Whether tier `name` is marked down and its `retry_after_s` has not passed yet."""
        health = self._health[name]
        return health.down and time.monotonic() < health.down_until

    async def _guarded(self, tier: Tier, operation: Callable[[], Awaitable[T]]) -> T | _Skip:
        """Run one remote-tier operation with a timeout; a failure marks the tier down (fail-open).

        A `blocking` tier (SQLite: its calls never wait on the loop) gets no timeout, which could never fire."""
        health = self._health[tier.name]
        stats = self.stats.tiers[tier.name]
        if self._resting(tier.name):
            stats.skipped += 1
            return _SKIPPED
        try:
            if getattr(tier, "blocking", False):
                result = await operation()
            else:
                async with asyncio.timeout(self.op_timeout_s):
                    result = await operation()
        except (CorruptEntry, EntryTooLarge):
            raise
        except Exception as error:  # any failure of a cache tier must not fail the request
            stats.errors += 1
            health.last_error = f"{type(error).__name__}: {error}"
            health.down_until = time.monotonic() + self.retry_after_s
            if not health.down:
                health.down = True
                stats.outages += 1
                log.warning(
                    "cache tier %s is down (%s): bypassed, retried in %.1f s",
                    tier.name,
                    health.last_error,
                    self.retry_after_s,
                )
            return _SKIPPED
        if health.down:
            health.down = False
            stats.recoveries += 1
            log.warning("cache tier %s is back", tier.name)
        return result

    # -- housekeeping ----------------------------------------------------------------------------------------

    def tier_state(self) -> dict[str, dict[str, Any]]:
        """Each tier's health: up or down, and the last error seen."""
        return {
            name: {
                "down": h.down,
                "retry_in_s": max(0.0, h.down_until - time.monotonic()) if h.down else 0.0,
                "last_error": h.last_error,
            }
            for name, h in self._health.items()
        }

    async def flush(self) -> None:
        """Wait for background promotions to finish (tests and benchmarks call it)."""
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)

    async def clear(self) -> None:
        """Empty every tier that is up."""
        await self.flush()
        for tier in self.tiers:
            await self._guarded(tier, tier.clear)

    async def aclose(self) -> None:
        await self.flush()
        for tier in self.tiers:
            try:
                await tier.aclose()
            except Exception as error:  # closing a dead connection must not hide the caller's own error
                log.info("closing cache tier %s: %s", tier.name, error)


__all__ = ["NO_CONTROLS", "CacheControls", "CacheLayer", "CacheStats", "TierStats", "tenant_hash"]
