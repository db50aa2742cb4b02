"""Lessons 06 (cache tiers) and 07 (semantic cache): the one-call helpers behind their cells.

They hold the plumbing (timing loops, the outage driver, workload runs with progress, charts, tables and the
rows of the results JSON) so that the notebooks' cells stay about the cache key, the tier lookup and the semantic
decision. Nothing here decides anything the lessons teach: the layers under test are passed in.
"""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go

from labkit.cache.base import Tier
from labkit.cache.evaluation import embed_texts, load_pairs, wilson
from labkit.cache.layer import CacheLayer
from labkit.cache.memory import MemoryTier
from labkit.chain import Chain, Handler, Layer
from labkit.lessons.cache.workload import CacheWorkloadSpec, Question, cache_workload, run_workload
from labkit.request import ChatRequest

__all__ = [
    "CachedEmbedder",
    "Counting",
    "DelayProxy",
    "Progress",
    "cached_embedder",
    "ceilings",
    "confusion",
    "heldout_pairs",
    "loop_lag",
    "outage_chart",
    "per_kind_rows",
    "redis_outage",
    "semantic_summary",
    "threshold_sweep",
    "tier_latency",
    "tiers_summary",
    "workload_run",
]


class Progress:
    """A bar updated by trait assignment (safe from tasks); without a display, one line when it finishes."""

    def __init__(self, total: int, description: str, interactive: bool) -> None:
        self.total, self.description, self.done = total, description, 0
        self._started = time.perf_counter()
        self._bar: Any = None
        if interactive:
            import ipywidgets as widgets
            from IPython.display import display

            self._bar = widgets.IntProgress(value=0, min=0, max=max(1, total), description=description[:20])
            display(self._bar)

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.value = self.done

    def finish(self) -> None:
        elapsed = time.perf_counter() - self._started
        if self._bar is not None:
            self._bar.bar_style = "success"
        else:
            print(f"{self.description}: {self.done} of {self.total} done in {elapsed:.1f} s")


