"""labkit.body: a cache stores an answer's JSON as the transport received it, and only for the object parsed from it."""

from __future__ import annotations

import orjson
import pytest
from openai.types.chat import ChatCompletion

from labkit.body import body_of, keep_body, lenient_model, rebuild
from labkit.cache.base import Entry, encode
from labkit.cache.layer import CacheLayer
from labkit.cache.memory import MemoryTier
from labkit.chain import Chain
from labkit.request import ChatRequest
from labkit.transports.lean import LeanTransport
from labkit.transports.pool import ClientPool
from labkit.transports.sdk import OpenAITransport

# spaced as no encoder would write it, and with a finish_reason the SDK's types do not know
ODD_BODY = (
    b'{ "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "gpt-4o",\n'
    b'  "choices": [ { "index": 0, "finish_reason": "content_filter_v9",'
    b' "message": { "role": "assistant", "content": "kept as it came" } } ] }'
)


def parsed(body: bytes) -> ChatCompletion:
    """What a transport does with a body: parse it (leniently) and note where the completion came from."""
    completion = lenient_model(ChatCompletion, orjson.loads(body))
    keep_body(completion, body)
    return completion


def test_an_entry_stores_the_body_byte_for_byte():
    entry = Entry.of_completion("k", parsed(ODD_BODY), ttl_s=60)
    assert ODD_BODY in encode(entry)


def test_a_body_the_types_do_not_validate_is_still_served_from_the_entry():
    served = Entry.of_completion("k", parsed(ODD_BODY), ttl_s=60).completion
    assert served.choices[0].message.content == "kept as it came"
    assert served.choices[0].finish_reason == "content_filter_v9"


def test_a_changed_copy_is_encoded_not_stored_as_the_originals_body():
    copy = parsed(ODD_BODY).model_copy(update={"model": "gpt-4o-mini"})
    assert body_of(copy) is None
    assert Entry.of_completion("k", copy, ttl_s=60).completion.model == "gpt-4o-mini"


def test_the_note_is_not_part_of_the_answer():
    assert "_labkit_body" not in parsed(ODD_BODY).model_dump_json()


def test_rebuild_gives_each_caller_its_own_object():
    assert rebuild(ODD_BODY) is not rebuild(ODD_BODY)


@pytest.mark.parametrize("kind", ["lean", "sdk"])
async def test_a_cache_miss_stores_what_the_service_sent(fresh_sim, kind):
    pool = ClientPool()
    transport = (
        LeanTransport(fresh_sim.endpoint, pool=pool)
        if kind == "lean"
        else OpenAITransport(fresh_sim.endpoint, pool=pool)
    )
    memory = MemoryTier()
    cache = CacheLayer([memory])
    try:
        answer = await Chain(transport, [cache]).complete("hello", model="gpt-4o", temperature=0)
        body = body_of(answer)
        assert body is not None and orjson.loads(body)["id"] == answer.id
        key = cache.cache_key(ChatRequest.create("gpt-4o", "hello", temperature=0))
        assert body in memory.get_now(key).blob
        hit = await Chain(transport, [cache]).complete("hello", model="gpt-4o", temperature=0)
        assert hit.model_dump() == answer.model_dump() and hit is not answer
    finally:
        await pool.aclose()
