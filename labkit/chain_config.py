"""What `labkit.assemble.build_chain` builds: one `ChainConfig`, its switches, and the lessons' presets.

Every layer of the full chain is a boolean switch (`SWITCHES`, outermost first) and every number is that layer's
setting, so a lesson's variant is a config change, never a second builder: the capstone's ablation is
`ChainConfig().without("hedge")`, lessons 09-10's chain is `ChainConfig.preset("resilience")`, and an arm of its
comparison is `ChainConfig.preset("resilience", retry=False, strategy="round_robin")`.
A config is plain data (no objects), so it also comes from a config file's section: `config_from_mapping`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal

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

_POSITIVE = (
    "cache_ttl_s",
    "cache_op_timeout_s",
    "total_timeout_s",
    "admission_burst_s",
    "retry_base_delay_s",
    "breaker_window_s",
    "breaker_open_s",
)
_POSITIVE_OR_NONE = (
    "rpm",
    "tpm",
    "retry_deadline_s",
    "first_token_timeout_s",
    "stream_timeout_s",
    "cache_sqlite_write_behind_s",
)
_AT_LEAST_ONE = ("max_concurrency", "max_connections", "retry_max_attempts", "breaker_min_requests")


@dataclasses.dataclass(frozen=True)
class ChainConfig:
    """Everything `build_chain` needs to know. Each boolean of `SWITCHES` is one layer; the rest are settings."""

    metrics: bool = True
    # a second metrics layer just above each transport: what went upstream, beside what callers saw (lesson 02)
    upstream_metrics: bool = False
    streaming: bool = True
    cache: bool = True
    cache_redis: bool = True  # L2 (only when a Redis URL is given)
    cache_sqlite: bool = True  # L3 (a file in `sqlite_path`, or a temporary one)
    # L3 writes are buffered and written in one transaction this often (or every 256 rows): an INSERT of its own
    # was the largest client CPU cost of a cache miss (labkit.cache.sqlite_tier); None: every write at once
    cache_sqlite_write_behind_s: float | None = 0.25
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
    dedup_redis: bool = False  # also coalesce across processes through Redis, below the in-process single-flight
    dedup_namespace: str = "labkit:sf"
    admission: bool = True
    rpm: float | None = None  # per endpoint; None: the limits the (simulated) service reports, else no pacing
    tpm: float | None = None
    admission_burst_s: float = 0.5  # seconds of the rate the buckets hold
    max_concurrency: int = 256
    retry: bool = True
    retry_max_attempts: int = 4  # attempts in all, the first one included
    retry_base_delay_s: float = 0.5  # full jitter: a wait drawn from [0, base * 2**attempt]
    retry_budget_ratio: float = 0.2  # retries allowed per request, on average (a sick upstream gets no storm)
    retry_budget_min_per_s: float = 10.0  # ... plus this reserve, so a quiet client can still retry
    retry_deadline_s: float | None = 8.0  # all attempts of one request together; None: no deadline
    # continue a stream dropped after its first token by replaying the request, only when it is reproducible
    # (temperature 0 or a seed) and the replay starts with exactly the text already delivered (labkit.layers.retry)
    retry_resume_streams: bool = True
    hedge: bool = True
    hedge_quantile: float = 95.0
    hedge_min_samples: int = 20
    hedge_max_share: float = 0.1
    balancer: bool = True
    strategy: str = "peak_ewma"
    endpoint_names: tuple[str, ...] | None = None  # one per primary endpoint; None: the endpoints' own names
    weights: tuple[float, ...] | None = None  # one per primary endpoint, for the "weighted" strategy
    # the last len(fallback_models) endpoints given to build_chain are fallbacks, used only while every primary
    # refuses (its breaker is open); each serves the model named here (None: the request's own model)
    fallback_models: tuple[str | None, ...] = ()
    breaker: bool = True
    breaker_failure_ratio: float = 0.5
    breaker_min_requests: int = 20
    breaker_window_s: float = 10.0
    breaker_open_s: float = 5.0
    breaker_half_open_probes: int = 3
    first_token_timeout_s: float | None = 4.0  # per attempt, when streaming is on; None: no first-token limit
    stream_timeout_s: float | None = None  # a whole stream's limit (a timer per chunk, so off by default)
    total_timeout_s: float = 30.0  # the transport's timeout for one attempt
    pooling: bool = True
    # the lean aiohttp transport: `python -m labkit.lessons.pooling` (lesson 08) measures it adding the least
    # TTFT and client CPU of the three transports at 100, 500 and 1000 concurrent streams, the capstone's range
    lean: bool = True
    max_connections: int = 1024
    sdk_max_retries: int = 0  # the SDK's own retries (lesson 09 compares them); refused together with `retry`
    seed: int = 0

    def __post_init__(self) -> None:
        for name in _POSITIVE:
            if not getattr(self, name) > 0:
                raise ValueError(f"ChainConfig.{name} must be > 0, got {getattr(self, name)!r}")
        for name in _POSITIVE_OR_NONE:
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"ChainConfig.{name} must be > 0 or None, got {value!r}")
        for name in _AT_LEAST_ONE:
            if getattr(self, name) < 1:
                raise ValueError(f"ChainConfig.{name} must be at least 1, got {getattr(self, name)!r}")
        if not 0 <= self.hedge_max_share <= 1 or not 0 < self.breaker_failure_ratio <= 1:
            raise ValueError("hedge_max_share must be in [0, 1] and breaker_failure_ratio in (0, 1]")
        if self.sdk_max_retries < 0:
            raise ValueError(f"ChainConfig.sdk_max_retries must be >= 0, got {self.sdk_max_retries!r}")
        if self.retry and self.sdk_max_retries:
            # one call would cost up to retry_max_attempts * (sdk_max_retries + 1) requests
            raise ValueError(
                f"double retrying: the retry layer over a transport with SDK retries on "
                f"(max_retries={self.sdk_max_retries}); set sdk_max_retries=0 or retry=False"
            )
        if self.sdk_max_retries and self.transport == "lean":
            raise ValueError("the lean transport has no retries of its own: sdk_max_retries needs lean=False")

    def without(self, *switches: str) -> ChainConfig:
        """The same config with the named layers switched off (the ablation); `"a+b"` names two at once."""
        switches = tuple(part for name in switches for part in name.split("+"))
        unknown = [s for s in switches if s not in SWITCHES]
        if unknown:
            raise ValueError(f"unknown layer switch(es) {unknown}; known: {list(SWITCHES)}")
        return dataclasses.replace(self, **dict.fromkeys(switches, False))

    def replace(self, **changes: Any) -> ChainConfig:
        """The same config with these settings changed (checked like a new one)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def preset(cls, name: str, **changes: Any) -> ChainConfig:
        """A named config of `PRESETS` (`"default"`, `"bare"`, `"resilience"`), with `changes` applied."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; known: {sorted(PRESETS)}")
        return PRESETS[name].replace(**changes) if changes else PRESETS[name]

    @classmethod
    def naive_like(cls) -> ChainConfig:
        """Every layer off: a new SDK client per request to one endpoint."""
        return cls().without(*SWITCHES)

    def switches(self) -> dict[str, bool]:
        return {name: bool(getattr(self, name)) for name in SWITCHES}

    @property
    def transport(self) -> TransportKind:
        if not self.pooling:
            return "sdk-per-request"
        return "lean" if self.lean else "sdk"


#: Named configs. "default" is the full chain; "bare" is a pooled official SDK client and nothing else (the base
#: a lesson switches its one layer on over); "resilience" is lessons 09-10's chain: retry -> balancer -> per endpoint
#: circuit breaker -> first-token guard -> pooled SDK transport (the lesson compares it with the SDK's own retries,
#: so it keeps the SDK under it).
PRESETS: dict[str, ChainConfig] = {
    "default": ChainConfig(),
    "bare": ChainConfig().without(*(s for s in SWITCHES if s != "pooling")),
    "resilience": ChainConfig().without("metrics", "cache", "semantic", "dedup", "admission", "hedge", "lean"),
}


def config_from_mapping(values: Mapping[str, Any]) -> ChainConfig:
    """A `ChainConfig` from a plain mapping (a config file's section); unknown keys are an error."""
    known = {f.name for f in dataclasses.fields(ChainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown chain setting(s) {unknown}; known: {sorted(known)}")
    converted = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}  # JSON/TOML lists
    return ChainConfig(**converted)


__all__ = ["DESCRIPTIONS", "PRESETS", "SWITCHES", "ChainConfig", "TransportKind", "config_from_mapping"]
