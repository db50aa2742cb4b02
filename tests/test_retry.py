"""The retry layer: the decision table (status, headers, stream position), full jitter, the budget, the deadline,
and what it does against the real simulated service (no double retrying, retry-after, streams)."""

import asyncio
import email.utils
import random
import time

import httpx2
import openai
import pytest
from conftest import answers, hangs

from labkit.assemble import ChainConfig, build_chain
from labkit.chain import Chain
from labkit.errors import DeadlineExceeded, FirstTokenTimeout, MidStreamError, classify, parse_retry_after
from labkit.layers.guard import StreamGuard
from labkit.layers.retry import RetryBudget, RetryLayer, RetryPolicy, sdk_backoff_s
from labkit.transports.sdk import OpenAITransport

REQUEST = httpx2.Request("POST", "http://sim/v1/chat/completions")


def status_error(status, headers=None, code=None):
    body = {"message": "injected", "type": "server_error", "param": None, "code": code}
    response = httpx2.Response(status, headers=headers or {}, request=REQUEST, json={"error": body})
    return openai.OpenAI(api_key="x", base_url="http://sim/v1")._make_status_error(
        "injected", body=body, response=response
    )


POLICY = RetryPolicy(max_attempts=4, base_delay_s=0.5, max_delay_s=8.0, max_retry_after_s=60.0)


@pytest.mark.parametrize(
    ("status", "headers", "code", "retry", "delay"),
    [
        (500, {}, None, True, None),
        (502, {}, None, True, None),
        (503, {}, None, True, None),
        (408, {}, None, True, None),
        (409, {}, None, True, None),
        (429, {"retry-after-ms": "250", "retry-after": "1"}, "rate_limit_exceeded", True, 0.25),
        (429, {"retry-after": "2"}, "rate_limit_exceeded", True, 2.0),
        (429, {"retry-after": "1"}, "insufficient_quota", False, None),
        (429, {"x-should-retry": "true"}, "insufficient_quota", False, None),
        (400, {}, None, False, None),
        (401, {}, "invalid_api_key", False, None),
        (403, {}, None, False, None),
        (404, {}, "model_not_found", False, None),
        (422, {}, None, False, None),
        (503, {"x-should-retry": "false"}, None, False, None),
        (400, {"x-should-retry": "true"}, None, True, None),
        (429, {"retry-after": "3600"}, "rate_limit_exceeded", False, None),
    ],
)
def test_decision_table_by_status_and_headers(status, headers, code, retry, delay):
    decision = POLICY.decide(classify(status_error(status, headers, code)), attempts=1, rng=random.Random(0))
    assert decision.retry is retry
    if retry and delay is not None:
        assert decision.delay_s == pytest.approx(delay)
    if retry and delay is None:
        assert 0.0 <= decision.delay_s <= 0.5


def test_retry_after_as_an_http_date_is_seconds_from_now():
    now = time.time()
    assert parse_retry_after({"Retry-After": email.utils.formatdate(now + 30, usegmt=True)}, now=now) == (
        pytest.approx(30, abs=1)
    )
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({"retry-after-ms": "-5"}) is None


def test_retry_after_is_read_from_the_sdk_response_headers_whatever_their_case():
    assert parse_retry_after(httpx2.Headers({"Retry-After-Ms": "250"})) == pytest.approx(0.25)
    assert parse_retry_after(httpx2.Headers({"RETRY-AFTER": "2"})) == 2.0


def test_a_retry_after_beyond_the_deadline_gives_up_at_once():
    decision = POLICY.decide(classify(status_error(429, {"retry-after": "2"})), attempts=1, remaining_s=1.0)
    assert not decision.retry and decision.reason == "deadline"


def test_attempts_are_capped():
    assert not POLICY.decide(classify(status_error(500)), attempts=4).retry


