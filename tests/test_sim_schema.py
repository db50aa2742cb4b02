"""The simulated service's wire JSON matches the public OpenAI schemas.

Raw httpx on purpose: these tests look at the bytes the service sends, not at what an SDK makes of them.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from spec import validate

API_KEY = "sk-labkit-schema-test"
NO_FAULTS: dict[str, Any] = {}  # PUT /admin/faults replaces the config; omitted fields mean "no fault"
GO_DURATION = re.compile(r"^(?=.)(\d+h)?(\d+m)?(\d+(\.\d+)?(s|ms|us|µs|ns))?$")
RATE_LIMIT_HEADERS = [
    "x-ratelimit-limit-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-requests",
    "x-ratelimit-reset-tokens",
]


@pytest.fixture(scope="module")
def client(sim) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=sim.base_url, headers=headers, timeout=10) as client:
        yield client


@pytest.fixture(scope="module")
def model_ids(client) -> list[str]:
    response = client.get("/models")
    response.raise_for_status()
    return [model["id"] for model in response.json()["data"]]


@pytest.fixture(scope="module")
def chat_model(model_ids) -> str:
    return next(model for model in model_ids if "embed" not in model)


@pytest.fixture(scope="module")
def embedding_model(model_ids) -> str:
    return next((model for model in model_ids if "embed" in model), model_ids[0])


@pytest.fixture
def faults(sim):
    """Set a fault scenario for one test (on top of a fault-free one); always restored afterwards."""
    yield lambda **config: sim.set_faults({**NO_FAULTS, **config})
    sim.set_faults(NO_FAULTS)


def chat_body(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "Say something short."}], **extra}


def sse_payloads(text: str) -> list[str]:
    """The `data:` payloads of an SSE body, checking that every event is a single `data: ...` line."""
    events = [block for block in text.split("\n\n") if block.strip()]
    assert text.endswith("\n\n"), "the SSE body must end with a blank line"
    payloads = []
    for event in events:
        assert event.startswith("data: "), f"not a `data: ` event: {event!r}"
        assert "\n" not in event, f"an event spans several lines: {event!r}"
        payloads.append(event.removeprefix("data: "))
    return payloads


def stream_chunks(client: httpx.Client, body: dict[str, Any]) -> list[dict[str, Any]]:
    response = client.post("/chat/completions", json={**body, "stream": True})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    payloads = sse_payloads(response.text)
    assert payloads[-1] == "[DONE]"
    assert "[DONE]" not in payloads[:-1]
    return [json.loads(payload) for payload in payloads[:-1]]


def test_plain_completion_matches_CreateChatCompletionResponse(client, chat_model):
    response = client.post("/chat/completions", json=chat_body(chat_model))
    assert response.status_code == 200, response.text
    body = response.json()
    validate("CreateChatCompletionResponse", body)
    assert body["object"] == "chat.completion"
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]


@pytest.mark.parametrize("include_usage", [False, True], ids=["plain-stream", "include-usage"])
def test_every_streamed_chunk_matches_CreateChatCompletionStreamResponse(client, chat_model, include_usage):
    body = chat_body(chat_model, stream_options={"include_usage": True}) if include_usage else chat_body(chat_model)
    chunks = stream_chunks(client, body)
    assert len(chunks) >= 2
    for chunk in chunks:
        validate("CreateChatCompletionStreamResponse", chunk)
        assert chunk["object"] == "chat.completion.chunk"
    assert len({chunk["id"] for chunk in chunks}) == 1, "every chunk of one completion carries the same id"


def test_first_streamed_delta_is_the_assistant_role_with_empty_content(client, chat_model):
    first = stream_chunks(client, chat_body(chat_model))[0]
    delta = first["choices"][0]["delta"]
    assert delta["role"] == "assistant" and delta["content"] == ""
    assert all(value is None for key, value in delta.items() if key not in ("role", "content"))  # refusal: null
    assert first["choices"][0]["finish_reason"] is None


def test_only_the_last_content_chunk_carries_finish_reason(client, chat_model):
    chunks = stream_chunks(client, chat_body(chat_model))
    reasons = [chunk["choices"][0]["finish_reason"] for chunk in chunks]
    assert reasons[-1] in ("stop", "length")
    assert all(reason is None for reason in reasons[:-1])


def test_include_usage_gives_null_usage_on_every_chunk_and_a_final_usage_chunk(client, chat_model):
    chunks = stream_chunks(client, chat_body(chat_model, stream_options={"include_usage": True}))
    *content_chunks, final = chunks
    assert all("usage" in chunk and chunk["usage"] is None for chunk in content_chunks)
    assert final["choices"] == []
    usage = final["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert content_chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_models_list_matches_ListModelsResponse(client):
    response = client.get("/models")
    assert response.status_code == 200
    validate("ListModelsResponse", response.json())
    assert response.json()["data"], "the service serves at least one model"


def test_one_model_matches_Model(client, chat_model):
    response = client.get(f"/models/{chat_model}")
    assert response.status_code == 200, response.text
    validate("Model", response.json())
    assert response.json()["id"] == chat_model


def test_embeddings_match_CreateEmbeddingResponse(client, embedding_model):
    response = client.post("/embeddings", json={"model": embedding_model, "input": ["first text", "second text"]})
    assert response.status_code == 200, response.text
    body = response.json()
    validate("CreateEmbeddingResponse", body)
    assert [item["index"] for item in body["data"]] == [0, 1]
    assert len(body["data"][0]["embedding"]) == len(body["data"][1]["embedding"]) > 0


def test_responses_carry_request_id_processing_time_and_rate_limit_headers(client, chat_model):
    response = client.post("/chat/completions", json=chat_body(chat_model))
    assert response.status_code == 200
    headers = response.headers
    assert headers.get("x-request-id")
    assert int(headers["openai-processing-ms"]) >= 0
    for name in RATE_LIMIT_HEADERS:
        assert name in headers, f"missing header {name}"
    for name in ("x-ratelimit-limit-requests", "x-ratelimit-limit-tokens"):
        assert int(headers[name]) > 0
    for name in ("x-ratelimit-remaining-requests", "x-ratelimit-remaining-tokens"):
        assert int(headers[name]) >= 0
    for name in ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"):
        assert GO_DURATION.match(headers[name]), f"{name}={headers[name]!r} is not a Go duration"


def test_every_request_gets_its_own_request_id(client, chat_model):
    ids = {client.post("/chat/completions", json=chat_body(chat_model)).headers["x-request-id"] for _ in range(3)}
    assert len(ids) == 3


def assert_error_body(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    validate("ErrorResponse", body)
    return body["error"]


def test_missing_api_key_error_matches_ErrorResponse(sim, chat_model):
    response = httpx.post(f"{sim.base_url}/chat/completions", json=chat_body(chat_model), timeout=10)
    assert_error_body(response, 401)


def test_unknown_model_error_matches_ErrorResponse(client):
    response = client.post("/chat/completions", json=chat_body(f"no-such-model-{uuid.uuid4().hex[:8]}"))
    error = assert_error_body(response, 404)
    assert error["code"] == "model_not_found"


def test_invalid_request_error_matches_ErrorResponse(client, chat_model):
    response = client.post("/chat/completions", json={"model": chat_model})
    error = assert_error_body(response, 400)
    assert error["param"] == "messages"


@pytest.mark.parametrize("status", [429, 500, 502, 503])
def test_injected_error_matches_ErrorResponse(client, chat_model, faults, status):
    faults(error_rates={str(status): 1.0})
    response = client.post("/chat/completions", json=chat_body(chat_model))
    assert_error_body(response, status)


def test_insufficient_quota_error_matches_ErrorResponse(client, chat_model, faults):
    faults(insufficient_quota_keys=[API_KEY])
    error = assert_error_body(client.post("/chat/completions", json=chat_body(chat_model)), 429)
    assert error["code"] == "insufficient_quota"


def test_mid_stream_error_event_matches_ErrorResponse(client, chat_model, faults):
    faults(stream_error_rate=1.0)
    response = client.post("/chat/completions", json=chat_body(chat_model, stream=True))
    assert response.status_code == 200, "a mid-stream error comes after a successful start"
    payloads = [json.loads(p) for p in sse_payloads(response.text) if p != "[DONE]"]
    errors = [payload for payload in payloads if "error" in payload]
    assert len(errors) == 1
    validate("ErrorResponse", errors[0])
    assert payloads[-1] is errors[0], "nothing but [DONE] may follow the error event"
