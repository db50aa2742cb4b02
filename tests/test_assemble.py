"""The one builder: presets and config changes give the chains the lessons use, against the real simulated service."""

import asyncio

import pytest

from labkit.assemble import GIVEN_PLACES, ChainConfig, build_chain
from labkit.chain_config import config_from_mapping
from labkit.endpoint import Endpoint
from labkit.layers.metrics import MetricsLayer, MetricsRecorder
from labkit.transports.sdk import OpenAITransport


def endpoints(sim, n):
    return [Endpoint(sim.base_url, name=f"e{i}") for i in range(n)]


async def test_the_resilience_preset_is_retry_over_a_balancer_of_guarded_breakers(fresh_sim):
    async with build_chain(ChainConfig.preset("resilience"), endpoints(fresh_sim, 2)) as built:
        assert repr(built.chain) == "Chain(RetryLayer -> Balancer)"
        inner = [repr(b.handler) for b in built.balancer.backends]
        assert inner == ["Chain(CircuitBreaker -> StreamGuard -> UpstreamTap -> OpenAITransport)"] * 2
        assert sorted(built.breakers) == ["e0", "e1"]
        completion = await built.chain.complete("hi", model="gpt-4o", max_tokens=5)
    assert completion.choices[0].message.content and sum(built.upstream.values()) == 1


async def test_the_last_endpoints_become_fallbacks_serving_their_model(fresh_sim):
    config = ChainConfig.preset("resilience", endpoint_names=("a", "b"), fallback_models=("gpt-4o-mini",))
    async with build_chain(config, endpoints(fresh_sim, 3)) as built:
        backends = [(b.name, b.tier, b.model) for b in built.balancer.backends]
    assert backends == [("a", 0, None), ("b", 0, None), ("fallback gpt-4o-mini #0", 1, "gpt-4o-mini")]


def test_fallbacks_without_the_balancer_are_refused(sim):
    config = ChainConfig.preset("resilience", balancer=False, fallback_models=("gpt-4o-mini",))
    with pytest.raises(ValueError, match="fallback"):
        build_chain(config, endpoints(sim, 2))


async def test_the_sdk_retries_setting_reaches_the_pooled_client(fresh_sim):
    async with build_chain(ChainConfig.preset("bare", sdk_max_retries=2), fresh_sim.endpoint) as built:
        assert [t.client.max_retries for t in built.transports] == [2]


async def test_a_given_transport_is_used_and_left_open(fresh_sim):
    async with OpenAITransport(fresh_sim.endpoint) as transport:
        async with build_chain(ChainConfig.preset("bare"), transport) as built:
            assert built.transports == [transport]
            await built.chain.complete("first", model="gpt-4o", max_tokens=5)
        again = await transport.client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "second"}], max_tokens=5
        )
    assert again.choices[0].message.content and fresh_sim.stats()["requests_total"] == 2


async def test_upstream_metrics_count_what_went_upstream_beside_what_callers_saw(fresh_sim):
    config = ChainConfig.preset("bare", metrics=True, upstream_metrics=True, dedup=True)
    async with build_chain(config, fresh_sim.endpoint) as built:
        await asyncio.gather(
            *(built.chain.complete("same question", model="gpt-4o", max_tokens=20, temperature=0) for _ in range(3))
        )
    assert len(built.layers["metrics"].recorder.records) == 3
    assert len(built.layers["upstream_metrics"].recorder.records) == 1


async def test_a_given_layer_takes_its_switchs_place(fresh_sim):
    recorder = MetricsRecorder()
    config = ChainConfig.preset("bare", metrics=True)
    async with build_chain(config, fresh_sim.endpoint, given={"metrics": MetricsLayer(recorder)}) as built:
        await built.chain.complete("hi", model="gpt-4o", max_tokens=5)
    assert built.layers["metrics"].recorder is recorder and len(recorder.records) == 1


@pytest.mark.parametrize("place", ["metrics", "dedup_redis", "turbo"])
def test_a_given_layer_that_would_not_be_used_is_refused(sim, place):
    with pytest.raises(ValueError, match="would not be used" if place in GIVEN_PLACES else "cannot take"):
        build_chain(ChainConfig.preset("bare"), sim.endpoint, given={place: MetricsLayer()})


def test_the_redis_flight_needs_a_redis(sim):
    with pytest.raises(ValueError, match="needs a Redis"):
        build_chain(ChainConfig.preset("bare", dedup=True, dedup_redis=True), sim.endpoint)


@pytest.mark.parametrize(("named", "spills"), [(False, True), (True, False)])
def test_the_chains_own_sqlite_file_holds_what_memory_evicts_and_a_named_one_every_answer(sim, tmp_path, named, spills):
    config = ChainConfig().without("semantic")
    path = str(tmp_path / "named.sqlite") if named else None
    built = build_chain(config, Endpoint(sim.base_url), sqlite_path=path)
    sqlite = built.layers["cache"].tiers[-1]
    assert sqlite.spill is spills and sqlite.private is spills
    asyncio.run(built.aclose())


def test_a_config_section_with_lists_gives_a_config_of_tuples():
    config = config_from_mapping({"endpoint_names": ["a", "b"], "weights": [2, 1], "retry": False})
    assert config.endpoint_names == ("a", "b") and config.weights == (2, 1) and not config.retry
    with pytest.raises(ValueError, match="unknown chain setting"):
        config_from_mapping({"retyr": False})


def test_an_unknown_preset_is_refused():
    with pytest.raises(ValueError, match="unknown preset"):
        ChainConfig.preset("fastest")
