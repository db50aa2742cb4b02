"""The admission layer: token buckets, the limiter against a real rate-limited sim, Redis GCRA, adaptive AIMD."""

from __future__ import annotations

import asyncio
import time

import openai
import pytest
import redis.asyncio as aioredis
from conftest import completion

from labkit.chain import Chain
from labkit.layers.adaptive import AdaptiveConcurrency
from labkit.layers.admission import (
    AdmissionLayer,
    LocalBudget,
    TokenBucket,
    estimate_tokens,
    parse_duration,
    ratelimit_headers,
    token_bound,
)
from labkit.layers.ratelimit_redis import RedisBudget
from labkit.request import ChatRequest
from labkit.tokens import count_messages
from labkit.transports.sdk import OpenAITransport


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_bucket_waits_in_proportion_to_the_missing_amount():
    clock = Clock()
    bucket = TokenBucket(rate=10, capacity=10, clock=clock)
    bucket.take(10)
    assert bucket.wait_time(5) == pytest.approx(0.5)
    clock.now = 0.5
    assert bucket.wait_time(5) == 0


def test_bucket_never_refills_past_its_capacity():
    clock = Clock()
    bucket = TokenBucket(rate=10, capacity=10, clock=clock)
    clock.now = 100
    assert bucket.available() == 10


def test_a_charge_larger_than_the_bucket_waits_only_for_a_full_bucket():
    clock = Clock()
    bucket = TokenBucket(rate=10, capacity=10, clock=clock)
    assert bucket.wait_time(50) == 0
    bucket.take(50)
    assert bucket.wait_time(1) == pytest.approx(4.1)


def test_bucket_refuses_a_zero_rate():
    with pytest.raises(ValueError, match="positive rate"):
        TokenBucket(rate=0, capacity=1)


def test_sync_lowers_the_level_to_what_the_service_reports_but_never_raises_it():
    budget = LocalBudget(rpm=600, tpm=60_000, burst_s=1.0, headroom=0.0, slack_s=0.0)
    budget.sync({"x-ratelimit-remaining-requests": "2", "x-ratelimit-remaining-tokens": "100000"})
    assert budget.requests.available() == pytest.approx(2, abs=0.1)
    assert budget.tokens.available() == pytest.approx(1000, abs=5)


def sim_headers(rpm: int, tpm: int, burst_s: float, used_requests: float, used_tokens: float) -> dict[str, str]:
    """The six headers the simulated service sends, for a bucket holding ``burst_s`` of the limit."""
    req_cap, tok_cap = rpm * burst_s / 60, tpm * burst_s / 60
    return {
        "x-ratelimit-limit-requests": str(rpm),
        "x-ratelimit-limit-tokens": str(tpm),
        "x-ratelimit-remaining-requests": str(int(req_cap - used_requests)),
        "x-ratelimit-remaining-tokens": str(int(tok_cap - used_tokens)),
        "x-ratelimit-reset-requests": f"{used_requests * 60 / rpm * 1000:.0f}ms",
        "x-ratelimit-reset-tokens": f"{used_tokens * 60 / tpm * 1000:.0f}ms",
    }


def test_sync_adopts_a_published_limit_below_the_configured_one():
    budget = LocalBudget(rpm=1200, tpm=60_000, burst_s=0.5, headroom=0.0)
    budget.sync(sim_headers(600, 30_000, 1.0, used_requests=1, used_tokens=50))
    assert budget.requests.rate == pytest.approx(600 / 60)
    assert budget.tokens.rate == pytest.approx(30_000 / 60)
    assert budget.limit_syncs >= 2


def test_sync_never_raises_a_rate_above_the_configured_one():
    budget = LocalBudget(rpm=600, tpm=30_000, burst_s=0.5, headroom=0.0)
    budget.sync(sim_headers(1200, 60_000, 1.0, used_requests=1, used_tokens=50))
    assert budget.requests.rate == pytest.approx(10) and budget.tokens.rate == pytest.approx(500)
    assert budget.limit_syncs == 0


def test_sync_reads_the_services_bucket_size_from_remaining_and_reset():
    # configured to hold 2 s of the rate; the service's bucket holds 0.5 s (limit, remaining and reset say so)
    budget = LocalBudget(rpm=1200, tpm=60_000, burst_s=2.0, headroom=0.0)
    budget.sync(sim_headers(1200, 60_000, 0.5, used_requests=4, used_tokens=200))
    assert budget.requests.capacity == pytest.approx(1200 * 0.5 / 60, abs=0.1)
    assert budget.tokens.capacity == pytest.approx(60_000 * 0.5 / 60, abs=1)


