"""The balancer's strategies, breaker skipping, fallback tiers and the avoid/route-log controls; and a balancer
over two real simulated services."""

import asyncio
import random
from collections import Counter

import pytest
from openai.types.chat import ChatCompletion

from labkit.chain import Chain
from labkit.errors import NoBackendAvailable
from labkit.lab.services import start_sim
from labkit.layers.balancer import Backend, Balancer, LeastOutstanding, PeakEwmaP2C, RoundRobin, Weighted
from labkit.request import ChatRequest
from labkit.transports.sdk import OpenAITransport

ANSWER = ChatCompletion.model_validate(
    {
        "id": "x",
        "object": "chat.completion",
        "created": 0,
        "model": "gpt-4o",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
    }
)


def handler(name, served, delay=0.0):
    async def answer(request):
        served.append((name, request.model))
        await asyncio.sleep(delay)
        return ANSWER

    return answer


class Gate:
    def __init__(self, open_=True):
        self.open = open_

    def allows(self):
        return self.open


def request(**controls):
    return ChatRequest.create("gpt-4o", "hi", controls=controls)


def test_round_robin_takes_each_in_turn():
    backends = [Backend(n, handler(n, [])) for n in "abc"]
    rr, rng = RoundRobin(), random.Random(0)
    assert [rr.choose(backends, rng).name for _ in range(6)] == list("abcabc")


def test_least_outstanding_picks_the_idlest():
    backends = [Backend(n, handler(n, [])) for n in "abc"]
    backends[0].outstanding, backends[1].outstanding, backends[2].outstanding = 3, 1, 2
    assert LeastOutstanding().choose(backends, random.Random(0)).name == "b"


def test_peak_ewma_jumps_to_a_peak_and_decays_back():
    b = Backend("a", handler("a", []), decay_s=1.0)
    b.observe(0.1, now=1.0)
    b.observe(1.0, now=1.1)
    assert b.ewma_s == 1.0
    b.observe(0.1, now=4.1)  # three time constants later
    assert 0.1 < b.ewma_s < 0.2


def test_peak_ewma_with_two_choices_shuns_a_slow_backend():
    backends = [Backend(n, handler(n, [])) for n in "abc"]
    for b, latency in zip(backends, (0.05, 0.05, 0.5), strict=True):
        b.observe(latency, now=1.0)
    strategy, rng = PeakEwmaP2C(), random.Random(0)
    picks = Counter(strategy.choose(backends, rng).name for _ in range(300))
    assert picks["c"] == 0 and picks["a"] > 100 and picks["b"] > 100


def test_weighted_gives_each_backend_its_weight_in_every_cycle():
    backends = [Backend("a", handler("a", []), weight=3), Backend("b", handler("b", []), weight=1)]
    strategy, rng = Weighted(), random.Random(0)
    picks = [strategy.choose(backends, rng).name for _ in range(8)]
    assert Counter(picks[:4]) == {"a": 3, "b": 1} and Counter(picks[4:]) == {"a": 3, "b": 1}
    assert picks[:4] != ["a", "a", "a", "b"]  # smooth: b is not left to the end


async def test_skips_backends_whose_circuit_is_open():
    served = []
    balancer = Balancer(
        [Backend("a", handler("a", served), gate=Gate(False)), Backend("b", handler("b", served))], "round_robin"
    )
    for _ in range(4):
        await balancer(request())
    assert [name for name, _ in served] == ["b"] * 4


async def test_falls_back_to_another_model_only_when_every_primary_refuses():
    served, gate = [], Gate(True)
    balancer = Balancer(
        [
            Backend("a", handler("a", served), gate=gate),
            Backend("mini", handler("mini", served), model="gpt-4o-mini", tier=1),
        ],
        "round_robin",
    )
    await balancer(request())
    gate.open = False
    await balancer(request())
    assert served == [("a", "gpt-4o"), ("mini", "gpt-4o-mini")] and balancer.fallbacks == 1


async def test_honours_avoid_endpoints_and_fills_the_route_log():
    served, log = [], []
    balancer = Balancer([Backend(n, handler(n, served)) for n in "ab"], "round_robin")
    await balancer(request(avoid_endpoints=["a"], route_log=log))
    await balancer(request(avoid_endpoints=["a"], route_log=log))
    assert log == ["b", "b"]


async def test_goes_to_an_avoided_endpoint_when_there_is_no_other():
    served = []
    balancer = Balancer([Backend("a", handler("a", served))])
    await balancer(request(avoid_endpoints=["a"]))
    assert served == [("a", "gpt-4o")] and balancer.avoided == 1


async def test_no_backend_available_when_all_refuse():
    balancer = Balancer([Backend("a", handler("a", []), gate=Gate(False))])
    with pytest.raises(NoBackendAvailable):
        await balancer(request())


async def test_least_outstanding_spreads_concurrent_slow_requests():
    served = []
    balancer = Balancer([Backend(n, handler(n, served, delay=0.05)) for n in "abc"], "least_outstanding")
    await asyncio.gather(*(balancer(request()) for _ in range(9)))
    assert Counter(name for name, _ in served) == {"a": 3, "b": 3, "c": 3}
    assert all(b.outstanding == 0 for b in balancer.backends)


@pytest.mark.parametrize(
    "make",
    [
        lambda: Balancer([]),
        lambda: Balancer([Backend("a", handler("a", []))], "fastest"),
        lambda: Balancer([Backend("a", handler("a", [])), Backend("a", handler("a", []))]),
        lambda: Backend("a", handler("a", []), weight=0),
        lambda: Backend("", handler("a", [])),
    ],
)
def test_bad_settings_are_refused(make):
    with pytest.raises(ValueError):
        make()


async def test_avoid_endpoints_must_be_a_list():
    balancer = Balancer([Backend("a", handler("a", []))])
    with pytest.raises(TypeError):
        await balancer(request(avoid_endpoints="a"))


@pytest.fixture(scope="module")
def second_sim():
    with start_sim("fast", seed=1) as service:
        yield service


async def test_streams_over_two_real_services_are_spread_and_released(fresh_sim, second_sim):
    second_sim.reset()
    transports = [OpenAITransport(fresh_sim.endpoint), OpenAITransport(second_sim.endpoint)]
    balancer = Balancer([Backend(n, t) for n, t in zip("ab", transports, strict=True)], "round_robin")
    chain = Chain(balancer)
    texts = await asyncio.gather(
        *[(await chain.stream(f"q{i}", model="gpt-4o", max_tokens=5)).text() for i in range(6)]
    )
    for t in transports:
        await t.aclose()
    assert all(texts)
    assert (await fresh_sim.astats())["requests_total"] == 3 and (await second_sim.astats())["requests_total"] == 3
    assert all(b.outstanding == 0 and b.ewma_s > 0 for b in balancer.backends)
