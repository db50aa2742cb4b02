"""Lesson 02's one-call helpers: the key table, a burst harness, the stream and cancellation demonstrations,
the workload runs with progress, the cross-process rounds and the summary table.

They hold the plumbing (counting, table building, result dicts) so the notebook's cells stay about the key and
the single-flight map. Upstream calls are counted where the notebook can trust them most: by the simulated
service (`SimCallCounter`) when the lab started it, else at the bottom of the client's chain.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from labkit.chain import Chain, Handler, Layer
from labkit.dedup.policy import SamplingPolicy, key_of
from labkit.dedup.singleflight import SingleFlight
from labkit.lab.workload import SimCallCounter, Workload
from labkit.lessons.dedup.caches import ExactCache, PromptHashCache
from labkit.lessons.dedup.experiment import LABELS, measure
from labkit.request import ChatRequest
from labkit.stream import ChunkStream

__all__ = [
    "burst",
    "cross_process_rounds",
    "errors_reach_every_waiter",
    "fan_out",
    "key_counts",
    "key_table",
    "leave_early",
    "measure_configs",
    "other_model",
    "sampling_table",
    "summary_rows",
    "workload_table",
]


async def other_model(transport: Any, model: str) -> str:
    """A chat model the endpoint serves besides `model` (for the "another model" row of the key table); `model`
    itself when the endpoint serves no other (a one-model server such as llama.cpp's)."""
    client = transport.client
    served = [m.id for m in (await client.models.list()).data]
    # an alias answers under its snapshot's name: exclude that one too, so the row's answer shows the mix-up
    probe = await client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=1
    )
    chat = [m for m in served if m not in (model, probe.model) and "embedding" not in m]
    return next((m for m in chat if not m.startswith(model)), chat[0] if chat else model)


async def key_table(transport: Handler, variants: Mapping[str, tuple[ChatRequest, bool]]) -> pd.DataFrame:
    """Send each variant through the guide's `md5(prompt)` cache and through an exact cache on labkit's key.

    `variants` maps a name to (request, needs its own answer); the first variant fills both caches. A row is
    "wrong" when a request that needs its own answer was served from the cache."""
    naive, exact = PromptHashCache(), ExactCache(SamplingPolicy.skip())
    naive_chain, exact_chain = Chain(transport, [naive]), Chain(transport, [exact])
    rows = []
    for name, (request, needs_own) in variants.items():
        naive_hits, exact_hits = naive.stats.hits, exact.stats.hits
        got = await naive_chain(request)
        await exact_chain(request)
        rows.append(
            {
                "request": name,
                "needs its own answer": needs_own,
                "md5(prompt)": PromptHashCache.key(request)[:8],
                "labkit key": key_of(request)[:8],
                "md5: from cache": naive.stats.hits > naive_hits,
                "md5: answer (model, tokens)": f"{got.model}, {got.usage.completion_tokens}",  # type: ignore[union-attr]
                "labkit: from cache": exact.stats.hits > exact_hits,
            }
        )
    return pd.DataFrame(rows)


def key_counts(table: pd.DataFrame) -> dict[str, int]:
    """How many wrong answers each key served, and how many volatile-only variants labkit's key still shared."""
    own = table["needs its own answer"]
    return {
        "variants": len(table),
        "needs_own_answer": int(own.sum()),
        "naive_wrong": int((own & table["md5: from cache"]).sum()),
        "labkit_wrong": int((own & table["labkit: from cache"]).sum()),
        "volatile_shared": int((~own & table["labkit: from cache"]).sum()),
    }


class _Counted:
    """A transport that counts the calls it forwards (the client's own count of upstream calls)."""

    def __init__(self, transport: Handler) -> None:
        self.transport = transport
        self.calls = 0

    async def __call__(self, request: ChatRequest) -> Any:
        self.calls += 1
        return await self.transport(request)


async def burst(
    transport: Handler, layer: Layer | None, request: ChatRequest, n: int, server: SimCallCounter | None = None
) -> dict[str, Any]:
    """Send `n` copies of `request` at once through `layer` (None: no de-dup); count what went upstream.

    Each copy carries its own metadata (a caller id), which no key looks at."""
    counted = _Counted(transport)
    chain = Chain(counted, [layer] if layer is not None else [])
    if server is not None:
        server.mark()
    started = time.perf_counter()
    answers = await asyncio.gather(*(chain(request.replace(metadata={"caller": i})) for i in range(n)))
    wall = time.perf_counter() - started
    return {
        "requests": n,
        "upstream_calls": server.since_mark() if server is not None else counted.calls,
        "client_upstream_calls": counted.calls,
        "distinct_answers": len({a.choices[0].message.content for a in answers}),  # type: ignore[union-attr]
        "wall_s": wall,
    }


