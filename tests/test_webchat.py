"""The chat web app as a process: streamed chunked text, bad input, upstream failures, cancellation."""

import asyncio
import json
import time

import httpx
import pytest

from labkit.services import start_sim
from labkit.webchat import start_webchat
from labkit.webchat.app import ERROR_MARK


@pytest.fixture(scope="module")
def bench_sim():
    with start_sim("bench", seed=0) as service:
        yield service


@pytest.fixture(scope="module")
def webchat(bench_sim):
    with start_webchat(bench_sim.base_url, model="gpt-4o") as service:
        yield service


@pytest.fixture
def upstream(bench_sim):
    bench_sim.reset()
    yield bench_sim
    bench_sim.reset()


@pytest.fixture
async def client():
    async with httpx.AsyncClient(timeout=30) as c:
        yield c


async def test_page_is_served(webchat, client):
    response = await client.get(webchat.url + "/")
    assert response.status_code == 200 and "getReader()" in response.text and 'fetch("api/chat"' in response.text


async def test_answer_streams_as_chunked_text_over_many_reads(webchat, upstream, client):
    started = time.perf_counter()
    reads = []
    async with client.stream("POST", webchat.chat_url, json={"message": "Explain streaming"}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        assert response.headers["transfer-encoding"] == "chunked"
        async for piece in response.aiter_raw():
            reads.append((time.perf_counter() - started, piece))
    text = b"".join(p for _, p in reads).decode()
    assert ERROR_MARK not in text and len(text.split()) > 10
    assert len(reads) >= 10  # bench: 50 tokens 20 ms apart arrive as many separate reads
    first, last = reads[0][0], reads[-1][0]
    assert last - first > 0.5  # the text arrived over time, not at the end


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (b"", 400, "empty"),
        (b"{not json", 400, "not valid JSON"),
        (b"[1, 2]", 400, "JSON object"),
        (b'{"message": 42}', 400, "not a string"),
        (b'{"message": "   "}', 400, "message is empty"),
        (json.dumps({"message": "x" * 5000}).encode(), 413, "too long"),
        (b"x" * 70_000, 413, "too large"),
        (b'{"message": "hi", "max_tokens": 0}', 400, "max_tokens"),
        (b'{"message": "hi", "history": [{"role": "tool"}]}', 400, "history"),
    ],
)
async def test_bad_input_gets_a_clear_message_and_the_server_keeps_serving(webchat, client, body, status, fragment):
    response = await client.post(webchat.chat_url, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == status
    assert fragment in response.json()["error"]["message"]
    assert (await client.get(webchat.url + "/health")).json()["ok"]


async def test_upstream_error_before_the_answer_is_a_502_with_its_message(webchat, upstream, client):
    upstream.set_faults({"error_rates": {"500": 1.0}})
    response = await client.post(webchat.chat_url, json={"message": "hi"})
    assert response.status_code == 502
    assert "500" in response.json()["error"]["message"]
    upstream.reset()
    response = await client.post(webchat.chat_url, json={"message": "hi", "max_tokens": 5})
    assert response.status_code == 200 and response.text


@pytest.mark.parametrize("fault", ["stream_error_rate", "drop_mid_stream_rate"])
async def test_upstream_error_mid_answer_is_sent_in_band_after_the_partial_text(webchat, upstream, client, fault):
    upstream.set_faults({fault: 1.0})
    response = await client.post(webchat.chat_url, json={"message": "hi"})
    assert response.status_code == 200
    text, _, error = response.text.partition(ERROR_MARK)
    assert text  # the partial answer came first
    message = json.loads(error)["error"]["message"]
    assert "broke off" in message
    upstream.reset()
    assert (await client.post(webchat.chat_url, json={"message": "hi", "max_tokens": 5})).status_code == 200


async def test_client_that_goes_away_cancels_the_upstream_stream(webchat, upstream, client):
    async with client.stream("POST", webchat.chat_url, json={"message": "a long story"}) as response:
        reads = 0
        async for _ in response.aiter_raw():
            reads += 1
            if reads == 5:
                break
    for _ in range(100):
        if upstream.stats()["disconnects"] >= 1:
            break
        await asyncio.sleep(0.02)
    stats = upstream.stats()
    assert stats["disconnects"] == 1 and stats["tokens_generated"] < 50
    recent = webchat.stats()["recent"][-1]
    assert recent["outcome"] == "cancelled" and recent["usage_estimated"] and recent["completion_tokens"] > 0


async def test_history_is_trimmed_to_the_token_budget(webchat, upstream, client):
    history = [{"role": r, "content": "word " * 200} for _ in range(10) for r in ("user", "assistant")]
    response = await client.post(webchat.chat_url, json={"message": "hi", "max_tokens": 3, "history": history})
    assert response.status_code == 200
    recent = webchat.stats()["recent"][-1]
    assert recent["prompt_tokens"] <= 3000
