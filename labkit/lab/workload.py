"""Seeded workloads with a known duplicate rate: Zipf popularity over distinct prompts, in concurrent bursts.

Real traffic repeats itself unevenly: a few questions are asked very often, most rarely. A Zipf law models
that: the k-th most popular of `n_distinct` prompts is drawn with weight `1 / k**exponent` (exponent 0 is
uniform; larger exponents concentrate traffic on the head). Requests arrive in bursts of `burst_size` at the
same instant, `burst_gap_s` apart, so identical requests are in flight together (what coalescing needs) as
well as repeated later (what a cache needs).

A distinct request is one prompt of `data/prompts.jsonl` asked for one audience (a system message), so
40 prompts and 10 audiences give up to 400 distinct requests: enough for low duplicate rates too. Everything
is drawn from one `random.Random(seed)`: the same spec gives the same workload on every machine.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Self, TypeVar

from labkit.data import data_path, load_prompts

T = TypeVar("T")

#: Who an answer is for: the system message that, with the prompt, makes a distinct request.
AUDIENCES: tuple[str, ...] = (
    "a new developer",
    "a product manager",
    "a student",
    "an executive",
    "a data scientist",
    "a site reliability engineer",
    "a designer",
    "a teacher",
    "a security reviewer",
    "a curious child",
)


class SpecFile:
    """Parameters whose defaults and notes live in a JSON file of `data/` (`DATA_FILE`); for frozen dataclasses."""

    DATA_FILE: ClassVar[str]

    @classmethod
    def load(cls, path: str | Path | None = None, **overrides: Any) -> Self:
        """The spec in the data file (or `path`), with keyword overrides (None leaves a value as it is)."""
        raw = json.loads(Path(path or data_path(cls.DATA_FILE)).read_text(encoding="utf-8"))
        names = {field.name for field in dataclasses.fields(cls)}  # type: ignore[arg-type]
        values = {k: v for k, v in raw.items() if k in names}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def replace(self, **changes: Any) -> Self:
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


@dataclasses.dataclass(frozen=True)
class ZipfSpec(SpecFile):
    """The parameters of a Zipf workload (defaults and notes in `data/workload_zipf.json`)."""

    DATA_FILE: ClassVar[str] = "workload_zipf.json"

    n_requests: int = 200
    n_distinct: int = 400
    exponent: float = 1.0
    burst_size: int = 20
    burst_gap_s: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_requests < 1 or self.n_distinct < 1 or self.burst_size < 1:
            raise ValueError("n_requests, n_distinct and burst_size must be at least 1")
        if self.exponent < 0 or self.burst_gap_s < 0:
            raise ValueError("exponent and burst_gap_s must not be negative")


def zipf_weights(n_distinct: int, exponent: float) -> list[float]:
    """Probability of each popularity rank (rank 1 first)."""
    raw = [1.0 / (rank**exponent) for rank in range(1, n_distinct + 1)]
    total = sum(raw)
    return [w / total for w in raw]


def zipf_choices(rng: random.Random, ranked: Sequence[T], exponent: float, k: int) -> list[T]:
    """`k` draws from `ranked` (most popular first) with Zipf popularity: the one generator every lab workload
    uses (the de-dup, caching and capstone lessons), so "exponent 1.1" means the same skew in all of them."""
    return rng.choices(ranked, weights=zipf_weights(len(ranked), exponent), k=k)


def expected_duplicate_share(spec: ZipfSpec) -> float:
    """The expected share of requests that repeat an earlier one: 1 - E[distinct] / n_requests."""
    n = spec.n_requests
    distinct = sum(1.0 - (1.0 - p) ** n for p in zipf_weights(spec.n_distinct, spec.exponent))
    return 1.0 - distinct / n


@dataclasses.dataclass(frozen=True)
class Arrival:
    """One request of a workload: when it arrives (s after the start), which prompt, which burst."""

    index: int
    at_s: float
    prompt_id: int
    burst: int


@dataclasses.dataclass(frozen=True)
class Workload:
    """The drawn requests: `items[prompt_id]` is the (audience, prompt) of popularity rank `prompt_id + 1`."""

    spec: ZipfSpec
    items: tuple[tuple[str, str], ...]
    arrivals: tuple[Arrival, ...]

    def __len__(self) -> int:
        return len(self.arrivals)

    @property
    def distinct(self) -> int:
        return len({a.prompt_id for a in self.arrivals})

    @property
    def duplicate_share(self) -> float:
        """The share of requests that repeat an earlier one (what an ideal exact cache could save)."""
        return 1.0 - self.distinct / len(self.arrivals)

    @property
    def in_burst_duplicate_share(self) -> float:
        """The share of requests that repeat another of the same burst (what coalescing alone can save)."""
        distinct_per_burst = len({(a.burst, a.prompt_id) for a in self.arrivals})
        return 1.0 - distinct_per_burst / len(self.arrivals)

    def prompt(self, arrival: Arrival) -> str:
        return self.items[arrival.prompt_id][1]

    def messages(self, arrival: Arrival) -> list[dict[str, str]]:
        """The chat messages of one request: the audience as a system message, then the prompt."""
        audience, prompt = self.items[arrival.prompt_id]
        return [
            {"role": "system", "content": f"You are a concise assistant. Answer for {audience}."},
            {"role": "user", "content": prompt},
        ]

    def describe(self) -> dict[str, Any]:
        return {
            **dataclasses.asdict(self.spec),
            "requests": len(self),
            "distinct": self.distinct,
            "duplicate_share": self.duplicate_share,
            "in_burst_duplicate_share": self.in_burst_duplicate_share,
            "expected_duplicate_share": expected_duplicate_share(self.spec),
            "bursts": (len(self) + self.spec.burst_size - 1) // self.spec.burst_size,
        }


def zipf_workload(spec: ZipfSpec, prompts: Sequence[str] | None = None) -> Workload:
    """Draw a workload: popularity ranks go to (audience, prompt) pairs at random, then requests by rank."""
    pool = [
        (audience, prompt) for prompt in (prompts if prompts is not None else load_prompts()) for audience in AUDIENCES
    ]
    if spec.n_distinct > len(pool):
        raise ValueError(f"n_distinct={spec.n_distinct} but only {len(pool)} distinct requests can be made")
    rng = random.Random(spec.seed)
    chosen = rng.sample(pool, spec.n_distinct)  # chosen[rank - 1] is the request of that popularity rank
    ranks = zipf_choices(rng, range(spec.n_distinct), spec.exponent, spec.n_requests)
    arrivals = tuple(
        Arrival(index=i, at_s=(i // spec.burst_size) * spec.burst_gap_s, prompt_id=rank, burst=i // spec.burst_size)
        for i, rank in enumerate(ranks)
    )
    return Workload(spec=spec, items=tuple(chosen), arrivals=arrivals)


@dataclasses.dataclass
class Outcome:
    """What one replayed request did, as its caller saw it."""

    arrival: Arrival
    latency_s: float
    ok: bool
    error: str | None = None
    result: Any = None


async def replay(
    workload: Workload, send: Callable[[Arrival], Awaitable[Any]], *, keep_results: bool = False
) -> list[Outcome]:
    """Send every request at its arrival time (bursts start together); errors are recorded, not raised."""
    loop = asyncio.get_running_loop()
    start = loop.time()

    async def one(arrival: Arrival) -> Outcome:
        delay = start + arrival.at_s - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        t0 = time.perf_counter()
        try:
            result = await send(arrival)
        except Exception as error:  # recorded: a replay measures, it does not stop at the first failure
            return Outcome(arrival, time.perf_counter() - t0, False, f"{type(error).__name__}: {error}")
        return Outcome(arrival, time.perf_counter() - t0, True, result=result if keep_results else None)

    return list(await asyncio.gather(*(one(a) for a in workload.arrivals)))


class SimCallCounter:
    """Chat requests a simulated service received, from its `/admin/stats` (not counting the stats calls)."""

    def __init__(self, sim: Any) -> None:
        self.sim = sim
        first = sim.stats()["requests_total"]
        self._admin_cost = sim.stats()["requests_total"] - first  # 1 when the service counts its own stats calls
        self._start = self._total()

    def _total(self) -> int:
        return int(self.sim.stats()["requests_total"])

    def mark(self) -> None:
        self._start = self._total()

    def since_mark(self) -> int:
        return self._total() - self._start - self._admin_cost

    @staticmethod
    def from_stats(stats: Mapping[str, Any]) -> int:
        return int(stats["requests_total"])


__all__ = [
    "AUDIENCES",
    "Arrival",
    "Outcome",
    "SimCallCounter",
    "SpecFile",
    "Workload",
    "ZipfSpec",
    "expected_duplicate_share",
    "replay",
    "zipf_choices",
    "zipf_weights",
    "zipf_workload",
]
