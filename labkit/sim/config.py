"""Configuration of one simulator instance: the chosen latency profile plus service options.

Profiles live in data/profiles.json so their published sources sit next to the numbers; the CLI can
override the headline figures (TTFT, tokens/s, sequences) without editing the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from labkit.sim.text import LengthDist

PROFILES_PATH = Path(__file__).resolve().parents[2] / "data" / "profiles.json"
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class Profile:
    """One simulated inference server: timings, capacity, output lengths and the models it serves."""

    name: str
    models: tuple[str, ...]
    aliases: dict[str, str]
    ttft_s: float
    output_tokens_per_s: float
    prefill_tokens_per_s: float | None  # None: prefill takes no time
    max_sequences: int
    max_queue: int | None  # None: unbounded FIFO queue
    decode_slowdown: float
    output_tokens: LengthDist
    context_window: int
    max_output_tokens: int
    embedding_models: dict[str, int]
    embedding_latency_s: float
    embedding_tokens_per_s: float | None
    pricing_model: str
    source: str = ""
    source_url: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def resolve(self, model: str) -> str | None:
        """The snapshot id a requested chat model id is served as (aliases resolved), or None if unknown."""
        if model in self.aliases:
            return self.aliases[model]
        return model if model in self.models else None

    def model_ids(self) -> list[str]:
        """Every id /v1/models lists: aliases, snapshots and embedding models."""
        ids = list(self.aliases) + [m for m in self.models if m not in self.aliases]
        return ids + [m for m in self.embedding_models if m not in ids]

    def public(self) -> dict[str, Any]:
        """The profile as JSON for /admin/profile, overrides applied."""
        d = dict(self.raw)
        d.update(
            name=self.name,
            ttft_s=self.ttft_s,
            output_tokens_per_s=self.output_tokens_per_s,
            max_sequences=self.max_sequences,
            max_queue=self.max_queue,
        )
        return d


def load_profiles(path: Path | None = None) -> dict[str, dict[str, Any]]:
    """All profiles of the profiles file, by name."""
    with open(path or PROFILES_PATH, encoding="utf-8") as f:
        return json.load(f)["profiles"]


def load_profile(
    name: str,
    path: Path | None = None,
    ttft_s: float | None = None,
    tps: float | None = None,
    max_sequences: int | None = None,
) -> Profile:
    """The profile `name`, with optional overrides of its TTFT, output tokens/s and sequence capacity."""
    profiles = load_profiles(path)
    if name not in profiles:
        raise KeyError(f"unknown profile {name!r}; known: {', '.join(sorted(profiles))}")
    p = profiles[name]
    profile = Profile(
        name=name,
        models=tuple(p["models"]),
        aliases=dict(p.get("aliases", {})),
        ttft_s=float(p["ttft_s"]),
        output_tokens_per_s=float(p["output_tokens_per_s"]),
        prefill_tokens_per_s=None if p.get("prefill_tokens_per_s") is None else float(p["prefill_tokens_per_s"]),
        max_sequences=int(p["max_sequences"]),
        max_queue=None if p.get("max_queue") is None else int(p["max_queue"]),
        decode_slowdown=float(p.get("decode_slowdown", 0.0)),
        output_tokens=LengthDist.from_dict(p["output_tokens"]),
        context_window=int(p.get("context_window", 128000)),
        max_output_tokens=int(p.get("max_output_tokens", 16384)),
        embedding_models={k: int(v) for k, v in p.get("embedding_models", {}).items()},
        embedding_latency_s=float(p.get("embedding_latency_s", 0.0)),
        embedding_tokens_per_s=None if p.get("embedding_tokens_per_s") is None else float(p["embedding_tokens_per_s"]),
        pricing_model=str(p.get("pricing_model", p["models"][0])),
        source=str(p.get("source", "")),
        source_url=p.get("source_url"),
        raw=p,
    )
    overrides: dict[str, Any] = {}
    if ttft_s is not None:
        overrides["ttft_s"] = float(ttft_s)
    if tps is not None:
        overrides["output_tokens_per_s"] = float(tps)
    if max_sequences is not None:
        overrides["max_sequences"] = int(max_sequences)
    return replace(profile, **overrides) if overrides else profile


@dataclass
class SimConfig:
    """Everything one instance needs; `create_app(SimConfig(...))` builds it, the CLI fills it from flags."""

    profile: str = "gpt-4o-class"
    seed: int = 42
    rpm: int | None = None
    tpm: int | None = None
    api_keys: frozenset[str] | None = None  # None: any non-empty key is accepted
    faults: dict[str, Any] | None = None
    ttft_s: float | None = None
    tps: float | None = None
    max_sequences: int | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    profiles_path: Path | None = None
    prefix_cache_entries: int = 200_000
    prefix_cache_ttl_s: float = 600.0
    admin_routes: bool = True  # False (--no-admin): no /admin routes, as on a provider the lab did not start

    def load_profile(self) -> Profile:
        return load_profile(self.profile, self.profiles_path, self.ttft_s, self.tps, self.max_sequences)
