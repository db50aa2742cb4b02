"""Cache tiers on their own, against real servers: the entry codec, L1 bounds, Redis, Memcached (its 1 MiB item
limit), SQLite (survives a restart), and corrupt blobs in every tier."""

import asyncio
import base64
import gc
import os
import time

import orjson
import pytest
import redis
import redis.asyncio
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from labkit.cache import CorruptEntry, Entry, EntryTooLarge, MemoryTier, RecordedChunk, decode
from labkit.cache.base import FORMAT_VERSION, compress
from labkit.cache.memcached_tier import MEMCACHED_ITEM_LIMIT, MemcachedTier
from labkit.cache.redis_tier import RedisTier
from labkit.cache.sqlite_tier import SQLiteTier


def completion(text: str = "hello", tokens: int = 5) -> ChatCompletion:
    return ChatCompletion.model_validate(
        {
            "id": "chatcmpl-t",
            "object": "chat.completion",
            "created": 1,
            "model": "gpt-4o",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": tokens, "total_tokens": 3 + tokens},
        }
    )


def chunk(i: int, text: str) -> ChatCompletionChunk:
    return ChatCompletionChunk.model_validate(
        {
            "id": "chatcmpl-s",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "gpt-4o",
            "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
        }
    )


def entry(key: str = "k1", text: str = "hello", ttl: float = 60.0) -> Entry:
    return Entry.of_completion(key, completion(text), ttl)


# -- the codec ------------------------------------------------------------------------------------------------


def test_completion_entry_round_trips_through_versioned_json():
    original = entry()
    document = orjson.loads(original.blob)
    assert document["v"] == FORMAT_VERSION and document["kind"] == "completion" and document["key"] == "k1"
    back = decode(original.blob, expected_key="k1")
    assert back.completion == original.completion and back.expires_at == original.expires_at


def test_stream_entry_keeps_chunks_and_their_timing():
    chunks = [RecordedChunk(0.1 * i, chunk(i, f"w{i} ")) for i in range(5)]
    back = decode(Entry.of_stream("s", chunks, 60).blob)
    assert [c.at_s for c in back.chunks] == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    assert [c.chunk.choices[0].delta.content for c in back.chunks] == [f"w{i} " for i in range(5)]


def recorded_stream(n: int = 150) -> list[RecordedChunk]:
    return [RecordedChunk(0.01 * i, chunk(i, f"w{i} ")) for i in range(n)]


def objects_kept_per_entry(make_entry) -> float:
    """Objects the collector tracks, per entry, after 50 entries made by `make_entry` sit in an L1."""
    tier = MemoryTier()
    gc.collect()
    before = len(gc.get_objects())
    for i in range(50):
        tier.set_now(f"k{i}", make_entry(f"k{i}"))
    gc.collect()
    return (len(gc.get_objects()) - before) / 50


def test_a_cached_stream_keeps_a_handful_of_objects_not_one_model_per_chunk():
    # 150 pydantic chunks are ~1,500 objects that every full collection walks (the capstone's p95 TTFT)
    assert objects_kept_per_entry(lambda key: Entry.of_stream(key, recorded_stream(), 60)) <= 10


def test_a_stream_read_back_from_a_blob_keeps_a_handful_of_objects_too():
    blob = Entry.of_stream("k", recorded_stream(), 60).blob
    assert objects_kept_per_entry(lambda key: decode(blob)) <= 10


def test_a_cached_completion_keeps_a_handful_of_objects_not_its_pydantic_models():
    # a completion's models were 12 objects per entry, kept for every miss, that every full collection walks
    assert objects_kept_per_entry(lambda key: Entry.of_completion(key, completion(), 60)) <= 5


def test_a_completion_read_back_from_a_blob_keeps_a_handful_of_objects_too():
    blob = entry().blob
    assert objects_kept_per_entry(lambda key: decode(blob)) <= 5


def test_a_completion_entry_hands_each_caller_its_own_copy():
    cached = Entry.of_completion("k", completion(), 60)
    first, second = cached.completion, cached.completion
    assert first == second == completion() and first is not second
    first.choices[0].message.content = "edited"
    assert cached.completion == completion()


def test_a_completion_entry_keeps_none_of_its_transports_attributes():
    answer = completion()
    answer._headers = {"x-ratelimit-remaining-requests": "9"}  # what OpenAITransport hangs on its answers
    assert "_headers" not in Entry.of_completion("k", answer, 60).completion.__dict__


