"""What the default chain costs the client on a cache miss, against a bare call on the same transport.

Every request here is new (a distinct prompt), so each one misses every cache and goes upstream: this is the
chain's worst case, the price an application pays for metrics, cache look-ups and stores, de-duplication,
admission, retries, hedging, the balancer, the breaker and the stream guard on a request that none of them
saves. The figure is the client's CPU time (`time.process_time`, this process only: the simulated service runs
in its own process) per request. The two arms of a comparison take turns in blocks of `--block` requests, in
alternating order (`compare`): on this 2-core VM a bare call's CPU moves by tens of percent over minutes, so arms
measured in rounds of their own a few seconds apart differed by more than the chain costs; blocks a fraction of a
second long see the same machine. Each arm's figure is its mean, the ratio the quotient of the means, with a 95%
confidence interval from the blocks' paired differences. Each arm's figure also says how much of it the garbage
collector took (`CollectorClock`): what a chain keeps alive is walked by every full collection, a cost no profile
attributes to the code that caused it.

`python -m labkit.lessons.overhead --bench` writes `build/bench/overhead.json`: per transport, the bare call's
CPU per request, the default chain's, and their ratio (target: at most 1.10 without the semantic cache, whose
embedding is a separate, reported cost: it is what a semantic lookup needs, not overhead of the chain). The chain
without the semantic cache is compared with the bare call first, alone in the process; then the whole default
chain, with the bare call again.

One process's ratio is not the whole story. Runs of this command a few minutes apart differed by more than each
one's interval (1.06 [1.02, 1.10] and 1.13 [1.11, 1.15] on the same commit): where a process's objects land in
memory, and what the machine does for minutes at a time, move every block of a run alike, and paired blocks cannot
see that. So the target comparison is repeated in `--processes` - 1 further processes, one after the other, each
with a service of its own; the JSON gives every process's ratio, their mean, and a 95% interval over processes
(Student's t), and the target is judged on that mean.

`--without dedup hedge` switches layers off in the measured chains: what the ratio would be without them.

`--layers` adds each layer's own CPU per request, measured over an in-process stub transport that answers at once
(no HTTP, no simulated service): every layer switched on alone over a chain with none, and all of them together.
Over the stub the figures are stable to about a microsecond, where the end-to-end ratio moves by a few percent from
run to run, so they show which layer a change made cheaper. They are a lower bound of what a layer costs over a real
transport (the end-to-end difference is larger: more memory touched, more suspensions per request).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
from openai.types.chat import ChatCompletion

from labkit.assemble import build_chain
from labkit.body import keep_body
from labkit.chain_config import SWITCHES, ChainConfig
from labkit.endpoint import Endpoint
from labkit.lab.services import start_sim
from labkit.request import ChatRequest
from labkit.transports.lean import LeanTransport
from labkit.transports.sdk import OpenAITransport

TARGET_RATIO = 1.10
KINDS = ("lean", "sdk")
#: Student's t, two-sided 95%, by degrees of freedom (processes - 1): the interval over a few processes
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}
_counter = iter(range(10**9))


def _new_request(max_tokens: int) -> ChatRequest:
    """A request nobody asked before: a cache miss for every tier and the semantic cache's new scope row."""
    n = next(_counter)
    return ChatRequest.create(
        "gpt-4o", f"Request {n}: name one use of the number {n * 7919 % 10007}.", max_tokens=max_tokens, temperature=0
    )


