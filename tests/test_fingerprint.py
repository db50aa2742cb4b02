"""The canonical fingerprint: equal requests share a key, different answers never do."""

import pytest

from labkit.fingerprint import canonical_json, fingerprint
from labkit.request import ChatRequest

MESSAGES = [{"role": "user", "content": "Explain token buckets."}]


def key(**params):
    return ChatRequest.create("gpt-4o", MESSAGES, **params).key


def test_key_is_sha256_hex():
    assert len(key()) == 64
    int(key(), 16)


def test_same_request_same_key():
    assert key(temperature=0, max_tokens=100) == key(max_tokens=100, temperature=0)


@pytest.mark.parametrize(
    "other",
    [
        {"temperature": 0.7},
        {"max_tokens": 50},
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
        {"seed": 7},
        {"response_format": {"type": "json_object"}},
    ],
)
def test_any_generation_parameter_splits_the_key(other):
    assert key(temperature=0, max_tokens=100) != key(**{"temperature": 0, "max_tokens": 100, **other})


def test_model_splits_the_key():
    assert ChatRequest.create("gpt-4o", MESSAGES).key != ChatRequest.create("gpt-4o-mini", MESSAGES).key


def test_message_role_and_order_split_the_key():
    a = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert fingerprint("m", a, {}) != fingerprint("m", list(reversed(a)), {})
    assert fingerprint("m", [{"role": "user", "content": "Hi"}], {}) != fingerprint(
        "m", [{"role": "assistant", "content": "Hi"}], {}
    )


def test_volatile_fields_do_not_split_the_key():
    assert key(user="alice", metadata={"trace": "1"}) == key(user="bob")
    assert ChatRequest.create("gpt-4o", MESSAGES, metadata={"request_id": "r1"}).key == key()


def test_caller_marked_volatile_params_are_ignored():
    assert fingerprint("m", MESSAGES, {"x_trace": 1}, volatile={"x_trace"}) == fingerprint("m", MESSAGES, {})


def test_streaming_does_not_split_the_key():
    assert ChatRequest.create("gpt-4o", MESSAGES, stream=True).key == key()


def test_integral_floats_and_api_defaults_are_normalised():
    assert key(temperature=0.0) == key(temperature=0)
    assert key(temperature=1, top_p=1.0, n=1) == key()


def test_canonical_json_is_sorted_and_compact():
    assert canonical_json("m", MESSAGES, {"b": 1, "a": 2}) == (
        b'{"messages":[{"content":"Explain token buckets.","role":"user"}],"model":"m","params":{"a":2,"b":1}}'
    )


def test_request_rejects_empty_messages_and_reserved_params():
    with pytest.raises(ValueError):
        ChatRequest.create("gpt-4o", [])
    with pytest.raises(ValueError):
        ChatRequest(model="gpt-4o", messages=MESSAGES, params={"stream": True})


def test_stream_body_always_asks_for_usage():
    body = ChatRequest.create("gpt-4o", MESSAGES, stream=True).body()
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