def test_a_stream_entry_replays_the_chunks_it_recorded():
    recorded = recorded_stream(20)
    entry = Entry.of_stream("s", recorded, 60)
    assert [r.at_s for r in entry.chunks] == [r.at_s for r in recorded]
    assert [r.chunk for r in entry.chunks] == [r.chunk for r in recorded]


def test_the_merged_answer_is_rebuilt_for_each_caller():
    entry = Entry.of_stream("s", recorded_stream(20), 60)
    first, second = entry.merged, entry.merged
    assert first == second and first[0] is not second[0]  # a caller editing its chunk cannot change the next hit
    assert first[0].choices[0].delta.content == "".join(f"w{i} " for i in range(20))


def test_compressed_blobs_decode_too():
    assert decode(compress(entry().blob)).completion == completion()


@pytest.mark.parametrize(
    "blob",
    [
        b"\x80\x04\x95pickle",  # a pickle is never loaded
        b"not json",
        b"[1, 2]",
        orjson.dumps({"v": 99, "kind": "completion", "key": "k1", "created": 0, "expires": 1, "data": {}}),
        orjson.dumps({"v": FORMAT_VERSION, "kind": "completion", "key": "k1", "created": 0, "expires": 1, "data": {}}),
        orjson.dumps({"v": FORMAT_VERSION, "kind": "stream", "key": "k1", "created": 0, "expires": 1, "data": []}),
        orjson.dumps({"v": FORMAT_VERSION, "kind": "other", "key": "k1", "created": 0, "expires": 1, "data": {}}),
        b"Z" + b"not zlib",
    ],
    ids=["pickle", "text", "array", "version", "invalid-completion", "empty-stream", "kind", "bad-zlib"],
)
def test_bad_blobs_raise_corrupt_entry(blob):
    with pytest.raises(CorruptEntry):
        decode(blob)


def test_an_entry_stored_under_another_key_is_corrupt():
    with pytest.raises(CorruptEntry, match="another key"):
        decode(entry("k1").blob, expected_key="k2")


# -- L1 ---------------------------------------------------------------------------------------------------------


async def test_memory_tier_is_bounded_by_entries_in_lru_order():
    tier = MemoryTier(max_entries=3)
    for i in range(3):
        await tier.set(f"k{i}", entry(f"k{i}"), 60)
    await tier.get("k0")  # k0 becomes the most recently used
    await tier.set("k3", entry("k3"), 60)
    assert len(tier) == 3 and "k1" not in tier and "k0" in tier


async def test_memory_tier_is_bounded_by_bytes():
    one = entry("k0", "x" * 1000)
    tier = MemoryTier(max_entries=100, max_bytes=int(3.5 * one.weight))  # what the tier weighs an entry by
    for i in range(5):
        await tier.set(f"k{i}", entry(f"k{i}", "x" * 1000), 60)
    assert len(tier) == 3 and tier.bytes_used <= tier.max_bytes


async def test_memory_tier_skips_an_entry_larger_than_itself():
    tier = MemoryTier(max_bytes=100)
    await tier.set("big", entry("big", "x" * 1000), 60)
    assert len(tier) == 0 and tier.refused == 1


async def test_memory_tier_expires_entries():
    tier = MemoryTier()
    await tier.set("k", Entry.of_completion("k", completion(), 0.05), 0.05)
    assert await tier.get("k") is not None
    await asyncio.sleep(0.08)
    assert await tier.get("k") is None
    assert len(tier) == 0  # dropped when it was read expired


# -- Redis, Memcached, SQLite -----------------------------------------------------------------------------------


@pytest.fixture
async def redis_tier(redis_service):
    tier = RedisTier(redis_service.url, prefix=f"test:{time.monotonic_ns()}:")
    yield tier
    await tier.clear()
    await tier.aclose()


@pytest.fixture
async def memcached_tier(memcached_service):
    tier = MemcachedTier(memcached_service.url, prefix=f"t{time.monotonic_ns()}:")
    yield tier
    await tier.aclose()


@pytest.fixture
async def sqlite_tier(tmp_path):
    tier = SQLiteTier(tmp_path / "cache.db")
    yield tier
    await tier.aclose()


