"""The cache layer over the real simulated service, a real Redis, a real Memcached and SQLite files:
read-through with promotion, write-through, TTL jitter, stampede protection, per-request controls, tenant
isolation, corrupt entries, tier outages (fail-open, then recovery), the Memcached size limit, stream replay."""

import asyncio
import logging
import time

import pytest
from conftest import Counting
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from labkit.cache import CacheControls, CacheLayer, Entry, MemoryTier, tenant_hash
from labkit.cache.memcached_tier import MemcachedTier
from labkit.cache.redis_tier import RedisTier
from labkit.cache.sqlite_tier import SQLiteTier
from labkit.chain import Chain
from labkit.endpoint import Endpoint
from labkit.lab.services import start_memcached, start_redis
from labkit.request import ChatRequest
from labkit.stream import merge_chunks
from labkit.transports.sdk import OpenAITransport

MODEL = "gpt-4o"


@pytest.fixture
async def transport(sim):
    async with OpenAITransport(Endpoint(sim.base_url)) as transport:
        yield transport


def ask(prompt="What is a cache?", *, stream=False, controls=None, **params):
    return ChatRequest.create(
        MODEL, prompt, stream=stream, controls=controls, **{"max_tokens": 20, "temperature": 0, **params}
    )


@pytest.fixture
def prefix():
    return f"t{time.monotonic_ns()}:"


@pytest.fixture
async def tiers(redis_service, tmp_path, prefix):
    made = [MemoryTier(), RedisTier(redis_service.url, prefix=prefix), SQLiteTier(tmp_path / "l3.db")]
    yield made
    await made[1].clear()
    for tier in made:
        await tier.aclose()


def build(transport, tiers, **options):
    layer = CacheLayer(tiers, **options)
    counting = Counting()
    return Chain(transport, [layer, counting]), layer, counting


# -- read-through, write-through ---------------------------------------------------------------------------------


async def test_a_repeat_is_served_from_l1_without_an_upstream_call(transport, tiers):
    chain, layer, upstream = build(transport, tiers)
    first = await chain(ask())
    second = await chain(ask())
    assert upstream.calls == 1 and layer.stats.hits == 1
    assert layer.stats.tiers["memory"].hits == 1
    assert second.choices[0].message.content == first.choices[0].message.content


async def test_a_miss_is_written_through_to_every_tier(transport, tiers):
    chain, layer, _ = build(transport, tiers)
    request = ask("write me through")
    await chain(request)
    key = layer.cache_key(request)
    for tier in tiers:
        assert await tier.get(key) is not None, tier.name


async def test_a_lower_tier_hit_is_promoted_into_the_tiers_above(transport, tiers):
    chain, layer, upstream = build(transport, tiers)
    request = ask("promote me")
    await chain(request)
    key = layer.cache_key(request)
    await tiers[0].clear()
    await tiers[1].delete(key)
    await chain(request)  # only SQLite has it
    await layer.flush()
    assert upstream.calls == 1 and layer.stats.tiers["sqlite"].hits == 1
    assert key in tiers[0] and await tiers[1].get(key) is not None
    assert layer.stats.tiers["memory"].promotions == 1 and layer.stats.tiers["redis"].promotions == 1


async def test_a_caller_editing_its_answer_does_not_change_the_cached_one(transport, tiers):
    chain, _, _ = build(transport, tiers)
    first = await chain(ask("edit me"))
    original = first.choices[0].message.content
    hit = await chain(ask("edit me"))
    hit.choices[0].message.content = "vandalised"
    again = await chain(ask("edit me"))
    assert again.choices[0].message.content == original


async def test_a_hit_does_not_carry_the_rate_limit_headers_of_the_answer_it_was_stored_from(transport):
    chain, _, _ = build(transport, [MemoryTier()])
    first = await chain(ask("headers stay upstream"))
    hit = await chain(ask("headers stay upstream"))
    assert getattr(first, "_headers", None) is not None  # the transport's own answer keeps them
    assert getattr(hit, "_headers", None) is None
    assert hit.choices[0].message.content == first.choices[0].message.content


