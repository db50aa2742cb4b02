"""`python -m labkit.lessons.capstone --bench [--quick]`: the guide's table with three arms (before, the guide's
snippets, labkit) on both workloads, the cost breakdown and roadmap check (each lever alone over before), and,
without `--quick`, the throughput ladders and the ablation; written to `build/bench/capstone.json`."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from labkit.lessons.capstone.arms import start_scaled_lab
from labkit.lessons.capstone.experiment import ablation, jsonable
from labkit.lessons.capstone.guide_table import compare_arms, cost_breakdown, lever_record, lever_runs, roadmap
from labkit.lessons.capstone.table import ROWS
from labkit.lessons.capstone.workload import WorkloadSpec, settings


def _spec(name: str, requests: int) -> WorkloadSpec:
    spec = WorkloadSpec.load(name)
    return spec.replace(duration_s=requests / spec.rate_per_s)


def _fmt(v: Any) -> str:
    return "n/a" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


def main(argv: Sequence[str] | None = None) -> int:  # pragma: no cover - a tool
    parser = argparse.ArgumentParser(prog="python -m labkit.lessons.capstone", description=__doc__)
    parser.add_argument("--bench", action="store_true", help="run the comparison on both workloads")
    parser.add_argument("--quick", action="store_true", help="short runs, no ladders, no ablation (a smoke test)")
    parser.add_argument("--requests", type=int, default=10_000, help="measured requests per arm, high repetition")
    parser.add_argument("--lever-requests", type=int, default=1_000, help="per lever run and low-repetition arm")
    parser.add_argument("--scale", type=float, default=2.0, help="time compression of the table's runs")
    parser.add_argument("--out", default="build/bench/capstone.json")
    args = parser.parse_args(argv)
    if not args.bench:
        parser.print_help()
        return 0
    if args.quick:
        args.requests, args.lever_requests = min(args.requests, 400), min(args.lever_requests, 300)

    def say(what: str) -> None:
        print(f"  [{time.strftime('%H:%M:%S')}] {what}", flush=True)

    async def go() -> dict[str, Any]:
        fast = start_scaled_lab(args.scale)
        real = None if args.quick else start_scaled_lab(1.0)
        try:
            conf = settings()
            monthly = conf["monthly_requests"]
            results: dict[str, Any] = {"settings": conf, "time_scale": args.scale, "workloads": {}}
            for name, n in (("high_repetition", args.requests), ("low_repetition", args.lever_requests)):
                spec = _spec(name, n)
                say(f"{name}: three arms, {n} requests each")
                r = await compare_arms(
                    fast, spec, scale=args.scale, real_lab=real, monthly_requests=monthly, progress=say
                )
                say(f"{name}: levers alone")
                lever_spec = _spec(name, args.lever_requests)
                runs = await lever_runs(fast, lever_spec, scale=args.scale, monthly_requests=monthly, progress=say)
                r["levers"] = {k: lever_record(v) for k, v in runs.items()}
                r["cost_breakdown"] = cost_breakdown(runs, r, defer_share=spec.defer_share)
                r["roadmap"] = roadmap(runs)
                results["workloads"][name] = r
            if (
                real is not None
            ):  # every switch removed in turn, on short real-time runs of the high-repetition workload
                from labkit.assemble import SWITCHES

                say("ablation")
                spec = WorkloadSpec.load("high_repetition").replace(duration_s=3, warmup_s=3)
                switches = [s for s in SWITCHES if s != "metrics"]
                abl = await ablation(real, spec, [*switches, "cache+semantic"], monthly_requests=monthly)
                rows = {k: {key: v.get(key) for key, _, _ in ROWS} for k, v in abl["runs"].items()}
                results["ablation"] = {"spec": dataclasses.asdict(spec), "shares": abl["shares"], "runs": rows}
            return results
        finally:
            fast.stop()
            if real is not None:
                real.stop()

    started = time.perf_counter()
    results = asyncio.run(go())
    results["elapsed_s"] = time.perf_counter() - started
    results["command"] = "python -m labkit.lessons.capstone --bench" + (" --quick" if args.quick else "")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(jsonable(results), indent=2), encoding="utf-8")
    for name, r in results["workloads"].items():
        print(f"== {name}: {r['requests_per_arm']} requests per arm; ceiling {r['ceiling']['ceiling']:.1%}")
        for row in r["rows"]:
            ci = row.get("ci95") or {}
            print(
                f"  {row['row'][:40]:<40} before {_fmt(row['before']):>9} guide {_fmt(row['guide']):>9} "
                f"labkit {_fmt(row['labkit']):>9} | guide's {_fmt(row['guide_before'])}->{_fmt(row['guide_after'])} "
                f"| {row['target']}: {row['met']} ahead {row['labkit_ahead']} {ci.get('labkit', '')}"
            )
        for c in r["cost_breakdown"]:
            print(f"    {c['lever']:<45} ${c['cost_month_usd']:>9,.0f}  {c['saving_vs_before']:+.0%}  {c['note']}")
        print(f"    roadmap: {r['roadmap']}")
    print(f"wrote {args.out} in {results['elapsed_s']:.0f} s")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
