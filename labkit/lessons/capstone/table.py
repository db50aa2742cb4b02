"""The capstone's before/after table: one run's row values, their change, the targets, each layer's share.

`summarize` turns a run into the table's values (over its measured requests; the cost over the whole run, from
the services' counters or, against a real endpoint, from the answers' usage); `before_after` lays two runs side by
side against the targets; `ablation_shares` says how much of each row's gain each layer accounts for.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from labkit import pricing
from labkit.lessons.capstone.run import RunResult
from labkit.lessons.capstone.workload import Workload
from labkit.percentiles import percentile

#: (key, label, better, target description, target test(before, after) -> bool | None)
ROWS: tuple[tuple[str, str, str], ...] = (
    ("avg_response_s", "Average response time (to first token) [s]", "lower"),
    ("throughput_rps", "Throughput, max sustained [requests/s]", "higher"),
    ("hit_rate", "Cache hit rate (no upstream call)", "higher"),
    ("cost_month_usd", "Cost [USD/month]", "lower"),
    ("error_rate", "Error rate (as the caller sees it)", "lower"),
    ("p95_ttfb_s", "p95 time to first token [s]", "lower"),
)

TARGETS: dict[str, tuple[str, Callable[[float, float], bool]]] = {
    "avg_response_s": ("down >= 75%", lambda b, a: a <= 0.25 * b),
    "throughput_rps": (">= 10x", lambda b, a: a >= 10 * b),
    "hit_rate": (">= 80%", lambda b, a: a >= 0.80),
    "cost_month_usd": ("down >= 60%", lambda b, a: a <= 0.40 * b),
    "error_rate": ("<= 0.1%", lambda b, a: a <= 0.001),
    "p95_ttfb_s": ("< 1 s", lambda b, a: a < 1.0),
}


def _usd(model: str, prompt_tokens: float, generated_tokens: float, cached_tokens: float = 0.0) -> float:
    """The price of the tokens at the lab's table (cached prompt tokens at the cached-input price, as the provider
    bills what `usage.prompt_tokens_details.cached_tokens` reports); an unknown model is an error, not a free run."""
    usd = pricing.cost(model, prompt_tokens, generated_tokens, cached_tokens)  # type: ignore[arg-type]  # float sums
    if usd is None:
        raise ValueError(f"no price for {model!r} in data/pricing.json")
    return usd


def upstream_cost(
    boundary: Sequence[Mapping[str, Any]] | None,
    end: Sequence[Mapping[str, Any]] | None,
    *,
    prompt_tokens_per_upstream: float,
    model: str = "gpt-4o",
    cached_share: float = 0.0,
) -> dict[str, Any]:
    """What the services did between two snapshots of their `/admin/stats`, and its price.

    Billed: every generated token (also of dropped, hedged and cancelled answers: providers bill what they
    generated) and the prompt of every request the service answered with status 200, `cached_share` of it (the
    share the answers' usage reported as cached) at the cached-input price.
    """

    def total(stats: Sequence[Mapping[str, Any]] | None, field: str) -> float:
        if not stats:
            return 0.0
        if field == "200":
            return float(sum(s["requests_by_status"].get("200", 0) for s in stats))
        return float(sum(s[field] for s in stats))

    answered = total(end, "200") - total(boundary, "200")
    generated = total(end, "tokens_generated") - total(boundary, "tokens_generated")
    requests = total(end, "requests_total") - total(boundary, "requests_total")
    prompt = answered * prompt_tokens_per_upstream
    cached = prompt * cached_share
    return {
        "upstream_requests": requests,
        "answered_200": answered,
        "prompt_tokens": prompt,
        "cached_tokens": cached,
        "tokens_generated": generated,
        "cost_usd": _usd(model, prompt, generated, cached),
        "cost_without_prompt_cache_usd": _usd(model, prompt, generated),
    }


def client_side_cost(rows: Sequence[Mapping[str, Any]], prompt_tokens: Sequence[int], *, model: str) -> dict[str, Any]:
    """Cost from the usage of the answers that went upstream (a real endpoint: no service counters to read).

    It misses what the caller never sees: failed attempts, hedges and retries (so it flatters a chain with them).
    """
    upstream = [r for r in rows if r["ok"] and r["upstream"]]
    prompt = float(sum(prompt_tokens[r["index"]] for r in upstream))
    generated = float(sum(r["completion_tokens"] for r in upstream))
    cached = float(sum(r.get("cached_tokens", 0) for r in upstream))
    return {
        "upstream_requests": float(len(upstream)),
        "answered_200": float(len(upstream)),
        "prompt_tokens": prompt,
        "cached_tokens": cached,
        "tokens_generated": generated,
        "cost_usd": _usd(model, prompt, generated, cached),
        "cost_without_prompt_cache_usd": _usd(model, prompt, generated),
        "source": "the answers' usage (client side)",
    }


def summarize(
    result: RunResult,
    workload: Workload,
    *,
    model: str = "gpt-4o",
    monthly_requests: float = 1_000_000,
    prompt_tokens: Sequence[int] | None = None,
) -> dict[str, Any]:
    """The table's values for one run, over its measured requests."""
    rows = [r for r in result.rows if not r["warmup"]]
    n = len(rows)
    ok = [r for r in rows if r["ok"]]
    errors = Counter(r["error"] for r in rows if not r["ok"])
    ttfb = [r["ttfb_s"] for r in ok if r["ttfb_s"] is not None]
    totals = [r["total_s"] for r in ok]
    no_upstream = [r for r in ok if r["upstream"] is False]
    sources = Counter(r["source"] for r in ok)
    spec = workload.spec
    if prompt_tokens is None:
        prompt_tokens = workload.prompt_tokens()
    everyone = result.rows  # the cost is over the whole run (see `run_workload`), warm-up included
    up_idx = [r["index"] for r in everyone if r["upstream"] is not False]
    per_upstream = statistics.fmean(prompt_tokens[i] for i in up_idx) if up_idx else 0.0
    reported = [r for r in everyone if r["upstream"] and r.get("prompt_tokens")]
    cached_share = (
        sum(r["cached_tokens"] for r in reported) / sum(r["prompt_tokens"] for r in reported) if reported else 0.0
    )
    if result.boundary_stats or result.end_stats:
        cost = upstream_cost(
            result.boundary_stats,
            result.end_stats,
            prompt_tokens_per_upstream=per_upstream,
            model=model,
            cached_share=cached_share,
        )
        cost["source"] = "the services' counters"
    else:  # a real endpoint has no /admin/stats: price what the answers' usage says (retries and hedges unseen)
        cost = client_side_cost(everyone, prompt_tokens, model=model)
    per_request = cost["cost_usd"] / len(everyone) if everyone else 0.0
    return {
        "requests": n,
        "ok": len(ok),
        "offered_rps": n / spec.duration_s if spec.duration_s else None,
        "completed_rps": len(ok) / spec.duration_s if spec.duration_s else None,
        "error_rate": (n - len(ok)) / n if n else 0.0,
        "errors": dict(errors),
        "avg_response_s": statistics.fmean(ttfb) if ttfb else None,
        "avg_complete_s": statistics.fmean(totals) if totals else None,
        "p50_ttfb_s": percentile(ttfb, 50),
        "p95_ttfb_s": percentile(ttfb, 95),
        "p99_ttfb_s": percentile(ttfb, 99),
        "p95_complete_s": percentile(totals, 95),
        "hit_rate": len(no_upstream) / len(ok) if ok else 0.0,
        "sources": dict(sources),
        "peak_outstanding": result.peak_outstanding,
        "max_start_lag_s": max((r["start_lag_s"] for r in rows), default=0.0),
        # how late requests left against their schedule: the load generator shares the client's event loop, so a
        # client whose own CPU saturates the loop sends its requests late and in bursts (see `lever_record`)
        "p95_start_lag_s": percentile([r["start_lag_s"] for r in rows], 95),
        "cost_usd": cost["cost_usd"],
        "cost_per_request_usd": per_request,
        "cost_month_usd": per_request * monthly_requests,
        "cached_prompt_share": cached_share,
        "upstream": cost,
    }


def best_cost_change(min_upstream_requests: float, naive_upstream_requests: float) -> float | None:
    """The largest relative cost cut any cache could make against the naive client in this run.

    Every distinct meaning of the run (warm-up included) must go upstream at least once, whatever the cache; the
    naive client sent `naive_upstream_requests` (its retries included, as billed). With the same cost per upstream
    request the best ratio is their quotient: -0.54 means at most 54% cheaper. None if the naive client sent none.
    """
    if naive_upstream_requests <= 0:
        return None
    return min(0.0, min_upstream_requests / naive_upstream_requests - 1.0)


def before_after(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The rows of the before/after table: values, the change, the guide's target and whether it was met."""
    table = []
    for key, label, better in ROWS:
        b, a = before.get(key), after.get(key)
        change = None
        if b is not None and a is not None:
            if not b:
                change = "n/a"
            elif better == "higher":
                change = f"{a / b:.1f}x"
            else:
                change = f"{(a - b) / b:+.0%}"
        target, test = TARGETS[key]
        met = test(b, a) if b is not None and a is not None else None
        table.append(
            {"key": key, "row": label, "before": b, "after": a, "change": change, "target": target, "met": met}
        )
    return table


def ablation_shares(
    naive: Mapping[str, Any], full: Mapping[str, Any], variants: Mapping[str, Mapping[str, Any]]
) -> dict[str, dict[str, float | None]]:
    """For each layer removed and each row: how much of the full chain's gain over naive that removal loses.

    share = (value without the layer - value of the full chain) / (naive's value - the full chain's), signed so
    that a positive share is a loss; 1.0 means the layer accounts for the whole gain on that row, a negative one
    that the chain does better without it. None where a value is missing or there is no gain to share.
    """
    out: dict[str, dict[str, float | None]] = {}
    for layer, values in variants.items():
        shares: dict[str, float | None] = {}
        for key, _label, _better in ROWS:
            n, f, v = naive.get(key), full.get(key), values.get(key)
            if n is None or f is None or v is None or n == f:
                shares[key] = None
                continue
            shares[key] = (v - f) / (n - f)
        out[layer] = shares
    return out


__all__ = [
    "ROWS",
    "TARGETS",
    "ablation_shares",
    "before_after",
    "best_cost_change",
    "client_side_cost",
    "summarize",
    "upstream_cost",
]
