"""The official OpenAI SDK, in strict response validation mode, works against the simulated service.

Whatever the SDK accepts, raises and retries here is what a lesson will see; so each behaviour the lessons
lean on (usage, streaming, errors, retries, timeouts, rate limits, prompt caching) is checked through it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import openai
import pytest
from openai import AsyncOpenAI, OpenAI

from labkit.lab.services import SimService, start_sim
from labkit.tokens import count_messages, count_text

API_KEY = "sk-labkit-sdk-test"
NO_FAULTS: dict[str, Any] = {}  # PUT /admin/faults replaces the config; omitted fields mean "no fault"
MESSAGES = [
    {"role": "system", "content": "You are a terse assistant."},
    {"role": "user", "content": "Name three uses of a paperclip. 请用中文回答。"},
]


def unique_key() -> str:
    """A fresh API key: rate limits are per key, so a test with its own key starts with a full window."""
    return f"sk-labkit-{uuid.uuid4().hex}"


def sdk_client(sim, **options: Any) -> OpenAI:
    options = {"api_key": API_KEY, "max_retries": 0, "timeout": 10.0, **options}
    return OpenAI(base_url=sim.base_url, _strict_response_validation=True, **options)


def async_sdk_client(sim, **options: Any) -> AsyncOpenAI:
    options = {"api_key": API_KEY, "max_retries": 0, "timeout": 10.0, **options}
    return AsyncOpenAI(base_url=sim.base_url, _strict_response_validation=True, **options)


@pytest.fixture
def client(sim) -> Iterator[OpenAI]:
    with sdk_client(sim) as client:
        yield client


@pytest.fixture
async def aclient(sim) -> AsyncIterator[AsyncOpenAI]:
    async with async_sdk_client(sim) as client:
        yield client


@pytest.fixture(scope="module")
def model(sim) -> str:
    response = httpx.get(f"{sim.base_url}/models", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10)
    return next(m["id"] for m in response.json()["data"] if "embed" not in m["id"])


@pytest.fixture
def faults(sim):
    """Set a fault scenario for one test (on top of a fault-free one); always restored afterwards."""
    yield lambda **config: sim.set_faults({**NO_FAULTS, **config})
    sim.set_faults(NO_FAULTS)


@pytest.fixture
def limits(sim):
    """Change rate limits for one test; the previous limits are put back afterwards."""
    before = sim.limits()
    yield sim.set_limits
    sim.set_limits(rpm=before["rpm"], tpm=before["tpm"])
    sim.reset()


def requests_seen(sim) -> int:
    """How many /v1 requests the service has received (served or rejected), from /admin/stats."""
    return int(sim.stats()["requests_total"])


# --- plain and streamed completions -----------------------------------------------------------------------


def test_sync_plain_completion_has_text_and_usage(client, model):
    completion = client.chat.completions.create(model=model, messages=MESSAGES)
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content
    assert completion.choices[0].finish_reason == "stop"
    usage = completion.usage
    assert usage is not None and usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


async def test_async_plain_completion_has_text_and_usage(aclient, model):
    completion = await aclient.chat.completions.create(model=model, messages=MESSAGES)
    assert completion.choices[0].message.content
    usage = completion.usage
    assert usage is not None and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def check_streamed_usage(chunks: list[Any], model: str) -> None:
    """Text reassembles, usage arrives exactly once in a final chunk without choices, and it adds up."""
    *content_chunks, last = chunks
    assert last.choices == [] and last.usage is not None
    assert all(chunk.usage is None for chunk in content_chunks)
    pieces = [c.choices[0].delta.content for c in content_chunks if c.choices[0].delta.content]
    text = "".join(pieces)
    assert text
    assert last.usage.completion_tokens in (len(pieces), count_text(text, model))
    assert last.usage.prompt_tokens == count_messages(MESSAGES, model)
    assert content_chunks[-1].choices[0].finish_reason == "stop"


def test_sync_stream_with_include_usage_reassembles_text_and_reports_usage_once_at_the_end(client, model):
    stream = client.chat.completions.create(
        model=model, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    check_streamed_usage(list(stream), model)


async def test_async_stream_with_include_usage_reassembles_text_and_reports_usage_once_at_the_end(aclient, model):
    stream = await aclient.chat.completions.create(
        model=model, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    check_streamed_usage([chunk async for chunk in stream], model)


async def test_async_stream_over_the_aiohttp_transport_reports_usage(sim, model):
    """The SDK's aiohttp transport (`DefaultAioHttpClient`) parses the same stream the same way."""
    async with async_sdk_client(sim, http_client=openai.DefaultAioHttpClient()) as client:
        stream = await client.chat.completions.create(
            model=model, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
        check_streamed_usage([chunk async for chunk in stream], model)


def test_sync_models_list_includes_the_chat_model(client, model):
    assert model in [m.id for m in client.models.list()]


async def test_async_models_list_includes_the_chat_model(aclient, model):
    assert model in [m.id async for m in aclient.models.list()]


def test_models_retrieve_returns_the_model(client, model):
    assert client.models.retrieve(model).id == model


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_max_tokens_caps_completion_tokens_with_finish_reason_length(client, model, stream):
    kwargs: dict[str, Any] = {"model": model, "messages": MESSAGES, "max_tokens": 3}
    if stream:
        chunks = list(client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
        usage, finish_reason = chunks[-1].usage, chunks[-2].choices[0].finish_reason
    else:
        completion = client.chat.completions.create(**kwargs)
        usage, finish_reason = completion.usage, completion.choices[0].finish_reason
    assert usage is not None and usage.completion_tokens == 3
    assert finish_reason == "length"


def test_max_completion_tokens_caps_completion_tokens_too(client, model):
    completion = client.chat.completions.create(model=model, messages=MESSAGES, max_completion_tokens=2)
    assert completion.usage is not None and completion.usage.completion_tokens == 2
    assert completion.choices[0].finish_reason == "length"


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "user", "content": "Hello"}],
        MESSAGES,
        [
            {"role": "system", "content": "Answer in French."},
            {"role": "user", "name": "alice", "content": "What is the capital of Italy?"},
            {"role": "assistant", "content": "Rome."},
            {
                "role": "user",
                "content": [{"type": "text", "text": "And of Spain? "}, {"type": "text", "text": "Thanks"}],
            },
        ],
    ],
    ids=["one-message", "chinese", "names-and-parts"],
)
def test_prompt_tokens_equal_labkit_count_messages(client, model, messages):
    completion = client.chat.completions.create(model=model, messages=messages, max_tokens=1)
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == count_messages(messages, model)