RATE_HEADERS = [
    ("Content-Type", "application/json"),
    ("X-RateLimit-Limit-Requests", "600"),
    ("x-ratelimit-remaining-tokens", "29000"),
    ("x-request-id", "req_1"),
]


@pytest.mark.parametrize("kind", ["httpx", "httpx2", "dict"])
def test_the_rate_limit_headers_are_picked_out_with_lower_case_names(kind):
    import httpx
    import httpx2

    headers = {"httpx": httpx.Headers, "httpx2": httpx2.Headers, "dict": dict}[kind](RATE_HEADERS)
    assert ratelimit_headers(headers) == {"x-ratelimit-limit-requests": "600", "x-ratelimit-remaining-tokens": "29000"}


def test_malformed_rate_limit_headers_are_ignored():
    budget = LocalBudget(rpm=600, tpm=30_000, burst_s=1.0, headroom=0.0)
    bad = {
        "x-ratelimit-limit-requests": "lots",
        "x-ratelimit-remaining-requests": "-3",
        "x-ratelimit-reset-requests": "soon",
        "x-ratelimit-limit-tokens": "nan",
    }
    budget.sync(bad)
    assert budget.requests.rate == pytest.approx(10) and budget.requests.available() == pytest.approx(10)
    assert budget.limit_syncs == 0 and budget.syncs_lowered == 0


async def test_refunds_of_requests_admitted_before_a_sync_are_not_counted_twice():
    budget = LocalBudget(rpm=600, tpm=60_000, burst_s=1.0, headroom=0.0, slack_s=0.0)
    assert await budget.try_acquire(500) == 0
    ticket = budget.ticket()
    budget.sync({"x-ratelimit-remaining-tokens": "100"}, ticket)
    await budget.refund(400, ticket=ticket)
    assert budget.tokens.available() < 150


def test_estimate_is_prompt_tokens_plus_the_completion_cap():
    request = ChatRequest.create("gpt-4o", "How many tokens is this?", max_tokens=50)
    assert estimate_tokens(request) == count_messages(request.messages, "gpt-4o") + 50


def test_go_durations_parse_to_seconds():
    assert parse_duration("6m0s") == 360
    assert parse_duration("12ms") == pytest.approx(0.012)
    assert parse_duration("1.5s") == 1.5
    assert parse_duration("soon") is None


def test_admission_layer_needs_limits_or_a_budget():
    with pytest.raises(ValueError, match="rpm and tpm"):
        AdmissionLayer(rpm=100)


async def test_gather_through_admission_gets_no_429_where_bare_gather_does(fresh_sim):
    fresh_sim.set_limits(rpm=1200, tpm=100_000, burst_s=0.5)
    prompts = [f"item {i}" for i in range(30)]
    async with OpenAITransport(fresh_sim.endpoint) as transport:
        bare = await asyncio.gather(
            *(Chain(transport).complete(p, model="gpt-4o", max_tokens=5) for p in prompts), return_exceptions=True
        )
        assert any(isinstance(r, openai.RateLimitError) for r in bare)
        fresh_sim.reset()
        fresh_sim.set_limits(rpm=1200, tpm=100_000, burst_s=0.5)
        layer = AdmissionLayer(1200, 100_000, max_concurrency=32, burst_s=0.25)  # below the service's 0.5 s
        chain = Chain(transport, [layer])
        paced = await asyncio.gather(*(chain.complete(p, model="gpt-4o", max_tokens=5) for p in prompts))
    assert len(paced) == 30
    assert fresh_sim.stats()["requests_by_status"].get("429", 0) == 0


async def test_admission_refunds_the_unused_estimate_from_usage(fresh_sim):
    layer = AdmissionLayer(10_000, 1_000_000)
    async with OpenAITransport(fresh_sim.endpoint) as transport:
        completion = await Chain(transport, [layer]).complete("hi", model="gpt-4o", max_tokens=500)
    assert layer.stats.used_tokens == completion.usage.total_tokens < layer.stats.estimated_tokens


