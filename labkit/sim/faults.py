"""Fault injection: configuration, validation and seeded per-request decisions.

Resilience lessons need failures that are reproducible: every admitted request draws the same fixed
number of values from one `random.Random(seed)` in arrival order, so a given seed and request order give
the same faults run after run, whatever the rates. The config can be replaced at run time (PUT
/admin/faults) so a notebook switches scenario without restarting the service.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any

ERROR_KINDS = ("500", "502", "503", "429", "insufficient_quota")

DEFAULT_CONFIG: dict[str, Any] = {
    "seed": None,  # None: the service's --seed
    "error_rates": {"500": 0.0, "502": 0.0, "503": 0.0, "429": 0.0, "insufficient_quota": 0.0},
    "retry_after_s": 1.0,  # retry-after of injected 429 rate_limit_exceeded
    "insufficient_quota_keys": [],
    "slow_first_byte": {"rate": 0.0, "delay_s": 5.0},
    "hang_rate": 0.0,
    "drop_mid_stream_rate": 0.0,
    "stream_error_rate": 0.0,
    "storm": {"start_s": None, "duration_s": 0.0},
}


class FaultConfigError(ValueError):
    """A fault config that cannot be applied; the message names the offending field."""


@dataclass(frozen=True)
class Decision:
    """What to do to one request. `error` is one of ERROR_KINDS or None; positions are fractions of the output."""

    error: str | None = None
    slow_first_byte_s: float = 0.0
    hang: bool = False
    drop_at: float | None = None  # fraction of the output after which the connection is aborted
    stream_error_at: float | None = None  # fraction after which an SSE error event ends the stream


NO_FAULT = Decision()


def _rate(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise FaultConfigError(f"{name} must be a number between 0 and 1")
    return float(value)


def _nonneg(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise FaultConfigError(f"{name} must be a non-negative number")
    return float(value)


def _check_keys(d: Any, allowed: set[str], name: str) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise FaultConfigError(f"{name} must be an object")
    unknown = set(d) - allowed
    if unknown:
        raise FaultConfigError(f"unknown field(s) in {name}: {', '.join(sorted(unknown))}")
    return d


def validate(raw: Any) -> dict[str, Any]:
    """A complete, normalised config from a (possibly partial) JSON object; missing fields take defaults."""
    raw = _check_keys(raw, set(DEFAULT_CONFIG), "faults")
    cfg: dict[str, Any] = {
        "seed": raw.get("seed"),
        "error_rates": dict(DEFAULT_CONFIG["error_rates"]),
        "retry_after_s": _nonneg(raw.get("retry_after_s", 1.0), "retry_after_s"),
        "insufficient_quota_keys": [],
        "slow_first_byte": dict(DEFAULT_CONFIG["slow_first_byte"]),
        "hang_rate": _rate(raw.get("hang_rate", 0.0), "hang_rate"),
        "drop_mid_stream_rate": _rate(raw.get("drop_mid_stream_rate", 0.0), "drop_mid_stream_rate"),
        "stream_error_rate": _rate(raw.get("stream_error_rate", 0.0), "stream_error_rate"),
        "storm": dict(DEFAULT_CONFIG["storm"]),
    }
    if cfg["seed"] is not None and (isinstance(cfg["seed"], bool) or not isinstance(cfg["seed"], int)):
        raise FaultConfigError("seed must be an integer or null")
    rates = _check_keys(raw.get("error_rates", {}), set(ERROR_KINDS), "error_rates")
    for kind, value in rates.items():
        cfg["error_rates"][kind] = _rate(value, f"error_rates.{kind}")
    if sum(cfg["error_rates"].values()) > 1.0 + 1e-9:
        raise FaultConfigError("error_rates must sum to at most 1")
    keys = raw.get("insufficient_quota_keys", [])
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise FaultConfigError("insufficient_quota_keys must be a list of strings")
    cfg["insufficient_quota_keys"] = list(keys)
    sfb = _check_keys(raw.get("slow_first_byte", {}), {"rate", "delay_s"}, "slow_first_byte")
    cfg["slow_first_byte"]["rate"] = _rate(sfb.get("rate", 0.0), "slow_first_byte.rate")
    cfg["slow_first_byte"]["delay_s"] = _nonneg(sfb.get("delay_s", 5.0), "slow_first_byte.delay_s")
    storm = _check_keys(raw.get("storm", {}), {"start_s", "duration_s"}, "storm")
    start = storm.get("start_s")
    cfg["storm"]["start_s"] = None if start is None else _nonneg(start, "storm.start_s")
    cfg["storm"]["duration_s"] = _nonneg(storm.get("duration_s", 0.0), "storm.duration_s")
    return cfg


class Faults:
    """The active fault config and its seeded random stream."""

    def __init__(self, config: Any = None, default_seed: int = 0) -> None:
        self._default_seed = default_seed
        self.config: dict[str, Any] = validate(config or {})
        self._applied_at = time.monotonic()
        self._rng = random.Random(self._seed())
        self._quota_keys = frozenset(self.config["insufficient_quota_keys"])
        self._update_fast_path()

    def _seed(self) -> int:
        seed = self.config["seed"]
        return self._default_seed if seed is None else seed

    def _update_fast_path(self) -> None:
        c = self.config
        self._any_random = (
            any(c["error_rates"].values())
            or c["slow_first_byte"]["rate"] > 0
            or c["hang_rate"] > 0
            or c["drop_mid_stream_rate"] > 0
            or c["stream_error_rate"] > 0
        )

    def replace(self, raw: Any) -> dict[str, Any]:
        """Validate and apply a new config (raises FaultConfigError); restarts the seeded stream and storm clock."""
        cfg = validate(raw)
        self.config = cfg
        self._quota_keys = frozenset(cfg["insufficient_quota_keys"])
        self.reseed()
        self._update_fast_path()
        return cfg

    def reseed(self) -> None:
        """Restart the random stream (same seed: the same decisions again) and the storm clock."""
        self._rng = random.Random(self._seed())
        self._applied_at = time.monotonic()

    def quota_exhausted(self, api_key: str) -> bool:
        return api_key in self._quota_keys

    def storm_remaining_s(self) -> float:
        """Seconds left in a running rate-limit storm, 0 when none is running."""
        storm = self.config["storm"]
        if storm["start_s"] is None or storm["duration_s"] <= 0:
            return 0.0
        start = self._applied_at + storm["start_s"]
        now = time.monotonic()
        end = start + storm["duration_s"]
        return end - now if start <= now < end else 0.0

    def decide(self) -> Decision:
        """The faults of the next request in arrival order (always 7 draws, so decisions stay aligned)."""
        if not self._any_random:
            return NO_FAULT
        c, r = self.config, self._rng.random
        u_err, u_slow, u_hang, u_drop, u_serr, pos1, pos2 = r(), r(), r(), r(), r(), r(), r()
        error = None
        acc = 0.0
        for kind in ERROR_KINDS:
            acc += c["error_rates"][kind]
            if u_err < acc:
                error = kind
                break
        return Decision(
            error=error,
            slow_first_byte_s=c["slow_first_byte"]["delay_s"] if u_slow < c["slow_first_byte"]["rate"] else 0.0,
            hang=u_hang < c["hang_rate"],
            drop_at=0.1 + 0.8 * pos1 if u_drop < c["drop_mid_stream_rate"] else None,
            stream_error_at=0.1 + 0.8 * pos2 if u_serr < c["stream_error_rate"] else None,
        )