# --- errors raise the SDK's own classes ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def keyed_sim() -> Iterator[SimService]:
    """A service started with `--api-key`, so it accepts that one key and no other."""
    with start_sim("fast", seed=0, api_key=API_KEY) as service:
        yield service


def test_wrong_api_key_raises_AuthenticationError(keyed_sim, model):
    client = sdk_client(keyed_sim, api_key="sk-not-the-right-key")
    with client, pytest.raises(openai.AuthenticationError) as raised:
        client.chat.completions.create(model=model, messages=MESSAGES)
    assert raised.value.code == "invalid_api_key"


def test_the_right_api_key_is_accepted_by_a_keyed_service(keyed_sim, model):
    with sdk_client(keyed_sim) as client:
        assert client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=1).usage is not None


def test_missing_authorization_header_raises_AuthenticationError(client, model):
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model=model, messages=MESSAGES, extra_headers={"Authorization": openai.omit})


def test_unknown_model_raises_NotFoundError(client):
    with pytest.raises(openai.NotFoundError) as raised:
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert raised.value.code == "model_not_found"


def test_invalid_parameter_raises_BadRequestError_naming_the_parameter(client, model):
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model=model, messages=MESSAGES, temperature="hot")  # type: ignore[arg-type]
    assert raised.value.param == "temperature"
    assert raised.value.type == "invalid_request_error"


def test_injected_429_raises_retryable_RateLimitError_with_retry_after(client, model, faults):
    faults(error_rates={"429": 1.0})
    with pytest.raises(openai.RateLimitError) as raised:
        client.chat.completions.create(model=model, messages=MESSAGES)
    assert raised.value.code == "rate_limit_exceeded"
    assert float(raised.value.response.headers["retry-after"]) > 0
    assert float(raised.value.response.headers["retry-after-ms"]) > 0