async def test_the_l1_weighs_an_answer_close_to_its_stored_size_without_encoding_it(transport):
    layer = CacheLayer([MemoryTier()])
    request = ask("weigh me")
    entry = Entry.of_completion(layer.cache_key(request), await transport(request), 60)
    weight = entry.weight
    assert entry._blob is None  # weighed from its text, not encoded
    assert abs(weight - entry.size) <= 0.25 * entry.size


async def test_entries_written_together_get_jittered_ttls(transport):
    memory = MemoryTier()
    chain, layer, _ = build(transport, [memory], ttl_s=100, jitter=0.2)
    requests = [ask(f"jitter {i}") for i in range(12)]
    await asyncio.gather(*(chain(r) for r in requests))
    ttls = [memory.get_now(layer.cache_key(r)).ttl_left() for r in requests]
    assert all(79 <= t <= 121 for t in ttls)
    assert max(ttls) - min(ttls) > 5  # not all expiring in the same second


async def test_a_burst_on_a_cold_key_makes_one_upstream_call(transport, tiers):
    chain, _layer, upstream = build(transport, tiers)
    answers = await asyncio.gather(*(chain(ask("stampede")) for _ in range(20)))
    assert upstream.calls == 1
    assert len({a.choices[0].message.content for a in answers}) == 1


async def test_when_a_hot_entry_expires_one_request_recomputes_it(transport):
    chain, _, upstream = build(transport, [MemoryTier()], jitter=0.0)
    hot = ask("hot key", controls={"cache_ttl": 0.2})
    await chain(hot)
    await asyncio.sleep(0.25)
    await asyncio.gather(*(chain(hot) for _ in range(20)))
    assert upstream.calls == 2


async def test_without_stampede_protection_a_burst_goes_upstream_each_time(transport):
    chain, _, upstream = build(transport, [MemoryTier()], stampede_protection=False)
    await asyncio.gather(*(chain(ask("no protection")) for _ in range(5)))
    assert upstream.calls == 5


async def test_sampled_requests_are_not_cached_by_default(transport):
    chain, layer, upstream = build(transport, [MemoryTier()])
    for _ in range(2):
        await chain(ask("sampled", temperature=0.8))
    assert upstream.calls == 2 and layer.stats.bypassed == 2


# -- per-request controls -----------------------------------------------------------------------------------------


async def test_no_cache_skips_reading_but_refreshes_the_entry(transport):
    memory = MemoryTier()
    chain, layer, upstream = build(transport, [memory])
    await chain(ask("refresh"))
    await chain(ask("refresh", controls={"no_cache": True}))
    assert upstream.calls == 2 and layer.stats.stored == 2


async def test_no_store_skips_writing(transport):
    memory = MemoryTier()
    chain, _, upstream = build(transport, [memory])
    await chain(ask("private", controls={"no_store": True}))
    await chain(ask("private"))
    assert upstream.calls == 2 and len(memory) == 1


async def test_a_per_request_ttl_sets_the_expiry(transport):
    memory = MemoryTier()
    chain, layer, _ = build(transport, [memory], jitter=0.0)
    request = ask("short lived", controls={"cache_ttl": 5})
    await chain(request)
    assert 4 < memory.get_now(layer.cache_key(request)).ttl_left() <= 5


async def test_litellm_style_cache_controls_are_understood(transport):
    memory = MemoryTier()
    chain, _, upstream = build(transport, [memory])
    await chain(ask("gateway", controls={"cache": {"no-store": True}}))
    assert len(memory) == 0
    await chain(ask("gateway"))
    await chain(ask("gateway", controls={"cache": {"no-cache": True}}))
    assert upstream.calls == 3


