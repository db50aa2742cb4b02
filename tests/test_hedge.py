"""Hedged requests against two real simulated services: the first answer wins and the loser is cancelled
upstream (the service counts the disconnect); the delay comes from observed first-token times; the cap holds."""

import asyncio
import gc

import pytest
from conftest import answers, completion, hangs

from labkit.chain import Chain
from labkit.lab.services import start_sim
from labkit.layers.balancer import Backend, Balancer
from labkit.layers.hedge import SAMPLE_BATCH, HedgeLayer, SampleWindow
from labkit.percentiles import percentile
from labkit.transports.sdk import OpenAITransport


@pytest.fixture(scope="module")
def other_sim():
    with start_sim("fast", seed=1) as service:
        yield service


@pytest.fixture
async def pair(fresh_sim, other_sim):
    """A chain over [other_sim, fresh_sim] in round-robin order (the primary goes to other_sim first)."""
    await other_sim.areset()
    transports = [OpenAITransport(other_sim.endpoint), OpenAITransport(fresh_sim.endpoint)]
    yield transports, other_sim, fresh_sim
    for t in transports:
        await t.aclose()
    await other_sim.areset()


def chain_of(transports, hedge):
    backends = [Backend(name, t) for name, t in zip(("first", "second"), transports, strict=True)]
    return Chain(Balancer(backends, "round_robin"), [hedge])


async def disconnects(sim, expected, wait_s=3.0):
    """The service notices a closed connection a moment after the client closes it."""
    for _ in range(int(wait_s / 0.05)):
        count = (await sim.astats())["disconnects"]
        if count >= expected:
            return count
        await asyncio.sleep(0.05)
    return (await sim.astats())["disconnects"]


async def test_the_hedge_wins_and_the_hung_primary_is_cancelled_upstream(pair):
    transports, first, _second = pair
    await first.aset_faults({"hang_rate": 1.0})
    hedge = HedgeLayer(delay_s=0.1)
    log = []
    text = await (await chain_of(transports, hedge).stream("hi", model="gpt-4o", controls={"route_log": log})).text()
    assert text and hedge.stats.hedged == 1 and hedge.stats.hedge_won == 1 and hedge.stats.losers_cancelled == 1
    assert log == ["first", "second"]
    assert await disconnects(first, 1) == 1


async def test_when_the_primary_wins_the_hedge_is_cancelled_upstream(pair):
    transports, first, second = pair
    await first.aset_faults({"slow_first_byte": {"rate": 1.0, "delay_s": 0.3}})
    await second.aset_faults({"hang_rate": 1.0})
    hedge = HedgeLayer(delay_s=0.05)
    text = await (await chain_of(transports, hedge).stream("hi", model="gpt-4o")).text()
    assert text and hedge.stats.primary_won == 1
    assert await disconnects(second, 1) == 1 and (await first.astats())["disconnects"] == 0


async def test_no_hedge_when_the_first_token_comes_in_time(pair):
    transports, first, second = pair
    hedge = HedgeLayer(delay_s=2.0)
    await (await chain_of(transports, hedge).stream("hi", model="gpt-4o")).text()
    assert hedge.stats.hedged == 0
    assert (await first.astats())["requests_total"] + (await second.astats())["requests_total"] == 1


async def test_the_cap_stops_hedging(pair):
    transports, first, _second = pair
    await first.aset_faults({"slow_first_byte": {"rate": 1.0, "delay_s": 0.2}})
    hedge = HedgeLayer(delay_s=0.01, max_share=0.0)
    await (await chain_of(transports, hedge).stream("hi", model="gpt-4o")).text()
    assert hedge.stats.hedged == 0 and hedge.stats.capped == 1


async def test_a_caller_giving_up_after_the_hedge_failed_leaves_no_unread_error(pair):
    transports, first, second = pair
    await first.aset_faults({"hang_rate": 1.0})
    await second.aset_faults({"error_rates": {"500": 1.0}})
    loop = asyncio.get_running_loop()
    unread = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: unread.append(context))
    try:
        hedge = HedgeLayer(delay_s=0.05)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):  # the hedge failed at once; the caller gives up on the primary
                await chain_of(transports, hedge).stream("hi", model="gpt-4o")
        gc.collect()
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(previous)
    assert hedge.stats.hedged == 1 and not unread
    assert await disconnects(first, 1) == 1


def test_the_delay_is_the_quantile_of_observed_first_tokens():
    hedge = HedgeLayer(quantile=90, min_samples=10)
    assert hedge.delay_s() is None  # not enough samples: no hedging
    hedge.samples.extend(i / 100 for i in range(1, 101))
    assert hedge.delay_s() == pytest.approx(0.901)