class CollectorClock:
    """CPU time spent in the cyclic garbage collector while it is installed (`gc.callbacks`).

    What a chain keeps alive (cached answers, records, windows) is walked by every full collection, and the
    collections run at whatever allocation trips them, so a profile spreads their cost over unrelated code: this
    clock gives it one figure."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._started = 0.0

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.process_time()
        else:
            self.seconds += time.process_time() - self._started

    def __enter__(self) -> CollectorClock:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc_info: object) -> None:
        gc.callbacks.remove(self._callback)


async def cpu_per_request(
    call: Callable[[ChatRequest], Awaitable[Any]], n: int, concurrency: int, max_tokens: int
) -> float:
    """Client CPU seconds per request for `n` new requests sent `concurrency` at a time."""
    return (await cpu_and_collector(call, n, concurrency, max_tokens))[0]


async def cpu_and_collector(
    call: Callable[[ChatRequest], Awaitable[Any]], n: int, concurrency: int, max_tokens: int
) -> tuple[float, float]:
    """`cpu_per_request`, and the part of it the garbage collector took (both in seconds per request)."""
    queue = iter(range(n))

    async def worker() -> None:
        for _ in queue:
            await call(_new_request(max_tokens))

    with CollectorClock() as collector:
        start = time.process_time()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        spent = time.process_time() - start
    return spent / n, collector.seconds / n


@dataclasses.dataclass
class Comparison:
    """Two arms measured in alternating blocks: each arm's mean CPU per request, its collector's share, and the
    ratio of the second arm to the first with a 95% confidence interval."""

    cpu: dict[str, float]
    collector: dict[str, float]
    ratio: float
    ratio_ci95: tuple[float, float]
    blocks: int


def blocks_of(requests: int, block: int) -> int:
    """How many blocks of `block` requests `compare` sends per arm for about `requests` (at least two: one pair)."""
    return max(2, requests // block)


async def compare(
    arms: dict[str, Callable[[ChatRequest], Awaitable[Any]]],
    *,
    requests: int,
    block: int,
    concurrency: int,
    max_tokens: int,
) -> Comparison:
    """`requests` new requests per arm, sent in blocks of `block` that alternate between the two arms.

    The arms swap their order every block (ABBA...), so a machine that drifts, or a neighbour that is busy for a few
    seconds, hurts both alike: the blocks are a fraction of a second, far shorter than this VM's swings. The ratio is
    the arms' means; its interval comes from the blocks' paired differences (second arm minus first, each pair a
    block apart), `mean ± 1.96 standard errors`, over the first arm's mean."""
    first, second = names = list(arms)
    for arm in arms.values():  # warm: connections, imports, the embedder's first call
        await cpu_per_request(arm, 20, concurrency, max_tokens)
    gc.collect()
    spent: dict[str, list[float]] = {name: [] for name in names}
    collected = dict.fromkeys(names, 0.0)
    blocks = blocks_of(requests, block)
    for i in range(blocks):
        for name in names if i % 2 == 0 else names[::-1]:
            value, by_collector = await cpu_and_collector(arms[name], block, concurrency, max_tokens)
            spent[name].append(value)
            collected[name] += by_collector
    mean = {name: statistics.fmean(values) for name, values in spent.items()}
    differences = [b - a for a, b in zip(spent[first], spent[second], strict=True)]
    half_width = 1.96 * statistics.stdev(differences) / len(differences) ** 0.5
    gap = mean[second] - mean[first]
    return Comparison(
        cpu=mean,
        collector={name: total / blocks for name, total in collected.items()},
        ratio=mean[second] / mean[first],
        ratio_ci95=(1 + (gap - half_width) / mean[first], 1 + (gap + half_width) / mean[first]),
        blocks=blocks,
    )


