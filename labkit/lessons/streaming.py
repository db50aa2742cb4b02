"""Lesson 03's benchmark: labkit's added TTFT over the bare SDK stream and its added CPU per chunk.

`python -m labkit.lessons.streaming --bench` writes `build/bench/streaming.json`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from openai.types.chat import ChatCompletionChunk

from labkit.chain import Result
from labkit.layers.guard import StreamGuard
from labkit.percentiles import percentile
from labkit.request import ChatRequest
from labkit.stream import ChunkStream

# --------------------------------------------------------------------------------------------------------
# Benchmark: python -m labkit.lessons.streaming --bench
# --------------------------------------------------------------------------------------------------------


def _median(values: Sequence[float]) -> float:
    return float(percentile(values, 50) or 0.0)


async def _bench(pairs: int, streams: int, rounds: int, out: str) -> dict[str, Any]:  # pragma: no cover - a tool
    import json
    import os
    import platform
    from pathlib import Path

    from openai import AsyncOpenAI

    from labkit.chain import Chain
    from labkit.lab.services import start_sim
    from labkit.layers.metrics import MetricsLayer, MetricsRecorder
    from labkit.transports.sdk import OpenAITransport

    messages = [{"role": "user", "content": "Explain streaming in a few sentences."}]
    model = "gpt-4o"

    def chunk(i: int, text: str | None, finish: str | None = None) -> ChatCompletionChunk:
        return ChatCompletionChunk.model_validate(
            {
                "id": "chatcmpl-bench",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": model,
                "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}],
            }
        )

    canned = [chunk(i, f" word{i}") for i in range(49)] + [chunk(49, ".", "stop")]

    async def canned_stream() -> AsyncIterator[ChatCompletionChunk]:
        for c in canned:
            yield c

    async def fake_transport(request: ChatRequest) -> Result:
        return ChunkStream(canned_stream())

    async def cpu_per_chunk(open_: Callable[[], Any], n: int = 400) -> float:
        start = time.process_time()
        for _ in range(n):
            stream = await open_()
            async for _chunk in stream:
                pass
        return (time.process_time() - start) / (n * len(canned)) * 1e6

    async def bare_canned() -> ChunkStream:
        return ChunkStream(canned_stream())

    in_process: dict[str, float] = {}
    # one chain (and one metrics recorder) per variant, as an application keeps them: a recorder built per stream
    # would add the cost of creating its histograms to every stream
    chains = {
        "metrics": Chain(fake_transport, [MetricsLayer(MetricsRecorder())]),
        "metrics+guard": Chain(fake_transport, [MetricsLayer(MetricsRecorder()), StreamGuard()]),
        "metrics+guard+timeouts": Chain(fake_transport, [MetricsLayer(MetricsRecorder()), StreamGuard(30.0, 300.0)]),
    }
    variants: dict[str, Callable[[], Any]] = {"bare_generator": bare_canned}
    for name, chain in chains.items():
        variants[name] = lambda chain=chain: chain.stream(messages, model=model)
    for _ in range(3):
        for name, open_ in variants.items():
            value = await cpu_per_chunk(open_)
            in_process[name] = min(in_process.get(name, value), value)
    added_in_process = {k: v - in_process["bare_generator"] for k, v in in_process.items() if k != "bare_generator"}

    with start_sim("bench", seed=0) as sim:
        client = AsyncOpenAI(base_url=sim.base_url, api_key=sim.api_key, max_retries=0)
        chain = Chain(OpenAITransport(client=client), [MetricsLayer(MetricsRecorder()), StreamGuard(30.0, 300.0)])

        async def sdk_stream() -> Any:
            return await client.chat.completions.create(
                model=model, messages=messages, stream=True, stream_options={"include_usage": True}
            )

        async def lab_stream() -> Any:
            return await chain.stream(messages, model=model)

        async def ttft(open_: Callable[[], Any]) -> float:
            started = time.perf_counter()
            stream = await open_()
            try:
                async for c in stream:
                    if c.choices and c.choices[0].delta.content:
                        return time.perf_counter() - started
            finally:
                await (stream.aclose() if isinstance(stream, ChunkStream) else stream.close())
            raise RuntimeError("no text")

        await ttft(sdk_stream)  # warm the connection pool
        bare_ttfts: list[float] = []
        lab_ttfts: list[float] = []
        for i in range(pairs):  # one pair at a time, both sides at once, the order alternating
            order = (sdk_stream, lab_stream) if i % 2 == 0 else (lab_stream, sdk_stream)
            first, second = await asyncio.gather(*(ttft(o) for o in order))
            bare, lab = (first, second) if i % 2 == 0 else (second, first)
            bare_ttfts.append(bare)
            lab_ttfts.append(lab)
        diffs = [lab - bare for bare, lab in zip(bare_ttfts, lab_ttfts, strict=True)]

        async def consume_all(open_: Callable[[], Any]) -> tuple[float, int]:
            async def one() -> int:
                stream = await open_()
                n = 0
                async for c in stream:
                    if c.choices and c.choices[0].delta.content:
                        n += 1
                return n

            start = time.process_time()
            counts = await asyncio.gather(*(one() for _ in range(streams)))
            return time.process_time() - start, sum(counts)

        network: dict[str, list[float]] = {"sdk": [], "labkit": []}
        for _ in range(rounds):
            for name, open_ in (("sdk", sdk_stream), ("labkit", lab_stream)):
                cpu, chunks = await consume_all(open_)
                network[name].append(cpu / chunks * 1e6)
        await client.close()

    result = {
        "what": "labkit's streaming overhead over the bare openai SDK stream (bench profile: 0.3 s TTFT, 50 tokens)",
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "ttft": {
            "pairs": len(bare_ttfts),
            "sdk_median_s": _median(bare_ttfts),
            "labkit_median_s": _median(lab_ttfts),
            "added_median_ms": _median(diffs) * 1000,
            "added_p25_p75_ms": [float(percentile(diffs, 25) or 0) * 1000, float(percentile(diffs, 75) or 0) * 1000],
            "target_added_median_ms": 1.0,
        },
        "cpu_per_chunk_us": {
            "in_process": in_process,
            "in_process_added_by_labkit": added_in_process,
            "over_http": {k: _median(v) for k, v in network.items()},
            "over_http_added_by_labkit": _median(network["labkit"]) - _median(network["sdk"]),
            "concurrent_streams": streams,
        },
    }
    result["ttft"]["meets_target"] = result["ttft"]["added_median_ms"] < 1.0
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(result, indent=2), encoding="utf-8")  # noqa: ASYNC240 (once, at the end)
    return result


def main(argv: Sequence[str] | None = None) -> None:  # pragma: no cover - a tool
    import argparse
    import json

    ap = argparse.ArgumentParser(prog="python -m labkit.lessons.streaming", description="labkit's streaming benchmark")
    ap.add_argument("--bench", action="store_true", help="measure added TTFT and CPU per chunk")
    ap.add_argument("--pairs", type=int, default=60, help="TTFT samples per side")
    ap.add_argument("--streams", type=int, default=100, help="concurrent streams in the CPU measurement")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default="build/bench/streaming.json")
    args = ap.parse_args(argv)
    if not args.bench:
        ap.error("nothing to do: pass --bench")
    result = asyncio.run(_bench(args.pairs, args.streams, args.rounds, args.out))
    print(json.dumps(result, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
