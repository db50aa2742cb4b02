"""De-duplication against the real simulated service and a real Redis: the key, single-flight, the Redis
coalescer with real worker processes. Upstream calls are counted by the server (`/admin/stats`) and by a
counting layer just above the transport."""

import asyncio
import uuid

import openai
import pytest
from conftest import Counting

from labkit.chain import Chain
from labkit.dedup import SamplingPolicy, SingleFlight, key_of
from labkit.dedup.redisflight import RedisSingleFlight, UpstreamError
from labkit.endpoint import Endpoint
from labkit.lab.workload import SimCallCounter, ZipfSpec, expected_duplicate_share, zipf_workload
from labkit.lessons.dedup.caches import ExactCache, PromptHashCache
from labkit.lessons.dedup.worker import WorkerPool
from labkit.request import ChatRequest
from labkit.transports.sdk import OpenAITransport

MODEL = "gpt-4o"


@pytest.fixture
async def transport(sim):
    async with OpenAITransport(Endpoint(sim.base_url)) as transport:
        yield transport


def request(prompt="What is single-flight?", **params):
    return ChatRequest.create(MODEL, prompt, **{"max_tokens": 20, "temperature": 0, **params})


# -- the key ----------------------------------------------------------------------------------------------


def test_key_covers_what_changes_the_answer_and_not_volatile_fields():
    base = request()
    assert key_of(base) != key_of(base.replace(model="gpt-4o-mini"))
    assert key_of(base) != key_of(request(max_tokens=5))
    assert key_of(base) != key_of(request(temperature=0.5))
    assert key_of(base) != key_of(request(tools=[{"type": "function", "function": {"name": "f"}}]))
    assert key_of(base) == key_of(base.replace(metadata={"request_id": "r1"}))
    assert key_of(base) == key_of(request(user="alice"))
    marked = request(extra_body={"trace": "t1"}).with_controls(volatile=["extra_body"])
    assert key_of(base) == key_of(marked)
    assert key_of(base) != key_of(request(extra_body={"trace": "t1"}))  # unmarked: it may change the answer


def test_prompt_only_key_ignores_model_and_parameters():
    assert PromptHashCache.key(request()) == PromptHashCache.key(request(max_tokens=5).replace(model="gpt-4o-mini"))


def test_sampling_policy():
    sampled, unset = request(temperature=0.7), ChatRequest.create(MODEL, "hi")
    assert SamplingPolicy.skip().slots(request()) == 1
    assert SamplingPolicy.skip().slots(sampled) == 0
    assert SamplingPolicy.skip().slots(unset) == 0  # the API's default temperature is 1
    assert SamplingPolicy.share().slots(sampled) == 1
    assert SamplingPolicy.keep(3).slots(sampled) == 3
    assert SamplingPolicy.share().slots(request().with_controls(no_dedup=True)) == 0
    with pytest.raises(ValueError):
        SamplingPolicy("sometimes")


# -- single-flight ----------------------------------------------------------------------------------------


async def test_identical_concurrent_requests_make_one_upstream_call(fresh_sim, transport):
    counter, counting, single_flight = SimCallCounter(fresh_sim), Counting(), SingleFlight()
    chain = Chain(transport, [single_flight, counting])
    results = await asyncio.gather(*(chain(request().replace(metadata={"i": i})) for i in range(10)))
    assert counter.since_mark() == 1 and counting.calls == 1
    assert single_flight.stats.upstream_calls == 1 and single_flight.stats.coalesced == 9
    assert len({r.choices[0].message.content for r in results}) == 1
    assert len({id(r) for r in results}) == 10  # each caller has its own copy
    assert single_flight.in_flight == 0


async def test_identical_concurrent_streams_make_one_upstream_call(fresh_sim, transport):
    counter, single_flight = SimCallCounter(fresh_sim), SingleFlight()
    chain = Chain(transport, [single_flight])
    streams = await asyncio.gather(*(chain(request(stream=True).replace(stream=True)) for _ in range(6)))
    texts = await asyncio.gather(*(s.text() for s in streams))
    assert counter.since_mark() == 1
    assert len(set(texts)) == 1 and texts[0]
    assert sorted(s.info["dedup"] for s in streams) == ["follower"] * 5 + ["leader"]


