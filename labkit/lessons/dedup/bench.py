"""What in-flight coalescing costs per request: `python -m labkit.lessons.dedup --bench [--out build/bench/dedup.json]`.

The upstream is an in-memory handler that answers after one event-loop turn, so everything measured is the
client-side CPU of the chain. Figures (µs per request, medians of `--repeats` runs):

- `plain_unique`: a request whose key is new (the layer computes the fingerprint, opens a flight and makes the
  call in the caller's frame) minus the same request through a chain without the layer;
- `plain_coalesced`: a burst of identical concurrent requests, per request, against the same burst without
  the layer (where every request reaches the handler);
- `fingerprint`: computing `ChatRequest.key` alone (canonical JSON + SHA-256), part of both figures above;
- `stream_fanout_per_chunk`: one upstream stream read by `--waiters` callers, per chunk per caller.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import platform
import statistics
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from openai.types.chat import ChatCompletion, ChatCompletionChunk

from labkit.chain import Chain, Result
from labkit.dedup.singleflight import SingleFlight
from labkit.request import ChatRequest
from labkit.stream import ChunkStream

_COMPLETION = ChatCompletion.model_validate(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 0,
        "model": "gpt-4o",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "word " * 50}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 20, "completion_tokens": 50, "total_tokens": 70},
    }
)


def _chunk(i: int) -> ChatCompletionChunk:
    return ChatCompletionChunk.model_validate(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "gpt-4o",
            "choices": [{"index": 0, "delta": {"content": f"w{i} "}, "finish_reason": None}],
        }
    )


async def _upstream(request: ChatRequest) -> Result:
    await asyncio.sleep(0)
    if request.stream:
        chunks = [_chunk(i) for i in range(_upstream.chunks)]  # type: ignore[attr-defined]

        async def gen() -> AsyncIterator[ChatCompletionChunk]:
            for chunk in chunks:
                await asyncio.sleep(0)
                yield chunk

        return ChunkStream(gen(), info={"source": "upstream"})
    return _COMPLETION


_upstream.chunks = 50  # type: ignore[attr-defined]


def _request(i: int, stream: bool = False) -> ChatRequest:
    return ChatRequest.create(
        "gpt-4o",
        [{"role": "system", "content": "You are terse."}, {"role": "user", "content": f"Question number {i}?"}],
        stream=stream,
        max_tokens=50,
        temperature=0,
    )


async def _sequential(chain: Chain, requests: list[ChatRequest]) -> float:
    """µs per request, one request at a time."""
    gc.collect()  # each figure pays for its own garbage, not for the previous one's
    t0 = time.perf_counter()
    for request in requests:
        await chain(request)
    return (time.perf_counter() - t0) / len(requests) * 1e6


async def _bursts(chain: Chain, offset: int, bursts: int, burst: int) -> float:
    """µs per request, `bursts` rounds of `burst` identical concurrent requests."""
    gc.collect()
    t0 = time.perf_counter()
    for b in range(bursts):
        same = _request(offset + b)
        await asyncio.gather(*(chain(same.replace()) for _ in range(burst)))
    return (time.perf_counter() - t0) / (bursts * burst) * 1e6


async def _fanout(chain: Chain, readers: int, offset: int, rounds: int = 20) -> float:
    """µs per chunk per reader, `rounds` streams each read by `readers` callers."""
    gc.collect()
    t0 = time.perf_counter()
    for j in range(rounds):
        streams = await asyncio.gather(*(chain(_request(offset + j, stream=True)) for _ in range(readers)))
        await asyncio.gather(*(_drain(s) for s in streams))  # type: ignore[arg-type]
    return (time.perf_counter() - t0) / (rounds * readers * _upstream.chunks) * 1e6  # type: ignore[attr-defined]


async def bench(n: int = 5000, burst: int = 100, waiters: int = 10, repeats: int = 5) -> dict[str, Any]:
    bare = Chain(_upstream)
    results: dict[str, list[float]] = {k: [] for k in ("bare", "sf", "burst_bare", "burst_sf", "key", "s1", "sN")}
    bursts = max(1, n // burst)
    for r in range(repeats):
        base = r * 10 * n
        results["bare"].append(await _sequential(bare, [_request(base + i) for i in range(n)]))
        sf_requests = [_request(base + n + i) for i in range(n)]
        results["sf"].append(await _sequential(Chain(_upstream, [SingleFlight()]), sf_requests))
        fresh = [_request(base + 2 * n + i) for i in range(n)]
        gc.collect()
        t0 = time.perf_counter()
        for request in fresh:
            _ = request.key
        results["key"].append((time.perf_counter() - t0) / n * 1e6)
        results["burst_bare"].append(await _bursts(bare, base + 3 * n, bursts, burst))
        results["burst_sf"].append(await _bursts(Chain(_upstream, [SingleFlight()]), base + 4 * n, bursts, burst))
        results["s1"].append(await _fanout(Chain(_upstream, [SingleFlight()]), 1, base + 5 * n))
        results["sN"].append(await _fanout(Chain(_upstream, [SingleFlight()]), waiters, base + 6 * n))
    med = {k: statistics.median(v) for k, v in results.items()}
    return {
        "what": "single-flight overhead per request, client CPU, in-memory upstream (µs, medians)",
        "python": platform.python_version(),
        "machine": platform.machine(),
        "n": n,
        "burst": burst,
        "waiters": waiters,
        "repeats": repeats,
        "bare_chain_us": med["bare"],
        "single_flight_chain_us": med["sf"],
        "plain_unique_overhead_us": med["sf"] - med["bare"],
        "plain_unique_ratio": med["sf"] / med["bare"],
        "fingerprint_us": med["key"],
        "burst_bare_us_per_request": med["burst_bare"],
        "burst_single_flight_us_per_request": med["burst_sf"],
        "plain_coalesced_overhead_us": med["burst_sf"] - med["burst_bare"],
        "stream_one_reader_us_per_chunk": med["s1"],
        "stream_fanout_us_per_chunk_per_reader": med["sN"],
    }


async def _drain(stream: ChunkStream) -> None:
    async with stream:
        async for _ in stream:
            pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m labkit.lessons.dedup --bench", description=__doc__)
    parser.add_argument("--bench", action="store_true", help="run the benchmark (the only action)")
    parser.add_argument("--out", default="build/bench/dedup.json")
    parser.add_argument("-n", type=int, default=5000)
    parser.add_argument("--burst", type=int, default=100)
    parser.add_argument("--waiters", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    if not args.bench:
        parser.error("nothing to do: pass --bench")
    result = asyncio.run(bench(args.n, args.burst, args.waiters, args.repeats))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(json.dumps(result, indent=2))
    return 0