class Counting:
    """A layer just above the transport: what gets past the caches, i.e. what costs money."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, request: ChatRequest, call_next: Handler) -> Any:
        self.calls += 1
        return await call_next(request)


# -- 06 · the common advice ----------------------------------------------------------------------------------


async def loop_lag(get: Callable[[str], Awaitable[Any]], keys: Sequence[str]) -> dict[str, float]:
    """Run `get` on every key at once while a ticker sleeping 1 ms measures how late the event loop wakes it:
    a synchronous client holds the loop for each round trip, an asyncio one does not."""
    await asyncio.gather(*(get(k) for k in keys[:20]))  # open connections before measuring
    loop = asyncio.get_running_loop()
    lags: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        while not done.is_set():
            t = loop.time()
            await asyncio.sleep(0.001)
            lags.append((loop.time() - t - 0.001) * 1000)

    tick = asyncio.create_task(ticker())
    await asyncio.sleep(0.01)
    started = time.perf_counter()
    await asyncio.gather(*(get(k) for k in keys))
    wall = time.perf_counter() - started
    done.set()
    await tick
    return {
        "lookups": len(keys),
        "wall_ms": 1000 * wall,
        "loop_lag_max_ms": max(lags),
        "loop_lag_p50_ms": statistics.median(lags),
    }


# -- 06 · hit latency per tier -------------------------------------------------------------------------------


async def _time_calls(chain: Handler, requests: Sequence[ChatRequest]) -> np.ndarray:
    out = []
    for request in requests:
        started = time.perf_counter()
        await chain(request)
        out.append(time.perf_counter() - started)
    return np.array(out) * 1e6


async def tier_latency(
    transport: Handler,
    tiers: Mapping[str, Tier],
    stacks: Mapping[str, Sequence[Tier]],
    *,
    model: str,
    max_tokens: int,
    warm_keys: int,
    hits: int,
    misses: int,
    interactive: bool,
) -> dict[str, list[dict[str, Any]]]:
    """Hit latency through the chain (µs, from `await chain(request)` to the answer) for each tier alone, for
    each stack of tiers (first touch in this process, then repeated hits), and for a miss (a real call).

    The warm answers are fetched once and written to every tier, so the tiers serve the same entries."""
    params = {"max_tokens": max_tokens, "temperature": 0}
    warm = [ChatRequest.create(model, f"Tell me fact number {i} about caches.", **params) for i in range(warm_keys)]
    progress = Progress(len(tiers) + len(stacks) + misses, "hit latency", interactive)
    for tier in tiers.values():
        await tier.clear()
    writer = Chain(transport, [CacheLayer(list(tiers.values()), namespace="tiers")])
    await asyncio.gather(*(writer(r) for r in warm))
    cycle = [warm[i % warm_keys] for i in range(hits)]
    tier_rows = []
    for name, tier in tiers.items():
        layer = CacheLayer([tier], namespace="tiers")
        chain = Chain(transport, [layer])
        await _time_calls(chain, warm)  # warm-up
        samples = await _time_calls(chain, cycle)
        tier_rows.append(
            {"tier": name, "p50_us": float(np.median(samples)), "p99_us": float(np.percentile(samples, 99))}
        )
        progress.advance()
    stack_rows = []
    for name, stack in stacks.items():
        layer = CacheLayer(list(stack), namespace="tiers")
        chain = Chain(transport, [layer])
        first = await _time_calls(chain, warm)  # the first touch of each key by this layer
        await layer.flush()
        samples = await _time_calls(chain, cycle)
        stack_rows.append(
            {
                "stack": name,
                "first touch p50 (µs)": float(np.median(first)),
                "hit p50 (µs)": float(np.median(samples)),
                "hit p99 (µs)": float(np.percentile(samples, 99)),
                "served by": ", ".join(f"{k} {v.hits}" for k, v in layer.stats.tiers.items() if v.hits),
            }
        )
        progress.advance()
    miss_samples = []
    for i in range(misses):
        miss_chain = Chain(transport, [CacheLayer([MemoryTier()], namespace="misses")])
        request = ChatRequest.create(model, f"A question never asked before, number {i} at {time.time()}", **params)
        miss_samples.extend(await _time_calls(miss_chain, [request]))
        progress.advance()
    progress.finish()
    tier_rows.append(
        {
            "tier": "miss (the service)",
            "p50_us": float(np.median(miss_samples)),
            "p99_us": float(np.percentile(miss_samples, 99)),
        }
    )
    return {"tiers": tier_rows, "stacks": stack_rows}


# -- 06 · the Redis outage -------------------------------------------------------------------------------------


async def _probe(call: Callable[[], Any]) -> str:
    """Run one call during the outage: "ok", or the name of the error it raised."""
    try:
        result = call()
        if asyncio.iscoroutine(result):
            await result
        return "ok"
    except Exception as error:  # the point: which code lets the cache's failure reach the caller
        return type(error).__name__


async def redis_outage(
    lab: Any,
    transport: Handler,
    layer: CacheLayer,
    *,
    n: int,
    gap_s: float,
    model: str,
    probes: Mapping[str, Callable[[], Any]],
    interactive: bool,
) -> dict[str, Any]:
    """Serve five questions over and over through `layer` (Redis, then SQLite); stop Redis after a third of the
    run and start it again (empty) after two thirds, when the lab started it. In the middle of the outage each
    of `probes` is called once. Returns the timeline (who served each request) and Redis's tier counters."""
    counting = Counting()
    chain = Chain(transport, [layer, counting])
    topics = [ChatRequest.create(model, f"Outage demo question {i}", max_tokens=20, temperature=0) for i in range(5)]
    await asyncio.gather(*(chain(t) for t in topics))
    can_restart = bool(lab.redis.managed)
    stop_at, back_at = n // 3, 2 * n // 3
    timeline, probed = [], {}
    progress = Progress(n, "Redis outage", interactive)
    for i in range(n):
        if can_restart and i == stop_at:
            await asyncio.to_thread(lab.redis.stop)
        if can_restart and i == back_at:
            await asyncio.to_thread(lab.redis.restart)
        if i == (stop_at + back_at) // 2:
            probed = {name: await _probe(call) for name, call in probes.items()}
        before = {k: v.hits for k, v in layer.stats.tiers.items()}
        calls_before = counting.calls
        started = time.perf_counter()
        try:
            await chain(topics[i % len(topics)])
            ok = True
        except Exception:
            ok = False
        latency_ms = 1000 * (time.perf_counter() - started)
        hit = [k for k, v in layer.stats.tiers.items() if v.hits > before[k]]
        source = hit[0] if hit else "upstream" if counting.calls > calls_before else "?"
        timeline.append({"i": i, "ok": ok, "source": source, "latency_ms": latency_ms})
        progress.advance()
        await asyncio.sleep(gap_s)
    progress.finish()
    return {
        "requests": n,
        "succeeded": sum(row["ok"] for row in timeline),
        "restarted": can_restart,
        "stopped_at": stop_at,
        "back_at": back_at,
        "redis": dict(layer.stats.tiers["redis"].__dict__),
        "sources": [row["source"] for row in timeline],
        "latency_ms": [row["latency_ms"] for row in timeline],
        "probes": probed,
    }