async def test_past_min_samples_answer_times_join_the_window_a_batch_at_a_time():
    hedge = HedgeLayer(min_samples=5)
    chain = Chain(answers, [hedge])
    for _ in range(5):
        await chain.complete("hi", model="gpt-4o")
    assert len(hedge.samples) == 5 and hedge.delay_s() is not None  # the warm-up counts every answer at once
    for _ in range(SAMPLE_BATCH - 1):
        await chain.complete("hi", model="gpt-4o")
    assert len(hedge.samples) == 5
    await chain.complete("hi", model="gpt-4o")
    assert len(hedge.samples) == 5 + SAMPLE_BATCH


class SlowPrimaries:
    """An upstream where every call takes `primary_s`, and a hedge's call (it avoids the primary's endpoint)
    `hedge_s`: set them equal and every hedge loses, make the hedge quicker and every hedge wins."""

    def __init__(self, primary_s: float, hedge_s: float) -> None:
        self.primary_s, self.hedge_s = primary_s, hedge_s

    async def __call__(self, request):
        await asyncio.sleep(self.hedge_s if "avoid_endpoints" in request.controls else self.primary_s)
        return completion(request.model)


def hedging(upstream, **kwargs):
    hedge = HedgeLayer(delay_s=0.01, max_share=1.0, burst=100, **kwargs)
    return Chain(upstream, [hedge]), hedge


async def test_after_a_run_of_lost_hedges_only_one_due_hedge_in_probe_every_is_sent():
    chain, hedge = hedging(SlowPrimaries(0.03, 0.03), futile_after=3, probe_every=2)
    for _ in range(7):
        await chain.complete("hi", model="gpt-4o")
    # three lost hedges, then every other request sent without a hedge timer: paused, probe, paused, probe
    assert (hedge.stats.hedged, hedge.stats.paused, hedge.stats.hedge_won) == (5, 2, 0)


async def test_a_paused_hedge_sets_no_timer_for_a_request_that_is_not_a_probe():
    chain, hedge = hedging(SlowPrimaries(0.03, 0.03), futile_after=1, probe_every=3)
    await chain.complete("hi", model="gpt-4o")  # one lost hedge: paused
    request = asyncio.create_task(chain.complete("hi", model="gpt-4o"))
    await asyncio.sleep(0.005)  # sent, and its hedge's 10 ms delay not over: a timer would be set now
    assert len(hedge._timers) == 0 and hedge.stats.paused == 1 and hedge.stats.hedged == 1
    await request


async def test_a_probe_that_wins_ends_the_pause():
    upstream = SlowPrimaries(0.03, 0.03)
    chain, hedge = hedging(upstream, futile_after=2, probe_every=3)
    for _ in range(4):  # two lost hedges, then two requests without a hedge timer
        await chain.complete("hi", model="gpt-4o")
    upstream.hedge_s = 0.0  # from now on a hedge answers first
    for _ in range(3):  # the probe wins; the next two hedges are sent again
        await chain.complete("hi", model="gpt-4o")
    assert (hedge.stats.hedged, hedge.stats.paused, hedge.stats.hedge_won) == (5, 2, 3)


def test_the_delay_follows_samples_added_to_the_window_directly():
    hedge = HedgeLayer(quantile=50, min_samples=1)
    hedge.samples.append(0.2)
    assert hedge.delay_s() == pytest.approx(0.2)
    hedge.samples.append(0.4)
    assert hedge.delay_s() == pytest.approx(0.3)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"quantile": 100},
        {"max_share": 1.5},
        {"min_samples": 0},
        {"delay_s": -1},
        {"burst": 0.5},
        {"futile_after": 0},
        {"probe_every": 0},
    ],
)
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        HedgeLayer(**kwargs)


def test_the_sample_window_keeps_the_percentile_of_its_last_samples():
    window = SampleWindow(50)
    values = [((i * 7919) % 101) / 100 for i in range(200)]
    window.extend(values)
    assert len(window) == 50 and list(window) == values[-50:]
    assert window.percentile(95) == percentile(values[-50:], 95)


class FirstListed:
    """A strategy that always picks the first candidate: only `avoid_endpoints` can send a hedge elsewhere."""

    name = "first_listed"

    def choose(self, backends, rng):
        return backends[0]


@pytest.mark.parametrize("caller_log", [True, False], ids=["under a caller's route log", "alone"])
async def test_the_hedge_avoids_the_endpoint_the_primary_went_to(caller_log):
    went: list[str] = []

    async def first(request):
        went.append("first")
        return await hangs(request)

    async def second(request):
        went.append("second")
        return await answers(request)

    hedge = HedgeLayer(delay_s=0.01)
    balancer = Balancer([Backend("first", first), Backend("second", second)], FirstListed())
    log: list[str] = []
    controls = {"route_log": log} if caller_log else {}
    answer = await Chain(balancer, [hedge]).complete("hi", model="gpt-4o", controls=controls)
    assert answer.choices[0].message.content == "ok" and went == ["first", "second"]
    assert hedge.stats.hedge_won == 1
    assert log == (["first", "second"] if caller_log else [])
