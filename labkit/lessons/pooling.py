"""The pooling lesson's measurements, shared by its notebook and its benchmark (`python -m labkit.lessons.pooling`).

Each function drives a running simulated service (or the HTTP/2 front) from this process and returns a
plain dict: requests/s, latency percentiles, this process's CPU per request (`resource.getrusage` over
exactly the measured phase, so it is the client's cost), the service's CPU (psutil, by pid) and the
connections the service saw (its `/admin/stats`, reset before each run). Errors are counted by class, never
fatal, so a run that overloads a pool reports its `PoolTimeout`s instead of stopping.

The benchmark writes `build/bench/pooling.json`. Timings on a shared 2-core machine are noisy: compare
ratios within one run, not absolutes across runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import httpx2

from labkit.endpoint import Endpoint
from labkit.lab.measure import ServerCpu, closed_loop, cpu_seconds, raise_nofile_limit, run_on_fast_loop, summary_ms
from labkit.request import ChatRequest
from labkit.transports.lean import LeanTransport
from labkit.transports.pool import ClientPool, PoolConfig
from labkit.transports.sdk import OpenAITransport

MODEL = "gpt-4o-mini"
PROMPT = "Write a short paragraph about connection pooling."
Call = Callable[[], Awaitable[Any]]
TRANSPORTS = ("sdk_httpx", "sdk_aiohttp", "lean")


def error_name(exc: BaseException) -> str:
    """A stable short name; a pool timeout under the SDK shows as `PoolTimeout`, not a generic timeout."""
    cause = exc.__cause__ or exc.__context__
    if isinstance(exc, httpx2.PoolTimeout) or isinstance(cause, httpx2.PoolTimeout):
        return "PoolTimeout"
    return type(exc).__name__


def _opened(stats: dict[str, Any]) -> int | None:
    """Connections the service saw since its reset, less the one the stats call itself arrived on."""
    opened = stats.get("connections_opened")
    return None if opened is None else max(0, opened - 1)


async def _stats(service: Any) -> dict[str, Any]:
    return await service.astats() if service is not None else {}


def _ticking(call: Call, on_done: Callable[[], None]) -> Call:
    """`call`, then `on_done()` whether it succeeded or not."""

    async def ticked() -> Any:
        try:
            return await call()
        finally:
            on_done()

    return ticked


async def run_calls(
    call: Call,
    *,
    requests: int,
    concurrency: int,
    service: Any = None,
    warmup: int = 0,
    on_done: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """`requests` calls from `concurrency` workers: rate, latency, client CPU and what the server saw.
    `on_done` runs after each measured call (a progress bar's tick)."""
    for _ in range(warmup):
        with contextlib.suppress(Exception):
            await call()
    if on_done is not None:
        call = _ticking(call, on_done)
    if service is not None:
        await service.areset()
    server = ServerCpu(getattr(service, "pid", None))
    gc.collect()
    cpu0, srv0, t0 = cpu_seconds(), server.read(), time.perf_counter()
    latencies, errors = await closed_loop(call, requests=requests, concurrency=concurrency, error_name=error_name)
    wall = time.perf_counter() - t0
    cpu1, srv1 = cpu_seconds(), server.read()
    stats = await _stats(service)
    ok = max(len(latencies), 1)
    server_cpu = None if srv0 is None or srv1 is None else srv1 - srv0
    return {
        "requests": requests,
        "concurrency": concurrency,
        "completions": len(latencies),
        "errors": dict(errors),
        "wall_s": round(wall, 3),
        "requests_per_s": round(len(latencies) / wall, 1) if wall > 0 else None,
        "latency_ms": summary_ms(latencies),
        "client_cpu_per_request_ms": round((cpu1 - cpu0) / ok * 1e3, 3),
        "server_cpu_per_request_ms": None if server_cpu is None else round(server_cpu / ok * 1e3, 3),
        "connections_opened": _opened(stats),
        "front": stats.get("front"),
    }


def _body(max_tokens: int) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": max_tokens}


# ----------------------------------------------------------------------------------- 1. per request vs pooled


async def per_request_vs_pooled(
    service: Any, *, requests: int = 200, concurrency: int = 16, max_tokens: int = 8, ca_file: str | None = None
) -> dict[str, dict[str, Any]]:
    """The common advice's `AsyncOpenAI()` inside the function (a new client and connection per request),
    one shared client without keep-alive (a new connection per request: the handshakes alone), and one
    shared client from a `ClientPool` with keep-alive."""
    endpoint = service.endpoint
    config = PoolConfig(max_connections=concurrency, max_keepalive=concurrency, ca_file=ca_file)
    body = _body(max_tokens)

    async def per_request() -> None:
        async with ClientPool(config) as pool:  # what `AsyncOpenAI()` per call does, with the same limits
            await pool.openai(endpoint).chat.completions.create(**body)

    results = {"per_request": await run_calls(per_request, requests=requests, concurrency=concurrency, service=service)}
    no_keepalive = PoolConfig(max_connections=concurrency, max_keepalive=0, ca_file=ca_file)
    async with ClientPool(no_keepalive) as pool:
        client = pool.openai(endpoint)

        async def fresh_connection() -> None:
            await client.chat.completions.create(**body)

        results["no_keepalive"] = await run_calls(
            fresh_connection, requests=requests, concurrency=concurrency, service=service
        )
    async with ClientPool(config) as pool:
        client = pool.openai(endpoint)

        async def pooled() -> None:
            await client.chat.completions.create(**body)

        results["pooled"] = await run_calls(
            pooled, requests=requests, concurrency=concurrency, service=service, warmup=concurrency
        )
    return results


# ----------------------------------------------------------------------------------- 2. clients and pool limits


def transport_for(kind: str, endpoint: Endpoint, pool_config: PoolConfig) -> tuple[Any, ClientPool]:
    """One of `TRANSPORTS` on a fresh pool: the SDK on httpx(2), the SDK on aiohttp, or the lean transport."""
    if kind == "lean":
        pool = ClientPool(pool_config)
        return LeanTransport(endpoint, pool=pool), pool
    client = "aiohttp" if kind == "sdk_aiohttp" else "httpx"
    pool = ClientPool(PoolConfig(**{**_fields(pool_config), "client": client}))
    return OpenAITransport(endpoint, pool=pool), pool


def _fields(config: PoolConfig) -> dict[str, Any]:
    return {k: getattr(config, k) for k in config.__dataclass_fields__}


async def compare_transports(
    service: Any,
    *,
    requests: int = 600,
    concurrency: int = 64,
    max_tokens: int = 8,
    kinds: Sequence[str] = TRANSPORTS,
    on_done: Callable[[], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Plain calls at one concurrency through each transport on a warm pool: the client CPU each costs."""
    out: dict[str, dict[str, Any]] = {}
    request = ChatRequest.create(MODEL, PROMPT, max_tokens=max_tokens)
    for kind in kinds:
        transport, pool = transport_for(kind, service.endpoint, PoolConfig(max_connections=concurrency))
        async with pool:

            async def call(transport: Any = transport) -> None:
                await transport(request)

            out[kind] = await run_calls(
                call, requests=requests, concurrency=concurrency, service=service, warmup=concurrency, on_done=on_done
            )
    return out


async def pool_limits(
    service: Any,
    *,
    max_connections: Sequence[int] = (4, 16, 64),
    concurrency: Sequence[int] = (8, 32, 128),
    requests_per_worker: int = 4,
    pool_timeout: float = 0.5,
    max_tokens: int = 8,
) -> list[dict[str, Any]]:
    """Throughput and `PoolTimeout`s of the SDK's default client for each pool size against concurrency."""
    rows = []
    body = _body(max_tokens)
    for limit in max_connections:
        for n in concurrency:
            config = PoolConfig(max_connections=limit, max_keepalive=limit, pool_timeout=pool_timeout)
            async with ClientPool(config) as pool:
                client = pool.openai(service.endpoint)

                async def call(client: Any = client) -> None:
                    await client.chat.completions.create(**body)

                result = await run_calls(call, requests=n * requests_per_worker, concurrency=n, service=service)
            rows.append({"max_connections": limit, **result, "pool_timeouts": result["errors"].get("PoolTimeout", 0)})
    return rows


# ----------------------------------------------------------------------------------- 3. HTTP/2


async def http_versions(
    front: Any,
    *,
    ca_file: str | None,
    requests: int = 400,
    concurrency: int = 64,
    max_connections: Sequence[int] = (1, 4, 64),
    max_tokens: int = 8,
) -> list[dict[str, Any]]:
    """HTTP/1.1 against HTTP/2 through the same front, for several pool sizes; cold (first requests on a new
    client: handshakes) and warm (after them)."""
    rows = []
    body = _body(max_tokens)
    for http2 in (False, True):
        for limit in max_connections:
            config = PoolConfig(max_connections=limit, max_keepalive=limit, http2=http2, ca_file=ca_file)
            async with ClientPool(config) as pool:
                client = pool.openai(front.endpoint)
                versions: Counter[str] = Counter()

                async def call(client: Any = client, versions: Counter[str] = versions) -> None:
                    raw = await client.chat.completions.with_raw_response.create(**body)
                    versions[raw.http_response.http_version] += 1

                cold = await run_calls(call, requests=concurrency, concurrency=concurrency, service=front)
                warm = await run_calls(call, requests=requests, concurrency=concurrency, service=front)
            rows.append(
                {
                    "http2_requested": http2,
                    "max_connections": limit,
                    "http_versions": dict(versions),
                    "cold": cold,
                    "warm": warm,
                }
            )
    return rows


async def http2_mistakes(plain_sim: Any, tls_sim: Any, *, ca_file: str) -> dict[str, Any]:
    """What `http2=True` gives where it cannot work: without `h2`, over http://, against an HTTP/1.1 server."""
    out: dict[str, Any] = {}
    code = "import httpx2\ntry:\n    httpx2.AsyncClient(http2=True)\nexcept ImportError as e:\n    print(repr(e))\n"
    blocked = "import sys; sys.modules['h2'] = None\n" + code  # as if `h2` were not installed
    argv = [sys.executable, "-c", blocked]
    result = await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True, timeout=60, check=False)
    out["without_h2"] = (
        (result.stdout or result.stderr).strip().splitlines()[-1] if (result.stdout or result.stderr) else ""
    )
    for name, service, verify in (("over_http", plain_sim, True), ("http1_server_tls", tls_sim, ca_file)):
        config = PoolConfig(http2=True, ca_file=verify if isinstance(verify, str) else None)
        async with ClientPool(config) as pool:
            raw = await pool.openai(service.endpoint).chat.completions.with_raw_response.create(**_body(4))
            out[name] = raw.http_response.http_version
    return out


# ----------------------------------------------------------------------------------- 5. streams: SDK vs lean


async def stream_ttft(
    service: Any,
    kind: str,
    *,
    streams: int,
    configured_ttft_s: float,
    max_tokens: int = 50,
    on_done: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """`streams` concurrent streams through one transport on warm connections: the TTFT it adds on top of the
    service's configured TTFT (first content chunk, from the moment each stream starts) and its CPU.
    `on_done` runs as each stream ends (a progress bar's tick)."""
    transport, pool = transport_for(kind, service.endpoint, PoolConfig(max_connections=streams, timeout=120.0))
    warm_request = ChatRequest.create(MODEL, "hi", max_tokens=1)
    request = ChatRequest.create(MODEL, PROMPT, max_tokens=max_tokens, stream=True)
    ttft: list[float] = []
    errors: Counter[str] = Counter()
    chunks = 0
    gate = asyncio.Event()

    async def one() -> None:
        nonlocal chunks
        await gate.wait()
        t0 = time.perf_counter()
        first = 0.0
        try:
            stream = await transport(request)
            async with stream:
                async for chunk in stream:
                    chunks += 1
                    if not first and chunk.choices and chunk.choices[0].delta.content:
                        first = time.perf_counter()
        except Exception as exc:
            errors[error_name(exc)] += 1
            return
        finally:
            if on_done is not None:
                on_done()
        if first:
            ttft.append(first - t0)
        else:
            errors["no_content"] += 1

    async with pool:
        await asyncio.gather(*(transport(warm_request) for _ in range(streams)), return_exceptions=True)
        await service.areset()
        server = ServerCpu(getattr(service, "pid", None))
        tasks = [asyncio.ensure_future(one()) for _ in range(streams)]
        await asyncio.sleep(0)
        gc.collect()
        cpu0, srv0, t0 = cpu_seconds(), server.read(), time.perf_counter()
        gate.set()
        await asyncio.gather(*tasks)
        wall = time.perf_counter() - t0
        cpu1, srv1 = cpu_seconds(), server.read()
        stats = await service.astats()
    ok = max(len(ttft), 1)
    return {
        "transport": kind,
        "streams": streams,
        "completions": len(ttft),
        "errors": dict(errors),
        "ttft_added_ms": summary_ms([x - configured_ttft_s for x in ttft]),
        "client_cpu_per_stream_ms": round((cpu1 - cpu0) / ok * 1e3, 3),
        "client_cpu_per_chunk_us": round((cpu1 - cpu0) / max(chunks, 1) * 1e6, 1),
        "server_cpu_per_stream_ms": None if srv0 is None or srv1 is None else round((srv1 - srv0) / ok * 1e3, 3),
        "wall_s": round(wall, 3),
        "streams_per_s": round(len(ttft) / wall, 1) if wall > 0 else None,  # every stream started at once
        "connections_opened": _opened(stats),
    }


async def parse_cost(repeat: int = 2000) -> dict[str, float]:
    """Microseconds to turn one completion body into the SDK's type: its lenient `construct` vs pydantic's
    validation (what the lean transport uses)."""
    from openai.types.chat import ChatCompletion

    data = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "x" * 200, "refusal": None},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 50, "total_tokens": 60},
    }
    out = {}
    for name, fn in (
        ("construct", lambda: ChatCompletion.construct(**data)),
        ("validate", lambda: ChatCompletion.model_validate(data)),
    ):
        fn()
        t0 = time.perf_counter()
        for _ in range(repeat):
            fn()
        out[f"{name}_us"] = round((time.perf_counter() - t0) / repeat * 1e6, 2)
    return out