async def test_late_joiner_gets_every_chunk_from_the_first(fresh_sim, transport):
    counting, single_flight = Counting(chunk_delay_s=0.01), SingleFlight()
    chain = Chain(transport, [single_flight, counting])
    req = request(stream=True).replace(stream=True)
    first = await chain(req)
    early = []
    async for chunk in first:
        early.append(chunk)
        if len(early) == 3:
            break
    late = await chain(req)  # joins while the upstream stream is still running
    rest = [chunk async for chunk in first]
    late_chunks = [chunk async for chunk in late]
    await first.aclose()
    await late.aclose()
    assert counting.calls == 1
    assert late_chunks == early + rest
    assert late_chunks[0].choices[0].delta.role == "assistant"


async def test_different_keys_are_not_coalesced(fresh_sim, transport):
    counter, single_flight = SimCallCounter(fresh_sim), SingleFlight()
    chain = Chain(transport, [single_flight])
    await asyncio.gather(*(chain(request(f"Question {i}?")) for i in range(5)), chain(request(max_tokens=7)))
    assert counter.since_mark() == 6 and single_flight.stats.coalesced == 0


async def test_plain_and_streamed_requests_are_separate_flights(transport):
    counting, single_flight = Counting(), SingleFlight()
    chain = Chain(transport, [single_flight, counting])
    _, stream = await asyncio.gather(chain(request()), chain(request(stream=True).replace(stream=True)))
    await stream.aclose()
    assert counting.calls == 2


async def test_error_reaches_every_waiter_and_the_next_request_retries(fresh_sim, transport):
    counting, single_flight = Counting(), SingleFlight()
    chain = Chain(transport, [single_flight, counting])
    fresh_sim.set_faults({"error_rates": {"500": 1.0}})
    outcomes = await asyncio.gather(*(chain(request()) for _ in range(8)), return_exceptions=True)
    assert all(isinstance(o, openai.InternalServerError) for o in outcomes)
    assert counting.calls == 1 and single_flight.stats.upstream_errors == 1
    fresh_sim.set_faults({"error_rates": {"500": 0.0}})
    completion = await chain(request())
    assert completion.choices[0].message.content and counting.calls == 2


async def test_stream_error_reaches_every_reader(fresh_sim, transport):
    counting, single_flight = Counting(), SingleFlight()
    chain = Chain(transport, [single_flight, counting])
    fresh_sim.set_faults({"error_rates": {"503": 1.0}})
    outcomes = await asyncio.gather(
        *(chain(request(stream=True).replace(stream=True)) for _ in range(4)), return_exceptions=True
    )
    assert all(isinstance(o, openai.APIStatusError) and o.status_code == 503 for o in outcomes)
    assert counting.calls == 1


async def test_a_waiter_that_leaves_changes_nothing_for_the_others(transport):
    counting, single_flight = Counting(delay_s=0.2), SingleFlight()
    chain = Chain(transport, [single_flight, counting])
    tasks = [asyncio.create_task(chain(request())) for _ in range(4)]
    await asyncio.sleep(0.05)
    tasks[1].cancel()  # a caller that joined the flight
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(results[1], asyncio.CancelledError)
    assert all(r.choices[0].message.content for r in (results[0], *results[2:]))
    assert counting.calls == 1 and single_flight.stats.upstream_cancelled == 0


async def test_a_waiter_sends_the_call_again_when_the_leader_leaves(transport):
    counting, single_flight = Counting(delay_s=0.2), SingleFlight()
    chain = Chain(transport, [single_flight, counting])
    tasks = [asyncio.create_task(chain(request())) for _ in range(4)]
    await asyncio.sleep(0.05)
    tasks[0].cancel()  # the caller that started the flight: its call is cancelled with it
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(results[0], asyncio.CancelledError)
    assert all(r.choices[0].message.content for r in results[1:])
    assert counting.calls == 2  # the cancelled call and one more, not one per waiter
    stats = single_flight.stats
    assert (stats.upstream_cancelled, stats.restarts) == (1, 3)
    assert stats.upstream_calls + stats.coalesced + stats.bypassed == stats.requests


