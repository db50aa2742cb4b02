"""The caching workload of lessons 06 and 07 (popularity skew, paraphrases, hard negatives) and its scored runner.

Exact caching only pays off on repeats worded identically; people ask the same thing in other words, which is
what a semantic cache is for, and they also ask *different* things in near-identical words, which is where a
semantic cache does harm. The workload draws question groups from `data/paraphrases.jsonl` with Zipf
popularity and words each request as the usual question, a paraphrase (`paraphrase_share`) or a hard negative
(`hard_negative_share`); every request carries its meaning, so a semantic hit can be scored right or wrong.
Parameters in `data/cache_workload.json`. Seeded: the same spec gives the same requests everywhere.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from labkit.cache.evaluation import load_pairs
from labkit.chain import Handler
from labkit.data import data_path
from labkit.lab.workload import SpecFile, zipf_choices
from labkit.pricing import cost
from labkit.request import ChatRequest


@dataclasses.dataclass(frozen=True)
class CacheWorkloadSpec(SpecFile):
    """The caching lesson's workload (defaults in `data/cache_workload.json`)."""

    DATA_FILE: ClassVar[str] = "cache_workload.json"
    n_requests: int = 300
    exponent: float = 1.1
    paraphrase_share: float = 0.3
    hard_negative_share: float = 0.1
    concurrency: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_requests < 1 or self.concurrency < 1:
            raise ValueError("n_requests and concurrency must be at least 1")
        if self.exponent < 0:
            raise ValueError("exponent must not be negative")
        for name in ("paraphrase_share", "hard_negative_share"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be between 0 and 1")
        if self.paraphrase_share + self.hard_negative_share > 1:
            raise ValueError("paraphrase_share + hard_negative_share must not exceed 1")


@dataclasses.dataclass(frozen=True)
class Question:
    text: str
    meaning: str  # group id, or group id + "~" + the hard negative's index
    wording: str  # "usual", "paraphrase" or "hard_negative"


@dataclasses.dataclass(frozen=True)
class Group:
    id: str
    usual: str
    paraphrases: tuple[str, ...]
    negatives: tuple[str, ...]


def load_groups() -> list[Group]:
    """The question groups of the labelled pairs: usual wording, paraphrases, hard negatives."""
    usual: dict[str, str] = {}
    paraphrases: dict[str, list[str]] = {}
    negatives: dict[str, list[str]] = {}
    for pair in load_pairs(data_path("paraphrases.jsonl")):  # the lesson's question groups
        group = pair["group"]
        if pair["label"] == 1:
            usual.setdefault(group, pair["a"])
            if pair["a"] == usual[group] and pair["b"] not in paraphrases.setdefault(group, []):
                paraphrases[group].append(pair["b"])
        elif pair["a"] == usual.get(group) and pair["b"] not in negatives.setdefault(group, []):
            negatives[group].append(pair["b"])
    return [Group(g, usual[g], tuple(paraphrases.get(g, ())), tuple(negatives.get(g, ()))) for g in sorted(usual)]


def cache_workload(spec: CacheWorkloadSpec, groups: Sequence[Group] | None = None) -> list[Question]:
    """The seeded sequence of questions."""
    groups = list(groups or load_groups())
    rng = random.Random(spec.seed)
    rng.shuffle(groups)  # which questions are popular is random too, but seeded
    questions = []
    for group in zipf_choices(rng, groups, spec.exponent, spec.n_requests):
        roll = rng.random()
        if roll < spec.hard_negative_share and group.negatives:
            i = rng.randrange(len(group.negatives))
            questions.append(Question(group.negatives[i], f"{group.id}~{i}", "hard_negative"))
        elif roll < spec.hard_negative_share + spec.paraphrase_share and group.paraphrases:
            questions.append(Question(rng.choice(group.paraphrases), group.id, "paraphrase"))
        else:
            questions.append(Question(group.usual, group.id, "usual"))
    return questions


@dataclasses.dataclass
class Served:
    index: int
    question: Question
    upstream: bool
    semantic_hit: bool
    wrong: bool
    latency_s: float
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float


async def run_workload(
    chain: Handler,
    questions: Sequence[Question],
    *,
    model: str,
    params: dict[str, Any],
    concurrency: int = 8,
    upstream_counter: Callable[[], int],
    semantic_hits: list[tuple[str, str, float]] | None = None,
) -> list[Served]:
    """Send the questions through `chain`, `concurrency` at a time, and score each answer.

    `upstream_counter` returns how many requests have gone past the caches so far (a counting layer);
    `semantic_hits` is the list a `SemanticCache(on_hit=...)` appends (query, stored text, score) to.
    """
    meaning_of = {q.text: q.meaning for q in questions}
    semaphore = asyncio.Semaphore(concurrency)
    served: list[Served | None] = [None] * len(questions)
    claimed: set[int] = set()  # semantic hits already attributed (concurrent requests may share a wording)

    async def one(i: int, question: Question) -> None:
        async with semaphore:
            before = upstream_counter()
            hits_before = len(semantic_hits) if semantic_hits is not None else 0
            started = time.perf_counter()
            answer = await chain(ChatRequest.create(model, question.text, **params))
            latency = time.perf_counter() - started
            went_up = upstream_counter() > before
            semantic = False
            wrong = False
            if semantic_hits is not None:
                for k in range(hits_before, len(semantic_hits)):
                    query, stored, _score = semantic_hits[k]
                    if query == question.text and k not in claimed:  # a hit belongs to one request
                        claimed.add(k)
                        semantic = True
                        wrong = meaning_of.get(stored, "?") != question.meaning
                        break
            usage = answer.usage
            prompt, completion = (usage.prompt_tokens, usage.completion_tokens) if usage else (0, 0)
            served[i] = Served(
                i, question, went_up, semantic, wrong, latency, prompt, completion, cost(model, prompt, completion) or 0
            )

    await asyncio.gather(*(one(i, q) for i, q in enumerate(questions)))
    return [s for s in served if s is not None]


__all__ = ["CacheWorkloadSpec", "Group", "Question", "Served", "cache_workload", "load_groups", "run_workload"]