async def test_namespaces_do_not_share_entries(transport):
    chain, _, upstream = build(transport, [MemoryTier()])
    await chain(ask("namespaced", controls={"cache_namespace": "docs"}))
    await chain(ask("namespaced", controls={"cache_namespace": "chat"}))
    await chain(ask("namespaced", controls={"cache_namespace": "docs"}))
    assert upstream.calls == 2


@pytest.mark.parametrize(
    "controls, message",
    [
        ({"no_cache": "yes"}, "no_cache"),
        ({"cache_ttl": -1}, "ttl"),
        ({"cache_ttl": "60"}, "ttl"),
        ({"cache_namespace": "a:b"}, "namespace"),
        ({"cache_replay": "slow"}, "replay"),
        ({"cache": ["no-cache"]}, "mapping"),
        ({"tenant": ""}, "tenant"),
    ],
)
async def test_bad_controls_are_refused_before_anything_is_sent(transport, controls, message):
    chain, _, upstream = build(transport, [MemoryTier()])
    with pytest.raises(ValueError, match=message):
        await chain(ask("bad", controls=controls))
    assert upstream.calls == 0


# -- tenants ------------------------------------------------------------------------------------------------------


async def test_one_tenants_answer_is_never_served_to_another(transport, tiers):
    chain, _, upstream = build(transport, tiers)
    await chain(ask("tenant question", controls={"api_key": "sk-tenant-a-secret"}))
    await chain(ask("tenant question", controls={"api_key": "sk-tenant-b-secret"}))
    await chain(ask("tenant question", controls={"api_key": "sk-tenant-a-secret"}))
    assert upstream.calls == 2


async def test_the_default_tenant_comes_from_the_layers_api_key(transport):
    memory = MemoryTier()
    chain_a, _, up_a = build(transport, [memory], api_key="sk-a")
    chain_b, _, up_b = build(transport, [memory], api_key="sk-b")  # same store, another key
    await chain_a(ask("shared store"))
    await chain_b(ask("shared store"))
    assert up_a.calls == 1 and up_b.calls == 1


async def test_the_api_key_is_never_stored_in_clear(transport, tiers, redis_service, prefix):
    import redis.asyncio as aioredis

    secret = "sk-very-secret-key-123"
    chain, layer, _ = build(transport, tiers)
    request = ask("where is my key", controls={"api_key": secret})
    await chain(request)
    key = layer.cache_key(request)
    assert secret not in key and tenant_hash(secret) in key
    client = aioredis.Redis.from_url(redis_service.url)
    try:
        names = [n async for n in client.scan_iter(match=prefix + "*")]
        values = [await client.get(n) for n in names]
    finally:
        await client.aclose()
    assert names and not any(secret.encode() in n or secret.encode() in v for n, v in zip(names, values, strict=True))


# -- safety -------------------------------------------------------------------------------------------------------


async def test_a_corrupt_redis_entry_is_a_miss_deleted_and_counted(transport, redis_service, prefix, caplog):
    redis_tier = RedisTier(redis_service.url, prefix=prefix)
    chain, layer, upstream = build(transport, [redis_tier])
    request = ask("corrupt me")
    await redis_tier.set_raw(layer.cache_key(request), b'{"v": 1, "kind": "completion", "data": "garbage"}')
    with caplog.at_level(logging.WARNING, logger="labkit.cache"):
        answer = await chain(request)
    assert answer.choices[0].message.content and upstream.calls == 1
    assert layer.stats.tiers["redis"].corrupt == 1 and "corrupt entry deleted" in caplog.text
    assert await redis_tier.get(layer.cache_key(request)) is not None  # replaced by the fresh answer
    await redis_tier.aclose()


async def test_a_corrupt_sqlite_row_falls_through_to_upstream(transport, tmp_path):
    sqlite = SQLiteTier(tmp_path / "corrupt.db")
    chain, layer, upstream = build(transport, [MemoryTier(), sqlite])
    request = ask("corrupt row")
    await sqlite.set_raw(layer.cache_key(request), b"\x80\x04pickled")
    await chain(request)
    assert upstream.calls == 1 and layer.stats.tiers["sqlite"].corrupt == 1
    await sqlite.aclose()