async def test_the_leaders_call_runs_in_the_callers_own_task(transport):
    seen = []

    async def record_task(request, call_next):
        seen.append(asyncio.current_task())
        return await call_next(request)

    chain = Chain(transport, [SingleFlight(), record_task])
    caller = asyncio.create_task(chain(request("whose task?")))
    await caller
    assert seen == [caller]


async def test_upstream_is_cancelled_when_the_last_waiter_leaves(transport):
    counting, single_flight = Counting(delay_s=0.3), SingleFlight()
    chain = Chain(transport, [single_flight, counting])
    tasks = [asyncio.create_task(chain(request())) for _ in range(3)]
    await asyncio.sleep(0.05)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.sleep(0)
    assert single_flight.stats.upstream_cancelled == 1 and single_flight.in_flight == 0
    assert (await chain(request())).choices[0].message.content  # a new flight, not the cancelled one
    assert counting.calls == 2


async def test_closing_a_stream_early_leaves_the_others_reading(transport):
    counting, single_flight = Counting(chunk_delay_s=0.005), SingleFlight()
    chain = Chain(transport, [single_flight, counting])
    req = request(stream=True).replace(stream=True)
    quitter, stayer = await asyncio.gather(chain(req), chain(req))
    async with quitter:
        async for _ in quitter:
            break
    text = await stayer.text()
    assert text and single_flight.stats.upstream_cancelled == 0
    quitters = await asyncio.gather(chain(req), chain(req))
    for stream in quitters:
        async for _ in stream:
            break
        await stream.aclose()
    await asyncio.sleep(0.01)
    assert single_flight.stats.upstream_cancelled == 1 and counting.calls == 2


async def test_sampled_requests_follow_the_policy(transport):
    sampled = request(temperature=0.9)
    for policy, expected in ((SamplingPolicy.skip(), 5), (SamplingPolicy.share(), 1), (SamplingPolicy.keep(2), 2)):
        counting = Counting()
        chain = Chain(transport, [SingleFlight(policy), counting])
        await asyncio.gather(*(chain(sampled) for _ in range(5)))
        assert counting.calls == expected, policy


async def test_exact_cache_keys_on_the_fingerprint(transport):
    counting, cache = Counting(), ExactCache()
    chain = Chain(transport, [cache, counting])
    await chain(request())
    await chain(request().replace(metadata={"request_id": "x"}))
    short = await chain(request(max_tokens=3))
    assert counting.calls == 2 and cache.stats.hits == 1
    assert short.usage.completion_tokens <= 3


# -- across processes through Redis -----------------------------------------------------------------------


@pytest.fixture
async def coalescers(redis_service):
    namespace = f"test:{uuid.uuid4().hex[:8]}"
    layers = [RedisSingleFlight.from_url(redis_service.url, namespace=namespace, poll_s=0.05) for _ in range(3)]
    yield layers
    for layer in layers:
        await layer.aclose()


async def test_redis_coalesces_separate_coalescers(fresh_sim, transport, coalescers):
    counter = SimCallCounter(fresh_sim)
    counting = Counting(delay_s=0.1)
    chains = [Chain(transport, [layer, counting]) for layer in coalescers]
    results = await asyncio.gather(*(chain(request("redis one")) for chain in chains for _ in range(2)))
    assert counter.since_mark() == 1 and counting.calls == 1
    assert len({r.choices[0].message.content for r in results}) == 1
    stats = [layer.stats for layer in coalescers]
    assert sum(s.upstream_calls for s in stats) == 1
    assert sum(s.coalesced + s.late_hits for s in stats) == 5


async def test_redis_error_reaches_followers_and_is_not_stored(fresh_sim, transport, coalescers):
    counting = Counting(delay_s=0.1)
    chains = [Chain(transport, [layer, counting]) for layer in coalescers]
    fresh_sim.set_faults({"error_rates": {"500": 1.0}})
    outcomes = await asyncio.gather(*(chain(request("redis error")) for chain in chains), return_exceptions=True)
    fresh_sim.set_faults({"error_rates": {"500": 0.0}})
    assert counting.calls == 1
    assert sum(isinstance(o, openai.InternalServerError) for o in outcomes) == 1  # the leader
    followers = [o for o in outcomes if isinstance(o, UpstreamError)]
    assert len(followers) == 2 and all(f.status_code == 500 for f in followers)
    assert (await chains[0](request("redis error"))).choices[0].message.content
    assert counting.calls == 2