def test_insufficient_quota_raises_RateLimitError_without_retry_after(client, model, faults):
    faults(insufficient_quota_keys=[API_KEY])
    with pytest.raises(openai.RateLimitError) as raised:
        client.chat.completions.create(model=model, messages=MESSAGES)
    assert raised.value.code == "insufficient_quota"
    assert isinstance(raised.value.body, dict) and raised.value.body["type"] == "insufficient_quota"
    assert "retry-after" not in raised.value.response.headers
    assert "retry-after-ms" not in raised.value.response.headers


@pytest.mark.parametrize("status", [500, 502, 503])
def test_injected_server_error_raises_InternalServerError(client, model, faults, status):
    faults(error_rates={str(status): 1.0})
    with pytest.raises(openai.InternalServerError) as raised:
        client.chat.completions.create(model=model, messages=MESSAGES)
    assert raised.value.status_code == status


async def test_async_client_raises_the_same_error_classes(aclient, model, faults):
    faults(error_rates={"503": 1.0})
    with pytest.raises(openai.InternalServerError):
        await aclient.chat.completions.create(model=model, messages=MESSAGES)


@pytest.mark.timeout(30)  # the guard: a client that ignored its timeout would wait on the hang forever
def test_hang_raises_APITimeoutError(sim, model, faults):
    faults(hang_rate=1.0)
    started = time.monotonic()
    with sdk_client(sim, timeout=0.5) as client, pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(model=model, messages=MESSAGES)
    assert time.monotonic() - started >= 0.95 * 0.5  # it waited its 0.5 s timeout, not an immediate failure


def test_sdk_retries_429_after_the_advertised_retry_after_ms(sim, model, faults):
    # 0.2 s is well below the SDK's own backoff (0.5 s, then 1 s), so honouring the header shows in the timing.
    faults(error_rates={"429": 1.0}, retry_after_s=0.2)
    probe = httpx.post(
        f"{sim.base_url}/chat/completions",
        json={"model": model, "messages": MESSAGES},
        headers={"Authorization": f"Bearer {API_KEY}"},
    )
    assert probe.status_code == 429
    assert probe.headers["retry-after-ms"] == "200"
    advertised_s = 0.2
    before = requests_seen(sim)
    started = time.monotonic()
    with sdk_client(sim, max_retries=2) as client, pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model=model, messages=MESSAGES)
    elapsed = time.monotonic() - started
    assert requests_seen(sim) - before == 3, "max_retries=2 means one request and two retries"
    # the baseline: the SDK's own backoff (0.5 s then 1 s, less up to 25 % jitter), measured here on a 500,
    # which carries no retry-after
    faults(error_rates={"500": 1.0})
    before = requests_seen(sim)
    started = time.monotonic()
    with sdk_client(sim, max_retries=2) as client, pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model=model, messages=MESSAGES)
    backoff_elapsed = time.monotonic() - started
    assert requests_seen(sim) - before == 3
    # Two waits of retry-after-ms each: at least the advertised time, and well short of the backoff
    assert elapsed >= 2 * advertised_s * 0.9
    assert elapsed < 0.8 * backoff_elapsed, (elapsed, backoff_elapsed)


def test_mid_stream_error_event_raises_APIError_from_the_iterator(client, model, faults):
    faults(stream_error_rate=1.0)
    stream = client.chat.completions.create(model=model, messages=MESSAGES, stream=True)
    with pytest.raises(openai.APIError) as raised:
        for _ in stream:
            pass
    assert isinstance(raised.value.body, dict) and raised.value.body.get("message")


async def test_async_mid_stream_error_event_raises_APIError_from_the_iterator(aclient, model, faults):
    faults(stream_error_rate=1.0)
    stream = await aclient.chat.completions.create(model=model, messages=MESSAGES, stream=True)
    with pytest.raises(openai.APIError):
        async for _ in stream:
            pass


def test_dropped_connection_mid_stream_raises_APIConnectionError(client, model, faults):
    faults(drop_mid_stream_rate=1.0)
    stream = client.chat.completions.create(model=model, messages=MESSAGES, stream=True)
    with pytest.raises(openai.APIConnectionError):
        for _ in stream:
            pass