# -- a spill tier: written with what L1 evicts ----------------------------------------------------------------------


@pytest.fixture
async def spill(tmp_path):
    tier = SQLiteTier(tmp_path / "spill.db", private=True, spill=True)
    yield tier
    await tier.aclose()


async def test_a_spill_tier_is_not_written_while_memory_keeps_the_answer(transport, spill):
    chain, layer, _ = build(transport, [MemoryTier(max_entries=2), spill])
    await chain(ask("kept in memory"))
    assert len(spill) == 0 and layer.stats.tiers["sqlite"].writes == 0


async def test_an_answer_memory_evicts_is_served_from_the_spill_tier(transport, spill):
    chain, layer, upstream = build(transport, [MemoryTier(max_entries=2), spill])
    first = await chain(ask("evicted first"))
    for prompt in ("second", "third"):
        await chain(ask(prompt))
    assert len(spill) == 1 and layer.stats.tiers["sqlite"].writes == 1
    again = await chain(ask("evicted first"))
    assert upstream.calls == 3 and layer.stats.tiers["sqlite"].hits == 1
    assert again.choices[0].message.content == first.choices[0].message.content


async def test_a_miss_no_lower_tier_may_hold_counts_a_miss_there_without_asking_it(transport, spill):
    chain, layer, upstream = build(transport, [MemoryTier(max_entries=2), spill])
    asked: list[str] = []
    spill.get = lambda key: asked.append(key)  # notes any read (the layer would then count the tier as failing)
    await chain(ask("never stored"))
    assert upstream.calls == 1 and asked == []
    assert layer.stats.tiers["sqlite"].misses == 1 and layer.stats.tiers["memory"].misses == 1


async def test_clearing_memory_spills_nothing(transport, spill):
    memory = MemoryTier(max_entries=2)
    chain, _, _ = build(transport, [memory, spill])
    await chain(ask("cleared"))
    await memory.clear()
    assert len(memory) == 0 and len(spill) == 0


async def test_an_expired_answer_is_not_spilled(transport, spill):
    chain, _, _ = build(transport, [MemoryTier(max_entries=1), spill])
    await chain(ask("short-lived", controls={"cache_ttl": 0.05}))
    await asyncio.sleep(0.1)
    await chain(ask("pushes it out"))
    assert len(spill) == 0


def test_a_spill_tier_needs_a_memory_tier_above_it(spill):
    with pytest.raises(ValueError, match="MemoryTier first"):
        CacheLayer([spill])


async def test_an_oversized_entry_is_refused_by_memcached_and_kept_by_the_others(memcached_service, tmp_path):
    import base64
    import os

    huge = base64.b64encode(os.urandom(1_200_000)).decode()

    async def upstream(request):
        return ChatCompletion.model_validate({
            "id": "c", "object": "chat.completion", "created": 0, "model": MODEL,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": huge}, "finish_reason": "stop"}],
        })  # fmt: skip

    memcached = MemcachedTier(memcached_service.url, prefix=f"big{time.monotonic_ns()}:")
    sqlite = SQLiteTier(tmp_path / "big.db")
    layer = CacheLayer([memcached, sqlite])
    chain = Chain(upstream, [layer])
    request = ask("a very long answer")
    answer = await chain(request)
    assert answer.choices[0].message.content == huge
    assert layer.stats.tiers["memcached"].refused == 1 and layer.stats.tiers["memcached"].errors == 0
    assert layer.tier_state()["memcached"]["down"] is False
    assert await sqlite.get(layer.cache_key(request)) is not None
    await memcached.aclose()
    await sqlite.aclose()


# -- outages: fail-open, then recovery ------------------------------------------------------------------------------


@pytest.fixture
def own_servers(monkeypatch):
    """Servers this test may stop and restart (never the session's shared ones)."""
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.delenv("MEMCACHED_URL", raising=False)
    started = []

    def start(kind):
        service = start_redis() if kind == "redis" else start_memcached()
        started.append(service)
        return service

    yield start
    for service in started:
        service.stop()


