"""The capstone (lesson 08): one realistic workload, the naive client and labkit's full chain, measured end to end.

- `WorkloadSpec` / `generate`: the seeded workloads of `data/capstone_workloads.json` (Poisson arrivals, Zipf
  popularity over (question, context) meanings, paraphrases from `data/paraphrases.jsonl`, lognormal context
  lengths) and their *ceiling*: the share of measured requests that repeat an earlier one exactly, and the share
  that are paraphrases of an earlier one (what no cache can beat).
- `run_open_loop`: arrivals at their scheduled times whatever the client does (open loop: a slow client does not
  slow the arrivals down, as real users do not), each request timed from its *scheduled* arrival, the caller's
  patience as the deadline. `chain_caller` / `naive_caller` adapt the two clients.
- `summarize`: the table's row values for one run; `before_after` the table; `ablation_shares` each layer's share
  of each row's gain; `max_sustainable_rate` the throughput row (a doubling ladder of offered rates).
- `python -m labkit.lessons.capstone --bench [--quick]` runs the whole comparison (and, without `--quick`, the
  ablation of
  every switch) and writes `build/bench/capstone.json`.

Throughput is defined honestly: the highest offered rate (requests/s, Poisson) a client *sustains* — at most
`error_budget` of requests fail or time out — found by doubling the rate from the table's rate. Both clients climb
the same ladder against the same services; the ladder's resolution is a factor of 2, so a "≥" marks a client that
sustained the top rung (its real ceiling is higher).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import random
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from labkit.data import data_path
from labkit.percentiles import percentile

WORKLOADS_FILE = "capstone_workloads.json"
#: A rate is "sustained" while at most this share of its requests fail or time out (the throughput row's rule).
ERROR_BUDGET = 0.02
_WORDS = [
    "account",
    "billing",
    "invoice",
    "plan",
    "upgrade",
    "refund",
    "policy",
    "region",
    "latency",
    "quota",
    "limit",
    "token",
    "model",
    "answer",
    "support",
    "customer",
    "order",
    "shipping",
    "warranty",
    "device",
    "firmware",
    "update",
    "backup",
    "restore",
    "password",
    "security",
    "audit",
    "report",
    "dashboard",
    "export",
    "import",
    "schedule",
    "meeting",
    "calendar",
    "team",
    "project",
    "release",
    "version",
    "feature",
    "request",
    "incident",
    "status",
    "page",
    "outage",
    "maintenance",
    "window",
    "contract",
    "renewal",
    "discount",
    "trial",
    "onboarding",
    "guide",
    "tutorial",
    "reference",
]


# ------------------------------------------------------------------------------------------------------------
# Workloads
# ------------------------------------------------------------------------------------------------------------


def _load_file(path: str | Path | None = None) -> dict[str, Any]:
    return json.loads(Path(path or data_path(WORKLOADS_FILE)).read_text(encoding="utf-8"))


@dataclasses.dataclass(frozen=True)
class WorkloadSpec:
    """One workload of `data/capstone_workloads.json` (see its `_about`)."""

    name: str
    rate_per_s: float
    duration_s: float
    warmup_s: float = 0.0
    exponent: float = 1.0
    n_distinct: int = 100
    contexts: int = 1
    paraphrase_share: float = 0.0
    prompt_median: float = 300.0
    prompt_sigma: float = 0.6
    prompt_min: int = 60
    prompt_max: int = 2000
    max_tokens: int = 300
    fault_total: float = 0.05
    retry_after_s: float = 0.5
    seed: int = 0
    description: str = ""
    basis: str = "assumed"

    def __post_init__(self) -> None:
        if not self.rate_per_s > 0 or not self.duration_s > 0 or self.warmup_s < 0:
            raise ValueError("rate_per_s and duration_s must be > 0 and warmup_s >= 0")
        if self.exponent < 0:
            raise ValueError("exponent must not be negative")
        if self.n_distinct < 1 or self.contexts < 1:
            raise ValueError("n_distinct and contexts must be at least 1")
        if not 0 <= self.paraphrase_share <= 1 or not 0 <= self.fault_total < 1:
            raise ValueError("paraphrase_share must be in [0, 1] and fault_total in [0, 1)")
        if not 0 < self.prompt_min <= self.prompt_max or self.prompt_sigma < 0 or self.max_tokens < 1:
            raise ValueError("prompt lengths need 0 < prompt_min <= prompt_max, prompt_sigma >= 0, max_tokens >= 1")

    @classmethod
    def load(cls, name: str, path: str | Path | None = None, **overrides: Any) -> WorkloadSpec:
        """The named workload of the file, with keyword overrides (None leaves a value as it is)."""
        raw = _load_file(path)
        workloads = raw.get("workloads", {})
        if name not in workloads:
            raise KeyError(f"no workload {name!r} in {WORKLOADS_FILE}; known: {sorted(workloads)}")
        w = workloads[name]
        pop, prompt = w["popularity"], w["prompt_tokens"]
        if w["arrival"].get("process") != "poisson" or pop.get("distribution") != "zipf":
            raise ValueError("only Poisson arrivals and Zipf popularity are implemented")
        values: dict[str, Any] = {
            "name": name,
            "rate_per_s": w["arrival"]["rate_per_s"],
            "duration_s": w["duration_s"],
            "warmup_s": w.get("warmup_s", 0.0),
            "exponent": pop["exponent"],
            "n_distinct": pop["n_distinct"],
            "contexts": pop.get("contexts", 1),
            "paraphrase_share": w["paraphrase_share"],
            "prompt_median": prompt["median"],
            "prompt_sigma": prompt["sigma"],
            "prompt_min": prompt["min"],
            "prompt_max": prompt["max"],
            "max_tokens": w["max_tokens"],
            "fault_total": w["fault_total"],
            "retry_after_s": w.get("retry_after_s", 0.5),
            "seed": w.get("seed", 0),
            "description": w.get("description", ""),
            "basis": pop.get("basis", "assumed"),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def replace(self, **changes: Any) -> WorkloadSpec:
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class Item:
    """One request of a workload."""

    index: int
    at_s: float  # scheduled arrival, seconds after the run starts
    warmup: bool  # arrives in the warm-up (runs, is not measured)
    meaning: int  # index of (group, context): the unit of popularity
    context: int
    wording: str  # "usual" or "paraphrase"
    messages: tuple[Mapping[str, str], ...]

    @property
    def text(self) -> str:
        return self.messages[-1]["content"]


@dataclasses.dataclass(frozen=True)
class Workload:
    spec: WorkloadSpec
    items: tuple[Item, ...]
    context_tokens: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.items)

    @property
    def measured(self) -> list[Item]:
        return [i for i in self.items if not i.warmup]

    def ceiling(self) -> dict[str, float]:
        """Over the measured requests (warm-up counts as history): exact repeats and paraphrases of earlier ones."""
        seen_text: set[tuple[int, str]] = set()
        seen_meaning: set[int] = set()
        exact = para = measured = 0
        for item in self.items:
            key = (item.context, item.text)
            if not item.warmup:
                measured += 1
                if key in seen_text:
                    exact += 1
                elif item.meaning in seen_meaning:
                    para += 1
            seen_text.add(key)
            seen_meaning.add(item.meaning)
        n = measured or 1
        return {
            "requests": measured,
            "exact_repeat_share": exact / n,
            "paraphrase_share": para / n,
            "ceiling": (exact + para) / n,
            "distinct_meanings": len({i.meaning for i in self.items if not i.warmup}),
        }

    def prompt_tokens(self) -> list[int]:
        """Prompt tokens of each request (context + question, counted with the real tokenizer)."""
        from labkit.tokens import count_messages

        return [count_messages(item.messages) for item in self.items]


def _context_text(rng: random.Random, index: int, tokens: int) -> str:
    head = f"You are the assistant of product {index}. Answer briefly using this reference text: "
    words = [rng.choice(_WORDS) for _ in range(max(1, int(tokens)))]  # these words are one token each
    return head + " ".join(words)


def contexts(spec: WorkloadSpec) -> tuple[list[str], list[int]]:
    """The system messages of the workload's contexts and their lengths in tokens (lognormal, clipped)."""
    from labkit.tokens import count_text

    rng = random.Random(f"contexts:{spec.seed}")
    texts, lengths = [], []
    for c in range(spec.contexts):
        drawn = spec.prompt_median * math.exp(spec.prompt_sigma * rng.gauss(0.0, 1.0))
        target = min(max(drawn, spec.prompt_min), spec.prompt_max)
        text = _context_text(rng, c, max(1, target - 25))
        texts.append(text)
        lengths.append(count_text(text))
    return texts, lengths


