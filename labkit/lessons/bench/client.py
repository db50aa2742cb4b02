"""The benchmark's load client: a lean process that drives the simulated service and reports one JSON line.

Why a process of its own: on a 2-core machine each streamed chunk costs tens of microseconds of CPU on each
side, so near a thousand streams the client and the server compete for the same cores. Run in the
orchestrator's (or a notebook's) process, the client would share an event loop and a GIL with whatever else
runs there, and its CPU could not be told apart from the server's. Here the client is alone in its process,
measures its own CPU with `resource.getrusage` over exactly the measured phase, and reads the server's CPU
(`psutil`, by pid) at the same two instants, so both figures cover the same interval.

Why aiohttp and not the SDK for the streams: the question is what the *service* adds under load, so the
client must cost as little as possible; `plain` mode measures what the SDK's transports cost on their own.

Two modes:

- `stream`: N concurrent `stream: true` chat completions started at one barrier. Unless `--cold`, the N
  connections are opened first with N concurrent `GET /v1/models` (unmeasured), so that the measured time to
  first token is the server's and not a storm of TCP handshakes through a listen backlog. TTFT is taken at
  the first chunk that carries content (not the role chunk); total time at `data: [DONE]`; both from the
  moment the stream's coroutine starts its request, on `time.perf_counter`.
- `plain`: a fixed number of non-streamed calls from a fixed number of workers through one of three
  transports (raw aiohttp, the official `AsyncOpenAI` on its default httpx transport, `AsyncOpenAI` on
  `DefaultAioHttpClient`), after one unmeasured warm-up call per worker.

It talks to loopback addresses only, and every wait is bounded by a timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson

from labkit.lab.measure import (
    ServerCpu,
    closed_loop,
    cpu_seconds,
    machine_busy_seconds,
    other_cpu,
    raise_nofile_limit,
    run_on_fast_loop,
    summary_ms,
)

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
MODEL = "gpt-4o-mini"
PROMPT = "Write a short paragraph about connection pooling."
API_KEY = "sk-lab-local"  # the simulated service checks the shape of a key, not its secret
PLAIN_MODES = ("raw_aiohttp", "sdk_default", "sdk_aiohttp")


# --------------------------------------------------------------------------------------------- helpers


def check_loopback(url: str) -> None:
    """Refuse any target that is not on this machine: the benchmark is a load generator."""
    host = urlsplit(url).hostname or ""
    if host not in LOOPBACK_HOSTS:
        raise SystemExit(f"labkit.lessons.bench client: refusing non-loopback target {url!r}")


class Sampler:
    """Samples the client's event-loop lag (how late a 10 ms sleep wakes up: client-side delay, not the
    server's) and, every 100 ms, the CPU both processes used, as a percentage of one core. The service runs
    on one event loop, so 100% means it is saturated however many cores the machine has."""

    def __init__(self, server: ServerCpu, interval: float = 0.01, cpu_every: int = 10) -> None:
        self.interval = interval
        self.cpu_every = cpu_every
        self.server = server
        self.lag: list[float] = []
        self.client_pct: list[float] = []
        self.server_pct: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        tick = 0
        last_t, last_c, last_s = time.perf_counter(), cpu_seconds(), self.server.read()
        while True:
            start = time.perf_counter()
            await asyncio.sleep(self.interval)
            now = time.perf_counter()
            self.lag.append(max(0.0, now - start - self.interval))
            tick += 1
            if tick % self.cpu_every == 0:
                c, srv = cpu_seconds(), self.server.read()
                span = max(now - last_t, 1e-9)
                self.client_pct.append(round((c - last_c) / span * 100.0, 1))
                if srv is not None and last_s is not None:
                    self.server_pct.append(round((srv - last_s) / span * 100.0, 1))
                last_t, last_c, last_s = now, c, srv

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> tuple[dict[str, float | None], dict[str, Any]]:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        lag = summary_ms(self.lag)
        timeline = {
            "interval_ms": round(self.interval * self.cpu_every * 1000),
            "client_cpu_pct_of_core": self.client_pct,
            "server_cpu_pct_of_core": self.server_pct,
        }
        return {"p50": lag["p50"], "p99": lag["p99"], "max": lag["max"]}, timeline


def error_kind(exc: BaseException) -> str:
    """A short, stable name for what went wrong with one request."""
    import aiohttp

    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return "timeout"
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"http_{exc.status}"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "server_disconnected"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "connect"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "payload"
    if isinstance(exc, aiohttp.ClientOSError):
        return f"os_error_{exc.errno}" if exc.errno else "os_error"
    if isinstance(exc, OSError):
        return f"os_error_{exc.errno}" if exc.errno else "os_error"
    return f"other_{type(exc).__name__}"


# --------------------------------------------------------------------------------------------- streams


class StreamFailed(Exception):
    """A stream that returned HTTP 200 but did not deliver a complete answer."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