@pytest.mark.parametrize("kind", ["redis", "memcached"])
async def test_a_tier_that_goes_down_is_bypassed_and_used_again_when_it_returns(
    transport, own_servers, tmp_path, kind, caplog
):
    service = own_servers(kind)
    remote = RedisTier(service.url) if kind == "redis" else MemcachedTier(service.url)
    memory = MemoryTier()
    chain, layer, _ = build(transport, [memory, remote, SQLiteTier(tmp_path / "l3.db")], retry_after_s=0.3)
    await chain(ask("before the outage"))
    await asyncio.to_thread(service.stop)
    with caplog.at_level(logging.WARNING, logger="labkit.cache"):
        answers = [await chain(ask(f"during the outage {i}")) for i in range(4)]
        memory_only = ask("before the outage")
        await memory.clear()
        from_disk = await chain(memory_only)  # L1 empty, remote down: SQLite answers
    assert all(a.choices[0].message.content for a in answers) and from_disk.choices[0].message.content
    stats = layer.stats.tiers[kind]
    assert stats.outages == 1 and stats.errors >= 1 and stats.skipped >= 1
    assert layer.stats.tiers["sqlite"].hits == 1
    assert f"cache tier {kind} is down" in caplog.text
    await asyncio.to_thread(service.restart)
    await asyncio.sleep(0.35)
    writes_before = stats.writes
    await chain(ask("after the recovery"))
    assert stats.recoveries == 1 and stats.writes == writes_before + 1
    assert layer.tier_state()[kind]["down"] is False
    await layer.aclose()


# -- streams ----------------------------------------------------------------------------------------------------------


async def drain(stream):
    """Text, time to first chunk and duration of a stream."""
    started = time.perf_counter()
    first = None
    parts = []
    async with stream:
        async for chunk in stream:
            first = first if first is not None else time.perf_counter() - started
            parts.extend(c.delta.content or "" for c in chunk.choices)
    return "".join(parts), first, time.perf_counter() - started


async def test_a_stream_is_replayed_with_a_flag_and_the_same_chunks(transport, tiers):
    chain, _layer, upstream = build(transport, tiers)
    live = await chain(ask("stream me", stream=True))
    live_text, _, _ = await drain(live)
    replayed = await chain(ask("stream me", stream=True))
    assert replayed.info["source"] == "cache" and replayed.info["cache_replay"] == "instant"
    assert live.info["source"] == "upstream"
    text, _, _ = await drain(replayed)
    assert text == live_text and upstream.calls == 1


async def test_a_paced_replay_keeps_the_original_timing_and_an_instant_one_does_not(transport):
    memory = MemoryTier()
    chain, layer, _ = build(transport, [memory])
    request = ask("pace me", stream=True, max_tokens=40)
    _, _live_first, _live_total = await drain(await chain(request))
    recorded = memory.get_now(layer.cache_key(request)).chunks
    _, _, instant_total = await drain(await chain(request.with_controls(cache_replay="instant")))
    paced = await chain(request.with_controls(cache_replay="paced"))
    assert paced.info["cache_replay"] == "paced"
    _, paced_first, paced_total = await drain(paced)
    assert paced_first >= 0.9 * recorded[0].at_s and paced_total >= 0.9 * recorded[-1].at_s
    assert instant_total < recorded[-1].at_s / 2


async def test_a_merged_replay_is_one_chunk_with_the_whole_text_and_the_usage(transport):
    memory = MemoryTier()
    chain, layer, _ = build(transport, [memory])
    request = ask("merge me", stream=True, max_tokens=40)
    live_text, _, _ = await drain(await chain(request))
    live_chunks = [r.chunk for r in memory.get_now(layer.cache_key(request)).chunks]
    merged = await chain(request.with_controls(cache_replay="merged"))
    assert merged.info["cache_replay"] == "merged"
    async with merged:
        chunks = [chunk async for chunk in merged]
    answer, usage = chunks
    assert answer.choices[0].delta.role == "assistant" and answer.choices[0].delta.content == live_text
    assert answer.choices[0].finish_reason == next(c.choices[0].finish_reason for c in live_chunks[::-1] if c.choices)
    assert answer.id == live_chunks[0].id and usage.usage == live_chunks[-1].usage