def poisson_arrivals(rate_per_s: float, duration_s: float, rng: random.Random) -> list[float]:
    """Arrival times (s) of a Poisson process: exponential gaps with mean 1/rate, up to `duration_s`."""
    times, t = [], 0.0
    while True:
        t += rng.expovariate(rate_per_s)
        if t >= duration_s:
            return times
        times.append(t)


def zipf_weights(n: int, exponent: float) -> list[float]:
    raw = [1.0 / (k**exponent) for k in range(1, n + 1)]
    total = sum(raw)
    return [w / total for w in raw]


def generate(spec: WorkloadSpec, groups: Sequence[Any] | None = None) -> Workload:
    """The seeded workload: the same spec gives the same requests on every machine."""
    if groups is None:
        from labkit.lessons.cache.workload import load_groups

        groups = load_groups()
    groups = list(groups)
    available = len(groups) * spec.contexts
    if spec.n_distinct > available:
        raise ValueError(
            f"n_distinct={spec.n_distinct} needs more meanings than {len(groups)} question groups x "
            f"{spec.contexts} contexts = {available}: raise contexts"
        )
    rng = random.Random(spec.seed)
    meanings = [(g, c) for c in range(spec.contexts) for g in range(len(groups))]
    rng.shuffle(meanings)  # which meanings are popular is random too, but seeded
    meanings = meanings[: spec.n_distinct]
    texts, lengths = contexts(spec)
    weights = zipf_weights(spec.n_distinct, spec.exponent)
    times = poisson_arrivals(spec.rate_per_s, spec.warmup_s + spec.duration_s, rng)
    drawn = rng.choices(range(spec.n_distinct), weights, k=len(times))
    items = []
    for i, (at, m) in enumerate(zip(times, drawn, strict=True)):
        g, c = meanings[m]
        group = groups[g]
        if group.paraphrases and rng.random() < spec.paraphrase_share:
            text, wording = rng.choice(group.paraphrases), "paraphrase"
        else:
            text, wording = group.usual, "usual"
        messages = ({"role": "system", "content": texts[c]}, {"role": "user", "content": text})
        items.append(Item(i, at, at < spec.warmup_s, m, c, wording, messages))
    return Workload(spec, tuple(items), tuple(lengths))