@dataclass
class StreamResults:
    ttft: list[float] = field(default_factory=list)
    total: list[float] = field(default_factory=list)
    starts: list[float] = field(default_factory=list)
    chunks: int = 0
    chunks_per_stream: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)


def _has_content(event: dict[str, Any]) -> bool:
    if "error" in event:
        raise StreamFailed("stream_error_event")
    return any((choice.get("delta") or {}).get("content") for choice in event.get("choices") or ())


def _finished(event: dict[str, Any]) -> bool:
    return any(choice.get("finish_reason") for choice in event.get("choices") or ()) or bool(event.get("usage"))


async def _one_stream(
    session: Any, url: str, body: bytes, limits: Any, gate: asyncio.Event, out: StreamResults
) -> None:
    """One streamed completion. Lean on purpose: whole reads split on blank lines rather than a readline per
    line, and JSON parsed only up to the first content chunk, for a suspected error event, and for the last
    chunk (which must carry `finish_reason`); every other chunk is only counted."""
    await gate.wait()
    t0 = time.perf_counter()
    out.starts.append(t0)
    first = end = 0.0
    chunks = 0
    last = b""
    try:
        async with session.post(url, data=body, timeout=limits) as resp:
            if resp.status != 200:
                await resp.read()
                raise StreamFailed(f"http_{resp.status}")
            reader = resp.content
            buffer = b""
            done = False
            while not done:
                data = await reader.readany()
                if not data:
                    raise StreamFailed("no_done")
                now = time.perf_counter()
                buffer += data
                *events, buffer = buffer.split(b"\n\n")
                for event in events:
                    if not event.startswith(b"data:"):
                        continue  # comments and other fields: not chunks
                    payload = event[5:].strip()
                    if payload == b"[DONE]":
                        done = True
                        end = now
                        break
                    chunks += 1
                    last = payload
                    if not first:
                        if _has_content(orjson.loads(payload)):
                            first = now
                    elif b'"error"' in payload:
                        _has_content(orjson.loads(payload))
            if not first:
                raise StreamFailed("no_content")
            if not _finished(orjson.loads(last)):
                raise StreamFailed("no_finish_reason")
    except StreamFailed as exc:
        out.errors[exc.kind] += 1
        return
    except Exception as exc:  # every failure is counted by kind, none is fatal to the run
        out.errors[error_kind(exc)] += 1
        return
    out.ttft.append(first - t0)
    out.total.append(end - t0)
    out.chunks += chunks
    out.chunks_per_stream[chunks] += 1


async def _warm_connections(session: Any, base_url: str, n: int, limits: Any) -> dict[str, Any]:
    """Open n connections with n concurrent cheap requests; they stay in the pool for the streams."""
    errors: Counter[str] = Counter()

    async def one() -> None:
        try:
            async with session.get(f"{base_url}/models", timeout=limits) as resp:
                await resp.read()
                if resp.status != 200:
                    errors[f"http_{resp.status}"] += 1
        except Exception as exc:
            errors[error_kind(exc)] += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(n)))
    return {"wall_s": round(time.perf_counter() - t0, 3), "errors": dict(errors)}


def _open_connections_to(port: int) -> int | None:
    """How many established TCP connections this process holds to `port` (psutil; None if unavailable)."""
    try:
        import psutil

        conns = psutil.Process().net_connections(kind="tcp")
    except Exception:
        return None
    return sum(1 for c in conns if c.raddr and c.raddr.port == port and c.status == "ESTABLISHED")


