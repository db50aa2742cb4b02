"""Worker processes for the cross-process de-dup demonstration, and the pool that drives them.

`python -m labkit.lessons.dedup.worker --base-url URL [--redis-url URL]` connects, prints ``ready`` and then serves
rounds: each line on stdin is a JSON command ``{"mode", "prompt", "requests", "namespace"}``; the worker sends
that many identical requests at once through a fresh chain of that mode (``none``: nothing; ``local``:
in-process single-flight; ``redis``: single-flight in front of the Redis coalescer), built by
`labkit.assemble.build_chain` over the worker's one transport, and prints one JSON line with what it did. Every
worker of a pool gets its command at the same moment, so their requests overlap. It exits when stdin closes, so it
never outlives the process that started it. Results are JSON, never pickle.

The API key comes from the environment (``OPENAI_API_KEY``), never from the command line: any user of the machine
can read a process's arguments (``ps``, ``/proc/<pid>/cmdline``), only its owner its environment.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

from redis.asyncio import Redis

from labkit.assemble import ChainConfig, build_chain
from labkit.chain import Chain, Layer
from labkit.dedup.redisflight import RedisSingleFlight
from labkit.endpoint import LOCAL_API_KEY, Endpoint
from labkit.request import ChatRequest
from labkit.scope import Scoping
from labkit.transports.sdk import OpenAITransport

Mode = Literal["none", "local", "redis"]

#: The folder that holds the labkit package, put on the workers' PYTHONPATH.
_ROOT = str(Path(__file__).resolve().parents[3])


#: The worker's chain: nothing but the de-dup switches of each round's mode, over the worker's one transport.
WORKER_CHAIN = ChainConfig.preset("bare")


def mode_config(mode: Mode) -> ChainConfig:
    """``none``: no de-dup; ``local``: in-process single-flight; ``redis``: single-flight over the Redis flight."""
    if mode not in ("none", "local", "redis"):
        raise ValueError(f"unknown mode {mode!r}: none, local or redis")
    return WORKER_CHAIN.replace(dedup=mode != "none", dedup_redis=mode == "redis")


async def _serve(args: argparse.Namespace) -> None:
    api_key = os.environ.get("OPENAI_API_KEY") or LOCAL_API_KEY
    endpoint = Endpoint(args.base_url, api_key)
    transport = OpenAITransport(endpoint)
    redis = Redis.from_url(args.redis_url) if args.redis_url else None
    try:
        if redis is not None:
            await redis.ping()  # connect now, not in the measured part
        print("ready", flush=True)
        while line := await asyncio.to_thread(sys.stdin.readline):
            command: dict[str, Any] = json.loads(line)
            mode = command.get("mode", "redis")
            given: dict[str, Layer] = {}
            if mode == "redis":
                if redis is None:
                    raise SystemExit("mode 'redis' needs --redis-url")
                # the worker's one Redis connection, made before "ready", rather than one per round
                given["dedup_redis"] = RedisSingleFlight(
                    redis, namespace=command.get("namespace", "labkit:sf"), scoping=Scoping.of_endpoints([endpoint])
                )
            built = build_chain(mode_config(mode), transport, given=given)
            chain = built.chain
            single_flight, coalescer = built.layers.get("dedup"), built.layers.get("dedup_redis")

            async def one(i: int, chain: Chain = chain, command: dict[str, Any] = command) -> tuple[float, str]:
                request = ChatRequest.create(
                    args.model,
                    command["prompt"],
                    metadata={"worker": os.getpid(), "i": i},
                    max_tokens=args.max_tokens,
                    temperature=0,
                )
                t0 = time.perf_counter()
                completion = await chain(request)
                content = completion.choices[0].message.content or ""  # type: ignore[union-attr]
                return time.perf_counter() - t0, hashlib.sha256(content.encode()).hexdigest()[:16]

            started = time.perf_counter()
            results = await asyncio.gather(*(one(i) for i in range(command.get("requests", 1))), return_exceptions=True)
            ok = [r for r in results if isinstance(r, tuple)]
            report = {
                "pid": os.getpid(),
                "mode": mode,
                "requests": len(results),
                "ok": len(ok),
                "errors": [f"{type(r).__name__}: {r}" for r in results if isinstance(r, BaseException)],
                "upstream_calls": sum(built.upstream.values()),
                "latencies_s": [r[0] for r in ok],
                "answers": sorted({r[1] for r in ok}),
                "wall_s": time.perf_counter() - started,
                "single_flight": single_flight.stats.as_dict() if single_flight else None,
                "redis": coalescer.stats.as_dict() if coalescer else None,
            }
            await built.aclose()  # closes what the round's chain opened; the transport and Redis stay the worker's
            print(json.dumps(report), flush=True)
    finally:
        await transport.aclose()
        if redis is not None:
            await redis.aclose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m labkit.lessons.dedup.worker", description=__doc__)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--redis-url", default=None)
    parser.add_argument("--model", default="gpt-4o")
    parser.add_argument("--max-tokens", type=int, default=60)
    asyncio.run(_serve(parser.parse_args(argv)))
    return 0


class WorkerPool:
    """`n` worker processes that run rounds of identical requests together: `await pool.run("redis", prompt)`."""

    def __init__(
        self,
        n_workers: int,
        *,
        base_url: str,
        api_key: str = LOCAL_API_KEY,
        redis_url: str | None = None,
        model: str = "gpt-4o",
        max_tokens: int = 60,
        timeout: float = 60.0,
    ) -> None:
        self.n_workers = n_workers
        self.timeout = timeout
        self._api_key = api_key  # handed over in the workers' environment, not on their command line
        self._argv = [sys.executable, "-m", "labkit.lessons.dedup.worker", "--base-url", base_url]
        self._argv += ["--model", model, "--max-tokens", str(max_tokens)]
        if redis_url:
            self._argv += ["--redis-url", redis_url]
        self.procs: list[asyncio.subprocess.Process] = []
        self._stderr: list[Any] = []
        self._rounds = 0

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    async def start(self) -> WorkerPool:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_ROOT, env.get("PYTHONPATH")) if p)
        env["OPENAI_API_KEY"] = self._api_key
        pipe = asyncio.subprocess.PIPE
        try:
            for _ in range(self.n_workers):
                err = tempfile.TemporaryFile()  # noqa: SIM115 (kept for the error message, closed in aclose)
                self._stderr.append(err)
                self.procs.append(
                    await asyncio.create_subprocess_exec(*self._argv, stdin=pipe, stdout=pipe, stderr=err, env=env)
                )
            for proc in self.procs:  # every worker imported, connected and waiting
                if (await self._readline(proc)).strip() != "ready":
                    raise RuntimeError(f"worker {proc.pid} did not start: {self._tail(proc)}")
        except BaseException:
            await self.aclose()
            raise
        return self

    async def run(self, mode: Mode, prompt: str, requests_per_worker: int = 1) -> list[dict[str, Any]]:
        """Send every worker the same round at once; return each worker's report."""
        self._rounds += 1
        command = {"mode": mode, "prompt": prompt, "requests": requests_per_worker, "namespace": "labkit:sf"}
        line = (json.dumps(command) + "\n").encode()
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(line)
        await asyncio.gather(*(p.stdin.drain() for p in self.procs if p.stdin is not None))
        lines = await asyncio.gather(*(self._readline(p) for p in self.procs))
        return [json.loads(text) for text in lines]

    async def _readline(self, proc: asyncio.subprocess.Process) -> str:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), self.timeout)
        if not line:
            await proc.wait()
            raise RuntimeError(f"worker {proc.pid} exited with {proc.returncode}: {self._tail(proc)}")
        return line.decode()

    def _tail(self, proc: asyncio.subprocess.Process) -> str:
        err = self._stderr[self.procs.index(proc)]
        err.seek(0)
        return err.read().decode(errors="replace")[-2000:]

    async def aclose(self) -> None:
        """Close every worker's stdin (they exit), kill any that do not."""
        for proc in self.procs:
            if proc.stdin is not None and not proc.stdin.is_closing():
                proc.stdin.close()
        for proc in self.procs:
            try:
                await asyncio.wait_for(proc.wait(), 5.0)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        for err in self._stderr:
            err.close()
        self._stderr.clear()

    async def __aenter__(self) -> WorkerPool:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


if __name__ == "__main__":
    raise SystemExit(main())
