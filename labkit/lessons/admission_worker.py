"""One worker process of a batch job that shares its RPM/TPM budget with the others through Redis.

``python -m labkit.lessons.admission_worker --base-url ... --redis-url ... --rpm ... --tpm ... --requests 50`` runs its
share of the batch through `AdmissionLayer(budget=RedisBudget(...))` and prints one JSON line of what it did.
``--wait-for-go`` (or ``--start-at``, a Unix time) lets several workers begin together, as a scheduler would.
The chain comes from `labkit.assemble.build_chain` (a pooled SDK client and admission, the shared budget given for
admission's place). The API key comes from the environment (``OPENAI_API_KEY``), never from the command line,
which any user of the machine can read.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time

import redis.asyncio as aioredis

from labkit.assemble import ChainConfig, build_chain
from labkit.batch import ItemStatus, run_batch
from labkit.endpoint import LOCAL_API_KEY, Endpoint
from labkit.layers.admission import AdmissionLayer
from labkit.layers.ratelimit_redis import RedisBudget
from labkit.request import ChatRequest
from labkit.transports.sdk import OpenAITransport

#: A pooled official SDK client behind the admission layer, nothing else.
WORKER_CHAIN = ChainConfig.preset("bare", admission=True)


async def work(args: argparse.Namespace) -> dict[str, object]:
    client = aioredis.from_url(args.redis_url)
    budget = RedisBudget(client, args.key, args.rpm, args.tpm, burst_s=args.burst_s)
    layer = AdmissionLayer(budget=budget, max_concurrency=args.concurrency)
    requests = [
        ChatRequest.create(
            args.model, f"Worker {args.worker}: describe item {i} in one line.", max_tokens=args.max_tokens
        )
        for i in range(args.requests)
    ]
    endpoint = Endpoint(args.base_url, os.environ.get("OPENAI_API_KEY") or LOCAL_API_KEY)
    built = build_chain(WORKER_CHAIN, endpoint, given={"admission": layer})
    transport = built.transports[0]
    assert isinstance(transport, OpenAITransport)
    await transport.client.models.list()  # warm up (connection, SDK internals) before the clock starts
    if args.wait_for_go:  # imports done and budget ready: start when the parent says so, all together
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
    elif args.start_at:
        await asyncio.sleep(max(0.0, args.start_at - time.time()))
    async with built:
        t0 = time.time()
        result = await run_batch(built.chain, requests, concurrency=args.concurrency)
        t1 = time.time()
    await client.aclose()
    return {
        "worker": args.worker,
        "pid": os.getpid(),
        "ok": result.count(ItemStatus.OK),
        "errors": result.count(ItemStatus.ERROR),
        "first_error": str(result.errors[0].error) if result.errors else None,
        "rate_limited": layer.stats.rate_limited,
        "tokens": layer.stats.used_tokens,
        "started": t0,
        "finished": t1,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m labkit.lessons.admission_worker", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--key", default="labkit:budget")
    parser.add_argument("--rpm", type=float, required=True)
    parser.add_argument("--tpm", type=float, required=True)
    parser.add_argument("--burst-s", type=float, default=0.5, help="seconds of the rate the shared bucket holds")
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--max-tokens", type=int, default=40)
    parser.add_argument("--model", default="gpt-4o")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--worker", type=int, default=0)
    parser.add_argument("--start-at", type=float, default=0.0)
    parser.add_argument("--wait-for-go", action="store_true", help='print "ready", then start on a line of stdin')
    print(json.dumps(asyncio.run(work(parser.parse_args(argv)))), flush=True)


if __name__ == "__main__":
    main()
