"""The guide's before/after table with three measured arms, the cost breakdown by lever and the roadmap check.

`compare_arms` runs before, the guide's snippets and labkit on one workload (time-compressed by `scale`), and,
on a real-time lab, each arm's throughput ladder. `guide_rows` lays them out as the guide's table: for each row
the three measured values, the guide's own before and after figures, the target, `met` (labkit against before),
`met_guide` (the snippets against before), `labkit_ahead` (labkit better than the snippets) and, for a rate, the
95% Wilson interval of each arm. `lever_runs` switches each lever on alone over "before"; `cost_breakdown` and
`roadmap` read them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from labkit.lessons.capstone.arms import (
    ARM_NAMES,
    GUIDE_FIGURES,
    PATIENCE_S,
    arms,
    counts,
    levers,
    run_arm,
    scaled_spec,
    wilson,
)
from labkit.lessons.capstone.experiment import ERROR_BUDGET, capacity, measure
from labkit.lessons.capstone.table import ROWS
from labkit.lessons.capstone.workload import WorkloadSpec, generate

#: target test per row: (description, test(before, value, ci95) -> bool); a rate is judged on its interval
TARGETS3: dict[str, tuple[str, Callable[[float, float, Any], bool]]] = {
    "avg_response_s": ("down >= 75%", lambda b, a, ci: a <= 0.25 * b),
    "throughput_rps": (">= 10x", lambda b, a, ci: a >= 10 * b),
    "hit_rate": (">= 80% (95% interval's low end)", lambda b, a, ci: (ci[0] if ci else a) >= 0.80),
    "cost_month_usd": ("down >= 60%", lambda b, a, ci: a <= 0.40 * b),
    "error_rate": ("<= 0.1% (95% interval's high end)", lambda b, a, ci: (ci[1] if ci else a) <= 0.001),
    "p95_ttfb_s": ("< 1 s", lambda b, a, ci: a < 1.0),
}
_BETTER = {key: better for key, _label, better in ROWS}


def _ahead(key: str, labkit: float | None, guide: float | None) -> bool | None:
    if labkit is None or guide is None:
        return None
    if _BETTER[key] == "higher":
        return labkit > guide or (key == "hit_rate" and labkit == guide == 1.0)
    return labkit < guide or (key == "error_rate" and labkit == guide == 0.0)


def guide_rows(summaries: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The guide's table from the three arms' summaries (`before`, `guide`, `labkit`)."""
    table = []
    for key, label, _better in ROWS:
        values = {arm: summaries[arm].get(key) for arm in ARM_NAMES}
        ci = {}
        for arm in ARM_NAMES:
            c = counts(summaries[arm], key)
            if c is not None:
                ci[arm] = wilson(*c)
        target, test = TARGETS3[key]
        b = values["before"]

        met = {
            arm: None if b is None or values[arm] is None else bool(test(b, values[arm], ci.get(arm)))
            for arm in ("guide", "labkit")
        }
        gb, ga = GUIDE_FIGURES[key]
        row = {
            "key": key,
            "row": label,
            **values,
            "guide_before": gb,
            "guide_after": ga,
            "target": target,
            "met": met["labkit"],
            "met_guide": met["guide"],
            "labkit_ahead": _ahead(key, values["labkit"], values["guide"]),
        }
        if ci:
            row["ci95"] = ci
        table.append(row)
    return table


async def throughput(
    lab: Any, arm_name: str, spec: WorkloadSpec, *, base_error: float, max_rate: float = 640.0, step_s: float = 3.0
) -> dict[str, Any]:
    """One arm's throughput ladder on a real-time lab: a warm-up at the table's rate, then doubling rates. A rung
    is sustained while its error rate stays within `ERROR_BUDGET` of the arm's own error rate at the table's rate
    (so "before", whose injected faults all reach its users, is judged on what load adds)."""
    arm = arms()[arm_name]
    warm = generate(spec.replace(duration_s=1.0))
    s = await measure(
        lab,
        arm.client,
        warm,
        patience_s=PATIENCE_S,
        keep=True,
        max_tokens="spec" if arm.max_tokens else None,
    )
    client = s.pop("client")
    try:
        return await capacity(
            lab,
            client,
            spec,
            start_rate=spec.rate_per_s / 2,
            max_rate=max_rate,
            step_s=step_s,
            patience_s=PATIENCE_S,
            refine=1,
            error_budget=min(0.5, base_error + ERROR_BUDGET),
        )
    finally:
        await client["closer"].aclose()