async def sampling_table(transport: Handler, sampled: ChatRequest, n: int = 5) -> list[dict[str, Any]]:
    """`n` identical sampled requests at once under each `SamplingPolicy`: upstream calls and distinct answers."""
    rows = []
    for name, policy in {
        "skip": SamplingPolicy.skip(),
        "share": SamplingPolicy.share(),
        "keep(2)": SamplingPolicy.keep(2),
    }.items():
        flight = SingleFlight(policy)
        answers = await asyncio.gather(*(Chain(transport, [flight])(sampled) for _ in range(n)))
        rows.append(
            {
                "policy": name,
                "upstream calls": flight.stats.upstream_calls + flight.stats.bypassed,
                "distinct answers": len({a.choices[0].message.content for a in answers}),  # type: ignore[union-attr]
            }
        )
    return rows


async def fan_out(
    transport: Handler, request: ChatRequest, readers: int, server: SimCallCounter | None = None
) -> dict[str, Any]:
    """One streamed request read by `readers` callers through one `SingleFlight`: the first starts it, the
    others join once it has read its first chunks (late joiners get the missed chunks replayed)."""
    flight = SingleFlight()
    chain = Chain(transport, [flight])
    first_chunks = asyncio.Event()
    joined_late: list[bool] = []
    if server is not None:
        server.mark()

    async def read(i: int) -> tuple[int, str]:
        if i:
            await first_chunks.wait()
            joined_late.append(True)
        stream = await chain(request.replace(metadata={"reader": i}))
        assert isinstance(stream, ChunkStream)
        count, parts = 0, []
        async with stream:
            async for chunk in stream:
                count += 1
                parts.extend(c.delta.content or "" for c in chunk.choices)
                if count == 2:
                    first_chunks.set()
        first_chunks.set()
        return count, "".join(parts)

    got = await asyncio.gather(*(read(i) for i in range(readers)))
    return {
        "readers": readers,
        "upstream_calls": server.since_mark() if server is not None else flight.stats.upstream_calls,
        "chunks": [c for c, _ in got],
        "same_text": len({t for _, t in got}) == 1,
        "late_joiners": len(joined_late),
    }


async def errors_reach_every_waiter(sim: Any, transport: Handler, request: ChatRequest, n: int) -> dict[str, Any]:
    """Every call fails (the service's fault injection) while `n` callers share one flight; then it recovers."""
    flight = SingleFlight()
    chain = Chain(transport, [flight])
    await sim.aset_faults({"error_rates": {"500": 1.0}})
    try:
        outcomes = await asyncio.gather(*(chain(request) for _ in range(n)), return_exceptions=True)
    finally:
        await sim.aset_faults({"error_rates": {"500": 0.0}})
    burst_calls = flight.stats.upstream_calls
    retry = await chain(request)
    return {
        "waiters": n,
        "waiters_with_error": sum(isinstance(o, Exception) for o in outcomes),
        "error_types": sorted({type(o).__name__ for o in outcomes if isinstance(o, Exception)}),
        "upstream_calls_for_the_burst": burst_calls,
        "retry_ok": bool(retry.choices[0].message.content),  # type: ignore[union-attr]
        "upstream_calls_after_retry": flight.stats.upstream_calls,
    }


async def leave_early(transport: Handler, request: ChatRequest) -> dict[str, Any]:
    """Three readers share one stream and two leave early; then every reader leaves. Count the cancellations."""
    flight = SingleFlight()
    chain = Chain(transport, [flight])

    async def read(n_chunks: int | None = None) -> int:
        stream = await chain(request)
        assert isinstance(stream, ChunkStream)
        got = 0
        async with stream:
            async for _ in stream:
                got += 1
                if n_chunks is not None and got >= n_chunks:
                    break  # closes this caller's stream early
        return got

    full, early1, early2 = await asyncio.gather(read(), read(3), read(5))
    while_one_stayed = flight.stats.upstream_cancelled
    await asyncio.gather(read(2), read(2))  # everybody leaves: now the upstream call is cancelled
    await asyncio.sleep(0.05)
    return {
        "full_reader_chunks": full,
        "early_readers_chunks": [early1, early2],
        "upstream_cancelled_while_one_reader_stayed": while_one_stayed,
        "upstream_cancelled_when_all_left": flight.stats.upstream_cancelled - while_one_stayed,
        "upstream_calls": flight.stats.upstream_calls,
    }