async def test_admission_learns_the_published_limit_from_the_first_answer(fresh_sim):
    fresh_sim.set_limits(rpm=600, tpm=30_000, burst_s=1.0)
    layer = AdmissionLayer(10_000, 1_000_000, headroom=0.0)  # configured far above what the service allows
    async with OpenAITransport(fresh_sim.endpoint) as transport:
        await Chain(transport, [layer]).complete("hi", model="gpt-4o", max_tokens=5)
    assert layer.stats.header_syncs == 1
    assert layer.budget.requests.rate == pytest.approx(600 / 60)
    assert layer.budget.tokens.rate == pytest.approx(30_000 / 60)


async def test_admission_lowers_its_level_when_another_client_spent_the_budget(fresh_sim):
    fresh_sim.set_limits(rpm=600, tpm=30_000, burst_s=1.0)
    layer = AdmissionLayer(600, 30_000, burst_s=1.0, headroom=0.0)
    async with OpenAITransport(fresh_sim.endpoint) as transport:
        other = Chain(transport)  # a client on the same key that does not go through the layer
        await asyncio.gather(*(other.complete(f"other {i}", model="gpt-4o", max_tokens=5) for i in range(6)))
        await Chain(transport, [layer]).complete("hi", model="gpt-4o", max_tokens=5)
    assert layer.budget.syncs_lowered == 1
    assert layer.budget.requests.available() < 10 - 6 + 1


async def test_admission_reads_rate_limit_headers_at_most_once_per_sync_interval():
    remaining = iter(["9", "1", "0"])

    async def upstream(request):
        answer = completion(request.model)
        answer._headers = {"x-ratelimit-remaining-requests": next(remaining)}
        return answer

    layer = AdmissionLayer(600, 60_000, burst_s=1.0, headroom=0.0, sync_interval_s=0.2)  # 10 requests a burst
    chain = Chain(upstream, [layer])
    await chain.complete("first", model="gpt-4o")  # read: 9 left, as the layer counted
    await chain.complete("second", model="gpt-4o")  # within the interval: its "1 left" is not read
    assert layer.stats.header_syncs == 1 and layer.budget.requests.available() > 5
    await asyncio.sleep(0.2)
    await chain.complete("third", model="gpt-4o")  # the interval has passed: "0 left" is read
    assert layer.stats.header_syncs == 2 and layer.budget.requests.available() < 1


async def test_an_answer_without_rate_limit_headers_also_waits_out_the_sync_interval():
    headers = iter([None, {"x-ratelimit-remaining-requests": "0"}])

    async def upstream(request):
        answer = completion(request.model)
        answer._headers = next(headers)
        return answer

    layer = AdmissionLayer(600, 60_000, burst_s=1.0, headroom=0.0, sync_interval_s=0.2)
    chain = Chain(upstream, [layer])
    await chain.complete("first", model="gpt-4o")  # looked at: no headers
    await chain.complete("second", model="gpt-4o")  # within the interval: its "0 left" is not read
    assert layer.stats.header_syncs == 0 and layer.budget.requests.available() > 5


async def test_admission_passes_streams_through_and_frees_the_slot_when_closed(fresh_sim):
    layer = AdmissionLayer(10_000, 1_000_000, max_concurrency=1)
    async with OpenAITransport(fresh_sim.endpoint) as transport:
        chain = Chain(transport, [layer])
        async with await chain.stream("hi", model="gpt-4o", max_tokens=5) as stream:
            assert await stream.text()
        assert layer.stats.in_flight == 0
        assert (await chain.complete("again", model="gpt-4o", max_tokens=5)).choices


async def test_a_429_is_counted_and_the_next_request_waits_out_its_retry_after(fresh_sim):
    fresh_sim.set_faults({"error_rates": {"429": 1.0}, "retry_after_s": 1.0})
    layer = AdmissionLayer(10_000, 1_000_000)
    loop = asyncio.get_running_loop()
    async with OpenAITransport(fresh_sim.endpoint) as transport:
        first_sent = loop.time()  # the 429, and so its 1 s retry-after, came after this
        with pytest.raises(openai.RateLimitError):
            await Chain(transport, [layer]).complete("hi", model="gpt-4o", max_tokens=5)
    assert layer.stats.rate_limited == 1
    fresh_sim.set_faults({})
    async with OpenAITransport(fresh_sim.endpoint) as transport:
        started = loop.time()
        await Chain(transport, [layer]).complete("after the pause", model="gpt-4o", max_tokens=5)
    # the next request waited out the rest of the retry-after: what was left of it when this one started
    assert layer.stats.waited_s >= 0.9 * (1.0 - (started - first_sent))
    assert loop.time() - first_sent >= 1.0  # it finished no sooner than the retry-after allowed


