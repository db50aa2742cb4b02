"""The histogram's costs: `python -m labkit.lessons.monitoring --bench [--out FILE] [--n 1000000]`.

Measures, against the common advice's list of every duration (`PerformanceMonitor` in the guide):
- record cost per observation: `list.append`, `Histogram.observe`, and `Metrics.record` of one whole request;
- relative error of p50/p90/p95/p99/p99.9 against exact percentiles (numpy, `method="lower"`) on log-normal
  latencies (the shape of real response times: a long right tail);
- memory after `n` observations (tracemalloc) and the cost of reading a p95 (the list sorts everything each time).
Timings are wall-clock on a shared 2-core machine: read the ratios, not the absolutes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import time
import tracemalloc
from pathlib import Path
from typing import Any

from labkit.monitoring.histogram import Histogram
from labkit.monitoring.registry import Metrics


def _per_call_ns(fn: Any, values: list[float]) -> float:
    started = time.perf_counter()
    for v in values:
        fn(v)
    return (time.perf_counter() - started) / len(values) * 1e9


def _memory(build: Any) -> int:
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = build()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    del kept
    return after - before


def run(n: int = 1_000_000, seed: int = 0) -> dict[str, Any]:
    import numpy as np

    rng = random.Random(seed)
    values = [rng.lognormvariate(-0.5, 0.8) for _ in range(n)]  # median ~0.6 s, p99 ~3.9 s
    exact = np.asarray(values)
    sample = values[: min(n, 200_000)]

    # record cost per observation
    kept: list[float] = []
    append_ns = _per_call_ns(kept.append, sample)
    hist = Histogram()
    observe_ns = _per_call_ns(hist.observe, sample)
    from labkit.layers.metrics import RequestRecord

    metrics = Metrics()
    rec = RequestRecord(key="k", model="gpt-4o", stream=True, started=0.0, latency_s=0.8, ttft_s=0.4,
                        prompt_tokens=100, completion_tokens=50, cost_usd=0.001, outcome="ok")  # fmt: skip
    stages = {"cache_lookup": 0.001, "admission_wait": 0.01, "client": 0.002, "connect": 0.0, "first_token": 0.38,
              "decode": 0.4}  # fmt: skip
    per_request = 2000
    started = time.perf_counter()
    for _ in range(per_request):
        metrics.record(rec, stages=stages)
    record_us = (time.perf_counter() - started) / per_request * 1e6

    # relative error against exact percentiles (all n values)
    full = Histogram()
    full.extend(values)
    errors = {}
    for q in (0.5, 0.9, 0.95, 0.99, 0.999):
        truth = float(np.quantile(exact, q, method="lower"))
        estimate = full.quantile(q) or 0.0
        errors[f"p{q * 100:g}"] = {
            "exact_s": truth,
            "estimate_s": estimate,
            "relative_error": abs(estimate - truth) / truth,
        }

    # memory after n observations
    list_bytes = _memory(lambda: [v * 1.0 for v in values])  # fresh float objects, as measured durations are

    def build_hist() -> Histogram:
        h = Histogram()
        h.extend(values)
        return h

    hist_bytes = _memory(build_hist)

    # reading a p95: the common advice sorts the whole list on every get_stats()
    started = time.perf_counter()
    statistics.quantiles(values, n=20)[18]
    list_p95_ms = (time.perf_counter() - started) * 1000
    started = time.perf_counter()
    for _ in range(100):
        full.quantile(0.95)
    hist_p95_ms = (time.perf_counter() - started) / 100 * 1000

    return {
        "n_observations": n,
        "distribution": "log-normal(mu=-0.5, sigma=0.8) seconds",
        "relative_accuracy": full.relative_accuracy,
        "record_cost": {
            "list_append_ns": append_ns,
            "histogram_observe_ns": observe_ns,
            "metrics_record_per_request_us": record_us,
            "observe_vs_append": observe_ns / append_ns,
        },
        "relative_error": errors,
        "max_relative_error": max(e["relative_error"] for e in errors.values()),
        "memory": {
            "list_bytes": list_bytes,
            "histogram_bytes": hist_bytes,
            "list_bytes_per_observation": list_bytes / n,
            "ratio": list_bytes / max(hist_bytes, 1),
        },
        "p95_read": {"list_statistics_quantiles_ms": list_p95_ms, "histogram_ms": hist_p95_ms},
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "note": "shared, noisy"},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m labkit.lessons.monitoring", description=__doc__.splitlines()[0])
    parser.add_argument("--bench", action="store_true", help="run the histogram benchmark")
    parser.add_argument("--n", type=int, default=1_000_000, help="observations (default 1e6)")
    parser.add_argument("--out", default="build/bench/monitoring.json")
    args = parser.parse_args(argv)
    if not args.bench:
        parser.error("nothing to do: pass --bench")
    if args.n < 1000:
        parser.error("--n must be at least 1000")
    results = run(args.n)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2), encoding="utf-8")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