@pytest.mark.parametrize(
    ("error", "retry"),
    [
        (FirstTokenTimeout("no first token", partial_text=""), True),
        (MidStreamError("dropped", "reset", partial_text=""), True),
        (MidStreamError("dropped", "reset", partial_text="Hello, wor"), False),
        (MidStreamError("error_event", "server_error", partial_text="Hello"), False),
        (openai.APIConnectionError(request=REQUEST), True),
        (openai.APITimeoutError(request=REQUEST), True),
        (ValueError("a bug"), False),
    ],
)
def test_decision_by_stream_position(error, retry):
    info = classify(error)
    assert POLICY.decide(info, attempts=1).retry is retry
    assert info.after_first_token is (not retry and isinstance(error, MidStreamError))


def test_full_jitter_spreads_waits_over_the_whole_interval():
    rng = random.Random(1)
    waits = [POLICY.backoff_s(3, rng) for _ in range(2000)]
    assert min(waits) >= 0 and max(waits) <= 2.0
    assert min(waits) < 0.2 and max(waits) > 1.8  # the SDK's jitter would keep them all in (1.5, 2]
    sdk = [sdk_backoff_s(2, max_retries=3, rng=rng) for _ in range(200)]
    assert all(1.5 < w <= 2.0 for w in sdk)


def test_budget_caps_retries_as_a_share_of_requests():
    clock = [0.0]
    budget = RetryBudget(ratio=0.1, min_per_s=0.0, ttl_s=10.0, clock=lambda: clock[0])
    for _ in range(100):
        budget.deposit()
    assert sum(budget.try_withdraw() for _ in range(20)) == 10
    clock[0] = 11.0  # the window has passed: no deposits left, no retries
    assert not budget.try_withdraw()


@pytest.mark.parametrize(
    "make",
    [
        lambda: RetryPolicy(max_attempts=0),
        lambda: RetryPolicy(base_delay_s=0),
        lambda: RetryPolicy(base_delay_s=2, max_delay_s=1),
        lambda: RetryLayer(deadline_s=0),
        lambda: RetryBudget(ratio=-1),
        lambda: RetryBudget(ttl_s=0),
    ],
)
def test_bad_settings_are_refused(make):
    with pytest.raises(ValueError):
        make()


async def test_a_bad_deadline_control_is_refused(fresh_sim):
    async with OpenAITransport(fresh_sim.endpoint) as transport:
        chain = Chain(transport, [RetryLayer()])
        with pytest.raises(ValueError, match="deadline_s"):
            await chain.complete("hi", model="gpt-4o", controls={"deadline_s": "soon"})
    assert (await fresh_sim.astats())["requests_total"] == 0


# -- against the simulated service -------------------------------------------------------------------------


def layer(**kwargs):
    kwargs.setdefault("budget", RetryBudget(ratio=1.0))
    policy = kwargs.pop("policy", RetryPolicy(max_attempts=4, base_delay_s=0.01))
    return RetryLayer(policy, seed=0, **kwargs)


async def test_server_errors_are_retried_once_per_attempt_without_sdk_retries(fresh_sim):
    await fresh_sim.aset_faults({"error_rates": {"500": 0.1, "503": 0.1}, "seed": 3})
    retry = layer(policy=RetryPolicy(max_attempts=5, base_delay_s=0.01))
    async with OpenAITransport(fresh_sim.endpoint) as transport:
        chain = Chain(transport, [retry])
        await asyncio.gather(*(chain.complete(f"q{i}", model="gpt-4o", max_tokens=5) for i in range(20)))
    stats = await fresh_sim.astats()
    assert retry.stats.retries > 0 and retry.stats.recovered > 0
    assert stats["requests_total"] == retry.stats.attempts  # no hidden SDK retries underneath


async def test_retry_after_is_honoured(fresh_sim):
    await fresh_sim.aset_faults({"error_rates": {"429": 1.0}, "retry_after_s": 0.4})
    retry = layer(policy=RetryPolicy(max_attempts=2, base_delay_s=0.01))
    async with OpenAITransport(fresh_sim.endpoint) as transport:
        started = time.perf_counter()
        with pytest.raises(openai.RateLimitError):
            await Chain(transport, [retry]).complete("hi", model="gpt-4o")
        elapsed = time.perf_counter() - started
    assert elapsed >= 0.4 and retry.stats.retry_after_honoured == 1
    assert (await fresh_sim.astats())["requests_total"] == 2


