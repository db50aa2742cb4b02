"""Bad input gets an OpenAI-shaped 4xx, and the service goes on serving normal requests afterwards."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from spec import validate

from labkit.lab.services import SimService, start_sim

API_KEY = "sk-labkit-bad-input-test"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
JSON = {**AUTH, "Content-Type": "application/json"}
OVERSIZED_BYTES = 16 * 1024 * 1024  # well over the service's limit (4 MiB by default); the real API caps bodies too


@pytest.fixture(scope="module")
def client(sim) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim.url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def model(client) -> str:
    response = client.get("/v1/models", headers=AUTH)
    return next(m["id"] for m in response.json()["data"] if "embed" not in m["id"])


def chat(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "Hello"}], **extra}


def assert_openai_error(response: httpx.Response, status: int, param: str | None = None) -> dict[str, Any]:
    """The status, a JSON body that validates as an OpenAI ErrorResponse, and (if given) the param it names."""
    assert response.status_code == status, f"{response.status_code}: {response.text[:500]}"
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    validate("ErrorResponse", body)
    if param is not None:
        assert body["error"]["param"] == param, body
    return body["error"]


def assert_still_serving(client: httpx.Client, model: str) -> None:
    response = client.post("/v1/chat/completions", json=chat(model, max_tokens=2), headers=AUTH)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"]


# Each case: the raw body (bytes) or a function of the model giving a JSON body, the status, the param.
BAD_BODIES = {
    "malformed-json": (b'{"model": "x", "messages": [', 400, None),
    "json-not-an-object": (b'[{"role": "user", "content": "Hello"}]', 400, None),
    "json-string": (b'"hello"', 400, None),
    "empty-body": (b"", 400, None),
    "not-utf8": (b'{"model": "\xff\xfe\xfd", "messages": []}', 400, None),
    "missing-model": (lambda m: {"messages": [{"role": "user", "content": "Hello"}]}, 400, "model"),
    "model-not-a-string": (lambda m: chat(m) | {"model": 42}, 400, "model"),
    "missing-messages": (lambda m: {"model": m}, 400, "messages"),
    "messages-a-string": (lambda m: {"model": m, "messages": "Hello"}, 400, "messages"),
    "messages-empty": (lambda m: {"model": m, "messages": []}, 400, "messages"),
    "message-without-role": (lambda m: {"model": m, "messages": [{"content": "Hello"}]}, 400, None),
    "temperature-a-string": (lambda m: chat(m, temperature="hot"), 400, "temperature"),
    "temperature-out-of-range": (lambda m: chat(m, temperature=7), 400, "temperature"),
    "max-tokens-negative": (lambda m: chat(m, max_tokens=-5), 400, "max_tokens"),
    "max-tokens-a-string": (lambda m: chat(m, max_tokens="ten"), 400, "max_tokens"),
    "stream-not-a-boolean": (lambda m: chat(m, stream="yes"), 400, "stream"),
    "unknown-model": (lambda m: chat("no-such-model"), 404, "model"),
}


@pytest.mark.parametrize("case", list(BAD_BODIES))
def test_bad_chat_body_gets_an_openai_error_and_the_service_keeps_serving(client, model, case):
    body, status, param = BAD_BODIES[case]
    content = body if isinstance(body, bytes) else json.dumps(body(model)).encode()
    response = client.post("/v1/chat/completions", content=content, headers=JSON)
    error = assert_openai_error(response, status, param)
    assert error["type"] == "invalid_request_error"
    assert_still_serving(client, model)


def test_unknown_model_error_has_code_model_not_found(client):
    response = client.post("/v1/chat/completions", json=chat("no-such-model"), headers=AUTH)
    assert assert_openai_error(response, 404)["code"] == "model_not_found"


def test_unknown_model_on_models_endpoint_gets_404(client, model):
    response = client.get("/v1/models/no-such-model", headers=AUTH)
    assert assert_openai_error(response, 404)["code"] == "model_not_found"
    assert_still_serving(client, model)


def test_bad_embeddings_input_gets_400_naming_input(client, model):
    response = client.post("/v1/embeddings", json={"model": model, "input": {"not": "text"}}, headers=AUTH)
    assert_openai_error(response, 400, "input")
    assert_still_serving(client, model)


def test_oversized_body_gets_413_json_and_the_service_keeps_serving(client, model):
    padding = "x" * OVERSIZED_BYTES
    content = json.dumps(chat(model) | {"messages": [{"role": "user", "content": padding}]}).encode()
    try:
        response = client.post("/v1/chat/completions", content=content, headers=JSON)
    except httpx.TransportError as error:  # the server may close before the client has sent everything
        pytest.fail(f"the service cut the connection instead of answering 413: {error!r}")
    assert_openai_error(response, 413)
    assert_still_serving(client, model)


@pytest.mark.parametrize(
    ("headers", "case"),
    [({}, "missing"), ({"Authorization": "Bearer"}, "empty"), ({"Authorization": "Basic abc"}, "not-bearer")],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_missing_or_malformed_key_gets_401(client, model, headers, case):
    response = client.post("/v1/chat/completions", json=chat(model), headers=headers)
    assert_openai_error(response, 401)
    assert_still_serving(client, model)


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_wrong_method_gets_an_openai_error(client, model, method):
    response = client.request(method, "/v1/chat/completions", headers=AUTH)
    assert_openai_error(response, 404 if response.status_code == 404 else 405)
    assert_still_serving(client, model)


@pytest.mark.parametrize("path", ["/v1/no/such/route", "/v1/chat/completion", "/v2/chat/completions"])
def test_unknown_route_gets_404_openai_error(client, model, path):
    response = client.post(path, json=chat(model), headers=AUTH)
    assert_openai_error(response, 404)
    assert_still_serving(client, model)


def test_bad_admin_fault_config_gets_400_and_changes_nothing(sim, client, model):
    before = sim.faults()
    response = client.put("/admin/faults", json={"error_rates": {"500": 2.0}})
    assert_openai_error(response, 400)
    assert sim.faults() == before
    assert_still_serving(client, model)


def wait_for(predicate, timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


@pytest.fixture(scope="module")
def slow_sim() -> Iterator[SimService]:
    """Answers of exactly 50 tokens at 50 tokens/s: a stream lasts about a second, long enough to hang up in."""
    with start_sim("bench", seed=0, ttft=0.01, tps=50) as service:
        yield service


def test_client_disconnecting_mid_stream_is_counted_and_frees_its_sequence(slow_sim):
    sim = slow_sim
    with httpx.Client(base_url=sim.base_url, headers=AUTH, timeout=10) as client:
        model = next(m["id"] for m in client.get("/models").json()["data"] if "embed" not in m["id"])
        disconnects_before = sim.stats()["disconnects"]
        seen = 0
        with client.stream("POST", "/chat/completions", json=chat(model, stream=True)) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if line.startswith("data: "):
                    assert line != "data: [DONE]", "the stream ended before the client hung up"
                    seen += 1
                    if seen == 3:
                        assert sim.stats()["active_sequences"] == 1
                        break
        # Leaving the loop with the body unread closes the connection (httpx cannot reuse it).

        assert wait_for(lambda: sim.stats()["disconnects"] == disconnects_before + 1), sim.stats()
        assert wait_for(lambda: sim.stats()["active_sequences"] == 0), sim.stats()
        response = client.post("/chat/completions", json=chat(model, max_tokens=2))
        assert response.status_code == 200, response.text