def outage_chart(outage: Mapping[str, Any]) -> go.Figure:
    """Each request's latency, coloured by what served it, with the outage shaded."""
    fig = go.Figure()
    for source, color in [("redis", "#d62728"), ("sqlite", "#1f77b4"), ("upstream", "#7f7f7f")]:
        xs = [i for i, s in enumerate(outage["sources"]) if s == source]
        ys = [outage["latency_ms"][i] for i in xs]
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="markers", name=f"served by {source}", marker_color=color))
    if outage["restarted"]:
        fig.add_vrect(
            x0=outage["stopped_at"] - 0.5,
            x1=outage["back_at"] - 0.5,
            fillcolor="gray",
            opacity=0.15,
            annotation_text="Redis stopped",
        )
    fig.update_layout(
        yaxis_type="log",
        xaxis_title="request",
        yaxis_title="latency (ms, log scale)",
        height=360,
        title=f"{outage['succeeded']} of {outage['requests']} requests succeeded through the outage; "
        f"Redis served again after it returned ({outage['redis']['recoveries']} recovery)",
    )
    return fig


# -- the lesson's workload (06 and 07) ------------------------------------------------------------------------


def ceilings(spec: CacheWorkloadSpec) -> dict[str, float]:
    """What a cache could serve at most on this workload: repeated wordings (exact) and repeated meanings
    (a perfect semantic cache), counted from the requests alone."""
    questions = cache_workload(spec)
    return {
        "exact ceiling": 1 - len({q.text for q in questions}) / len(questions),
        "semantic ceiling": 1 - len({q.meaning for q in questions}) / len(questions),
    }


async def workload_run(
    transport: Handler,
    spec: CacheWorkloadSpec,
    layers: Sequence[Layer],
    *,
    model: str,
    params: Mapping[str, Any],
    semantic_hits: list[tuple[str, str, float]] | None = None,
    interactive: bool,
    label: str,
) -> dict[str, Any]:
    """Send the seeded workload through `layers`; score each answer (a semantic hit is wrong when the stored
    question meant something else). `semantic_hits` is the list a `SemanticCache(on_hit=...)` appends to.

    Returns the run's summary row and its cumulative hit rate (for a chart)."""
    questions: list[Question] = cache_workload(spec)
    counting = Counting()
    chain = Chain(transport, [*layers, counting])
    progress = Progress(len(questions), label, interactive)

    async def tracked(request: ChatRequest) -> Any:
        try:
            return await chain(request)
        finally:
            progress.advance()

    served = await run_workload(
        tracked,
        questions,
        model=model,
        params=dict(params),
        concurrency=spec.concurrency,
        upstream_counter=lambda: counting.calls,
        semantic_hits=semantic_hits,
    )
    progress.finish()
    hit = np.array([not s.upstream for s in served])  # per request (for latency and cost)
    latency = np.array([s.latency_s for s in served])
    cost_all = sum(s.cost_usd for s in served)
    cost_paid = sum(s.cost_usd for s in served if s.upstream)
    semantic = len(semantic_hits) if semantic_hits is not None else 0
    upstream = counting.calls  # exact, where the per-request flag can be fooled by a concurrent call
    row = {
        "chain": label,
        "requests": len(served),
        "upstream calls": upstream,
        "hit rate": 1 - upstream / len(served),
        "exact hits": len(served) - upstream - semantic,
        "semantic hits": semantic,
        "wrong answers served": sum(s.wrong for s in served),
        "cost saved": 1 - cost_paid / cost_all if cost_all else 0.0,
        "hit p50 (ms)": float(np.median(latency[hit]) * 1000) if hit.any() else None,
        "miss p50 (ms)": float(np.median(latency[~hit]) * 1000) if (~hit).any() else None,
    }
    xs = np.arange(1, len(served) + 1)
    return {"summary": row, "curve": (xs.tolist(), (100 * np.cumsum(hit) / xs).tolist())}