async def measure_configs(
    transport: Handler,
    workload: Workload,
    *,
    model: str,
    params: dict[str, Any],
    sim: Any = None,
    interactive: bool = True,
    configs: Sequence[str] = ("none", "cache", "coalesce", "both"),
) -> list[dict[str, Any]]:
    """Replay `workload` through each config's chain (`experiment.measure`), showing progress per config."""
    from IPython.display import display

    bar = None
    if interactive:
        import ipywidgets as w

        bar = w.IntProgress(value=0, min=0, max=len(configs), description="configs")
        display(bar)
    runs = []
    for config in configs:
        if bar is not None:
            bar.description = LABELS[config][:20]
        runs.append(await measure(transport, workload, config, model=model, params=params, sim=sim))
        if bar is not None:
            bar.value += 1
        else:
            print(f"{LABELS[config]}: {runs[-1]['upstream_calls']} upstream calls", flush=True)
    return runs


async def cross_process_rounds(pool: Any, requests_per_worker: int, server: SimCallCounter | None) -> list[dict]:
    """One round per mode (none, local, redis) over the worker processes: what went upstream, what came back.

    Each round asks a new question, so the previous round's stored result cannot answer it."""
    rounds = []
    for mode, label in [("none", "no de-dup"), ("local", "single-flight per process"), ("redis", "through Redis")]:
        if server is not None:
            server.mark()
        reports = await pool.run(mode, f"Round '{mode}': what does a load balancer do?", requests_per_worker)
        workers_upstream = sum(r["upstream_calls"] for r in reports)
        latencies = sorted(x for r in reports for x in r["latencies_s"])
        rounds.append(
            {
                "mode": mode,
                "label": label,
                "requests": sum(r["requests"] for r in reports),
                "errors": sum(len(r["errors"]) for r in reports),
                "upstream_calls": server.since_mark() if server is not None else workers_upstream,
                "workers_reported_upstream": workers_upstream,
                "distinct_answers": len({a for r in reports for a in r["answers"]}),
                "latency_p50_s": latencies[len(latencies) // 2] if latencies else None,
            }
        )
    return rounds


def summary_rows(measured: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The run's headline numbers, one row per measurement (for `viz.table`), from what the sections put in
    `measured` (`fingerprint`, `bursts`, `workload`, `redis`); a section that has not run adds no row."""
    keys = measured.get("fingerprint", {})
    rows: list[dict[str, Any]] = []
    if keys:
        rows += [
            {
                "measurement": "md5(prompt) key: wrong answers",
                "value": keys["naive_wrong"],
                "of": keys["needs_own_answer"],
            },
            {"measurement": "labkit key: wrong answers", "value": keys["labkit_wrong"], "of": keys["needs_own_answer"]},
        ]
    for arm, b in measured.get("bursts", {}).items():
        rows.append({"measurement": f"burst, {arm}: upstream calls", "value": b["upstream_calls"], "of": b["requests"]})
    for run in measured.get("workload", {}).get("runs", []):
        rows.append(
            {
                "measurement": f"workload, {run['label']}: upstream calls",
                "value": run["upstream_calls"],
                "of": run["requests"],
            }
        )
    for r in measured.get("redis", {}).get("rounds", []):
        rows.append(
            {"measurement": f"workers, {r['label']}: upstream calls", "value": r["upstream_calls"], "of": r["requests"]}
        )
    return rows


def workload_table(runs: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """The workload runs side by side: what went upstream, what it cost, what callers waited."""
    columns = ("upstream_calls", "upstream_tokens", "upstream_cost_usd", "latency_p50_s", "latency_mean_s")
    frame = pd.DataFrame(
        [{"chain": r["label"], **{c: r[c] for c in (*columns, "coalesced", "cache_hits")}} for r in runs]
    )
    return frame.set_index("chain").round(4)