async def test_insufficient_quota_is_never_retried(fresh_sim):
    await fresh_sim.aset_faults({"error_rates": {"insufficient_quota": 1.0}})
    retry = layer()
    async with OpenAITransport(fresh_sim.endpoint) as transport:
        with pytest.raises(openai.RateLimitError) as raised:
            await Chain(transport, [retry]).complete("hi", model="gpt-4o")
    assert raised.value.code == "insufficient_quota"
    assert (await fresh_sim.astats())["requests_total"] == 1 and retry.stats.gave_up["insufficient_quota"] == 1


async def test_the_budget_keeps_a_sick_upstream_from_being_hammered(fresh_sim):
    await fresh_sim.aset_faults({"error_rates": {"503": 1.0}})
    retry = layer(budget=RetryBudget(ratio=0.1, min_per_s=0.0))
    async with OpenAITransport(fresh_sim.endpoint) as transport:
        chain = Chain(transport, [retry])
        results = await asyncio.gather(
            *(chain.complete(f"q{i}", model="gpt-4o") for i in range(50)), return_exceptions=True
        )
    assert all(isinstance(r, openai.InternalServerError) for r in results)
    assert (await fresh_sim.astats())["requests_total"] <= 50 * 1.1 + 1  # without a budget: 200
    assert retry.stats.gave_up["retry budget exhausted"] >= 40


async def test_the_deadline_bounds_a_request_that_keeps_hanging(fresh_sim):
    await fresh_sim.aset_faults({"hang_rate": 1.0})
    retry = layer(deadline_s=0.6)  # max_attempts=4: without the deadline the layer would try four times
    async with OpenAITransport(fresh_sim.endpoint) as transport:
        chain = Chain(transport, [retry, StreamGuard(first_token_timeout_s=0.2)])
        with pytest.raises(DeadlineExceeded):
            await chain.stream("hi", model="gpt-4o")
    # 0.6 s leaves room for at most three 0.2 s attempts: the deadline, not the attempt limit, ended it
    assert 2 <= retry.stats.failures["first_token_timeout"] <= 3
    assert (await fresh_sim.astats())["requests_total"] <= 3


async def test_a_hang_before_the_first_token_is_retried_invisibly(fresh_sim):
    await fresh_sim.aset_faults({"hang_rate": 0.3, "seed": 5})
    retry = layer(policy=RetryPolicy(max_attempts=6, base_delay_s=0.01))
    async with OpenAITransport(fresh_sim.endpoint) as transport:
        chain = Chain(transport, [retry, StreamGuard(first_token_timeout_s=0.3)])
        texts = [await (await chain.stream(f"q{i}", model="gpt-4o", max_tokens=8)).text() for i in range(8)]
    assert all(texts) and retry.stats.failures["first_token_timeout"] >= 1


async def test_with_resume_off_a_drop_after_the_first_token_is_not_replayed(fresh_sim):
    await fresh_sim.aset_faults({"drop_mid_stream_rate": 1.0})
    retry = layer(resume_streams=False)
    async with OpenAITransport(fresh_sim.endpoint) as transport:
        chain = Chain(transport, [retry, StreamGuard()])
        stream = await chain.stream("hi", model="gpt-4o", max_tokens=30, temperature=0)  # reproducible, yet
        with pytest.raises(MidStreamError) as raised:
            await stream.text()
    assert raised.value.partial_text and raised.value.kind == "dropped"
    assert (await fresh_sim.astats())["requests_total"] == 1
    assert retry.stats.resumed == 0 and retry.stats.gave_up["failed after the first token"] == 1


def test_verified_resume_is_the_default():
    assert RetryLayer().resume_streams is True
    assert RetryLayer(resume_streams=False).resume_streams is False