async def test_async_dropped_connection_mid_stream_raises_APIConnectionError(aclient, model, faults):
    faults(drop_mid_stream_rate=1.0)
    stream = await aclient.chat.completions.create(model=model, messages=MESSAGES, stream=True)
    with pytest.raises(openai.APIConnectionError):
        async for _ in stream:
            pass


# --- rate limits --------------------------------------------------------------------------------------------


def test_remaining_requests_header_counts_down_and_the_request_over_the_limit_gets_429(sim, model, limits):
    limits(rpm=3)
    with sdk_client(sim, api_key=unique_key()) as client:
        remaining = []
        for _ in range(3):
            raw = client.chat.completions.with_raw_response.create(model=model, messages=MESSAGES, max_tokens=1)
            assert raw.headers["x-ratelimit-limit-requests"] == "3"
            remaining.append(int(raw.headers["x-ratelimit-remaining-requests"]))
        assert remaining == [2, 1, 0]
        with pytest.raises(openai.RateLimitError) as raised:
            client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=1)
    assert raised.value.code == "rate_limit_exceeded"
    headers = raised.value.response.headers
    assert 0 < float(headers["retry-after"]) <= 60
    assert 0 < int(headers["retry-after-ms"]) <= 60_000


def test_remaining_tokens_header_decreases_with_each_request(sim, model, limits):
    limits(tpm=10_000)  # refills at about 167 tokens/s: far less than a request costs in the time between two
    messages = [{"role": "user", "content": "word " * 500}]
    with sdk_client(sim, api_key=unique_key()) as client:
        first = client.chat.completions.with_raw_response.create(model=model, messages=messages, max_tokens=1)
        second = client.chat.completions.with_raw_response.create(model=model, messages=messages, max_tokens=1)
    assert first.headers["x-ratelimit-limit-tokens"] == "10000"
    assert int(second.headers["x-ratelimit-remaining-tokens"]) < int(first.headers["x-ratelimit-remaining-tokens"])


def test_request_over_the_token_limit_gets_429_rate_limit_exceeded(sim, model, limits):
    limits(tpm=50)
    long_messages = [{"role": "user", "content": "word " * 200}]
    with sdk_client(sim, api_key=unique_key()) as client, pytest.raises(openai.RateLimitError) as raised:
        client.chat.completions.create(model=model, messages=long_messages, max_tokens=1)
    assert raised.value.code == "rate_limit_exceeded"


def test_rate_limits_are_per_api_key(sim, model, limits):
    limits(rpm=1)
    with sdk_client(sim, api_key=unique_key()) as first, sdk_client(sim, api_key=unique_key()) as second:
        first.chat.completions.create(model=model, messages=MESSAGES, max_tokens=1)
        with pytest.raises(openai.RateLimitError):
            first.chat.completions.create(model=model, messages=MESSAGES, max_tokens=1)
        second.chat.completions.create(model=model, messages=MESSAGES, max_tokens=1)


# --- prompt caching -----------------------------------------------------------------------------------------


def test_repeated_long_prompt_reports_cached_tokens_in_multiples_of_128(client, model):
    # A unique prefix, so no earlier test can have warmed the cache for this prompt.
    long_prompt = f"Session {uuid.uuid4()}. " + " ".join(f"fact {i} is about topic {i % 17}." for i in range(300))
    messages = [{"role": "system", "content": long_prompt}, {"role": "user", "content": "Summarize."}]
    assert count_messages(messages, model) >= 1024

    first = client.chat.completions.create(model=model, messages=messages, max_tokens=1)
    second = client.chat.completions.create(model=model, messages=messages, max_tokens=1)

    assert first.usage is not None and second.usage is not None
    first_cached = first.usage.prompt_tokens_details.cached_tokens if first.usage.prompt_tokens_details else 0
    assert not first_cached
    assert second.usage.prompt_tokens_details is not None
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached is not None and 1024 <= cached <= second.usage.prompt_tokens
    assert cached % 128 == 0


def test_short_prompt_is_never_cached(client, model):
    messages = [{"role": "user", "content": f"Short prompt {uuid.uuid4()}"}]
    client.chat.completions.create(model=model, messages=messages, max_tokens=1)
    second = client.chat.completions.create(model=model, messages=messages, max_tokens=1)
    assert second.usage is not None
    details = second.usage.prompt_tokens_details
    assert details is None or not details.cached_tokens