async def run_streams(args: argparse.Namespace) -> dict[str, Any]:
    import aiohttp

    base = args.url.rstrip("/")
    base_url = base if base.endswith("/v1") else f"{base}/v1"
    url = f"{base_url}/chat/completions"
    port = urlsplit(base_url).port or 80
    n = args.concurrency
    body = orjson.dumps(
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": PROMPT}],
            "stream": True,
            "max_tokens": args.tokens,
        }
    )
    ideal_total = args.ttft + max(args.tokens - 1, 0) * args.itl
    stream_timeout = aiohttp.ClientTimeout(total=ideal_total + args.timeout, sock_connect=10)
    warm_timeout = aiohttp.ClientTimeout(total=args.timeout, sock_connect=max(10.0, args.timeout))
    connector = aiohttp.TCPConnector(limit=n, limit_per_host=0, keepalive_timeout=120, force_close=False)
    headers = {"Authorization": f"Bearer {args.api_key}", "Content-Type": "application/json"}
    server = ServerCpu(args.server_pid)
    out = StreamResults()
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        warm: dict[str, Any] | None = None
        if not args.cold:
            warm = await _warm_connections(session, base_url, n, warm_timeout)
            warm["connections_open"] = _open_connections_to(port)
            await asyncio.sleep(0.2)  # let the server settle after the handshakes
        gate = asyncio.Event()
        tasks = [asyncio.ensure_future(_one_stream(session, url, body, stream_timeout, gate, out)) for _ in range(n)]
        await asyncio.sleep(0)  # every task is parked on the gate before it opens
        sampler = Sampler(server)
        sampler.start()
        busy0, cpu0, srv0 = machine_busy_seconds(), cpu_seconds(), server.read()
        t0 = time.perf_counter()
        gate.set()
        _, pending = await asyncio.wait(tasks, timeout=ideal_total + args.timeout + 5)
        wall = time.perf_counter() - t0
        cpu1, srv1, busy1 = cpu_seconds(), server.read(), machine_busy_seconds()
        for task in pending:  # cannot happen with per-request timeouts; counted if it does
            task.cancel()
            out.errors["unfinished"] += 1
        loop_lag, cpu_timeline = await sampler.stop()
    completions = len(out.total)
    client_cpu = cpu1 - cpu0
    server_cpu = None if srv0 is None or srv1 is None else srv1 - srv0
    per = max(completions, 1)
    result: dict[str, Any] = {
        "mode": "stream",
        "concurrency": n,
        "streams": n,
        "completions": completions,
        "errors": sum(out.errors.values()),
        "errors_by_kind": dict(out.errors),
        "configured": {"ttft_s": args.ttft, "itl_s": args.itl, "tokens": args.tokens, "ideal_total_s": ideal_total},
        "ttft_ms": summary_ms(out.ttft),
        "total_ms": summary_ms(out.total),
        "ttft_added_ms": summary_ms([x - args.ttft for x in out.ttft]),
        "total_added_ms": summary_ms([x - ideal_total for x in out.total]),
        "start_spread_ms": round((max(out.starts) - min(out.starts)) * 1000.0, 1) if out.starts else None,
        "chunks_per_stream": {str(k): v for k, v in sorted(out.chunks_per_stream.items())},
        "chunks": out.chunks,
        "client_cpu_s": round(client_cpu, 3),
        "server_cpu_s": None if server_cpu is None else round(server_cpu, 3),
        "client_cpu_per_stream_us": round(client_cpu / per * 1e6, 1),
        "server_cpu_per_stream_us": None if server_cpu is None else round(server_cpu / per * 1e6, 1),
        "client_cpu_per_chunk_us": round(client_cpu / max(out.chunks, 1) * 1e6, 2),
        "server_cpu_per_chunk_us": None if server_cpu is None else round(server_cpu / max(out.chunks, 1) * 1e6, 2),
        "other_cpu_s": other_cpu(busy0, busy1, client_cpu, server_cpu),
        "client_loop_lag_ms": loop_lag,
        "cpu_timeline": cpu_timeline,
        "wall_s": round(wall, 3),
        "connections_warm": not args.cold,
        "warmup": warm,
    }
    if args.samples:
        result["samples"] = {"ttft_s": [round(x, 6) for x in out.ttft], "total_s": [round(x, 6) for x in out.total]}
    return result


# --------------------------------------------------------------------------------------------- plain calls


PlainCall = tuple[Callable[[], Awaitable[None]], Callable[[], Awaitable[None]]]


def _plain_raw_aiohttp(base_url: str, concurrency: int, api_key: str) -> PlainCall:
    import aiohttp

    url = f"{base_url}/chat/completions"
    body = orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 16})
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency), headers=headers, timeout=aiohttp.ClientTimeout(total=60)
    )

    async def call() -> None:
        async with session.post(url, data=body) as resp:
            data = await resp.read()
            if resp.status != 200:
                raise StreamFailed(f"http_{resp.status}")
            if not orjson.loads(data)["choices"][0]["message"]["content"]:
                raise StreamFailed("empty_content")

    return call, session.close


def _plain_sdk(base_url: str, api_key: str, aiohttp_transport: bool) -> PlainCall:
    from openai import AsyncOpenAI

    kwargs: dict[str, Any] = {"base_url": base_url, "api_key": api_key, "max_retries": 0, "timeout": 60.0}
    if aiohttp_transport:
        from openai import DefaultAioHttpClient

        kwargs["http_client"] = DefaultAioHttpClient()
    client = AsyncOpenAI(**kwargs)

    async def call() -> None:
        completion = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": PROMPT}], max_tokens=16
        )
        if not completion.choices[0].message.content:
            raise StreamFailed("empty_content")

    return call, client.close


