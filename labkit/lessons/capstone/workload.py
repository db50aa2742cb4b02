"""The capstone's workloads: seeded requests with Poisson arrivals and Zipf popularity, and their ceiling.

The workloads of `data/capstone_workloads.json` draw (question, context) meanings with Zipf popularity, word each
request as the usual question or a paraphrase (`data/paraphrases.jsonl`), give each context a lognormal length,
and schedule the requests as a Poisson process. `Workload.ceiling` is what no cache can beat: the share of measured
requests that repeat an earlier one exactly, and the share that are paraphrases of an earlier one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from labkit.data import data_path
from labkit.lab.workload import zipf_choices

WORKLOADS_FILE = "capstone_workloads.json"
_WORDS = [  # one token each
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
    trim_keep: float = 1.0  # the share of each context's reference text that prompt trimming keeps
    defer_share: float = 0.0  # the share of requests whose answers can wait (the Batch API lever)

    def __post_init__(self) -> None:
        if not self.rate_per_s > 0 or not self.duration_s > 0 or self.warmup_s < 0:
            raise ValueError("rate_per_s and duration_s must be > 0 and warmup_s >= 0")
        if self.exponent < 0:
            raise ValueError("exponent must not be negative")
        if self.n_distinct < 1 or self.contexts < 1:
            raise ValueError("n_distinct and contexts must be at least 1")
        if not 0 <= self.paraphrase_share <= 1 or not 0 <= self.fault_total < 1:
            raise ValueError("paraphrase_share must be in [0, 1] and fault_total in [0, 1)")
        if not 0 < self.trim_keep <= 1 or not 0 <= self.defer_share <= 1:
            raise ValueError("trim_keep must be in (0, 1] and defer_share in [0, 1]")
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
            "trim_keep": w.get("trim_keep", 1.0),
            "defer_share": w.get("defer_share", 0.0),
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
    deferrable: bool = False  # its answer can wait (a report, a digest): the Batch API may serve it

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
    times = poisson_arrivals(spec.rate_per_s, spec.warmup_s + spec.duration_s, rng)
    drawn = zipf_choices(rng, range(spec.n_distinct), spec.exponent, len(times))
    defer_rng = random.Random(f"defer:{spec.seed}")  # its own stream: the other draws stay as they were
    items = []
    for i, (at, m) in enumerate(zip(times, drawn, strict=True)):
        g, c = meanings[m]
        group = groups[g]
        if group.paraphrases and rng.random() < spec.paraphrase_share:
            text, wording = rng.choice(group.paraphrases), "paraphrase"
        else:
            text, wording = group.usual, "usual"
        messages = ({"role": "system", "content": texts[c]}, {"role": "user", "content": text})
        deferrable = defer_rng.random() < spec.defer_share
        items.append(Item(i, at, at < spec.warmup_s, m, c, wording, messages, deferrable))
    return Workload(spec, tuple(items), tuple(lengths))


def trimmed(workload: Workload) -> Workload:
    """The same requests with each context's reference text cut to `spec.trim_keep` of its words (the checklist's
    "optimise the prompt length"). The simulated answers do not depend on the context's meaning (their length follows
    the question), so what trimming costs in answer quality is not measured here: choose the share on real traffic."""
    keep = workload.spec.trim_keep
    if keep >= 1:
        return workload

    def cut(text: str) -> str:
        head, sep, body = text.partition(": ")
        words = body.split(" ")
        return head + sep + " ".join(words[: max(1, round(len(words) * keep))])

    items = tuple(
        dataclasses.replace(
            item, messages=({**item.messages[0], "content": cut(item.messages[0]["content"])}, *item.messages[1:])
        )
        for item in workload.items
    )
    return Workload(workload.spec, items, workload.context_tokens)


def without_deferred(workload: Workload) -> tuple[Workload, list[Item]]:
    """The online part of the workload and the requests that can wait (sent through the Batch API instead)."""
    online = tuple(i for i in workload.items if not i.deferrable)
    return Workload(workload.spec, online, workload.context_tokens), [i for i in workload.items if i.deferrable]


def burst(workload: Workload, n: int) -> Workload:
    """`n` requests of the workload's measured part (cycled) all arriving at once: the concurrency test."""
    measured = workload.measured or list(workload.items)
    if not measured:
        raise ValueError("the workload has no requests")
    items = tuple(dataclasses.replace(measured[i % len(measured)], index=i, at_s=0.0, warmup=False) for i in range(n))
    return Workload(workload.spec, items, workload.context_tokens)


def settings(path: str | Path | None = None) -> dict[str, Any]:
    """The file's top-level settings (model, profile, endpoints, limits, monthly traffic)."""
    raw = _load_file(path)
    return {k: v for k, v in raw.items() if k != "workloads" and not k.startswith("_")}


__all__ = [
    "WORKLOADS_FILE",
    "Item",
    "Workload",
    "WorkloadSpec",
    "burst",
    "contexts",
    "generate",
    "poisson_arrivals",
    "settings",
    "trimmed",
    "without_deferred",
]
