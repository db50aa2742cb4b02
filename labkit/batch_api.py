"""The provider's own batch route: upload a JSONL file, create a batch, poll, read the output file.

When answers are not needed within seconds, OpenAI's Batch API takes the whole job at half the price, with
its own (higher) limits and a completion window instead of a latency. This helper does the round trip with
the official SDK (`client.files.create`, `client.batches.create/retrieve`, `client.files.content`) and hands
back results in input order, with each failed line's error, like `labkit.batch.run_batch` does for online calls.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from openai import AsyncOpenAI
from openai.types import Batch
from openai.types.chat import ChatCompletion

from labkit.pricing import cost
from labkit.request import ChatRequest

__all__ = ["BatchJobResult", "build_jsonl", "run_batch_job"]

TERMINAL = ("completed", "failed", "expired", "cancelled")


def build_jsonl(requests: Sequence[ChatRequest], endpoint: str = "/v1/chat/completions") -> bytes:
    """The input file: one line per request, ``custom_id`` = its position, so results map back to inputs."""
    lines = []
    for i, request in enumerate(requests):
        if request.stream:
            raise ValueError(f"request {i} asks to stream; the Batch API does not stream")
        body = request.body()
        lines.append(json.dumps({"custom_id": str(i), "method": "POST", "url": endpoint, "body": body}))
    return ("\n".join(lines) + "\n").encode()


@dataclass
class BatchJobResult:
    """What a batch job returned, in input order: a completion or an error body per request."""

    batch: Batch
    completions: list[ChatCompletion | None]
    errors: list[dict[str, Any] | None]
    wall_s: float
    polls: int
    statuses: list[str] = field(default_factory=list)

    @property
    def ok(self) -> int:
        return sum(c is not None for c in self.completions)

    def cost_usd(self) -> float:
        """What the job costs at batch prices (the discount in data/pricing.json)."""
        total = 0.0
        for c in self.completions:
            if c is not None and c.usage is not None:
                total += cost(c.model, c.usage.prompt_tokens, c.usage.completion_tokens, batch=True) or 0.0
        return total


async def run_batch_job(
    client: AsyncOpenAI,
    requests: Sequence[ChatRequest],
    *,
    poll_s: float = 0.25,
    timeout_s: float = 120.0,
    metadata: dict[str, str] | None = None,
) -> BatchJobResult:
    """Submit ``requests`` as one batch, wait for a terminal status and read its output and error files.

    On timeout, or if this task is cancelled, the batch is cancelled at the provider too (its partial results
    stay in the provider's output file).
    """
    if not requests:
        raise ValueError("a batch needs at least one request")
    t0 = time.perf_counter()
    upload = await client.files.create(file=("batch.jsonl", build_jsonl(requests)), purpose="batch")
    batch = await client.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h", metadata=metadata
    )
    polls, statuses = 0, [batch.status]
    try:
        while batch.status not in TERMINAL:
            if time.perf_counter() - t0 > timeout_s:
                raise TimeoutError(f"batch {batch.id} still {batch.status} after {timeout_s:g} s")
            await asyncio.sleep(poll_s)
            batch = await client.batches.retrieve(batch.id)
            polls += 1
            if batch.status != statuses[-1]:
                statuses.append(batch.status)
    except BaseException:
        await client.batches.cancel(batch.id)
        raise
    completions: list[ChatCompletion | None] = [None] * len(requests)
    errors: list[dict[str, Any] | None] = [None] * len(requests)
    if batch.status == "failed" and batch.errors and batch.errors.data:
        first = batch.errors.data[0]
        raise ValueError(f"batch {batch.id} failed validation: {first.code}: {first.message} (line {first.line})")
    for file_id, ok in ((batch.output_file_id, True), (batch.error_file_id, False)):
        if not file_id:
            continue
        content = await client.files.content(file_id)
        for raw in content.text.splitlines():
            if not raw.strip():
                continue
            line = json.loads(raw)
            index = int(line["custom_id"])
            response = line.get("response") or {}
            if ok and response.get("status_code") == 200:
                completions[index] = ChatCompletion.model_validate(response["body"])
            else:
                errors[index] = line.get("error") or response.get("body", {}).get("error") or {"message": "failed"}
    for i in range(len(requests)):
        if completions[i] is None and errors[i] is None:
            errors[i] = {"code": f"batch_{batch.status}", "message": f"not processed: the batch is {batch.status}"}
    return BatchJobResult(batch, completions, errors, time.perf_counter() - t0, polls, statuses)