async def test_redis_budget_shares_one_limit_between_two_budgets(redis_service):
    client = aioredis.from_url(redis_service.url)
    try:
        a = RedisBudget(client, "test:shared", rpm=60, tpm=1_000_000, burst_s=1.0, headroom=0.0)
        b = RedisBudget(client, "test:shared", rpm=60, tpm=1_000_000, burst_s=1.0, headroom=0.0)
        await a.reset()
        started = time.monotonic()
        assert await a.try_acquire(10) == 0
        wait = await b.try_acquire(10)
        gap = time.monotonic() - started
        # 60 a minute is one a second: b waits what is left of the second since a took the slot, which is at
        # least that second less the time the two calls took here (10 ms: Redis's clock against this process's)
        assert 1.0 - gap - 0.01 <= wait <= 1.0
    finally:
        await client.aclose()


async def test_redis_budget_refund_makes_room_again(redis_service):
    client = aioredis.from_url(redis_service.url)
    try:
        budget = RedisBudget(client, "test:refund", rpm=6000, tpm=600, burst_s=1.0, headroom=0.0)
        await budget.reset()
        assert await budget.try_acquire(10) == 0
        assert await budget.try_acquire(10) > 0
        await budget.refund(10)
        assert await budget.try_acquire(10) == 0
    finally:
        await client.aclose()


def test_adaptive_limit_grows_while_latency_stays_near_the_baseline():
    layer = AdaptiveConcurrency(initial=2)
    for _ in range(20):
        layer._update(0.1, overloaded=False)
    assert layer.limit > 4


def test_adaptive_limit_backs_off_when_latency_grows():
    layer = AdaptiveConcurrency(initial=10, backoff=0.5)
    layer._update(0.1, overloaded=False)
    for _ in range(10):
        layer._update(1.0, overloaded=False)
    assert layer.limit < 10


def test_adaptive_refuses_a_tolerance_that_cannot_detect_queueing():
    with pytest.raises(ValueError, match="tolerance"):
        AdaptiveConcurrency(tolerance=1.0)


def test_a_roomy_budget_is_charged_the_byte_bound_instead_of_a_count():
    request = ChatRequest.create("gpt-4o", "Name one use of the number 7.", max_tokens=16)
    layer = AdmissionLayer(10**7, 10**10)
    assert token_bound(request) >= estimate_tokens(request)  # a byte-level BPE token is at least one byte
    assert layer._estimate(request) == token_bound(request)


def test_a_budget_near_its_limit_is_charged_the_exact_count():
    request = ChatRequest.create("gpt-4o", "Name one use of the number 7.", max_tokens=16)
    layer = AdmissionLayer(1200, 60_000)  # a request is more than 1 % of this token bucket
    assert layer._estimate(request) == estimate_tokens(request) < token_bound(request)


async def test_a_newcomer_with_room_still_queues_behind_a_request_waiting_for_the_budget():
    # 10,000 tokens a second, about 1,940 in the bucket: the second request waits ~0.1 s for room, and the third,
    # small enough to fit at once, must not overtake it (the layer's no-await fast path is for an empty queue only)
    layer = AdmissionLayer(budget=LocalBudget(rpm=1e6, tpm=600_000, burst_s=0.2))
    arrived: list[int] = []
    all_arrived, release = asyncio.Event(), asyncio.Event()

    async def upstream(request: ChatRequest) -> None:
        arrived.append(request.params["max_tokens"])
        if len(arrived) == 3:
            all_arrived.set()
        await release.wait()

    chain = Chain(upstream, [layer])
    sent = []
    for max_tokens in (1000, 1800, 10):
        sent.append(asyncio.create_task(chain(ChatRequest.create("gpt-4o", "a", max_tokens=max_tokens))))
        await asyncio.sleep(0.005)
    await asyncio.wait_for(all_arrived.wait(), timeout=10)
    release.set()
    await asyncio.gather(*sent, return_exceptions=True)
    assert arrived == [1000, 1800, 10]
