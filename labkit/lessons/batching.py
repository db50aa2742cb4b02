"""Lesson 01's helpers (batching under rate limits): the plumbing the notebook's cells should not carry.

The notebook writes the technique itself (the guide's loop and `gather`, a semaphore, a token bucket); what is
here only resets the simulated service between arms, reads its 429 counter, times a batch, shows progress and
builds the results. Nothing here paces requests: the pacing a lesson teaches stays in the lesson's cells.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Arm",
    "Steps",
    "admission_result",
    "allowed_rps",
    "bucket_result",
    "drain",
    "fastest_clean",
    "fresh",
    "results",
    "run_arm",
    "server_counts",
    "summary_table",
    "sustained_rate",
]


class Steps:
    """A progress bar counted by ``step()``: a widget when interactive, one printed line at ``finish()`` otherwise.

    Updated only by assigning widget traits, so ``step()`` is safe from any task or from a synchronous loop.
    """

    def __init__(self, title: str, total: int, *, interactive: bool = True) -> None:
        self.title, self.total, self.count = title, total, 0
        self._t0 = time.perf_counter()
        self.widget: Any = None
        if interactive:
            import ipywidgets as w
            from IPython.display import display

            self.widget = w.IntProgress(value=0, min=0, max=max(1, total), description=title)
            display(self.widget)

    def step(self) -> None:
        self.count += 1
        if self.widget is not None:
            self.widget.value = self.count

    def finish(self) -> None:
        if self.widget is None:
            print(f"{self.title}: {self.count}/{self.total} in {time.perf_counter() - self._t0:.1f} s")
        else:
            self.widget.bar_style = "success"


def fresh(lab: Any, rpm: int, tpm: int, burst_s: float) -> None:
    """Put the lab's service back to full buckets and zero counters with the lesson's limits, between arms."""
    if lab.simulated:
        service = lab.sims[0]
        service.reset()
        service.set_limits(rpm=rpm, tpm=tpm, burst_s=burst_s)


def server_counts(lab: Any) -> dict[str, int | None]:
    """Requests the service received and how many it answered with 429 (None against a real endpoint)."""
    if not lab.simulated:
        return {"sent": None, "429": None}
    by_status = lab.sims[0].stats()["requests_by_status"]
    return {"sent": sum(by_status.values()), "429": by_status.get("429", 0)}


def sustained_rate(ends: Iterable[float]) -> float | None:
    """Completions per second over the second half of the answers (the pace past the opening burst).

    The same definition as `labkit.batch.BatchResult.sustained_rate`, for batches run with plain `gather`.
    """
    ends = sorted(ends)
    if len(ends) < 4:
        return None
    half = len(ends) // 2
    span = ends[-1] - ends[half]
    return (len(ends) - 1 - half) / span if span > 0 else None


def allowed_rps(rpm: float, tpm: float, tokens_per_request: float) -> float:
    """The request rate both limits allow when each request costs ``tokens_per_request``."""
    return min(rpm / 60.0, tpm / 60.0 / max(1e-9, tokens_per_request))


@dataclass
class Arm:
    """One way of running the batch: its wall time, failures, answers and when each answer arrived."""

    wall_s: float
    results: list[Any]
    ends: list[float] = field(default_factory=list)  # seconds after the start at which each answer arrived

    @property
    def failed(self) -> int:
        return sum(isinstance(r, BaseException) for r in self.results)

    @property
    def tokens_per_answer(self) -> float:
        used = [r.usage.total_tokens for r in self.results if getattr(r, "usage", None)]
        return sum(used) / max(1, len(used))

    def row(self, lab: Any) -> dict[str, Any]:
        """The arm's line of the results: wall time, failures and the service's own counts."""
        return {"wall_s": self.wall_s, "failed": self.failed, **server_counts(lab)}


async def run_arm(calls: Sequence[Awaitable[Any]], steps: Steps | None = None) -> Arm:
    """Await ``calls`` together (exceptions kept per item), recording when each one ends."""
    t0 = time.perf_counter()
    ends: list[float] = []

    async def timed(call: Awaitable[Any]) -> Any:
        try:
            answer = await call
        finally:
            if steps is not None:
                steps.step()
        ends.append(time.perf_counter() - t0)  # answers only: a failure is not throughput
        return answer

    results = await asyncio.gather(*(timed(c) for c in calls), return_exceptions=True)
    arm = Arm(time.perf_counter() - t0, list(results), sorted(ends))
    if steps is not None:
        steps.finish()
    return arm


def admission_result(outcome: Any, layer: Any, rpm: float, tpm: float) -> dict[str, Any]:
    """What the admission run measured: its sustained rate against what the limits allow with the tokens used."""
    ok = [item for item in outcome.items if item.ok]
    used = layer.stats.used_tokens
    allowed = allowed_rps(rpm, tpm, used / max(1, len(ok)))
    sustained = outcome.sustained_rate() or 0.0
    return {
        "sustained_rps": sustained,
        "allowed_rps": allowed,
        "sustained_fraction": sustained / allowed,
        "estimated_tokens": layer.stats.estimated_tokens,
        "used_tokens": used,
        "rate_limited_seen": layer.stats.rate_limited,
        "header_syncs": layer.stats.header_syncs,
        "results_in_order": [item.index for item in outcome.items] == list(range(len(outcome.items))),
    }


def bucket_result(arm: Arm, rpm: float, tpm: float) -> dict[str, Any]:
    """The hand-written token bucket's run, measured like the admission layer's."""
    allowed = allowed_rps(rpm, tpm, arm.tokens_per_answer)
    sustained = sustained_rate(arm.ends) or 0.0
    return {"sustained_rps": sustained, "allowed_rps": allowed, "sustained_fraction": sustained / allowed}


def summary_table(
    strategies: dict[str, dict[str, Any]], items: int, paced: dict[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    """One row per arm for the closing table: wall time, items per second over the whole batch, failures, 429s,
    and for the paced arms (``paced``: name -> its result) the sustained rate as a share of what the limits allow."""
    return [
        {
            "arm": name,
            "wall (s)": row["wall_s"],
            "items/s": items / row["wall_s"],
            "failed": row["failed"],
            "429s": row["429"],
            "sustained, share of allowed": paced.get(name, {}).get("sustained_fraction"),
        }
        for name, row in strategies.items()
    ]


def fastest_clean(strategies: dict[str, dict[str, Any]], *, but: str) -> tuple[str, dict[str, Any]]:
    """The fastest arm other than ``but`` that met no 429 (the loop always qualifies), for a chart's title."""
    clean = {name: row for name, row in strategies.items() if name != but and not row["429"]}
    if not clean:
        return "none", {"wall_s": float("nan")}
    name = min(clean, key=lambda n: clean[n]["wall_s"])
    return name, clean[name]