def burst(workload: Workload, n: int) -> Workload:
    """`n` requests of the workload's measured part (cycled) all arriving at once: the concurrency test."""
    measured = workload.measured or list(workload.items)
    if not measured:
        raise ValueError("the workload has no requests")
    items = tuple(dataclasses.replace(measured[i % len(measured)], index=i, at_s=0.0, warmup=False) for i in range(n))
    return Workload(workload.spec, items, workload.context_tokens)


# ------------------------------------------------------------------------------------------------------------
# Running
# ------------------------------------------------------------------------------------------------------------

Call = Callable[[Item], Awaitable[dict[str, Any]]]


class IncompleteAnswer(RuntimeError):
    """A stream that ended without a finish_reason: the caller did not get a whole answer."""


def chain_caller(assembled: Any, *, model: str, max_tokens: int) -> Call:
    """Send an item through an `labkit.assemble.Assembled` chain; streams when its streaming switch is on."""
    chain = assembled.chain
    stream = assembled.stream

    async def call(item: Item) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        log: list[str] = []
        controls = {"upstream_log": log}
        first = None
        tokens = 0
        source = None
        if stream:
            result = await chain.stream(
                list(item.messages), model=model, max_tokens=max_tokens, temperature=0, controls=controls
            )
            source = result.info.get("cache_tier")
            finished = False
            async with result:
                async for chunk in result:
                    for choice in chunk.choices:
                        if first is None and choice.delta.content:
                            first = loop.time()
                        if choice.finish_reason:
                            finished = True
                    if chunk.usage is not None:
                        tokens = chunk.usage.completion_tokens
            if not finished:
                raise IncompleteAnswer("the stream ended without a finish_reason")
        else:
            completion = await chain.complete(
                list(item.messages), model=model, max_tokens=max_tokens, temperature=0, controls=controls
            )
            tokens = completion.usage.completion_tokens if completion.usage else 0
        done = loop.time()
        upstream = bool(log)
        if upstream:
            source = "upstream"
        elif source is None:
            source = "no upstream call" if not stream else "coalesced"
        return {
            "first": first or done,
            "done": done,
            "upstream": upstream,
            "attempts": len(log),
            "source": source,
            "completion_tokens": tokens,
        }

    return call