def test_an_answer_with_several_choices_is_not_merged():
    def chunk(index, content):
        return ChatCompletionChunk.model_validate(
            {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": MODEL,
             "choices": [{"index": index, "delta": {"content": content}, "finish_reason": None}]}
        )  # fmt: skip

    chunks = [chunk(0, "a"), chunk(1, "b")]
    assert merge_chunks(chunks) == chunks


def test_an_unknown_replay_pace_is_refused():
    with pytest.raises(ValueError, match="'replay' must be one of instant, paced, merged"):
        CacheControls.of({"cache_replay": "fast"})


async def test_a_stream_the_caller_closes_early_is_not_stored(transport):
    memory = MemoryTier()
    chain, _, upstream = build(transport, [memory])
    stream = await chain(ask("half read", stream=True, max_tokens=40))
    async with stream:
        async for _ in stream:
            break
    assert len(memory) == 0
    await drain(await chain(ask("half read", stream=True, max_tokens=40)))
    assert upstream.calls == 2


async def test_a_plain_request_does_not_get_a_streamed_entry(transport):
    chain, _, upstream = build(transport, [MemoryTier()])
    await drain(await chain(ask("both ways", stream=True)))
    answer = await chain(ask("both ways"))
    assert isinstance(answer, ChatCompletion) and upstream.calls == 2


# -- bad configuration, and the workload ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tiers_, options, message",
    [
        ([], {}, "at least one tier"),
        ([MemoryTier(name="a"), MemoryTier(name="a")], {}, "distinct"),
        ([MemoryTier()], {"ttl_s": 0}, "ttl_s"),
        ([MemoryTier()], {"jitter": 1.5}, "jitter"),
        ([MemoryTier()], {"replay_pace": "fast"}, "replay"),
        ([MemoryTier()], {"namespace": "a:b"}, "namespace"),
    ],
)
def test_a_misconfigured_layer_is_refused(tiers_, options, message):
    with pytest.raises(ValueError, match=message):
        CacheLayer(tiers_, **options)


def test_a_replay_with_a_bad_pace_or_speed_is_refused():
    from labkit.cache import replay

    with pytest.raises(ValueError, match="pace"):
        replay([], "slow")
    with pytest.raises(ValueError, match="speed"):
        replay([], "paced", speed=0)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"n_requests": 0}, "n_requests"),
        ({"exponent": -1}, "exponent"),
        ({"paraphrase_share": 1.5}, "paraphrase_share"),
        ({"paraphrase_share": 0.7, "hard_negative_share": 0.5}, "exceed"),
    ],
)
def test_a_bad_workload_spec_is_refused(changes, message):
    from labkit.lessons.cache.workload import CacheWorkloadSpec

    with pytest.raises(ValueError, match=message):
        CacheWorkloadSpec.load(**changes)


def test_the_cache_workload_is_seeded_and_mixes_wordings():
    from labkit.lessons.cache.workload import CacheWorkloadSpec, cache_workload

    spec = CacheWorkloadSpec.load(n_requests=400, paraphrase_share=0.3, hard_negative_share=0.1, seed=3)
    first, again = cache_workload(spec), cache_workload(spec)
    assert first == again and first != cache_workload(spec.replace(seed=4))
    shares = {w: sum(q.wording == w for q in first) / len(first) for w in ("paraphrase", "hard_negative")}
    assert 0.2 < shares["paraphrase"] < 0.4 and 0.05 < shares["hard_negative"] < 0.15
    assert all(("~" in q.meaning) == (q.wording == "hard_negative") for q in first)
