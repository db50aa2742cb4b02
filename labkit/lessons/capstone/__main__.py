"""`python -m labkit.lessons.capstone --bench [--quick]`: the whole comparison on both workloads (and, without
`--quick`, the ablation of every switch), written to `build/bench/capstone.json`."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from labkit.lessons.capstone.experiment import ablation, compare, jsonable, start_capstone_lab
from labkit.lessons.capstone.table import ROWS
from labkit.lessons.capstone.workload import WorkloadSpec, settings


def main(argv: Sequence[str] | None = None) -> int:  # pragma: no cover - a tool
    parser = argparse.ArgumentParser(
        prog="python -m labkit.lessons.capstone", description="The naive client against the full chain."
    )
    parser.add_argument("--bench", action="store_true", help="run the comparison on both workloads")
    parser.add_argument("--quick", action="store_true", help="short runs (a smoke test)")
    parser.add_argument("--out", default="build/bench/capstone.json")
    args = parser.parse_args(argv)
    if not args.bench:
        parser.print_help()
        return 0

    async def go() -> dict[str, Any]:
        lab = start_capstone_lab()
        try:
            conf = settings()
            results: dict[str, Any] = {"settings": conf, "workloads": {}}
            for name in ("high_repetition", "low_repetition"):
                spec = WorkloadSpec.load(name)
                if args.quick:
                    spec = spec.replace(duration_s=4, warmup_s=3)
                r = await compare(
                    lab,
                    spec,
                    ladder=not args.quick,
                    burst_users=0 if args.quick else 1000,
                    monthly_requests=conf["monthly_requests"],
                )
                results["workloads"][name] = r
            if not args.quick:  # every switch removed in turn, on short runs of the high-repetition workload
                from labkit.assemble import SWITCHES

                spec = WorkloadSpec.load("high_repetition").replace(duration_s=3, warmup_s=3)
                switches = [s for s in SWITCHES if s != "metrics"]
                abl = await ablation(
                    lab, spec, [*switches, "cache+semantic"], monthly_requests=conf["monthly_requests"]
                )
                rows = {k: {key: v.get(key) for key, _, _ in ROWS} for k, v in abl["runs"].items()}
                results["ablation"] = {"spec": dataclasses.asdict(spec), "shares": abl["shares"], "runs": rows}
            return results
        finally:
            lab.stop()

    started = time.perf_counter()
    results = asyncio.run(go())
    results["elapsed_s"] = time.perf_counter() - started
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(jsonable(results), indent=2), encoding="utf-8")
    for name, r in results["workloads"].items():
        print(f"== {name}  ceiling {r['ceiling']}")
        for row in r["table"]:
            print(
                f"  {row['row']:<45} {row['before']!s:>22} {row['after']!s:>22} {row['change']!s:>8} "
                f"{row['target']:>12} {row['met']}"
            )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
