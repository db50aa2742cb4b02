"""The simulator's Batch API through the official SDK; objects validate against the OpenAPI schemas."""

from __future__ import annotations

import asyncio
import json

import openai
import pytest
from openai import AsyncOpenAI
from spec import validate

from labkit.batch_api import build_jsonl, run_batch_job
from labkit.pricing import cost
from labkit.request import ChatRequest


@pytest.fixture
def client(fresh_sim):
    return AsyncOpenAI(base_url=fresh_sim.base_url, api_key=fresh_sim.api_key, max_retries=0)


def line(custom_id: str, **body):
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, **body}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def jsonl(*lines) -> bytes:
    return "".join(json.dumps(x) + "\n" for x in lines).encode()


async def wait_done(client, batch_id):
    for _ in range(200):
        batch = await client.batches.retrieve(batch_id)
        if batch.status in ("completed", "failed", "cancelled", "expired"):
            return batch
        await asyncio.sleep(0.1)
    raise AssertionError("batch did not finish")


async def test_file_upload_returns_a_file_object_that_validates(client):
    uploaded = await client.files.create(file=("in.jsonl", jsonl(line("a"))), purpose="batch")
    validate("OpenAIFile", uploaded.model_dump(exclude_unset=True))
    assert uploaded.purpose == "batch" and uploaded.bytes > 0


async def test_uploaded_content_reads_back_byte_for_byte(client):
    data = jsonl(line("a"), line("b"))
    uploaded = await client.files.create(file=("in.jsonl", data), purpose="batch")
    assert (await client.files.content(uploaded.id)).content == data


async def test_batch_completes_with_outputs_and_errors_in_the_real_line_format(client):
    uploaded = await client.files.create(
        file=("in.jsonl", jsonl(line("ok-1"), line("bad", max_tokens=10**8), line("ok-2"))), purpose="batch"
    )
    batch = await client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    validate("Batch", batch.model_dump(exclude_unset=True))
    batch = await wait_done(client, batch.id)
    validate("Batch", batch.model_dump(exclude_unset=True))
    assert batch.status == "completed"
    assert (batch.request_counts.completed, batch.request_counts.failed) == (2, 1)
    outputs = [json.loads(x) for x in (await client.files.content(batch.output_file_id)).text.splitlines()]
    assert {o["custom_id"] for o in outputs} == {"ok-1", "ok-2"}
    assert outputs[0]["response"]["status_code"] == 200 and outputs[0]["error"] is None
    validate("CreateChatCompletionResponse", outputs[0]["response"]["body"])
    errors = [json.loads(x) for x in (await client.files.content(batch.error_file_id)).text.splitlines()]
    assert errors[0]["custom_id"] == "bad" and errors[0]["response"]["status_code"] == 400


async def test_a_malformed_input_file_fails_the_batch_with_line_numbers(client):
    data = jsonl(line("a")) + b"{not json\n" + jsonl(line("a"))
    uploaded = await client.files.create(file=("in.jsonl", data), purpose="batch")
    batch = await client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    batch = await wait_done(client, batch.id)
    assert batch.status == "failed"
    codes = {(e.code, e.line) for e in batch.errors.data}
    assert codes == {("invalid_json_line", 2), ("duplicate_custom_id", 3)}


async def test_cancel_keeps_the_partial_output(client):
    requests = [ChatRequest.create("gpt-4o", f"item {i}", max_tokens=5) for i in range(40)]
    uploaded = await client.files.create(file=("in.jsonl", build_jsonl(requests)), purpose="batch")
    batch = await client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    await asyncio.sleep(0.6)
    cancelling = await client.batches.cancel(batch.id)
    assert cancelling.status == "cancelling"
    batch = await wait_done(client, batch.id)
    assert batch.status == "cancelled"
    assert 0 < batch.request_counts.completed < 40


async def test_unknown_batch_and_file_are_404(client):
    with pytest.raises(openai.NotFoundError):
        await client.batches.retrieve("batch_nope")
    with pytest.raises(openai.NotFoundError):
        await client.files.content("file-nope")


async def test_wrong_purpose_endpoint_and_window_are_400(client):
    with pytest.raises(openai.BadRequestError, match="purpose"):
        await client.files.create(file=("in.jsonl", jsonl(line("a"))), purpose="fine-tune")
    uploaded = await client.files.create(file=("in.jsonl", jsonl(line("a"))), purpose="batch")
    with pytest.raises(openai.BadRequestError, match="endpoint"):
        await client.batches.create(input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h")
    with pytest.raises(openai.BadRequestError, match="completion_window"):
        await client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="1h")


async def test_run_batch_job_returns_results_in_input_order_at_half_price(client):
    requests = [ChatRequest.create("gpt-4o", f"item {i}", max_tokens=5) for i in range(5)]
    job = await run_batch_job(client, requests, poll_s=0.1)
    assert job.ok == 5 and job.statuses[-1] == "completed"
    full = sum(cost(c.model, c.usage.prompt_tokens, c.usage.completion_tokens) for c in job.completions if c)
    assert job.cost_usd() == pytest.approx(full / 2, rel=0.01)


def test_streaming_requests_are_refused_before_upload():
    with pytest.raises(ValueError, match="stream"):
        build_jsonl([ChatRequest.create("gpt-4o", "x", stream=True)])
