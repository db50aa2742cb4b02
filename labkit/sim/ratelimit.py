"""Per-API-key request and token rate limits, refilled continuously like OpenAI's.

Each key has two buckets: requests (capacity RPM) and tokens (capacity TPM), each refilling linearly at
capacity/60 per second, so a key that has just been throttled recovers gradually rather than at the turn
of a minute. `burst_s` (default 60) sets how many seconds of the rate a full bucket holds: real limits "may be
quantized" (OpenAI: 60,000 RPM may be enforced as 1,000 requests per second), which `burst_s=1` reproduces.
A request costs one request and its estimated tokens (prompt + max_tokens, or a default estimate when
max_tokens is absent), checked before any work is done; the unused part of the estimate is given back
when the request finishes. The six `x-ratelimit-*` headers are computed from the same state.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from labkit.sim import errors

DEFAULT_RPM = 10_000
DEFAULT_TPM = 10_000_000
DEFAULT_COMPLETION_ESTIMATE = 256
DEFAULT_BURST_S = 60.0


def go_duration(seconds: float) -> str:
    """A duration the way Go prints it (what the real headers contain): `0s`, `12ms`, `2.5s`, `6m0s`."""
    ms = max(0, round(seconds * 1000))
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rem = divmod(ms, 3_600_000)
    minutes, rem = divmod(rem, 60_000)
    sec = f"{rem / 1000:.3f}".rstrip("0").rstrip(".")
    out = f"{hours}h" if hours else ""
    if hours or minutes:
        out += f"{minutes}m"
    return f"{out}{sec}s"


@dataclass(frozen=True)
class Limits:
    rpm: int
    tpm: int


class LimitsConfigError(ValueError):
    """A limits config that cannot be applied; the message names the field."""


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise LimitsConfigError(f"{name} must be a positive integer")
    return value


class _Bucket:
    """Token-bucket state of one key: levels of both buckets at time `t`."""

    __slots__ = ("req", "t", "tok")

    def __init__(self, limits: Limits, now: float, burst: float = 1.0) -> None:
        self.req = limits.rpm * burst
        self.tok = limits.tpm * burst
        self.t = now

    def refill(self, limits: Limits, now: float, burst: float = 1.0) -> None:
        dt = now - self.t
        if dt > 0:
            self.req = min(limits.rpm * burst, self.req + dt * limits.rpm / 60.0)
            self.tok = min(limits.tpm * burst, self.tok + dt * limits.tpm / 60.0)
            self.t = now


class RateLimiter:
    """RPM/TPM limits per API key, with optional per-key overrides of the defaults."""

    def __init__(
        self,
        rpm: int = DEFAULT_RPM,
        tpm: int = DEFAULT_TPM,
        keys: dict[str, dict[str, int]] | None = None,
        default_completion_estimate: int = DEFAULT_COMPLETION_ESTIMATE,
    ) -> None:
        self.replace(
            {"rpm": rpm, "tpm": tpm, "keys": keys or {}, "default_completion_estimate": default_completion_estimate}
        )

    def config(self) -> dict[str, Any]:
        return {
            "rpm": self._default.rpm,
            "tpm": self._default.tpm,
            "keys": {k: {"rpm": v.rpm, "tpm": v.tpm} for k, v in self._per_key.items()},
            "default_completion_estimate": self.default_completion_estimate,
            "burst_s": self.burst_s,
        }

    def replace(self, raw: Any) -> dict[str, Any]:
        """Apply `{"rpm", "tpm", "keys": {key: {"rpm", "tpm"}}, "default_completion_estimate"}` (fields optional;
        missing ones keep their current value). Bucket levels restart full."""
        if not isinstance(raw, dict):
            raise LimitsConfigError("limits must be an object")
        unknown = set(raw) - {"rpm", "tpm", "keys", "default_completion_estimate", "burst_s"}
        if unknown:
            raise LimitsConfigError(f"unknown field(s) in limits: {', '.join(sorted(unknown))}")
        current = getattr(self, "_default", Limits(DEFAULT_RPM, DEFAULT_TPM))
        default = Limits(
            _positive_int(raw.get("rpm", current.rpm), "rpm"), _positive_int(raw.get("tpm", current.tpm), "tpm")
        )
        keys_raw = raw.get("keys", None)
        per_key = dict(getattr(self, "_per_key", {}))
        if keys_raw is not None:
            if not isinstance(keys_raw, dict):
                raise LimitsConfigError("keys must be an object mapping API keys to {rpm, tpm}")
            per_key = {}
            for key, lim in keys_raw.items():
                if not isinstance(lim, dict) or set(lim) - {"rpm", "tpm"}:
                    raise LimitsConfigError(f"keys.{key} must be an object with rpm and/or tpm")
                per_key[key] = Limits(
                    _positive_int(lim.get("rpm", default.rpm), f"keys.{key}.rpm"),
                    _positive_int(lim.get("tpm", default.tpm), f"keys.{key}.tpm"),
                )
        estimate = _positive_int(
            raw.get(
                "default_completion_estimate", getattr(self, "default_completion_estimate", DEFAULT_COMPLETION_ESTIMATE)
            ),
            "default_completion_estimate",
        )
        burst_s = raw.get("burst_s", getattr(self, "burst_s", DEFAULT_BURST_S))
        if isinstance(burst_s, bool) or not isinstance(burst_s, int | float) or not 0 < burst_s <= 60:
            raise LimitsConfigError("burst_s must be a number of seconds in (0, 60]")
        self.burst_s = float(burst_s)
        self._default = default
        self._per_key = per_key
        self.default_completion_estimate = estimate
        self._buckets: dict[str, _Bucket] = {}
        return self.config()

    def reset(self) -> None:
        """Forget all usage: every key starts with full buckets."""
        self._buckets.clear()

    def _state(self, key: str) -> tuple[Limits, _Bucket]:
        limits = self._per_key.get(key, self._default)
        now = time.monotonic()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(limits, now, self.burst_s / 60.0)
        else:
            bucket.refill(limits, now, self.burst_s / 60.0)
        return limits, bucket

    def acquire(self, key: str, tokens: int, model: str) -> dict[str, str]:
        """Charge one request and `tokens` to `key` and return the headers, or raise a 429 APIError."""
        limits, b = self._state(key)
        if b.req < 1.0:
            wait = (1.0 - b.req) * 60.0 / limits.rpm
            raise errors.rate_limited("requests", limits.rpm, limits.rpm - b.req, 1, wait, model)
        if tokens > limits.tpm:
            err = errors.rate_limited("tokens", limits.tpm, limits.tpm - b.tok, tokens, 60.0, model)
            err.message = (
                f"Request too large for {model} on tokens per min (TPM): Limit {limits.tpm}, "
                f"Requested {tokens}. The input or output tokens must be reduced in order to run successfully."
            )
            raise err
        need = min(tokens, limits.tpm * self.burst_s / 60.0)  # a request larger than the bucket waits for a full one
        if b.tok < need:
            wait = (need - b.tok) * 60.0 / limits.tpm
            raise errors.rate_limited("tokens", limits.tpm, limits.tpm - b.tok, tokens, wait, model)
        b.req -= 1.0
        b.tok -= tokens
        return self._headers(limits, b, self.burst_s / 60.0)

    def refund(self, key: str, tokens: int) -> None:
        """Give back the part of a request's estimate it did not use."""
        if tokens > 0:
            limits, b = self._state(key)
            b.tok = min(limits.tpm * self.burst_s / 60.0, b.tok + tokens)

    def headers(self, key: str) -> dict[str, str]:
        """The six rate-limit headers of `key` without charging anything."""
        limits, b = self._state(key)
        return self._headers(limits, b, self.burst_s / 60.0)

    @staticmethod
    def _headers(limits: Limits, b: _Bucket, burst: float = 1.0) -> dict[str, str]:
        return {
            "x-ratelimit-limit-requests": str(limits.rpm),
            "x-ratelimit-limit-tokens": str(limits.tpm),
            "x-ratelimit-remaining-requests": str(max(0, math.floor(b.req))),
            "x-ratelimit-remaining-tokens": str(max(0, math.floor(b.tok))),
            "x-ratelimit-reset-requests": go_duration((limits.rpm * burst - b.req) * 60.0 / limits.rpm),
            "x-ratelimit-reset-tokens": go_duration((limits.tpm * burst - b.tok) * 60.0 / limits.tpm),
        }
