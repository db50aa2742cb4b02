"""Lesson 01's benchmark: the admission layer's sustained throughput against what RPM/TPM allow.

``python -m labkit.lessons.admission --bench`` writes build/bench/admission.json: the sustained throughput as a
fraction of the rate the limits allow (target: 90% at zero 429s), and the whole batch's against its ceiling.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from labkit.layers.admission import AdmissionLayer
from labkit.request import ChatRequest


@dataclass
class BenchResult:
    requests: int
    wall_s: float
    rpm: int
    tpm: int
    burst_s: float
    tokens_used: int
    rate_limited_429: int
    ceiling_requests: float
    fraction_of_ceiling: float
    sustained_rps: float
    allowed_rps: float
    sustained_fraction: float
    target_sustained_fraction: float
    meets_target: bool
    binding_limit: str
    waited_s: float


async def bench(requests: int = 300, rpm: int = 1200, tpm: int = 60_000, max_tokens: int = 40) -> BenchResult:
    """Run ``requests`` through the admission layer against a sim whose limits bind; compare with what they allow.

    Two figures: the *sustained* rate (completions per second over the second half of the answers, past the
    opening burst) against the rate the limits allow with the tokens actually used (target: 90%); and the whole
    batch against its ceiling, what the service's buckets allow in the measured wall time from full buckets
    (``capacity + rate * wall`` for requests, the same for tokens divided by the actual tokens per request).
    """
    from labkit.batch import run_batch
    from labkit.chain import Chain
    from labkit.lab.services import start_sim
    from labkit.transports.sdk import OpenAITransport

    burst_s = 1.0
    with start_sim("fast", max_sequences=4096) as sim:
        sim.set_limits(rpm=rpm, tpm=tpm, burst_s=burst_s)
        layer = AdmissionLayer(rpm, tpm, max_concurrency=256, burst_s=0.8 * burst_s)
        async with OpenAITransport(sim.endpoint) as transport:
            chain = Chain(transport, [layer])
            batch = [
                ChatRequest.create(
                    "gpt-4o", f"Summarise item {i} of the catalogue in one sentence.", max_tokens=max_tokens
                )
                for i in range(requests)
            ]
            done = await run_batch(chain, batch, concurrency=256)
        if done.errors:
            raise RuntimeError(f"{len(done.errors)} requests failed, first: {done.errors[0].error!r}")
        stats = sim.stats()
    wall = done.wall_s
    rejected = int(stats["requests_by_status"].get("429", 0))
    tokens_per_request = layer.stats.used_tokens / requests
    by_requests = rpm / 60 * (burst_s + wall)
    by_tokens = tpm / 60 * (burst_s + wall) / tokens_per_request
    ceiling = min(by_requests, by_tokens)
    allowed = min(rpm / 60, tpm / 60 / tokens_per_request)
    sustained = done.sustained_rate() or 0.0
    return BenchResult(
        requests=requests,
        wall_s=round(wall, 3),
        rpm=rpm,
        tpm=tpm,
        burst_s=burst_s,
        tokens_used=layer.stats.used_tokens,
        rate_limited_429=rejected,
        ceiling_requests=round(ceiling, 1),
        fraction_of_ceiling=round(requests / ceiling, 4),
        sustained_rps=round(sustained, 3),
        allowed_rps=round(allowed, 3),
        sustained_fraction=round(sustained / allowed, 4),
        target_sustained_fraction=0.9,
        meets_target=sustained / allowed >= 0.9 and rejected == 0,
        binding_limit="tokens" if by_tokens < by_requests else "requests",
        waited_s=round(layer.stats.waited_s, 3),
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m labkit.lessons.admission", description=__doc__.splitlines()[0])
    parser.add_argument("--bench", action="store_true", help="run the benchmark and write its JSON")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--rpm", type=int, default=1200)
    parser.add_argument("--tpm", type=int, default=60_000)
    parser.add_argument("--out", default="build/bench/admission.json")
    args = parser.parse_args(argv)
    if not args.bench:
        parser.error("nothing to do: pass --bench")
    result = asyncio.run(bench(args.requests, args.rpm, args.tpm))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": "admission", "note": "2-core shared machine; wall times are noisy", **asdict(result)}
    out.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