@pytest.fixture(params=["redis", "memcached", "sqlite"])
def remote(request):
    return request.getfixturevalue(f"{request.param}_tier")


async def test_remote_tier_round_trips_an_entry(remote):
    await remote.set("k1", entry("k1", "stored"), 60)
    got = await remote.get("k1")
    assert got is not None and got.completion.choices[0].message.content == "stored"
    assert await remote.get("missing") is None


async def test_remote_tier_raises_corrupt_entry_for_a_bad_blob(remote):
    await remote.set_raw("k1", b"{definitely not an entry")
    with pytest.raises(CorruptEntry):
        await remote.get("k1")
    await remote.delete("k1")
    assert await remote.get("k1") is None


async def test_remote_tier_honours_the_ttl(remote):
    await remote.set("k1", Entry.of_completion("k1", completion(), 1.0), 1.0)
    assert await remote.get("k1") is not None
    await asyncio.sleep(1.1)
    assert await remote.get("k1") is None


async def test_redis_tier_clear_deletes_only_its_own_prefix(redis_tier, redis_service):
    other = RedisTier(redis_service.url, prefix="other-prefix:")
    try:
        await other.set("keep", entry("keep"), 60)
        await redis_tier.set("k1", entry("k1"), 60)
        await redis_tier.clear()
        assert await redis_tier.get("k1") is None and await other.get("keep") is not None
    finally:
        await other.delete("keep")
        await other.aclose()


async def test_redis_set_many_pipelines_a_batch(redis_tier):
    await redis_tier.set_many([(f"k{i}", entry(f"k{i}", f"v{i}"), 60) for i in range(20)])
    got = await redis_tier.get("k7")
    assert got is not None and got.completion.choices[0].message.content == "v7"


async def test_a_burst_larger_than_the_redis_pool_waits_for_a_connection(redis_service):
    tier = RedisTier(redis_service.url, prefix=f"test:{time.monotonic_ns()}:", max_connections=4, timeout_s=2.0)
    try:
        await tier.set("hot", entry("hot"), 60)
        got = await asyncio.gather(*(tier.get("hot") for _ in range(300)))
        assert all(g is not None for g in got)
    finally:
        await tier.clear()
        await tier.aclose()


async def test_an_operation_that_finds_no_free_redis_connection_in_time_raises_a_clear_error(redis_service):
    tier = RedisTier(redis_service.url, prefix=f"test:{time.monotonic_ns()}:", max_connections=1, timeout_s=0.1)
    pauser = redis.asyncio.Redis.from_url(redis_service.url)
    try:
        await pauser.execute_command("CLIENT", "PAUSE", "500", "ALL")  # the server holds every command for 0.5 s
        slow = asyncio.create_task(tier.get("held"))  # takes the one connection and waits on the paused server
        await asyncio.sleep(0.01)
        with pytest.raises(redis.ConnectionError, match=r"no Redis connection free within 0\.1 s"):
            await tier.get("waiting")
        assert await slow is None  # the first one still completes once the server resumes
    finally:
        await pauser.aclose()
        await tier.aclose()


async def test_memcached_compresses_a_large_entry_and_serves_it(memcached_tier):
    big = entry("big", "lorem ipsum dolor " * 80_000)  # about 1.4 MB of JSON: over the item limit uncompressed
    assert big.size > MEMCACHED_ITEM_LIMIT
    await memcached_tier.set("big", big, 60)
    got = await memcached_tier.get("big")
    assert memcached_tier.compressed == 1
    assert got is not None and got.completion.choices[0].message.content == big.completion.choices[0].message.content


async def test_memcached_refuses_an_entry_over_the_item_limit_with_the_sizes(memcached_tier):
    noise = base64.b64encode(os.urandom(1_200_000)).decode()  # 1.6 MB that zlib cannot bring under 1 MiB
    with pytest.raises(EntryTooLarge, match=r"exceeds Memcached's item limit of 1048576 bytes"):
        await memcached_tier.set("huge", entry("huge", noise), 60)
    assert memcached_tier.refused == 1
    assert await memcached_tier.get("huge") is None


async def test_memcached_server_itself_rejects_an_item_over_1_mib(memcached_tier):
    import aiomcache

    with pytest.raises(aiomcache.exceptions.ClientException, match="too large"):
        await memcached_tier.set_raw("raw", os.urandom(1_100_000))