async def compare_arms(
    lab: Any,
    spec: WorkloadSpec,
    *,
    scale: float = 1.0,
    real_lab: Any = None,
    max_rate: float = 640.0,
    monthly_requests: float = 1_000_000,
    progress: Callable[[str], None] | None = None,
    patience_s: float = PATIENCE_S,
) -> dict[str, Any]:
    """The three arms on one workload (`lab` compressed by `scale`); with `real_lab`, each arm's ladder there.
    `patience_s`: the caller's (the guide's 30 s); a shorter one only bounds how long a test waits on a hang."""
    workload = generate(scaled_spec(spec, scale))
    out: dict[str, Any] = {"spec": dataclasses.asdict(spec), "ceiling": workload.ceiling(), "time_scale": scale}
    summaries = {}
    for name, arm in arms().items():
        if progress is not None:
            progress(name)
        summaries[name] = await run_arm(
            lab, arm, workload, scale=scale, monthly_requests=monthly_requests, patience_s=patience_s
        )
    for name in ARM_NAMES:
        s = summaries[name]
        s["throughput_rps"] = s["completed_rps"]
        s["throughput_note"] = "completed rate at the table's rate (no ladder)"
        if real_lab is not None:
            if progress is not None:
                progress(f"{name} ladder")
            ladder = await throughput(real_lab, name, spec, base_error=s["error_rate"], max_rate=max_rate)
            s["ladder"] = ladder
            s["throughput_rps"] = ladder["throughput_rps"]
            s["throughput_note"] = "ladder: highest rate sustained" + (" (top rung)" if ladder["capped"] else "")
    out.update(summaries)
    out["requests_per_arm"] = min(summaries[n]["requests"] for n in ARM_NAMES)
    out["rows"] = guide_rows(summaries)
    return out


async def lever_runs(
    lab: Any,
    spec: WorkloadSpec,
    *,
    scale: float = 1.0,
    monthly_requests: float = 1_000_000,
    only: tuple[str, ...] | None = None,
    progress: Callable[[str], None] | None = None,
    patience_s: float = PATIENCE_S,
) -> dict[str, dict[str, Any]]:
    """Each lever switched on alone over "before", on the same workload; "before" itself first."""
    workload = generate(scaled_spec(spec, scale))
    runs = {}
    todo = {"before": arms()["before"], **levers()}
    for name, arm in todo.items():
        if only is not None and name != "before" and name not in only:
            continue
        if progress is not None:
            progress(name)
        runs[name] = await run_arm(
            lab, arm, workload, scale=scale, monthly_requests=monthly_requests, patience_s=patience_s
        )
    return runs


def lever_record(summary: Mapping[str, Any]) -> dict[str, Any]:
    """What the results keep of one lever's run: the table's rows, the requests measured, and why requests failed.

    A rate alone cannot say why a lever fails more than "before": the kinds (`errors`, by exception class or
    "gave up (patience)") and how late requests left their schedule (`p95_start_lag_s`) can. The load generator
    shares the client's event loop, so a client whose own CPU saturates the loop sends requests late and in bursts,
    and a per-second rate limit answers a burst with 429s (RateLimitError) that no fault injected."""
    return {key: summary.get(key) for key, _, _ in ROWS} | {
        "requests": summary["requests"],
        "errors": dict(summary.get("errors") or {}),
        "p95_start_lag_s": summary.get("p95_start_lag_s"),
    }


def cost_breakdown(
    runs: Mapping[str, Mapping[str, Any]], compared: Mapping[str, Any], *, defer_share: float
) -> list[dict[str, Any]]:
    """Where the saving comes from: each lever alone against "before" (USD per month), then the totals."""
    before = runs["before"]["cost_month_usd"]
    out = []
    for name, run in runs.items():
        if name == "before" or name in ("streaming", "retries", "balancer (2 endpoints)"):
            continue
        usd = run["cost_month_usd"]
        note = f"{defer_share:.0%} of requests can wait (assumed)" if name.startswith("Batch") else ""
        if name == "prompt trimming":
            note = _trim_note(run, runs["before"])
        out.append({"lever": name, "cost_month_usd": usd, "saving_vs_before": 1 - usd / before, "note": note})
    b = runs["before"]
    without = b["upstream"].get("cost_without_prompt_cache_usd")
    if without:
        usd_without = before * without / b["upstream"]["cost_usd"]
        out.append(
            {
                "lever": "provider prompt caching (in every arm's bill)",
                "cost_month_usd": before,
                "saving_vs_before": 1 - before / usd_without,
                "note": f"before without it: ${usd_without:,.0f}/month; cached share of prompt tokens "
                f"{b['cached_prompt_share']:.0%} (prefixes >= 1024 tokens, as the service reports)",
            }
        )
    for arm in ("guide", "labkit"):
        usd = compared[arm]["cost_month_usd"]
        out.append(
            {
                "lever": f"all together: {arm}",
                "cost_month_usd": usd,
                "saving_vs_before": 1 - usd / compared["before"]["cost_month_usd"],
                "note": "vs the snippets: "
                + f"{usd / compared['guide']['cost_month_usd'] - 1:+.0%}" * (arm == "labkit"),
            }
        )
    return out


