"""De-duplication (请求去重): the canonical key, in-flight coalescing in one process and across processes.

- `policy`: `key_of` (the canonical fingerprint, honouring volatile marks) and `SamplingPolicy` (what to do
  with temperature > 0);
- `singleflight`: `SingleFlight`, the in-process layer (plain and streamed requests);
- `redisflight`: `RedisSingleFlight`, the cross-process layer (a Redis lock, a result channel, a short TTL);

Lesson 02's experiments (the guide's prompt-hash cache, the worker processes, the benchmark) live in
`labkit.lessons.dedup`.

`RedisSingleFlight` is imported lazily, so the in-process layers do not need the `redis` package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from labkit.dedup.policy import SamplingPolicy, is_sampled, key_of
from labkit.dedup.singleflight import SingleFlight, SingleFlightStats

if TYPE_CHECKING:
    from labkit.dedup.redisflight import RedisFlightStats, RedisSingleFlight, UpstreamError


def __getattr__(name: str) -> Any:
    if name in ("RedisSingleFlight", "RedisFlightStats", "UpstreamError"):
        from labkit.dedup import redisflight

        return getattr(redisflight, name)
    raise AttributeError(name)


__all__ = [
    "RedisFlightStats",
    "RedisSingleFlight",
    "SamplingPolicy",
    "SingleFlight",
    "SingleFlightStats",
    "UpstreamError",
    "is_sampled",
    "key_of",
]
