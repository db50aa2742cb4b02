"""The capstone's three arms on the same workload, endpoints and faults: the guide's "before", the guide's snippets
and labkit's chain, with the guide's own before/after figures beside what was measured.

- **before** (`BEFORE`): an application with none of the guide's remedies. `build_chain(ChainConfig.preset("bare"))`:
  the official SDK on one client with its defaults (connection limits, timeout), nothing else: whole answers (no
  streaming), no cache, no de-duplication, no admission, one endpoint (no balancing), the SDK's retries off
  (`max_retries=0`: the guide lists automatic retry, 自动重试, as a remedy, and its "before" error rate of 5% is
  the fault rate reaching every user), no `max_tokens` (the checklist's 设置合理的max_tokens is a remedy: answers
  run to the model's own length) and the whole prompt (优化prompt长度 is a remedy).
- **guide** (`GUIDE`): the guide's snippets as `labkit.lessons.naive.NaiveClient` assembles them (`asyncio`
  tasks, the SDK's default retries, the Redis `SmartCache`), with the workload's `max_tokens` (its checklist).
- **labkit** (`LABKIT`): `build_chain(ChainConfig())` with the workload's `max_tokens` and the trimmed prompt.

Time compression: 10,000 requests at the file's 25/s take 400 s per arm. `start_scaled_lab(scale)` runs the same
services `scale` times faster (first token, token rate and prefill speed from data/profiles.json, multiplied),
with `scale` times the rate limits; `scaled_spec` sends the same requests `scale` times faster, `scaled_config`
divides the chain's timers, and `rescale` multiplies the measured times back. What does not scale is the client's
own CPU per request, so a compressed run charges each arm `scale` times its real client overhead.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from labkit.lessons.capstone.experiment import measure
from labkit.lessons.capstone.workload import Workload, WorkloadSpec, trimmed, without_deferred

#: The guide's own before/after figures (优化效果对比), and for p95 first token its objective (首字节时间 < 1 s).
GUIDE_FIGURES: dict[str, tuple[float | None, float | None]] = {
    "avg_response_s": (3.2, 0.8),
    "throughput_rps": (100.0, 1000.0),
    "hit_rate": (0.20, 0.80),
    "cost_month_usd": (1000.0, 400.0),
    "error_rate": (0.05, 0.001),
    "p95_ttfb_s": (None, 1.0),
}
ARM_NAMES = ("before", "guide", "labkit")
#: the caller's patience (s): the guide's own connection-pool snippet times a request out after 30 s
PATIENCE_S = 30.0
_TIMERS = (
    "first_token_timeout_s",
    "retry_deadline_s",
    "retry_base_delay_s",
    "total_timeout_s",
    "breaker_window_s",
    "breaker_open_s",
)


@dataclasses.dataclass(frozen=True)
class Arm:
    """One client of the comparison: a `ChainConfig` or `"naive"`, its `max_tokens` and whether it trims."""

    name: str
    client: Any
    max_tokens: bool  # send the workload's max_tokens (else none)
    trim: bool  # send the trimmed prompt (`workload.trimmed`)
    defer: bool = False  # send the requests that can wait as one Batch API job


def arms() -> dict[str, Arm]:
    from labkit.assemble import ChainConfig

    return {
        "before": Arm("before", ChainConfig.preset("bare"), max_tokens=False, trim=False),
        "guide": Arm("guide", "naive", max_tokens=True, trim=False),
        "labkit": Arm("labkit", ChainConfig(), max_tokens=True, trim=True),
    }


def levers() -> dict[str, Arm]:
    """Each lever switched on alone over "before" (the cost breakdown and the roadmap check).

    A lever alone keeps only what works without the others. "streaming" streams without the first-token timeout:
    with no retry behind it, the timeout only turns a slow start into a failure (measured: 42-55% of requests
    failed where before's service queues them past 4 s). "retries" gets the caller's patience as its deadline:
    the default 8 s covers all attempts of a streamed, max_tokens-capped answer, but before's whole uncapped
    answers take longer (p95 about 9 s), so it cut answers that were arriving (measured: 12-16% failed, against
    1% with the patience as deadline).
    """
    from labkit.assemble import ChainConfig

    bare = ChainConfig.preset("bare")
    base = Arm("before", bare, max_tokens=False, trim=False)
    return {
        "cache (exact + semantic)": dataclasses.replace(base, client=bare.replace(cache=True, semantic=True)),
        "de-dup": dataclasses.replace(base, client=bare.replace(dedup=True)),
        "prompt trimming": dataclasses.replace(base, trim=True),
        "max_tokens": dataclasses.replace(base, max_tokens=True),
        "Batch API (deferrable share)": dataclasses.replace(base, defer=True),
        "streaming": dataclasses.replace(base, client=bare.replace(streaming=True, first_token_timeout_s=None)),
        "retries": dataclasses.replace(base, client=bare.replace(retry=True, retry_deadline_s=PATIENCE_S)),
        "balancer (2 endpoints)": dataclasses.replace(base, client=bare.replace(balancer=True)),
    }


def scaled_profiles(scale: float, out_dir: str | Path | None = None) -> Path:
    """A profiles file whose profiles run `scale` times faster (times divided, speeds multiplied)."""
    from labkit.sim.config import PROFILES_PATH

    raw = json.loads(Path(PROFILES_PATH).read_text(encoding="utf-8"))
    for p in raw["profiles"].values():
        p["ttft_s"] = p["ttft_s"] / scale
        p["output_tokens_per_s"] = p["output_tokens_per_s"] * scale
        if p.get("prefill_tokens_per_s"):
            p["prefill_tokens_per_s"] = p["prefill_tokens_per_s"] * scale
        p["embedding_latency_s"] = p.get("embedding_latency_s", 0.0) / scale
    import tempfile

    path = Path(out_dir or Path(tempfile.gettempdir()) / "labkit-capstone") / f"profiles_x{scale:g}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(raw), encoding="utf-8")
    return path


def start_scaled_lab(scale: float = 1.0, *, seed: int = 0) -> Any:
    """The capstone's services (two endpoints, the file's limits times `scale`, Redis), `scale` times faster."""
    from labkit.lab.services import start_lab
    from labkit.lessons.capstone.workload import settings
    from labkit.lessons.resilience import fault_mix

    conf = settings()
    limits = conf["limits_per_endpoint"]
    extra = {"profiles": str(scaled_profiles(scale))} if scale != 1 else {}
    sims = [
        {
            "profile": conf["profile"],
            "rpm": round(limits["rpm"] * scale),
            "tpm": round(limits["tpm"] * scale),
            "faults": fault_mix(0.05, retry_after_s=0.5 / scale),
            "seed": seed,
            **extra,
        }
        for _ in range(conf["endpoints"])
    ]
    return start_lab(sims=sims, redis=True, memcached=False, seed=seed)


def scaled_spec(spec: WorkloadSpec, scale: float) -> WorkloadSpec:
    """The same requests, `scale` times faster (rate up, durations and retry-after down)."""
    return spec.replace(
        rate_per_s=spec.rate_per_s * scale,
        duration_s=spec.duration_s / scale,
        warmup_s=spec.warmup_s / scale,
        retry_after_s=spec.retry_after_s / scale,
    )


def scaled_config(config: Any, scale: float) -> Any:
    """A chain config whose timers run `scale` times faster (other settings unchanged)."""
    from labkit.assemble import ChainConfig

    if scale == 1 or not isinstance(config, ChainConfig):
        return config
    changes = {name: getattr(config, name) / scale for name in _TIMERS if getattr(config, name) is not None}
    return config.replace(**changes)


_TIMES = (
    "avg_response_s",
    "avg_complete_s",
    "p50_ttfb_s",
    "p95_ttfb_s",
    "p99_ttfb_s",
    "p95_complete_s",
    "max_start_lag_s",
    "p95_start_lag_s",
)


def rescale(summary: dict[str, Any], scale: float) -> dict[str, Any]:
    """Times back to real seconds (x scale), rates back to real requests/s (/ scale)."""
    out = dict(summary)
    for key in _TIMES:
        if out.get(key) is not None:
            out[key] = out[key] * scale
    for key in ("offered_rps", "completed_rps"):
        if out.get(key) is not None:
            out[key] = out[key] / scale
    out["time_scale"] = scale
    return out


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float] | None:
    """The 95% Wilson score interval of a proportion (sound at 0 and near 0, unlike the normal approximation)."""
    if n <= 0:
        return None
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


async def _batch_cost(lab: Any, items: list[Any], *, model: str, max_tokens: int | None) -> dict[str, Any]:
    """Send the deferrable requests as one Batch API job (labkit.batch_api) and price it at the batch price."""
    from openai import AsyncOpenAI

    from labkit.batch_api import run_batch_job
    from labkit.request import ChatRequest

    if not items:
        return {"requests": 0, "ok": 0, "cost_usd": 0.0}
    params: dict[str, Any] = {"temperature": 0}
    if max_tokens is not None:
        params["max_tokens"] = max_tokens
    requests = [ChatRequest(model, list(i.messages), params) for i in items]
    endpoint = lab.endpoints[0]
    client = AsyncOpenAI(base_url=endpoint.base_url, api_key=endpoint.api_key, max_retries=2)
    try:
        job = await run_batch_job(client, requests, poll_s=0.2, timeout_s=120.0)
    finally:
        await client.close()
    return {"requests": len(items), "ok": job.ok, "cost_usd": job.cost_usd(), "wall_s": job.wall_s}


async def run_arm(
    lab: Any,
    arm: Arm,
    workload: Workload,
    *,
    scale: float = 1.0,
    model: str = "gpt-4o",
    monthly_requests: float = 1_000_000,
    patience_s: float = PATIENCE_S,
) -> dict[str, Any]:
    """One arm on `workload` (already time-compressed by `scale`), its summary in real seconds."""
    wl = trimmed(workload) if arm.trim else workload
    deferred: list[Any] = []
    if arm.defer:
        wl, deferred = without_deferred(wl)
    tokens = (trimmed(workload) if arm.trim else workload).prompt_tokens()
    s = await measure(
        lab,
        scaled_config(arm.client, scale),
        wl,
        model=model,
        patience_s=patience_s / scale,
        monthly_requests=monthly_requests,
        prompt_tokens=tokens,
        max_tokens="spec" if arm.max_tokens else None,
        scale=scale,
    )
    s = rescale(s, scale)
    s["arm"] = arm.name
    if arm.defer:
        batch = await _batch_cost(
            lab, deferred, model=model, max_tokens=workload.spec.max_tokens if arm.max_tokens else None
        )
        online_requests = len(wl.items)
        total_requests = online_requests + len(deferred)
        total_usd = s["cost_usd"] + batch["cost_usd"]
        s["batch"] = batch
        s["cost_usd"] = total_usd
        s["cost_per_request_usd"] = total_usd / total_requests
        s["cost_month_usd"] = s["cost_per_request_usd"] * monthly_requests
    return s


def counts(summary: Mapping[str, Any], key: str) -> tuple[int, int] | None:
    """(events, trials) behind a rate row: hits among answered requests, errors among measured requests."""
    if key == "hit_rate":
        ok = summary["ok"]
        return round(summary["hit_rate"] * ok), ok
    if key == "error_rate":
        n = summary["requests"]
        return n - summary["ok"], n
    return None


__all__ = [
    "ARM_NAMES",
    "GUIDE_FIGURES",
    "PATIENCE_S",
    "Arm",
    "arms",
    "counts",
    "levers",
    "rescale",
    "run_arm",
    "scaled_config",
    "scaled_profiles",
    "scaled_spec",
    "start_scaled_lab",
    "wilson",
]