def _trim_note(trimmed: Mapping[str, Any], before: Mapping[str, Any]) -> str:
    """What trimming changed per answer: prompt tokens (its saving) and generated tokens. The simulated service draws
    an answer's length from the question, not the whole prompt (`labkit.sim.chat.answer_rng`), so the generated
    tokens move only with the requests that were answered, not with the trimmed context."""
    tokens = {k: r["upstream"]["tokens_generated"] / max(1.0, r["upstream"]["answered_200"]) for k, r in
              (("trimmed", trimmed), ("before", before))}  # fmt: skip
    prompt = {k: r["upstream"]["prompt_tokens"] / max(1.0, r["upstream"]["answered_200"]) for k, r in
              (("trimmed", trimmed), ("before", before))}  # fmt: skip
    if not tokens["before"] or not prompt["before"]:
        return ""
    return (
        f"prompt tokens per answer {prompt['trimmed'] / prompt['before'] - 1:+.0%}; generated tokens per answer "
        f"{tokens['trimmed'] / tokens['before'] - 1:+.0%}"
    )


_ROADMAP_ROWS = ("avg_response_s", "cost_month_usd", "error_rate", "p95_ttfb_s")


def roadmap(runs: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The guide's "where to start": for each row, the lever that, turned on first (alone over before), moves it
    most, with its relative change."""
    before = runs["before"]
    out: dict[str, Any] = {}
    for key in _ROADMAP_ROWS:
        b = before.get(key)
        best = None
        for name, run in runs.items():
            v = run.get(key)
            if name == "before" or v is None or not b:
                continue
            change = (v - b) / b
            if best is None or change < best[1]:
                best = (name, change)
        out[key] = {"lever": best[0], "change": best[1]} if best else None
    return out


def _fmt(key: str, v: Any) -> str:
    if v is None:
        return "n/a"
    if key in ("hit_rate", "error_rate"):
        return f"{v:.2%}"
    if key == "cost_month_usd":
        return f"${v:,.0f}"
    if key == "throughput_rps":
        return f"{v:.0f}/s"
    return f"{v:.2f} s"


def guide_frame(result: Mapping[str, Any]) -> Any:
    """The guide's table as a DataFrame: measured arms, the guide's figures, the target, met, the intervals."""
    import pandas as pd

    yes = {True: "yes", False: "NO", None: "n/a"}
    records = []
    for r in result["rows"]:
        ci = r.get("ci95") or {}
        k = r["key"]
        records.append(
            {
                "row": r["row"],
                **{arm: _fmt(k, r[arm]) for arm in ARM_NAMES},
                "guide's before -> after": f"{_fmt(k, r['guide_before'])} -> {_fmt(k, r['guide_after'])}",
                "target (vs before)": r["target"],
                "labkit met": yes[r["met"]],
                "labkit ahead of snippets": yes[r["labkit_ahead"]],
                "labkit 95% interval": f"[{ci['labkit'][0]:.2%}, {ci['labkit'][1]:.2%}]" if "labkit" in ci else "",
            }
        )
    return pd.DataFrame(records).set_index("row")


def breakdown_frame(breakdown: list[Mapping[str, Any]]) -> Any:
    """The cost breakdown as a DataFrame (USD per month at the stated traffic)."""
    import pandas as pd

    return pd.DataFrame(
        [
            {
                "lever": b["lever"],
                "USD/month": f"${b['cost_month_usd']:,.0f}",
                "saving vs before": f"{b['saving_vs_before']:.0%}",
                "note": b["note"],
            }
            for b in breakdown
        ]
    ).set_index("lever")


__all__ = [
    "TARGETS3",
    "breakdown_frame",
    "compare_arms",
    "cost_breakdown",
    "guide_frame",
    "guide_rows",
    "lever_record",
    "lever_runs",
    "roadmap",
    "throughput",
]
