"""The circuit breaker's state machine (closed -> open -> half-open -> closed/open), what counts as a failure,
and the breaker in front of a real failing service."""

import asyncio

import httpx2
import openai
import pytest

from labkit.chain import Chain
from labkit.errors import CircuitOpenError
from labkit.layers.breaker import CircuitBreaker
from labkit.request import ChatRequest
from labkit.transports.sdk import OpenAITransport


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def breaker(clock, **kwargs):
    settings = {"failure_ratio": 0.5, "min_requests": 10, "window_s": 10.0, "open_s": 5.0, "half_open_probes": 2}
    return CircuitBreaker("a", clock=clock, **(settings | kwargs))


def feed(b, successes, failures):
    for _ in range(successes):
        b.record("success", b.acquire())
    for _ in range(failures):
        b.record("failure", b.acquire())


def test_stays_closed_below_the_minimum_of_requests_even_if_all_fail():
    b = breaker(Clock())
    feed(b, 0, 9)
    assert b.state == "closed"


def test_opens_when_the_failure_share_reaches_the_ratio():
    b = breaker(Clock())
    feed(b, 5, 5)
    assert b.state == "open" and b.events["opened"] == 1


def test_stays_closed_below_the_failure_ratio():
    b = breaker(Clock())
    feed(b, 12, 8)
    assert b.state == "closed"


def test_an_open_circuit_refuses_without_sending_and_says_when_to_come_back():
    clock = Clock()
    b = breaker(clock)
    feed(b, 0, 10)
    clock.now += 2.0
    assert not b.allows()
    with pytest.raises(CircuitOpenError) as raised:
        b.acquire()
    assert raised.value.retry_after_s == pytest.approx(3.0) and b.events["rejected"] == 1


def test_turns_half_open_after_open_s_and_lets_only_the_probes_through():
    clock = Clock()
    b = breaker(clock)
    feed(b, 0, 10)
    clock.now += 5.0
    assert b.state == "half_open"
    assert b.acquire() and b.acquire()  # two probes
    assert not b.allows()


def test_probe_successes_close_the_circuit_with_an_empty_window():
    clock = Clock()
    b = breaker(clock)
    feed(b, 0, 10)
    clock.now += 5.0
    probes = [b.acquire(), b.acquire()]
    for probe in probes:
        b.record("success", probe)
    assert b.state == "closed" and b.window() == (0, 0) and b.events["closed"] == 1


def test_a_probe_failure_opens_the_circuit_again():
    clock = Clock()
    b = breaker(clock)
    feed(b, 0, 10)
    clock.now += 5.0
    b.record("failure", b.acquire())
    assert b.state == "open" and b.events["opened"] == 2 and b.events["probe_failures"] == 1


def test_old_outcomes_leave_the_window():
    clock = Clock()
    b = breaker(clock)
    feed(b, 0, 9)
    clock.now += 11.0
    feed(b, 0, 1)
    assert b.state == "closed" and b.window() == (0, 1)


@pytest.mark.parametrize(
    "make",
    [
        lambda: CircuitBreaker(failure_ratio=0),
        lambda: CircuitBreaker(failure_ratio=1.5),
        lambda: CircuitBreaker(min_requests=0),
        lambda: CircuitBreaker(open_s=0),
        lambda: CircuitBreaker(half_open_probes=0),
    ],
)
def test_bad_settings_are_refused(make):
    with pytest.raises(ValueError):
        make()


def status_error(status, code=None):
    request = httpx2.Request("POST", "http://sim/v1/chat/completions")
    body = {"message": "injected", "type": "x", "param": None, "code": code}
    response = httpx2.Response(status, request=request, json={"error": body})
    return openai.OpenAI(api_key="x", base_url="http://sim/v1")._make_status_error(
        "injected", body=body, response=response
    )


@pytest.mark.parametrize(
    ("error", "counted"),
    [
        (status_error(503), True),
        (status_error(400), False),
        (status_error(429, "rate_limit_exceeded"), False),
        (status_error(429, "insufficient_quota"), True),
    ],
)
async def test_only_evidence_about_the_endpoint_counts_as_a_failure(error, counted):
    b = CircuitBreaker("a", min_requests=1, failure_ratio=1.0)

    async def failing(request):
        raise error

    with pytest.raises(type(error)):
        await b(ChatRequest.create("gpt-4o", "hi"), failing)
    assert b.window() == (0, 1 if counted else 0)


async def test_a_failing_service_is_cut_off_after_the_minimum_of_requests(fresh_sim):
    await fresh_sim.aset_faults({"error_rates": {"503": 1.0}})
    b = CircuitBreaker("sim", min_requests=5, failure_ratio=0.5, open_s=30)
    async with OpenAITransport(fresh_sim.endpoint) as transport:
        chain = Chain(transport, [b])
        results = await asyncio.gather(
            *(chain.complete(f"q{i}", model="gpt-4o") for i in range(5)), return_exceptions=True
        )
        results += [
            await asyncio.gather(chain.complete("more", model="gpt-4o"), return_exceptions=True) for _ in range(20)
        ]
    assert b.state == "open" and b.events["rejected"] == 20
    assert (await fresh_sim.astats())["requests_total"] == 5