def results(
    model: str,
    limits: dict[str, Any],
    items: int,
    strategies: dict[str, dict[str, Any]],
    tuned: int | None,
    sweep: dict[int, dict[str, Any]],
    token_bucket: dict[str, Any],
    admission: dict[str, Any],
) -> dict[str, Any]:
    """The results JSON the notebook test asserts on (empty sections stay empty: they skipped)."""
    return {
        "model": model,
        "limits": limits,
        "items": items,
        "strategies": strategies,
        "tuned_semaphore": tuned,
        "semaphore_sweep": sweep,
        "token_bucket": token_bucket,
        "admission": admission,
    }


async def drain(lab: Any, quiet_s: float = 1.0, timeout_s: float = 20.0) -> int:
    """Wait until the service has received nothing new for ``quiet_s``; return how many requests came meanwhile.

    A `gather` that raised does not cancel its other awaitables: they keep running (and retrying) after the
    exception. Waiting for them keeps their requests out of the next measurement.
    """
    if not lab.simulated:
        return 0
    start = last = server_counts(lab)["sent"] or 0
    quiet_since = time.monotonic()
    deadline = quiet_since + timeout_s
    while time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        sent = server_counts(lab)["sent"] or 0
        if sent != last:
            last, quiet_since = sent, time.monotonic()
        elif time.monotonic() - quiet_since >= quiet_s:
            break
    return last - start