# -- 07 · the semantic decision --------------------------------------------------------------------------------


class CachedEmbedder:
    """The default embedder with a dict in front: the pairs are embedded once per kernel, whichever section
    asks first (embedding all 1,398 pairs takes a few seconds)."""

    def __init__(self) -> None:
        from labkit.cache.embeddings import default_embedder

        self.inner = default_embedder()
        self.dimensions = self.inner.dimensions
        self.vectors: dict[str, np.ndarray] = {}

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        missing = [t for t in dict.fromkeys(texts) if t not in self.vectors]
        if missing:
            self.vectors.update(zip(missing, self.inner.embed(missing), strict=True))
        return np.stack([self.vectors[t] for t in texts]) if texts else self.inner.embed([])


_EMBEDDER: CachedEmbedder | None = None


def cached_embedder() -> CachedEmbedder:
    global _EMBEDDER
    if _EMBEDDER is None:
        _EMBEDDER = CachedEmbedder()
    return _EMBEDDER


def heldout_pairs(interactive: bool = False) -> list[dict[str, Any]]:
    """The held-out labelled pairs (kinds and writing styles never used for tuning), each with its cosine.

    Every text is embedded through `cached_embedder` (with a progress bar: it takes a few seconds), so the
    evaluation later in the lesson finds them embedded already."""
    pairs = [p for p in load_pairs() if p["split"] == "heldout"]
    texts = sorted({t for p in pairs for t in (p["a"], p["b"])}, key=len)  # similar lengths batch with less padding
    progress = Progress(len(texts), "embedding pairs", interactive)
    for start in range(0, len(texts), 64):
        cached_embedder().embed(texts[start : start + 64])
        progress.advance(len(texts[start : start + 64]))
    progress.finish()
    vectors = embed_texts(texts, cached_embedder())
    return [p | {"cosine": float(vectors[p["a"]] @ vectors[p["b"]])} for p in pairs]


def confusion(pairs: Sequence[Mapping[str, Any]], served: Sequence[bool]) -> dict[str, Any]:
    """Served pairs that were wrong (false hits) and paraphrases served (recall), with 95% Wilson intervals."""
    tp = sum(s and p["label"] == 1 for p, s in zip(pairs, served, strict=True))
    fp = sum(s and p["label"] == 0 for p, s in zip(pairs, served, strict=True))
    positives = sum(p["label"] == 1 for p in pairs)
    return {
        "served": tp + fp,
        "wrong": fp,
        "false_hit_rate": fp / (tp + fp) if tp + fp else 0.0,
        "false_hit_rate_ci95": wilson(fp, tp + fp),
        "recall": tp / positives if positives else 0.0,
    }