# ----------------------------------------------------------------------------------- the benchmark


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


async def run_benchmark(*, quick: bool = False, stream_levels: Sequence[int] = (100, 500, 1000)) -> dict[str, Any]:
    from labkit.lab.services import start_h2_front, start_lab
    from labkit.transports.tls import make_self_signed

    raise_nofile_limit()
    scale = 4 if quick else 1
    cert = make_self_signed()
    report: dict[str, Any] = {"schema_version": 1, "quick": quick, "machine": {"cpus": os.cpu_count()}}
    lab = start_lab(
        [
            {"profile": "fast", "ttft": 0.0},
            {"profile": "fast", "ttft": 0.0, "tls_cert": str(cert.cert_path), "tls_key": str(cert.key_path)},
            {"profile": "fast", "ttft": 0.1},
            {"profile": "bench"},
        ],
        redis=False,
        memcached=False,
    )
    plain, tls, slow, bench = lab.sims
    front = None
    try:
        front = start_h2_front(plain, cert)
        per = {}
        for name, service, ca in (("http", plain, None), ("https", tls, str(cert.cert_path))):
            per[name] = await per_request_vs_pooled(service, requests=400 // scale, concurrency=16, ca_file=ca)
            per[name]["pooled_over_per_request_rps"] = ratio(
                per[name]["pooled"]["requests_per_s"], per[name]["per_request"]["requests_per_s"]
            )
            per[name]["per_request_over_pooled_cpu"] = ratio(
                per[name]["per_request"]["client_cpu_per_request_ms"], per[name]["pooled"]["client_cpu_per_request_ms"]
            )
            per[name]["no_keepalive_over_pooled_cpu"] = ratio(
                per[name]["no_keepalive"]["client_cpu_per_request_ms"], per[name]["pooled"]["client_cpu_per_request_ms"]
            )
        report["per_request_vs_pooled"] = per
        report["transports"] = await compare_transports(plain, requests=1200 // scale, concurrency=64)
        report["pool_limits"] = await pool_limits(slow, requests_per_worker=3 if quick else 5)
        report["http_versions"] = await http_versions(front, ca_file=str(cert.cert_path), requests=800 // scale)
        report["http2_mistakes"] = await http2_mistakes(plain, tls, ca_file=str(cert.cert_path))
        report["parse_cost"] = await parse_cost()
        levels = [lv // scale for lv in stream_levels]
        report["streams"] = [
            await stream_ttft(bench, kind, streams=n, configured_ttft_s=0.3) for n in levels for kind in TRANSPORTS
        ]
    finally:
        if front is not None:
            front.stop()
        lab.stop()
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m labkit.lessons.pooling", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("build/bench/pooling.json"))
    parser.add_argument("--quick", action="store_true", help="a quarter of the sizes (a smoke run)")
    parser.add_argument("--streams", type=int, nargs="+", default=[100, 500, 1000], help="stream concurrency levels")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    report, _loop = run_on_fast_loop(run_benchmark(quick=args.quick, stream_levels=args.streams))
    report["command"] = "python -m labkit.lessons.pooling " + " ".join(argv if argv is not None else sys.argv[1:])
    report["duration_s"] = round(time.perf_counter() - t0, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
