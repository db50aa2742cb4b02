"""Every figure of lessons 09 and 10 as JSON: `python -m labkit.lessons.resilience --bench [--out FILE]`.

It runs each measurement against three simulated services: the retry decision table on real errors, the retry
budget against a sick upstream, the breaker/fallback timeline, the balancer comparison, hedging, and the headline
(failure share as the caller sees it with no retries, the SDK's retries and labkit's chain, under 5 % injected
faults, with the extra upstream requests and cost beside it). The notebook calls the same functions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from labkit.lab.services import start_lab
from labkit.lessons.resilience.failures import decision_table, sick_upstream
from labkit.lessons.resilience.headline import headline
from labkit.lessons.resilience.routing import breaker_timeline, compare_balancers, compare_hedging


def _bench(args: argparse.Namespace) -> dict[str, Any]:  # pragma: no cover - a tool
    async def main() -> dict[str, Any]:
        sims = [{"profile": "fast", "seed": args.seed, "ttft": t} for t in (0.03, 0.06, 0.12)]
        lab = await asyncio.to_thread(lambda: start_lab(sims, redis=False, memcached=False))
        try:
            decisions = await decision_table(lab, deadline_s=5.0, seed=args.seed)
            sick = await sick_upstream(lab, n=args.sick_requests)
            timeline = await breaker_timeline(
                lab, n=args.breaker_requests, deadline_s=5.0, first_token_timeout_s=1.0, seed=args.seed
            )
            breaker = {k: v for k, v in timeline.items() if k != "rows"}
            started = time.perf_counter()
            result = _without_rows(
                await headline(
                    lab,
                    n=args.requests,
                    concurrency=args.concurrency,
                    faults=0.05,
                    deadline_s=5.0,
                    first_token_timeout_s=1.0,
                    seed=args.seed,
                )
            )
            head_s = time.perf_counter() - started
            balancing = _without_rows(
                await compare_balancers(lab, n=args.lb_requests, weights=[4, 2, 1], seed=args.seed)
            )
            hedging = _without_rows(await compare_hedging(lab, n=args.hedge_requests, seed=args.seed))
        finally:
            await asyncio.to_thread(lab.stop)
        return {
            "decisions": decisions,
            "sick_upstream": sick,
            "breaker": breaker,
            "balancing": balancing,
            "hedging": hedging,
            "headline": result,
            "headline_wall_s": head_s,
        }

    figures = asyncio.run(main())
    return {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "note": "2 shared cores: latencies are noisy; failure shares and request counts are the robust figures.",
        **figures,
    }


def _without_rows(result: Mapping[str, Any]) -> dict[str, Any]:
    return {k: {kk: vv for kk, vv in v.items() if kk != "rows"} for k, v in result.items()}


def main(argv: Sequence[str] | None = None) -> int:  # pragma: no cover - a tool
    parser = argparse.ArgumentParser(prog="python -m labkit.lessons.resilience", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bench", action="store_true", help="run the benchmark and write the JSON")
    parser.add_argument("--out", default="build/bench/resilience.json")
    parser.add_argument("--requests", type=int, default=2000, help="requests per arm of the headline")
    parser.add_argument("--lb-requests", type=int, default=600, help="requests per balancing strategy")
    parser.add_argument("--hedge-requests", type=int, default=600, help="requests per hedging arm")
    parser.add_argument("--sick-requests", type=int, default=60, help="calls to the service that fails everything")
    parser.add_argument("--breaker-requests", type=int, default=240, help="requests in the breaker timeline")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not args.bench:
        parser.print_help()
        return 2
    counts = (args.requests, args.lb_requests, args.hedge_requests, args.sick_requests, args.breaker_requests)
    if min(counts) < 10 or args.concurrency < 1:
        parser.error("request counts must be >= 10 and concurrency >= 1")
    figures = _bench(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2), encoding="utf-8")
    for row in figures["decisions"]:
        print(f"{row['failure']:40s} retried: {row['labkit retries']!s:5s} ({row['why']})")
    for arm, r in figures["sick_upstream"].items():
        print(f"sick upstream, {arm:35s} {r['per caller request']:.2f} upstream requests per call")
    b = figures["breaker"]
    print(
        f"breaker timeline: {sum(e.get('opened', 0) for e in b['events'].values())} openings, fallback answered "
        f"{b['fallback_share']:.1%}, caller failures {b['caller_failed']} of {b['requests']}"
    )
    for arm, r in figures["headline"].items():
        print(
            f"{arm:45s} failed {r['failed_share']:7.3%}  upstream +{r['extra_upstream_share']:6.1%}  "
            f"cost ${r['cost_usd']:.4f} (delivered ${r['delivered_cost_usd']:.4f})"
        )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