def per_kind_rows(ev: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per kind of held-out pair: how many cosine alone and the guarded decision serve, and the share decided
    right (for paraphrases: served, i.e. recall; for every other kind: refused)."""
    rows = []
    for kind, row in ev["heldout_per_kind"].items():
        paraphrase = kind == "paraphrase"
        right = row["served"] if paraphrase else row["pairs"] - row["served"]
        rows.append(
            {
                "kind": kind,
                "answer": "same" if paraphrase else "different",
                "pairs": row["pairs"],
                "served, cosine alone": row["cosine_only_served"],
                "served, guarded": row["served"],
                "decided right": right / row["pairs"] if row["pairs"] else 0.0,
            }
        )
    return sorted(rows, key=lambda r: (r["answer"], -r["pairs"]))


def tiers_summary(measured: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Lesson 06's numbers, one row per measure, for the "What we saw" table, from what the sections put in
    `measured` (`common_advice`, `tiers`, `stacks`, `outage`, `workload`); a section that has not run adds no row."""
    rows: list[tuple[str, Any]] = []
    for client, lag in measured.get("common_advice", {}).get("loop_lag", {}).items():
        rows.append((f"longest event-loop stall, {client} (ms)", lag["loop_lag_max_ms"]))
    p50 = {row["tier"]: row["p50_us"] for row in measured.get("tiers", [])}
    rows += [(f"hit p50, {tier} (µs)", value) for tier, value in p50.items() if not tier.startswith("miss")]
    if "miss (the service)" in p50:
        rows.append(("miss p50, the service (ms)", p50["miss (the service)"] / 1000))
    rows += [(f"repeated hit p50, {row['stack']} (µs)", row["hit p50 (µs)"]) for row in measured.get("stacks", [])]
    if "outage" in measured:
        outage = measured["outage"]
        rows.append(("outage: requests that succeeded", f"{outage['succeeded']} of {outage['requests']}"))
        rows += [(f"outage: {name}", got) for name, got in outage["probes"].items()]
    if "workload" in measured:
        run, limits = measured["workload"]["run"], measured["workload"]["ceilings"]
        rows.append(("workload: hit rate (exact ceiling)", f"{run['hit rate']:.0%} ({limits['exact ceiling']:.0%})"))
        rows.append(("workload: cost saved", f"{run['cost saved']:.0%}"))
    return {name: {"value": value} for name, value in rows}


class DelayProxy:
    """A TCP proxy on loopback that holds every chunk for half of `rtt_ms` each way: Redis as if it were a
    network hop away. On loopback a round trip is tens of microseconds, which hides what a synchronous client
    costs; in a deployment Redis is usually a millisecond or so away. Runs its own event loop in a thread."""

    def __init__(self, target_url: str, rtt_ms: float = 1.0) -> None:
        from urllib.parse import urlparse

        target = urlparse(target_url)
        self.target = (target.hostname or "127.0.0.1", target.port or 6379)
        self.delay_s = rtt_ms / 2000
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="delay-proxy")
        self._thread.start()
        self.server = asyncio.run_coroutine_threadsafe(self._serve(), self.loop).result()
        port = self.server.sockets[0].getsockname()[1]
        self.url = target._replace(netloc=f"127.0.0.1:{port}").geturl()

    async def _serve(self) -> asyncio.Server:
        return await asyncio.start_server(self._handle, "127.0.0.1", 0)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                await asyncio.sleep(self.delay_s)
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        except (asyncio.CancelledError, ConnectionError):  # closing, or the target went away
            writer.close()

    def close(self) -> None:
        """Stop serving, end the open connections, and stop the thread."""

        async def shutdown() -> None:
            self.server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(timeout=5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=2)
        self.loop.close()


SWEEP = tuple(round(0.5 + 0.025 * i, 3) for i in range(20))


def threshold_sweep(
    pairs: Sequence[Mapping[str, Any]],
    thresholds: Sequence[float] = SWEEP,
) -> dict[str, tuple[list[float], list[float]]]:
    """Cosine alone at each threshold: the share of served pairs that were wrong, and recall (both in %)."""
    rows = [confusion(pairs, [p["cosine"] >= t for p in pairs]) for t in thresholds]
    return {
        "false hits among served (%)": (list(thresholds), [100 * r["false_hit_rate"] for r in rows]),
        "recall: paraphrases served (%)": (list(thresholds), [100 * r["recall"] for r in rows]),
    }


def semantic_summary(measured: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Lesson 07's numbers, one row per measure, for the "What we saw" table, from what the sections put in
    `measured` (`decisions`, `workload`, `embed_ms_per_lookup`); a section that has not run adds no row."""
    rows: list[tuple[str, Any]] = []
    for name, d in measured.get("decisions", {}).items():
        low, high = d["false_hit_rate_ci95"]
        rows.append((f"held out, {name}: false hits (95% CI)", f"{d['false_hit_rate']:.1%} ({low:.1%}–{high:.1%})"))
        rows.append((f"held out, {name}: recall", f"{d['recall']:.0%}"))
    if "workload" in measured:
        run, limits = measured["workload"]["run"], measured["workload"]["ceilings"]
        exact = run["exact hits"] / run["requests"]
        rows += [
            ("workload: exact hit rate (ceiling)", f"{exact:.0%} ({limits['exact ceiling']:.0%})"),
            (
                "workload: with the semantic cache (ceiling)",
                f"{run['hit rate']:.0%} ({limits['semantic ceiling']:.0%})",
            ),
            ("workload: wrong answers served", run["wrong answers served"]),
            ("embedding per lookup (ms)", f"{measured['embed_ms_per_lookup']:.1f}"),
            ("a miss, p50 (ms)", f"{run['miss p50 (ms)']:,.0f}"),
        ]
    return {name: {"value": value} for name, value in rows}