async def measure(
    endpoint: Endpoint,
    *,
    requests: int,
    block: int,
    concurrency: int,
    max_tokens: int,
    without: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Bare transport vs the default chain without the semantic cache (the target), then vs the whole default chain,
    per transport kind.

    The two comparisons run one after the other, each chain alone in the process: a semantic cache kept alive
    beside the measured chain made its collections walk the semantic cache's vectors and entries, and its share of
    the collector's time (`of_which_garbage_collector_ms`) was charged to the chain without it.

    `without` switches layers off in both chains: what the ratio would be without them (an ablation of the cost)."""
    results: dict[str, Any] = {}
    sizes = {"requests": requests, "block": block, "concurrency": concurrency, "max_tokens": max_tokens}
    for kind in KINDS:
        bare = _bare(kind, endpoint)
        config = ChainConfig(lean=kind == "lean").without(*without)
        try:
            target, hedge = await _against_bare(bare, config.without("semantic"), endpoint, sizes)
            full, _ = await _against_bare(bare, config, endpoint, sizes, name="default_chain")
        finally:
            await bare.aclose()
        cpu = {**target.cpu, "default_chain": full.cpu["default_chain"]}
        collector = {**target.collector, "default_chain": full.collector["default_chain"]}
        chain_cost = target.cpu["default_chain_without_semantic"] - target.cpu["bare"]
        semantic_cost = full.cpu["default_chain"] - full.cpu["bare"] - chain_cost
        results[kind] = {
            "cpu_per_request_ms": {k: round(v * 1e3, 4) for k, v in cpu.items()},
            "of_which_garbage_collector_ms": {k: round(v * 1e3, 4) for k, v in collector.items()},
            "ratio_without_semantic": round(target.ratio, 3),
            "ratio_without_semantic_ci95": [round(bound, 3) for bound in target.ratio_ci95],
            # against the bare call measured beside the whole chain
            "ratio_with_semantic": round(full.ratio, 3),
            "semantic_cost_per_miss_ms": round(semantic_cost * 1e3, 3),
            "meets_target": round(target.ratio, 3) <= TARGET_RATIO,
            # a hedge is a second request: how many the measured chain sent, how many answered first, and how many
            # requests it sent without a hedge timer once hedges kept losing (labkit.layers.hedge)
            "hedges": None
            if hedge is None
            else {"sent": hedge.stats.hedged, "won": hedge.stats.hedge_won, "paused": hedge.stats.paused},
        }
    return results


def _bare(kind: str, endpoint: Endpoint) -> LeanTransport | OpenAITransport:
    return LeanTransport(endpoint) if kind == "lean" else OpenAITransport(endpoint)


async def _against_bare(
    bare: Callable[[ChatRequest], Awaitable[Any]],
    config: ChainConfig,
    endpoint: Endpoint,
    sizes: dict[str, int],
    name: str = "default_chain_without_semantic",
) -> tuple[Comparison, Any]:
    """`compare` the bare call with a chain built from `config` (closed afterwards), and the chain's hedge layer."""
    built = build_chain(config, endpoint)
    try:
        return await compare({"bare": bare, name: built.chain}, **sizes), built.hedge  # type: ignore[arg-type]
    finally:
        await built.aclose()


async def target_ratios(
    endpoint: Endpoint, *, requests: int, block: int, concurrency: int, max_tokens: int, without: tuple[str, ...] = ()
) -> dict[str, float]:
    """The target comparison alone (the chain without the semantic cache against the bare call), per transport:
    what each further process of `--processes` measures."""
    sizes = {"requests": requests, "block": block, "concurrency": concurrency, "max_tokens": max_tokens}
    ratios = {}
    for kind in KINDS:
        bare = _bare(kind, endpoint)
        try:
            config = ChainConfig(lean=kind == "lean").without(*without, "semantic")
            ratios[kind] = (await _against_bare(bare, config, endpoint, sizes))[0].ratio
        finally:
            await bare.aclose()
    return ratios


def across_processes(ratios: list[float]) -> dict[str, Any]:
    """Every process's ratio, their mean, and a 95% interval over processes (Student's t; none for one process)."""
    mean = statistics.fmean(ratios)
    out: dict[str, Any] = {"by_process": [round(r, 3) for r in ratios], "mean": round(mean, 3), "ci95": None}
    if len(ratios) > 1:
        half = T_975.get(len(ratios) - 1, 1.96) * statistics.stdev(ratios) / len(ratios) ** 0.5
        out["ci95"] = [round(mean - half, 3), round(mean + half, 3)]
    return out


#: The layers `layer_costs` measures: every switch but the semantic cache (its embedding is reported apart) and the
#: transport choices (they are not layers).
MEASURED_LAYERS = tuple(s for s in SWITCHES if s not in ("semantic", "pooling", "lean"))

_STUB_BODY = orjson.dumps(
    {
        "id": "chatcmpl-stub",
        "object": "chat.completion",
        "created": 0,
        "model": "gpt-4o",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "Counting."}}],
        "usage": {"prompt_tokens": 20, "completion_tokens": 2, "total_tokens": 22},
    }
)
_STUB_ANSWER = ChatCompletion.model_validate_json(_STUB_BODY)


async def stub_transport(request: ChatRequest) -> ChatCompletion:
    """An upstream that answers at once (after one suspension, as any I/O has): only the layers' CPU is left. Like
    a real transport it notes the body it "parsed" (`labkit.body`), so a cache stores it without encoding."""
    await asyncio.sleep(0)
    answer = _STUB_ANSWER.model_copy()
    keep_body(answer, _STUB_BODY)
    return answer


async def layer_costs(*, requests: int, rounds: int, concurrency: int, max_tokens: int) -> dict[str, Any]:
    """Each layer's CPU per request (µs) over `stub_transport`: alone over a chain of none, and all together.

    Each chain is built afresh for its turn and closed after it: chains kept alive side by side would each hold
    their cached answers, and the later turns would pay for the garbage collector walking all of them."""
    none = ChainConfig().without(*MEASURED_LAYERS, "semantic")
    configs = {"none": none, **{name: none.replace(**{name: True}) for name in MEASURED_LAYERS}}
    configs["all"] = ChainConfig().without("semantic")
    best: dict[str, float] = {}
    for _ in range(rounds):
        for name, config in configs.items():
            built = build_chain(config, stub_transport)
            try:
                await cpu_per_request(built.chain, 50, concurrency, max_tokens)
                value = await cpu_per_request(built.chain, requests, concurrency, max_tokens)
            finally:
                await built.aclose()
            best[name] = min(best.get(name, value), value)
            gc.collect()
    base = best["none"]
    return {
        "chain_of_none_us": round(base * 1e6, 2),
        "alone_over_none_us": {name: round((best[name] - base) * 1e6, 2) for name in MEASURED_LAYERS},
        "all_over_none_us": round((best["all"] - base) * 1e6, 2),
    }