async def test_by_default_a_reproducible_stream_is_resumed_and_a_sampled_one_is_not(fresh_sim):
    async with OpenAITransport(fresh_sim.endpoint) as transport:
        expected = await (
            await Chain(transport, [StreamGuard()]).stream("q", model="gpt-4o", max_tokens=30, temperature=0)
        ).text()
        await fresh_sim.aset_faults({"drop_mid_stream_rate": 1.0})
        retry = RetryLayer(RetryPolicy(max_attempts=8, base_delay_s=0.01), budget=RetryBudget(ratio=1.0), seed=0)
        chain = Chain(transport, [retry, StreamGuard()])

        # sampled (temperature > 0, no seed): a replay would be another answer, so the caller gets the partial text
        sampled = await chain.stream("q", model="gpt-4o", max_tokens=30, temperature=0.7)
        with pytest.raises(MidStreamError) as raised:
            await sampled.text()
        assert raised.value.partial_text
        assert retry.stats.resumed == 0 and retry.stats.attempts == 1
        assert retry.stats.gave_up["failed after the first token (sampled: not resumed)"] == 1

        # reproducible (temperature 0): the layer replays it and continues after exactly the delivered text
        await fresh_sim.aset_faults({"drop_mid_stream_rate": 0.5, "seed": 2})
        texts = []
        for _ in range(4):
            texts.append(await (await chain.stream("q", model="gpt-4o", max_tokens=30, temperature=0)).text())
    assert texts == [expected] * 4
    assert retry.stats.resumed >= 1 and retry.stats.resume_diverged == 0


async def test_verified_resume_continues_with_exactly_the_uninterrupted_answer(fresh_sim):
    async with OpenAITransport(fresh_sim.endpoint) as transport:
        plain = Chain(transport, [StreamGuard()])
        expected = [
            await (await plain.stream(f"q{i}", model="gpt-4o", max_tokens=30, temperature=0)).text() for i in range(4)
        ]
        await fresh_sim.aset_faults({"drop_mid_stream_rate": 0.5, "seed": 2})
        retry = layer()  # verified resume is the default
        chain = Chain(transport, [retry, StreamGuard()])
        texts = [
            await (await chain.stream(f"q{i}", model="gpt-4o", max_tokens=30, temperature=0)).text() for i in range(4)
        ]
    assert texts == expected and retry.stats.resumed >= 1


def test_a_retry_layer_over_sdk_retries_is_refused():
    with pytest.raises(ValueError, match=r"double retrying.*max_retries=2.*sdk_max_retries=0"):
        ChainConfig.preset("resilience", sdk_max_retries=2)


async def test_the_resilience_chain_keeps_the_sdk_retries_off(fresh_sim):
    async with build_chain(ChainConfig.preset("resilience"), [fresh_sim.endpoint]) as built:
        assert built.retry is not None
        assert [t.client.max_retries for t in built.transports] == [0]


# -- the deadline's own cancellation, over an in-process handler (no service needed) ---------------------------


async def test_the_deadline_stops_a_hanging_attempt_with_deadline_exceeded():
    chain = Chain(hangs, [layer(deadline_s=0.05)])
    with pytest.raises(DeadlineExceeded, match=r"0\.05 s deadline"):
        await chain.complete("hi", model="gpt-4o")
    assert asyncio.current_task().cancelling() == 0  # the layer's own cancellation is withdrawn


async def test_the_callers_own_cancellation_is_not_taken_for_the_deadline():
    chain = Chain(hangs, [layer(deadline_s=30)])
    task = asyncio.create_task(chain.complete("hi", model="gpt-4o"))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_an_answer_within_the_deadline_leaves_no_cancellation_behind():
    chain = Chain(answers, [layer(deadline_s=0.05)])
    answer = await chain.complete("hi", model="gpt-4o")
    assert answer.choices[0].message.content == "ok"
    await asyncio.sleep(0.1)  # past the deadline: its timer is gone with the attempt
    assert asyncio.current_task().cancelling() == 0