async def test_a_follower_that_subscribes_after_the_leader_failed_still_gets_its_error(
    fresh_sim, transport, coalescers
):
    leader_layer, follower_layer = coalescers[:2]
    subscribe_late(follower_layer, delay_s=0.4)  # the leader's error is published before the follower listens
    counting = Counting(delay_s=0.1)
    fresh_sim.set_faults({"error_rates": {"500": 1.0}})
    leader = asyncio.create_task(Chain(transport, [leader_layer, counting])(request("late follower")))
    await asyncio.sleep(0.02)
    follower = Chain(transport, [follower_layer, counting])(request("late follower"))
    outcomes = await asyncio.gather(leader, follower, return_exceptions=True)
    fresh_sim.set_faults({"error_rates": {"500": 0.0}})
    assert isinstance(outcomes[0], openai.InternalServerError)
    assert isinstance(outcomes[1], UpstreamError) and outcomes[1].status_code == 500
    assert counting.calls == 1


def subscribe_late(layer: RedisSingleFlight, delay_s: float) -> None:
    """Delay every SUBSCRIBE of this coalescer, as a slow connection to Redis would."""
    open_pubsub = layer.redis.pubsub

    def pubsub():
        channel = open_pubsub()
        subscribe = channel.subscribe

        async def late(*names):
            await asyncio.sleep(delay_s)
            return await subscribe(*names)

        channel.subscribe = late
        return channel

    layer.redis.pubsub = pubsub


async def test_a_follower_takes_over_when_the_leader_is_cancelled(transport, coalescers):
    counting = Counting(delay_s=0.3)
    leader_chain, follower_chain = (Chain(transport, [layer, counting]) for layer in coalescers[:2])
    leader = asyncio.create_task(leader_chain(request("redis takeover")))
    await asyncio.sleep(0.1)
    follower = asyncio.create_task(follower_chain(request("redis takeover")))
    await asyncio.sleep(0.1)
    leader.cancel()
    completion = await asyncio.wait_for(follower, 5)
    assert completion.choices[0].message.content
    assert counting.calls == 2 and coalescers[1].stats.restarts == 1


async def test_worker_processes_behind_one_redis_send_one_upstream_call(fresh_sim, redis_service):
    counter = SimCallCounter(fresh_sim)
    async with WorkerPool(3, base_url=fresh_sim.base_url, redis_url=redis_service.url, max_tokens=20) as pool:
        counter.mark()
        local = await pool.run("local", f"workers local {uuid.uuid4().hex}", 2)
        assert counter.since_mark() == 3
        counter.mark()
        reports = await pool.run("redis", f"workers redis {uuid.uuid4().hex}", 2)
        assert counter.since_mark() == 1
    assert all(r["ok"] == 2 and not r["errors"] for r in [*local, *reports])
    assert sum(r["upstream_calls"] for r in reports) == 1
    assert len({a for r in reports for a in r["answers"]}) == 1
    assert len({r["pid"] for r in reports}) == 3


# -- the workload -----------------------------------------------------------------------------------------


def test_zipf_workload_is_seeded_and_has_the_expected_duplicate_rate():
    spec = ZipfSpec.load(n_requests=400, n_distinct=200, exponent=1.0)
    a, b = zipf_workload(spec), zipf_workload(spec)
    assert a == b
    assert zipf_workload(spec.replace(seed=1)) != a
    assert abs(a.duplicate_share - expected_duplicate_share(spec)) < 0.06
    uniform, skewed = zipf_workload(spec.replace(exponent=0.0)), zipf_workload(spec.replace(exponent=2.0))
    assert uniform.duplicate_share < a.duplicate_share < skewed.duplicate_share
    assert {arr.at_s for arr in a.arrivals[: spec.burst_size]} == {0.0}