async def _on_a_service(args: argparse.Namespace, measurement: Callable[..., Awaitable[Any]]) -> Any:
    """`measurement` (`measure`, `target_ratios`) at the command's sizes, against a simulated service of its own."""
    with start_sim("fast", seed=0) as sim:
        sim.set_limits(rpm=10**7, tpm=10**10)  # no pacing: this measures CPU, not waiting
        return await measurement(
            sim.endpoint,
            requests=args.requests,
            block=args.block,
            concurrency=args.concurrency,
            max_tokens=args.max_tokens,
            without=tuple(args.without),
        )


async def _bench(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = await _on_a_service(args, measure)
    if args.layers:
        results["layers_over_stub"] = await layer_costs(
            requests=args.requests * 2, rounds=args.rounds, concurrency=args.concurrency, max_tokens=args.max_tokens
        )
    return {
        "benchmark": "overhead",
        "what": "client CPU per cache-missing request: the default chain against a bare call on the same transport",
        "target_ratio": TARGET_RATIO,
        "requests_per_arm": blocks_of(args.requests, args.block) * args.block,
        "block": args.block,
        "concurrency": args.concurrency,
        "processes": args.processes,
        "switched_off": list(args.without),
        "machine": {"python": platform.python_version(), "processor": platform.machine()},
        **results,
    }


def _in_another_process(args: argparse.Namespace) -> dict[str, float]:
    """`target_ratios` in a fresh Python process with a service of its own (`--target-only`), run to its end."""
    with tempfile.TemporaryDirectory(prefix="labkit-overhead-") as folder:
        out = Path(folder) / "ratios.json"
        sizes = ["--requests", str(args.requests), "--block", str(args.block), "--concurrency", str(args.concurrency)]
        command = [sys.executable, "-m", "labkit.lessons.overhead", "--target-only", *sizes,
                   "--max-tokens", str(args.max_tokens), "--out", str(out)]  # fmt: skip
        if args.without:
            command += ["--without", *args.without]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        ratios: dict[str, float] = json.loads(out.read_text(encoding="utf-8"))
        return ratios


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m labkit.lessons.overhead", description=__doc__.splitlines()[0])
    parser.add_argument("--bench", action="store_true", help="run the benchmark and write its JSON")
    parser.add_argument("--requests", type=int, default=3000, help="requests per arm and comparison")
    parser.add_argument("--block", type=int, default=50, help="requests per block; the arms alternate every block")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--layers", action="store_true", help="also each layer's CPU over a stub transport")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of --layers; the best of each chain counts")
    parser.add_argument(
        "--without", nargs="+", default=[], choices=MEASURED_LAYERS, metavar="SWITCH",
        help=f"switch these layers off in the measured chains (an ablation): {', '.join(MEASURED_LAYERS)}",
    )  # fmt: skip
    parser.add_argument(
        "--processes", type=int, default=4,
        help="processes that measure the target ratio, one after the other (this one included); judged on their mean",
    )  # fmt: skip
    parser.add_argument("--target-only", action="store_true", help="only the target ratio per transport (what each "
                        "further process of --processes runs)")  # fmt: skip
    parser.add_argument("--out", default="build/bench/overhead.json")
    args = parser.parse_args(argv)
    if args.processes < 1:
        parser.error("--processes must be at least 1")
    if not (args.bench or args.target_only):
        parser.error("nothing to do: pass --bench")
    if args.target_only:
        payload: Any = asyncio.run(_on_a_service(args, target_ratios))
    else:
        payload = asyncio.run(_bench(args))
        further = [_in_another_process(args) for _ in range(args.processes - 1)]  # one after the other, not at once
        for kind in KINDS:
            spread = across_processes([payload[kind]["ratio_without_semantic"], *(r[kind] for r in further)])
            payload[kind]["ratio_without_semantic_across_processes"] = spread
            payload[kind]["meets_target"] = spread["mean"] <= TARGET_RATIO
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