async def read_back(path, key: str) -> str | None:
    """What a new tier on the same file (a restarted process) reads for `key`: the answer's text, or None."""
    reopened = SQLiteTier(path)
    got = await reopened.get(key)
    await reopened.aclose()
    return None if got is None else got.completion.choices[0].message.content


async def test_sqlite_tier_survives_a_restart(tmp_path):
    path = tmp_path / "persist.db"
    first = SQLiteTier(path)
    await first.set("k1", entry("k1", "still here"), 60)
    await first.aclose()
    assert await read_back(path, "k1") == "still here"


async def test_sqlite_purge_deletes_expired_rows(sqlite_tier):
    await sqlite_tier.set("old", Entry.of_completion("old", completion(), 0.01), 0.01)
    await sqlite_tier.set("new", entry("new"), 60)
    await asyncio.sleep(0.03)
    assert sqlite_tier.purge() == 1 and len(sqlite_tier) == 1


# -- SQLite written behind ---------------------------------------------------------------------------------------


async def test_sqlite_written_behind_serves_its_own_buffered_write_before_the_file_has_it(tmp_path):
    path = tmp_path / "behind.db"
    tier = SQLiteTier(path, write_behind_s=60.0)
    other = SQLiteTier(path)  # another process's view of the same file
    await tier.set("k1", entry("k1", "buffered"), 60)
    got = await tier.get("k1")
    assert got is not None and got.completion.choices[0].message.content == "buffered"
    assert tier.pending == 1 and await other.get("k1") is None
    tier.flush()
    assert tier.pending == 0 and await other.get("k1") is not None
    await tier.aclose()
    await other.aclose()


async def test_sqlite_written_behind_writes_a_full_batch_at_once(tmp_path):
    tier = SQLiteTier(tmp_path / "batch.db", write_behind_s=60.0, batch_rows=3)
    for i in range(3):
        await tier.set(f"k{i}", entry(f"k{i}"), 60)
    assert tier.pending == 0 and tier.flushes == 1
    await tier.aclose()


async def test_sqlite_written_behind_writes_after_its_delay(tmp_path):
    path = tmp_path / "timer.db"
    tier = SQLiteTier(path, write_behind_s=0.05)
    await tier.set("k1", entry("k1"), 60)
    await asyncio.sleep(0.2)
    assert tier.pending == 0 and tier.flushes == 1
    other = SQLiteTier(path)
    assert await other.get("k1") is not None
    await other.aclose()
    await tier.aclose()


async def test_sqlite_written_behind_writes_its_buffer_when_closed(tmp_path):
    path = tmp_path / "close.db"
    tier = SQLiteTier(path, write_behind_s=60.0)
    await tier.set("k1", entry("k1", "kept"), 60)
    await tier.aclose()
    assert await read_back(path, "k1") == "kept"


async def test_sqlite_written_behind_forgets_a_deleted_buffered_row(tmp_path):
    tier = SQLiteTier(tmp_path / "delete.db", write_behind_s=60.0)
    await tier.set("k1", entry("k1"), 60)
    await tier.delete("k1")
    assert await tier.get("k1") is None and len(tier) == 0
    await tier.aclose()


def test_sqlite_write_behind_needs_a_positive_delay(tmp_path):
    with pytest.raises(ValueError, match="write_behind_s"):
        SQLiteTier(tmp_path / "bad.db", write_behind_s=0)


async def test_a_private_sqlite_tier_answers_a_miss_without_reading_the_file(tmp_path):
    tier = SQLiteTier(tmp_path / "private.db", private=True)
    await tier.set("mine", entry("mine", "written here"), 60)
    statements: list[str] = []
    tier._db.set_trace_callback(statements.append)
    assert await tier.get("never-written") is None and statements == []
    got = await tier.get("mine")
    assert got is not None and got.completion.choices[0].message.content == "written here"
    await tier.aclose()


async def test_a_private_sqlite_tier_knows_the_rows_already_in_its_file(tmp_path):
    path = tmp_path / "reopened.db"
    first = SQLiteTier(path)
    await first.set("earlier", entry("earlier", "from before"), 60)
    await first.aclose()
    tier = SQLiteTier(path, private=True)
    got = await tier.get("earlier")
    await tier.aclose()
    assert got is not None and got.completion.choices[0].message.content == "from before"