def naive_caller(naive: Any, *, model: str, max_tokens: int) -> Call:
    """Send an item through a `labkit.lessons.naive.NaiveClient` (whole answers: first byte = whole answer)."""

    async def call(item: Item) -> dict[str, Any]:
        _text, usage, source = await naive.ask(list(item.messages), model=model, max_tokens=max_tokens, temperature=0)
        done = asyncio.get_running_loop().time()
        return {
            "first": done,
            "done": done,
            "upstream": source == "upstream",
            "attempts": int(source == "upstream"),
            "source": source,
            "completion_tokens": usage.completion_tokens if usage else 0,
        }

    return call


@dataclasses.dataclass
class RunResult:
    rows: list[dict[str, Any]]
    wall_s: float
    peak_outstanding: int
    boundary_stats: Any = None  # what `on_measure_start` returned (the services' counters at the boundary)
    end_stats: Any = None


async def run_open_loop(
    call: Call,
    workload: Workload,
    *,
    patience_s: float = 10.0,
    on_measure_start: Callable[[], Awaitable[Any]] | None = None,
    on_end: Callable[[], Awaitable[Any]] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> RunResult:
    """Start each request at its scheduled time, whatever the client is doing, and time it from that moment.

    A request fails for the caller if it raised, its stream was incomplete, or it took longer than `patience_s`
    (the user gave up). `on_measure_start` runs (as a task) when the first measured request is due; its result
    and `on_end`'s are kept (the services' counters at the boundary and at the end, for the cost).
    """
    if patience_s <= 0:
        raise ValueError("patience_s must be > 0")
    loop = asyncio.get_running_loop()
    rows: list[dict[str, Any]] = []
    outstanding = peak = 0
    done_count = 0
    total = len(workload.items)
    t0 = loop.time() + 0.05
    boundary: asyncio.Task[Any] | None = None

    async def one(item: Item) -> None:
        nonlocal outstanding, done_count
        scheduled = t0 + item.at_s
        row: dict[str, Any] = {
            "index": item.index,
            "at_s": item.at_s,
            "warmup": item.warmup,
            "wording": item.wording,
            "ok": False,
            "error": None,
            "ttfb_s": None,
            "total_s": None,
            "upstream": None,
            "attempts": 0,
            "source": None,
            "completion_tokens": 0,
            "start_lag_s": loop.time() - scheduled,
        }
        try:
            async with asyncio.timeout(patience_s):
                out = await call(item)
            row.update(
                ok=True,
                ttfb_s=out["first"] - scheduled,
                total_s=out["done"] - scheduled,
                upstream=out["upstream"],
                attempts=out["attempts"],
                source=out["source"],
                completion_tokens=out["completion_tokens"],
            )
        except TimeoutError:
            row["error"] = "gave up (patience)"
        except Exception as error:  # every failure is a measured outcome, never fatal to the run
            row["error"] = type(error).__name__
        finally:
            outstanding -= 1
            done_count += 1
            if row["total_s"] is None:
                row["total_s"] = loop.time() - scheduled
            rows.append(row)
            if progress is not None:
                progress(done_count, total)

    tasks: list[asyncio.Task[None]] = []
    for item in workload.items:
        delay = t0 + item.at_s - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        if not item.warmup and boundary is None and on_measure_start is not None:
            boundary = asyncio.create_task(on_measure_start())
        outstanding += 1  # outstanding from its arrival: issued by the user, not yet answered
        peak = max(peak, outstanding)
        tasks.append(asyncio.create_task(one(item)))
    if tasks:
        await asyncio.wait(tasks)
    end = await on_end() if on_end is not None else None
    rows.sort(key=lambda r: r["index"])
    return RunResult(rows, loop.time() - t0, peak, await boundary if boundary is not None else None, end)


# ------------------------------------------------------------------------------------------------------------
# The table
# ------------------------------------------------------------------------------------------------------------

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


def upstream_cost(
    boundary: Sequence[Mapping[str, Any]] | None,
    end: Sequence[Mapping[str, Any]] | None,
    *,
    prompt_tokens_per_upstream: float,
    model: str = "gpt-4o",
) -> dict[str, Any]:
    """What the services did between two snapshots of their `/admin/stats`, and its price.

    Billed: every generated token (also of dropped, hedged and cancelled answers: providers bill what they
    generated) and the prompt of every request the service answered with status 200, at the table's input price
    (cached-input discounts are left out, the same for both clients).
    """
    from labkit.pricing import default_prices

    def total(stats: Sequence[Mapping[str, Any]] | None, field: str) -> float:
        if not stats:
            return 0.0
        if field == "200":
            return float(sum(s["requests_by_status"].get("200", 0) for s in stats))
        return float(sum(s[field] for s in stats))

    answered = total(end, "200") - total(boundary, "200")
    generated = total(end, "tokens_generated") - total(boundary, "tokens_generated")
    requests = total(end, "requests_total") - total(boundary, "requests_total")
    price = default_prices().price(model)
    if price is None:
        raise ValueError(f"no price for {model!r} in data/pricing.json")
    prompt = answered * prompt_tokens_per_upstream
    usd = (prompt * price.input + generated * price.output) / 1_000_000
    return {
        "upstream_requests": requests,
        "answered_200": answered,
        "prompt_tokens": prompt,
        "tokens_generated": generated,
        "cost_usd": usd,
    }


def client_side_cost(rows: Sequence[Mapping[str, Any]], prompt_tokens: Sequence[int], *, model: str) -> dict[str, Any]:
    """Cost from the usage of the answers that went upstream (a real endpoint: no service counters to read).

    It misses what the caller never sees: failed attempts, hedges and retries (so it flatters a chain with them).
    """
    from labkit.pricing import default_prices

    price = default_prices().price(model)
    if price is None:
        raise ValueError(f"no price for {model!r} in data/pricing.json")
    upstream = [r for r in rows if r["ok"] and r["upstream"]]
    prompt = float(sum(prompt_tokens[r["index"]] for r in upstream))
    generated = float(sum(r["completion_tokens"] for r in upstream))
    usd = (prompt * price.input + generated * price.output) / 1_000_000
    return {
        "upstream_requests": float(len(upstream)),
        "answered_200": float(len(upstream)),
        "prompt_tokens": prompt,
        "tokens_generated": generated,
        "cost_usd": usd,
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
    if result.boundary_stats or result.end_stats:
        cost = upstream_cost(
            result.boundary_stats, result.end_stats, prompt_tokens_per_upstream=per_upstream, model=model
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
        "cost_usd": cost["cost_usd"],
        "cost_per_request_usd": per_request,
        "cost_month_usd": per_request * monthly_requests,
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


async def max_sustainable_rate(
    run_at: Callable[[float, int], Awaitable[dict[str, Any]]],
    *,
    start_rate: float,
    max_rate: float,
    error_budget: float = ERROR_BUDGET,
    refine: int = 1,
    floor_rate: float | None = None,
) -> dict[str, Any]:
    """Double the offered rate from `start_rate` until the client fails a step (more than `error_budget` failed or
    timed out) or `max_rate` is passed; then `refine` bisection steps (geometric) between the last rate sustained
    (or `floor_rate`, one known to be sustained) and the first that failed. `run_at(rate, step)` runs one step and
    returns its `summarize` dict. The answer is the completed rate of the highest sustained step."""
    if not 0 < start_rate <= max_rate:
        raise ValueError("need 0 < start_rate <= max_rate")
    steps: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    k = 0

    async def step(rate: float) -> bool:
        nonlocal best, k
        s = await run_at(rate, k)
        k += 1
        ok = s["error_rate"] <= error_budget
        steps.append({"offered_rps": rate, "completed_rps": s["completed_rps"], "error_rate": s["error_rate"],
                      "p95_ttfb_s": s["p95_ttfb_s"], "sustained": ok})  # fmt: skip
        if ok and (best is None or rate > best["offered_rps"]):
            best = steps[-1]
        return ok

    rate, low, high = start_rate, floor_rate, None
    while rate <= max_rate * (1 + 1e-9):
        if not await step(rate):
            high = rate
            break
        low, rate = rate, rate * 2
    for _ in range(refine if high is not None and low is not None else 0):
        middle = math.sqrt(low * high)
        if await step(middle):
            low = middle
        else:
            high = middle
    return {
        "throughput_rps": best["completed_rps"] if best is not None else None,
        "sustained_rps": best["offered_rps"] if best is not None else None,
        "first_failed_rps": high,
        "steps": steps,
        "capped": high is None,  # sustained the top rung: the real ceiling is higher
        "error_budget": error_budget,
    }


# ------------------------------------------------------------------------------------------------------------
# The whole comparison (the notebook runs the same steps one by one)
# ------------------------------------------------------------------------------------------------------------


def settings(path: str | Path | None = None) -> dict[str, Any]:
    """The file's top-level settings (model, profile, endpoints, limits, monthly traffic)."""
    raw = _load_file(path)
    return {k: v for k, v in raw.items() if k != "workloads" and not k.startswith("_")}


def start_capstone_lab(*, profile: str | None = None, endpoints: int | None = None, seed: int = 0) -> Any:
    """The simulated services (each with the file's limits and the workloads' fault mix) and Redis."""
    from labkit.lab.services import start_lab
    from labkit.lessons.resilience import fault_mix

    conf = settings()
    limits = conf["limits_per_endpoint"]
    faults = fault_mix(0.05, retry_after_s=0.5)
    # The same seed for every endpoint: replicas of one deployment give the same answer to the same request (what
    # the retry layer's stream resumption relies on); their faults are seeded apart (`set_faults`).
    sims = [
        {
            "profile": profile or conf["profile"],
            "rpm": limits["rpm"],
            "tpm": limits["tpm"],
            "faults": faults,
            "seed": seed,
        }
        for _ in range(endpoints or conf["endpoints"])
    ]
    return start_lab(sims=sims, redis=True, memcached=False, seed=seed)


async def set_faults(lab: Any, total: float, retry_after_s: float) -> None:
    """Reset each simulated service, then set the fault mix and the limits (enforced per second, as OpenAI may:
    a full bucket holds one second of the RPM/TPM, not a whole minute)."""
    from labkit.lessons.resilience import fault_mix

    limits = settings()["limits_per_endpoint"]
    for i, sim in enumerate(lab.sims):
        await sim.areset()
        await sim.aset_faults(fault_mix(total, retry_after_s=retry_after_s, seed=1000 + i))
        await sim.aset_limits(rpm=limits["rpm"], tpm=limits["tpm"], burst_s=limits.get("burst_s", 1.0))


async def measure(
    lab: Any,
    client: str | Any,
    workload: Workload,
    *,
    model: str = "gpt-4o",
    patience_s: float = 10.0,
    monthly_requests: float = 1_000_000,
    naive_cache: str = "redis",
    prompt_tokens: Sequence[int] | None = None,
    keep: bool = False,
) -> dict[str, Any]:
    """One run: fresh services state, a fresh client (`"naive"` or a `ChainConfig`), the workload, its summary.

    With `keep=True` the client is returned open in `result["client"]` (the ladder reuses it, caches warm).
    """
    from labkit.assemble import ChainConfig, build_chain
    from labkit.lessons.naive import NaiveClient

    await set_faults(lab, workload.spec.fault_total, workload.spec.retry_after_s)
    if client == "naive":
        naive = NaiveClient(lab.endpoints[0], cache=naive_cache, redis_url=lab.redis.url if lab.redis else None)
        naive.clear()  # its Redis keys outlive the client: every run starts as cold as the chain's caches
        call, closer, describe = naive_caller(naive, model=model, max_tokens=workload.spec.max_tokens), naive, None
    elif isinstance(client, ChainConfig):
        assembled = build_chain(client, lab)
        call = chain_caller(assembled, model=model, max_tokens=workload.spec.max_tokens)
        closer, describe = assembled, assembled
    else:  # an already built client, reused (the ladder)
        call, closer, describe = client["call"], client["closer"], client.get("describe")
    summary = await run_workload(
        lab,
        call,
        workload,
        patience_s=patience_s,
        model=model,
        monthly_requests=monthly_requests,
        prompt_tokens=prompt_tokens,
    )
    if describe is not None:
        summary["layers"] = {"on": describe.on, "off": describe.off, "missing": describe.missing}
        summary["counters"] = _jsonable(describe.counters())
    elif client == "naive":
        summary["counters"] = naive.stats()
    if keep:
        summary["client"] = {"call": call, "closer": closer, "describe": describe}
    else:
        await closer.aclose()
    return summary


async def run_workload(
    lab: Any,
    call: Call,
    workload: Workload,
    *,
    patience_s: float,
    model: str,
    monthly_requests: float,
    prompt_tokens: Sequence[int] | None = None,
) -> dict[str, Any]:
    async def snapshot() -> list[dict[str, Any]]:
        return [await sim.astats() for sim in lab.sims]

    # the services' counters before the first request and after the last: cost is counted over the whole run,
    # warm-up included (a window starting mid-run would also count the warm-up's answers still being generated)
    start = await snapshot() if lab.sims else None
    result = await run_open_loop(call, workload, patience_s=patience_s, on_end=snapshot)
    result.boundary_stats = start
    return summarize(result, workload, model=model, monthly_requests=monthly_requests, prompt_tokens=prompt_tokens)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


async def capacity(
    lab: Any,
    client: Mapping[str, Any],
    spec: WorkloadSpec,
    *,
    start_rate: float,
    max_rate: float,
    step_s: float,
    patience_s: float,
    model: str = "gpt-4o",
    refine: int = 1,
    floor_rate: float | None = None,
) -> dict[str, Any]:
    """The throughput row: the doubling ladder with an open client (caches warm from the table's run)."""

    async def run_at(rate: float, k: int) -> dict[str, Any]:
        await set_faults(lab, spec.fault_total, spec.retry_after_s)
        wl = generate(spec.replace(rate_per_s=rate, duration_s=step_s, warmup_s=0.0, seed=spec.seed + 101 + k))
        return await run_workload(lab, client["call"], wl, patience_s=patience_s, model=model, monthly_requests=1)

    return await max_sustainable_rate(
        run_at, start_rate=start_rate, max_rate=max_rate, refine=refine, floor_rate=floor_rate
    )


async def concurrency_test(
    lab: Any, client: Mapping[str, Any], workload: Workload, *, users: int, patience_s: float
) -> dict[str, Any]:
    """`users` requests at the same instant through an open (warm) client: the "1000 concurrent" objective."""
    if users < 1:
        raise ValueError("users must be at least 1")
    await set_faults(lab, workload.spec.fault_total, workload.spec.retry_after_s)
    result = await run_open_loop(client["call"], burst(workload, users), patience_s=patience_s)
    ok = [r for r in result.rows if r["ok"]]
    ttfb = [r["ttfb_s"] for r in ok]
    return {
        "users": users,
        "peak_outstanding": result.peak_outstanding,
        "availability": len(ok) / len(result.rows) if result.rows else 0.0,
        "errors": dict(Counter(r["error"] for r in result.rows if not r["ok"])),
        "p95_ttfb_s": percentile(ttfb, 95),
        "avg_response_s": statistics.fmean(ttfb) if ttfb else None,
        "hit_rate": sum(1 for r in ok if r["upstream"] is False) / len(ok) if ok else 0.0,
        "wall_s": result.wall_s,
    }


async def compare(
    lab: Any,
    spec: WorkloadSpec,
    *,
    full: Any = None,
    patience_s: float = 8.0,
    ladder: bool = True,
    ladder_step_s: float = 3.0,
    ladder_refine: int = 1,
    max_rate: float = 640.0,
    burst_users: int = 0,
    naive_cache: str = "redis",
    model: str = "gpt-4o",
    monthly_requests: float = 1_000_000,
) -> dict[str, Any]:
    """Naive vs the full chain on one workload: both summaries, the ceiling, the table; the throughput ladder for
    each (caches warm from the table's run); with `burst_users`, the concurrency test on the warm full chain."""
    from labkit.assemble import ChainConfig

    full = full or ChainConfig()
    workload = generate(spec)
    tokens = workload.prompt_tokens()
    out: dict[str, Any] = {"spec": dataclasses.asdict(spec), "ceiling": workload.ceiling()}
    for name, client in (("naive", "naive"), ("full", full)):
        s = await measure(
            lab,
            client,
            workload,
            model=model,
            patience_s=patience_s,
            naive_cache=naive_cache,
            monthly_requests=monthly_requests,
            prompt_tokens=tokens,
            keep=True,
        )
        opened = s.pop("client")
        sustained_here = s["error_rate"] <= ERROR_BUDGET
        if ladder and sustained_here:
            s["ladder"] = await capacity(
                lab,
                opened,
                spec,
                start_rate=spec.rate_per_s * 2,
                max_rate=max_rate,
                step_s=ladder_step_s,
                patience_s=patience_s,
                model=model,
                refine=ladder_refine,
                floor_rate=spec.rate_per_s,
            )
            top = s["ladder"]["throughput_rps"]
            s["throughput_rps"] = top if top is not None else s["completed_rps"]
            ladder_ = s["ladder"]
            if ladder_["capped"]:
                s["throughput_note"] = ">= (sustained the top rung)"
            elif ladder_["sustained_rps"] is not None:
                up, down = ladder_["sustained_rps"], ladder_["first_failed_rps"]
                s["throughput_note"] = f"(sustained {up:.0f}/s offered, failed at {down:.0f}/s)"
            else:
                s["throughput_note"] = f"(failed at {ladder_['first_failed_rps']:.0f}/s)"
        else:
            s["throughput_rps"] = s["completed_rps"]
            s["throughput_note"] = "at the table's rate (no ladder)" if sustained_here else "not sustained"
        if name == "full" and burst_users:
            out["concurrency"] = await concurrency_test(lab, opened, workload, users=burst_users, patience_s=patience_s)
        await opened["closer"].aclose()
        out[name] = s
    ceiling = out["ceiling"]["ceiling"]
    out["hit_share_of_ceiling"] = out["full"]["hit_rate"] / ceiling if ceiling else None
    out["min_upstream_requests"] = len({item.meaning for item in workload.items})
    out["best_cost_change"] = best_cost_change(
        out["min_upstream_requests"], out["naive"]["upstream"]["upstream_requests"]
    )
    out["table"] = before_after(out["naive"], out["full"])
    return out


async def ablation(
    lab: Any,
    spec: WorkloadSpec,
    switches: Sequence[str],
    *,
    patience_s: float = 8.0,
    model: str = "gpt-4o",
    monthly_requests: float = 1_000_000,
    progress: Callable[[str], None] | None = None,
    baseline: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The full chain with each of `switches` removed in turn (`"a+b"` removes two), plus naive and full, on the
    same workload. A `compare` result on the very same spec may be passed as `baseline`: its naive and full runs
    are reused instead of run again."""
    from labkit.assemble import ChainConfig

    workload = generate(spec)
    tokens = workload.prompt_tokens()
    runs: dict[str, dict[str, Any]] = {}
    if baseline is not None and baseline.get("spec") == dataclasses.asdict(spec):
        runs = {k: {**baseline[k], "throughput_rps": None} for k in ("naive", "full")}
    for name in ("naive", "full", *switches):
        if name in runs:
            continue
        if progress is not None:
            progress(name)
        client = "naive" if name == "naive" else ChainConfig() if name == "full" else ChainConfig().without(name)
        s = await measure(
            lab,
            client,
            workload,
            model=model,
            patience_s=patience_s,
            monthly_requests=monthly_requests,
            prompt_tokens=tokens,
        )
        s["throughput_rps"] = None  # the ladder per variant is left out (time); see the notebook
        runs[name] = s
    variants = {k: v for k, v in runs.items() if k not in ("naive", "full")}
    return {"runs": runs, "shares": ablation_shares(runs["naive"], runs["full"], variants)}


def main(argv: Sequence[str] | None = None) -> int:  # pragma: no cover - a tool
    parser = argparse.ArgumentParser(prog="python -m labkit.lessons.capstone", description=__doc__.split("\n")[0])
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
    Path(args.out).write_text(json.dumps(_jsonable(results), indent=2), encoding="utf-8")
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

__all__ = [
    "ROWS",
    "TARGETS",
    "Item",
    "RunResult",
    "Workload",
    "WorkloadSpec",
    "ablation",
    "ablation_shares",
    "before_after",
    "burst",
    "capacity",
    "chain_caller",
    "client_side_cost",
    "compare",
    "concurrency_test",
    "generate",
    "max_sustainable_rate",
    "measure",
    "naive_caller",
    "poisson_arrivals",
    "run_open_loop",
    "settings",
    "start_capstone_lab",
    "summarize",
    "upstream_cost",
    "zipf_weights",
]
