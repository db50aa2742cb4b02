"""The chat web app as a process: streamed chunked text, bad input, upstream failures, cancellation."""

import asyncio
import json
import time

import httpx
import pytest
from conftest import bare_stream

from labkit.lab.services import start_sim
from labkit.lessons.webchat import start_webchat
from labkit.lessons.webchat.app import ERROR_MARK


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
    baseline = await bare_stream(upstream.base_url, messages=[{"role": "user", "content": "Explain streaming"}])
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
    # the text arrived over time, not at the end: spread about as the upstream's own chunks are (bare SDK)
    assert last - first > 0.5 * baseline.spread_s


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


async def test_client_that_goes_away_before_the_first_token_cancels_the_upstream_request(webchat, upstream):
    first_byte_s = 10.0
    upstream.set_faults({"slow_first_byte": {"rate": 1.0, "delay_s": first_byte_s}})
    async with httpx.AsyncClient(timeout=httpx.Timeout(30, read=0.5)) as impatient:
        with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes the connection
            await impatient.post(webchat.chat_url, json={"message": "hi"})
    gave_up = time.monotonic()
    # look for the disconnect only until shortly before the slow first byte is due: an app that waited on would
    # see its answer through then, with no disconnect, so a disconnect in this window is the app cancelling
    for _ in range(400):
        if upstream.stats()["disconnects"] >= 1 or time.monotonic() - gave_up > first_byte_s - 2:
            break
        await asyncio.sleep(0.02)
    assert upstream.stats()["disconnects"] == 1
    recent = webchat.stats()["recent"][-1]
    assert recent["outcome"] == "cancelled" and recent["chunks"] == 0
    upstream.reset()
    async with httpx.AsyncClient(timeout=30) as c:
        assert (await c.post(webchat.chat_url, json={"message": "hi", "max_tokens": 5})).status_code == 200


async def test_other_routes_and_errors_under_api_are_json(webchat, client):
    health = await client.get(webchat.url + "/health")
    assert health.json() == {"ok": True, "model": "gpt-4o"}
    static = await client.get(webchat.url + "/static/index.html")
    assert static.status_code == 200 and "getReader()" in static.text
    assert (await client.get(webchat.url + "/")).headers["cache-control"] == "no-cache"
    wrong_method = await client.get(webchat.chat_url)
    assert wrong_method.status_code == 405 and wrong_method.json()["error"]["message"]
    missing = await client.get(webchat.url + "/api/nothing")
    assert missing.status_code == 404 and missing.json()["error"]["message"]
    assert (await client.get(webchat.url + "/nothing")).status_code == 404
    stats = (await client.get(webchat.url + "/api/stats")).json()
    assert set(stats) == {"summary", "recent"}


async def test_headers_of_the_streamed_answer_ask_for_no_buffering(webchat, upstream, client):
    response = await client.post(webchat.chat_url, json={"message": "hi", "max_tokens": 5})
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.headers["cache-control"] == "no-cache, no-transform"
    assert response.headers["x-accel-buffering"] == "no" and response.headers["x-content-type-options"] == "nosniff"
    assert "content-length" not in response.headers


async def test_the_app_is_asgi_and_mounts_into_a_starlette_application(bench_sim):
    from starlette.applications import Starlette
    from starlette.routing import Mount

    from labkit.lessons.webchat.app import create_app

    chat_app = create_app(bench_sim.base_url, model="gpt-4o")
    assert isinstance(chat_app, Starlette)
    host = Starlette(routes=[Mount("/chat", chat_app)])
    async with chat_app.router.lifespan_context(chat_app):
        transport = httpx.ASGITransport(app=host)
        async with httpx.AsyncClient(transport=transport, base_url="http://host", timeout=30) as c:
            assert "getReader()" in (await c.get("/chat/")).text
            answer = await c.post("/chat/api/chat", json={"message": "hi", "max_tokens": 5})
            assert answer.status_code == 200 and answer.text and ERROR_MARK not in answer.text
            bad = await c.post("/chat/api/chat", content=b"{oops")
            assert bad.status_code == 400 and "not valid JSON" in bad.json()["error"]["message"]
            assert (await c.get("/chat/api/nothing")).json()["error"]["message"]


def test_the_process_exits_cleanly_on_sigterm(bench_sim):
    service = start_webchat(bench_sim.base_url, model="gpt-4o")
    child = service._child
    assert child is not None
    service.stop()
    assert child.proc.returncode == 0