def _plain_error_kind(exc: BaseException) -> str:
    """A plain call's failure: an empty answer by its kind, an SDK error by status, else by `error_kind`."""
    if isinstance(exc, StreamFailed):
        return exc.kind
    try:
        import openai
    except ImportError:
        return error_kind(exc)
    if isinstance(exc, openai.APIStatusError):
        return f"http_{exc.status_code}"
    if isinstance(exc, openai.APITimeoutError):
        return "timeout"
    if isinstance(exc, openai.APIConnectionError):
        return "connect"
    return error_kind(exc)


async def run_plain(args: argparse.Namespace) -> dict[str, Any]:
    base = args.url.rstrip("/")
    base_url = base if base.endswith("/v1") else f"{base}/v1"
    if args.transport == "raw_aiohttp":
        call, close = _plain_raw_aiohttp(base_url, args.concurrency, args.api_key)
    else:
        call, close = _plain_sdk(base_url, args.api_key, aiohttp_transport=args.transport == "sdk_aiohttp")
    server = ServerCpu(args.server_pid)

    async def warm_one() -> None:
        with contextlib.suppress(Exception):
            await call()

    try:
        await asyncio.wait_for(asyncio.gather(*(warm_one() for _ in range(args.concurrency))), args.timeout)
        busy0, cpu0, srv0 = machine_busy_seconds(), cpu_seconds(), server.read()
        t0 = time.perf_counter()
        latencies, errors = await asyncio.wait_for(
            closed_loop(call, requests=args.requests, concurrency=args.concurrency, error_name=_plain_error_kind),
            args.timeout,
        )
        wall = time.perf_counter() - t0
        cpu1, srv1, busy1 = cpu_seconds(), server.read(), machine_busy_seconds()
    finally:
        await close()
    ok = len(latencies)
    client_cpu = cpu1 - cpu0
    server_cpu = None if srv0 is None or srv1 is None else srv1 - srv0
    return {
        "mode": "plain",
        "transport": args.transport,
        "concurrency": args.concurrency,
        "requests": args.requests,
        "completions": ok,
        "errors": sum(errors.values()),
        "errors_by_kind": dict(errors),
        "wall_s": round(wall, 3),
        "requests_per_s": round(ok / wall, 1) if wall > 0 else None,
        "latency_ms": summary_ms(latencies),
        "client_cpu_s": round(client_cpu, 3),
        "client_cpu_per_request_ms": round(client_cpu / max(ok, 1) * 1e3, 3),
        "server_cpu_s": None if server_cpu is None else round(server_cpu, 3),
        "server_cpu_per_request_ms": None if server_cpu is None else round(server_cpu / max(ok, 1) * 1e3, 3),
        "other_cpu_s": other_cpu(busy0, busy1, client_cpu, server_cpu),
        "connections_warm": True,
        "warmup_requests": args.concurrency,
    }


# --------------------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m labkit.lessons.bench client",
        description="Load client of the labkit benchmark: runs one level and prints one JSON line.",
    )
    parser.add_argument("--url", required=True, help="service root or its /v1 base URL (loopback only)")
    parser.add_argument("--mode", choices=("stream", "plain"), default="stream")
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--server-pid", type=int, default=None, help="read this process's CPU time (psutil)")
    parser.add_argument("--timeout", type=float, default=60.0, help="bound on each wait beyond the ideal, s")
    parser.add_argument("--ttft", type=float, default=0.3, help="configured time to first token, s (stream)")
    parser.add_argument("--itl", type=float, default=0.02, help="configured inter-token interval, s (stream)")
    parser.add_argument("--tokens", type=int, default=50, help="output tokens per stream (stream)")
    parser.add_argument("--cold", action="store_true", help="do not open the connections before the barrier")
    parser.add_argument("--samples", action="store_true", help="include every TTFT and total in the output")
    parser.add_argument("--transport", choices=PLAIN_MODES, default="raw_aiohttp", help="(plain)")
    parser.add_argument("--requests", type=int, default=2000, help="number of measured calls (plain)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.api_key = os.environ.get("OPENAI_API_KEY") or API_KEY  # from the environment: argv shows in `ps`
    check_loopback(args.url)
    if args.concurrency < 1:
        raise SystemExit("--concurrency must be at least 1")
    nofile = raise_nofile_limit()
    runner = run_streams if args.mode == "stream" else run_plain
    result, loop_name = run_on_fast_loop(runner(args))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result.update(
        {
            "event_loop": loop_name,
            "rlimit_nofile": nofile,
            "client_pid": os.getpid(),
            "client_cpu_process_total_s": round(usage.ru_utime + usage.ru_stime, 3),
            "client_max_rss_mb": round(usage.ru_maxrss / 1024.0, 1),
        }
    )
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
