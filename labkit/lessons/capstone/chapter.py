"""Helpers of the capstone chapter (notebooks/12_capstone.ipynb): one step of assembling the chain, checked on the
spot; a progress bar for the long runs; the chart and the small tables the notebook shows, so its cells stay short.

The measurement itself (arms, levers, summaries) lives in the other modules of this package and is shared with the
bench (`python -m labkit.lessons.capstone --bench`); nothing here changes it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from labkit.lessons.capstone.arms import ARM_NAMES
from labkit.lessons.capstone.experiment import set_faults
from labkit.lessons.capstone.guide_table import lever_record
from labkit.lessons.capstone.run import chain_caller
from labkit.lessons.capstone.table import ROWS


@dataclasses.dataclass(frozen=True)
class _Ask:
    """The one attribute `chain_caller` reads from a workload item."""

    messages: tuple[Mapping[str, str], ...]


def _ask(text: str) -> _Ask:
    return _Ask(({"role": "user", "content": text},))


async def try_step(
    lab: Any,
    config: Any,
    question: str,
    *,
    at_once: int = 1,
    model: str = "gpt-4o",
    max_tokens: int = 40,
) -> dict[str, Any]:
    """Build `config`, ask `question` `at_once` times concurrently, then once more: what a reader checks after
    adding a switch (first token vs whole answer, upstream calls, where the repeat came from). No faults, so a
    step shows its own effect only."""
    from labkit.assemble import build_chain

    if lab.simulated:
        await set_faults(lab, 0.0, 0.5)
    chain = build_chain(config, lab)
    call = chain_caller(chain, model=model, max_tokens=max_tokens)
    question = f"{question} [{time.time_ns()}]"  # a re-run asks anew: caches warmed earlier do not answer
    try:
        start = asyncio.get_running_loop().time()
        first = await asyncio.gather(*(call(_ask(question)) for _ in range(at_once)))
        repeat = await call(_ask(question))
    finally:
        await chain.aclose()
    return {
        "layers on": ", ".join(chain.on),
        "first token (s)": first[0]["first"] - start,
        "whole answer (s)": first[0]["done"] - start,
        "upstream calls": sum(chain.upstream.values()),
        "asked": at_once + 1,
        "repeat served by": repeat["source"],
    }


async def try_faults(
    lab: Any,
    configs: Mapping[str, Any],
    questions: Sequence[str],
    *,
    faults: float = 0.3,
    model: str = "gpt-4o",
    patience_s: float = 10.0,
) -> dict[str, dict[str, Any]]:
    """Send `questions` through each config of `configs` (name -> `ChainConfig`) with `faults` of upstream requests
    failing (429, 5xx, hangs, drops): how many reach the caller as errors, per config. The configs run side by
    side under one fault setting, so the check waits once for the slowest (a hang without a timeout waits the
    caller's `patience_s`), not once per config."""
    from labkit.assemble import build_chain

    await set_faults(lab, faults, 0.5)
    chains = {name: build_chain(config, lab) for name, config in configs.items()}

    async def one(call: Any, text: str) -> str | None:
        try:
            await asyncio.wait_for(call(_ask(text)), patience_s)  # a hang without a timeout waits forever
        except Exception as exc:  # a failed request is the datum here
            return type(exc).__name__
        return None

    async def run(name: str) -> dict[str, Any]:
        call = chain_caller(chains[name], model=model, max_tokens=40)
        nonce = time.time_ns()  # asked anew: no cache warmed earlier (or by the other config) answers
        t = time.perf_counter()
        errors = [e for e in await asyncio.gather(*(one(call, f"{q} [{name} {nonce}]") for q in questions)) if e]
        return {"requests": len(questions), "errors": len(errors), "kinds": sorted(set(errors)),
                "wall_s": time.perf_counter() - t}  # fmt: skip

    try:
        done = await asyncio.gather(*(run(name) for name in chains))
    finally:
        for chain in chains.values():
            await chain.aclose()
        await set_faults(lab, 0.0, 0.5)
    return dict(zip(chains, done, strict=True))


def stage_bar(title: str, total: int, *, interactive: bool = True) -> Callable[[str], None]:
    """A progress callback for `compare_arms`/`lever_runs`: one tick per run, the run's name beside the bar;
    under papermill (`interactive=False`) one printed line per run."""
    if not interactive:
        return lambda name: print(f"{title}: {name}", flush=True)
    import ipywidgets as w
    from IPython.display import display

    bar = w.IntProgress(value=0, min=0, max=total, description=title)
    label = w.HTML()
    display(w.HBox([bar, label]))

    def tick(name: str) -> None:
        bar.value = min(total, bar.value + 1)
        label.value = name

    return tick


_LABELS = {key: label for key, label, _ in ROWS}


def arms_chart(three: Mapping[str, Any]) -> Any:
    """The three arms per row as a ratio to "before" (log scale), titled with the response-time finding."""
    from labkit.lab import viz

    rows = {}
    for r in three["rows"]:
        if r["before"]:
            rows[_LABELS[r["key"]]] = {arm: (r[arm] or 0) / r["before"] for arm in ARM_NAMES}
    resp = {r["key"]: r for r in three["rows"]}["avg_response_s"]
    title = (
        f"Average response: before {resp['before']:.2f} s, the guide's snippets {resp['guide']:.2f} s, "
        f"labkit {resp['labkit']:.2f} s"
    )
    return viz.grouped_bars(rows, title=title, unit="value / before (log)", log=True)


def roadmap_table(levers: Mapping[str, Mapping[str, Any]]) -> Any:
    """For each workload and row, the lever that moves it most when turned on first (alone over "before")."""
    from labkit.lab import viz

    return viz.table(
        {
            name: {_LABELS.get(k, k): v and f"{v['lever']} ({v['change']:+.0%})" for k, v in lv["roadmap"].items()}
            for name, lv in levers.items()
        }
    )


def ceiling_table(workloads: Mapping[str, Any]) -> Any:
    """Each workload's ceiling: the share of requests no cache can beat (exact repeats, paraphrases of earlier)."""
    from labkit.lab import viz

    return viz.table({name: wl.ceiling() for name, wl in workloads.items()})


def scorecard(three: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The guide's service-level objectives read from the labkit arm of the three-arm run."""
    s = three["labkit"]
    return [
        {
            "objective": "time to first token, p95",
            "target": "< 1 s",
            "measured": s["p95_ttfb_s"],
            "met": s["p95_ttfb_s"] < 1.0,
        },
        {
            "objective": "availability",
            "target": ">= 99.9%",
            "measured": 1 - s["error_rate"],
            "met": 1 - s["error_rate"] >= 0.999,
        },
        {"objective": "cache hit rate", "target": ">= 80%", "measured": s["hit_rate"], "met": s["hit_rate"] >= 0.8},
    ]


def results(measured: Mapping[str, Any], *, results_path: str | Path | None = None, **more: Any) -> dict:
    """What the notebook records (the results JSON its test reads), from what its sections put in `measured`
    ("three", "levers", "breakdown", "layers_on"). With `results_path`, the report's tables also get the guide's
    checklist read from the results beside it (`checklist_report`)."""
    three, levers = measured.get("three"), measured.get("levers") or {}
    out: dict[str, Any] = {
        "guide_table": None,
        "levers": {},
        "cost_breakdown": measured.get("breakdown"),
        "layers_on": measured.get("layers_on"),
        "report_tables": {},
        **more,
    }
    if three is not None:
        out["guide_table"] = {
            "requests_per_arm": three["requests_per_arm"],
            "ceiling": three["ceiling"],
            "rows": three["rows"],
            "errors": {arm: three[arm]["errors"] for arm in ARM_NAMES},
        }
        out["scorecard"] = scorecard(three)
        out["report_tables"]["The guide's table, three arms"] = [
            {k: v for k, v in r.items() if k != "ci95"} for r in three["rows"]
        ]
    for name, lv in levers.items():
        runs = {k: lever_record(v) for k, v in lv["runs"].items()}  # rows, failures by kind, start lag
        out["levers"][name] = {"roadmap": lv["roadmap"], "runs": runs}
    out["report_tables"].update(checklist_report(results_path))
    return out


CHECKLIST_TITLE = "The guide's checklist, measured in this run"


def checklist_report(results_path: str | Path | None) -> dict[str, list[dict[str, str]]]:
    """The guide's checklist with each lesson's measured gain, read from the results JSONs in the folder
    `results_path` is in, as a report table ({title: rows}); {} without a path.

    Why here: the report (`labkit.lab.report`) runs the lessons in order and writes each one's results into one
    folder, so when the capstone (the last lesson) writes its own, every other lesson's are there to read."""
    from labkit.lessons.checklist import checklist_rows, load_results

    if not results_path:
        return {}
    return {CHECKLIST_TITLE: checklist_rows(load_results(Path(results_path).parent))}


__all__ = [
    "CHECKLIST_TITLE",
    "arms_chart",
    "ceiling_table",
    "checklist_report",
    "results",
    "roadmap_table",
    "scorecard",
    "stage_bar",
    "try_faults",
    "try_step",
]
