"""Tenant scope against a real simulated service and a real Redis: two tenants sending the same request at the same
instant make two upstream calls, one tenant's 401 never reaches the other, the cache never serves one tenant's
answer to another, and a fallback model's answer is stored under the model that served it.

The keyed sim accepts one API key only, so the other tenant's key is answered with a real 401.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator

import openai
import pytest
from conftest import Counting
from openai.types.chat import ChatCompletion

from labkit.assemble import ChainConfig, build_chain
from labkit.cache import CacheLayer, MemoryTier, SemanticCache
from labkit.cache.embeddings import default_embedder
from labkit.cache.layer import NO_CONTROLS
from labkit.chain import Chain
from labkit.dedup import SingleFlight
from labkit.dedup.redisflight import RedisSingleFlight, decode, encode_result
from labkit.endpoint import Endpoint
from labkit.lab.services import SimService, start_sim
from labkit.layers.balancer import Backend, Balancer
from labkit.request import ChatRequest
from labkit.scope import PUBLIC, Scoping, mark_served, served_model, tenant_of
from labkit.transports.sdk import OpenAITransport

MODEL, FALLBACK = "gpt-4o", "gpt-4o-mini"
KEY_A = "sk-tenant-a-accepted"
KEY_B = "sk-tenant-b-rejected"


@pytest.fixture(scope="module")
def keyed_sim() -> Iterator[SimService]:
    """A sim of its own that accepts tenant A's key only: tenant B's requests get a real 401."""
    with start_sim("fast", seed=11, api_key=[KEY_A]) as service:
        yield service


@pytest.fixture
async def transport_a(keyed_sim: SimService) -> AsyncIterator[OpenAITransport]:
    async with OpenAITransport(Endpoint(keyed_sim.base_url, KEY_A)) as transport:
        yield transport


@pytest.fixture
async def transport_b(keyed_sim: SimService) -> AsyncIterator[OpenAITransport]:
    async with OpenAITransport(Endpoint(keyed_sim.base_url, KEY_B)) as transport:
        yield transport


def ask(prompt: str = "What is a tenant?", **controls: object) -> ChatRequest:
    return ChatRequest.create(MODEL, prompt, max_tokens=12, temperature=0, controls=controls)


def as_tenant_b(request: ChatRequest) -> ChatRequest:
    """The same request sent with tenant B's key (a gateway passing its caller's credential per request)."""
    return request.with_controls(headers={"Authorization": f"Bearer {KEY_B}"})


# -- the scope ----------------------------------------------------------------------------------------------


def test_the_tenant_is_a_hash_of_the_key_and_never_the_key():
    tenant = Endpoint("http://sim/v1", KEY_A).tenant
    assert tenant == tenant_of(KEY_A) and KEY_A not in tenant and tenant != tenant_of(KEY_B)
    assert Scoping.of_endpoints([Endpoint("http://sim/v1", KEY_A)]).tenant == tenant


def test_a_per_request_credential_changes_the_scope_and_the_rest_does_not():
    scoping = Scoping(api_key=KEY_A)
    plain = scoping.of(ask())
    assert plain.tenant == tenant_of(KEY_A)
    assert scoping.of(as_tenant_b(ask())).tenant == tenant_of(KEY_B)
    assert scoping.of(ask(api_key=KEY_B)).tenant == tenant_of(KEY_B)
    assert scoping.of(ask(tenant="acme")).tenant == tenant_of("acme")
    assert scoping.of(ask(headers={"X-Trace": "1"})) == plain
    assert scoping.of(ask().replace(metadata={"request_id": "r1"})) == plain


def test_a_fallback_model_has_its_own_scope():
    scoping, request = Scoping(), ask()
    served = scoping.of(request, model=FALLBACK)
    assert served.model == FALLBACK and served.fingerprint == request.replace(model=FALLBACK).key
    assert served.fingerprint != scoping.of(request).fingerprint


# -- in-flight de-dup in one process -------------------------------------------------------------------------


@pytest.mark.parametrize("rejected_first", [True, False], ids=["rejected-tenant-first", "accepted-tenant-first"])
async def test_two_tenants_at_the_same_instant_make_two_upstream_calls_in_process(transport_a, rejected_first):
    """Before the scope, the second caller joined the first one's flight: its answer or its 401."""
    counting = Counting(delay_s=0.2)  # holds the first call in flight while the other tenant arrives
    single_flight = SingleFlight()
    chain = Chain(transport_a, [single_flight, counting])
    request = ask(f"same instant {uuid.uuid4().hex}")
    calls = [chain(as_tenant_b(request)), chain(request)]
    if not rejected_first:
        calls.reverse()
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    rejected, accepted = outcomes if rejected_first else outcomes[::-1]
    assert counting.calls == 2 and single_flight.stats.coalesced == 0
    assert isinstance(rejected, openai.AuthenticationError) and rejected.status_code == 401
    assert isinstance(accepted, ChatCompletion) and accepted.choices[0].message.content


async def test_one_tenants_requests_still_share_one_flight(transport_a):
    counting, single_flight = Counting(delay_s=0.2), SingleFlight()
    chain = Chain(transport_a, [single_flight, counting])
    request = ask(f"shared {uuid.uuid4().hex}")
    outcomes = await asyncio.gather(*(chain(as_tenant_b(request)) for _ in range(3)), return_exceptions=True)
    assert counting.calls == 1 and single_flight.stats.coalesced == 2
    assert all(isinstance(o, openai.AuthenticationError) for o in outcomes)


# -- in-flight de-dup through Redis -------------------------------------------------------------------------


@pytest.fixture
async def redis_namespace(redis_service) -> AsyncIterator[str]:
    namespace = f"test:scope:{uuid.uuid4().hex}"
    yield namespace
    cleaner = RedisSingleFlight.from_url(redis_service.url)
    async for key in cleaner.redis.scan_iter(f"{namespace}:*"):
        await cleaner.redis.delete(key)
    await cleaner.aclose()


@pytest.mark.parametrize("rejected_first", [True, False], ids=["rejected-tenant-first", "accepted-tenant-first"])
async def test_two_tenants_at_the_same_instant_make_two_upstream_calls_through_redis(
    redis_service, redis_namespace, transport_a, transport_b, rejected_first
):
    """Two processes (two coalescers on one Redis), each with its own key: neither joins the other's flight."""
    flights, chains, countings = [], [], []
    for transport in (transport_b, transport_a):
        scoping = Scoping.of_endpoints([transport.endpoint])  # as build_chain does: the tenant of its endpoint
        flight = RedisSingleFlight.from_url(redis_service.url, scoping=scoping, namespace=redis_namespace, poll_s=0.05)
        counting = Counting(delay_s=0.2)
        flights.append(flight)
        countings.append(counting)
        chains.append(Chain(transport, [flight, counting]))
    request = ask(f"same instant through redis {uuid.uuid4().hex}")
    order = [0, 1] if rejected_first else [1, 0]
    try:
        outcomes = dict(
            zip(order, await asyncio.gather(*(chains[i](request) for i in order), return_exceptions=True), strict=True)
        )
    finally:
        for flight in flights:
            await flight.aclose()
    rejected, accepted = outcomes[0], outcomes[1]
    assert [c.calls for c in countings] == [1, 1]
    assert [f.stats.upstream_calls for f in flights] == [1, 1]
    assert isinstance(rejected, openai.AuthenticationError) and rejected.status_code == 401
    assert isinstance(accepted, ChatCompletion) and accepted.choices[0].message.content


async def test_a_fallbacks_answer_says_which_model_served_it_through_redis():
    completion = ChatCompletion.model_validate(
        {"id": "c", "object": "chat.completion", "created": 1, "model": FALLBACK, "choices": []}
    )
    mark_served(completion, FALLBACK)
    decoded = decode(encode_result(completion))
    assert decoded is not None and served_model(decoded) == FALLBACK


# -- the cache ----------------------------------------------------------------------------------------------


def cache_only(**changes: object) -> ChainConfig:
    return ChainConfig(
        semantic=False,
        dedup=False,
        admission=False,
        retry=False,
        hedge=False,
        balancer=False,
        cache_redis=False,
        cache_clear_on_close=False,
        **changes,
    )


async def test_build_chain_scopes_the_cache_by_its_endpoints_key(sim, tmp_path):
    """Two chains on one cache file, each with its own key: tenant B's request goes upstream, not to A's entry."""
    path = str(tmp_path / "shared.sqlite")
    a = build_chain(cache_only(), Endpoint(sim.base_url, "sk-cache-tenant-a"), sqlite_path=path)
    b = build_chain(cache_only(), Endpoint(sim.base_url, "sk-cache-tenant-b"), sqlite_path=path)
    try:
        request = ask(f"shared cache file {uuid.uuid4().hex}")
        await a.chain(request)
        await a.chain(request)
        await b.chain(request)
        assert sum(a.upstream.values()) == 1  # A's repeat was a hit: the file is shared and caching works
        assert sum(b.upstream.values()) == 1  # B's first ask went upstream: A's entry is not B's
        cache = b.layers["cache"]
        assert cache.scoping.tenant == tenant_of("sk-cache-tenant-b") != PUBLIC
        assert cache.cache_key(request).split(":")[1] == tenant_of("sk-cache-tenant-b")
    finally:
        await a.aclose()
        await b.aclose()


async def test_the_cache_never_serves_a_rejected_tenant_the_answer_of_another(transport_a):
    memory = MemoryTier()
    counting = Counting()
    chain = Chain(transport_a, [CacheLayer([memory]), counting])
    request = ask(f"cached for A only {uuid.uuid4().hex}")
    await chain(request)
    with pytest.raises(openai.AuthenticationError):
        await chain(as_tenant_b(request))
    assert counting.calls == 2


# -- a fallback model's answer ------------------------------------------------------------------------------


class Switch:
    """A balancer gate (anything with `allows()`): the primary endpoint is up or down as a test says."""

    def __init__(self, up: bool) -> None:
        self.up = up

    def allows(self) -> bool:
        return self.up


@pytest.fixture
async def fallback_chain(sim) -> AsyncIterator[tuple[Chain, CacheLayer, MemoryTier, Switch]]:
    """cache -> in-flight de-dup -> balancer(primary, fallback with a smaller model)."""
    switch = Switch(up=False)
    async with OpenAITransport(sim.endpoint) as transport:
        balancer = Balancer(
            [
                Backend("primary", transport, gate=switch),
                Backend("fallback", transport, model=FALLBACK, tier=1),
            ],
            "round_robin",
        )
        memory = MemoryTier()
        cache = CacheLayer([memory], stampede_protection=False)
        yield Chain(balancer, [cache, SingleFlight(), Counting(delay_s=0.1)]), cache, memory, switch


async def test_a_fallback_models_answer_is_stored_under_the_model_that_served_it(fallback_chain):
    chain, cache, memory, switch = fallback_chain
    request = ask(f"fallback {uuid.uuid4().hex}")
    answers = await asyncio.gather(chain(request), chain(request))  # the second is a coalesced copy
    assert all(a.choices[0].message.content for a in answers)
    assert memory.get_now(cache.cache_key(request, model=FALLBACK)) is not None
    assert memory.get_now(cache.cache_key(request)) is None

    switch.up = True
    route: list[str] = []
    await chain(request.with_controls(route_log=route))
    assert route == ["primary"]  # the primary model's question was not answered by the fallback's entry
    route.clear()
    await chain(request.replace(model=FALLBACK).with_controls(route_log=route))
    assert route == []  # the fallback model's own question is a hit


async def test_the_semantic_cache_stores_a_fallbacks_answer_under_the_model_that_served_it(sim):
    semantic = SemanticCache(default_embedder(), embed_in_thread=False)
    switch = Switch(up=False)
    async with OpenAITransport(sim.endpoint) as transport:
        balancer = Balancer(
            [Backend("primary", transport, gate=switch), Backend("fallback", transport, model=FALLBACK, tier=1)]
        )
        chain = Chain(balancer, [semantic])
        text = f"What is the capital of country number {uuid.uuid4().int % 1000}?"
        request = ask(text)
        await chain(request)
    vector = await semantic.embed(text)
    assert semantic.match(semantic.scope_of(request, NO_CONTROLS, FALLBACK), text, vector) is not None
    assert semantic.match(semantic.scope_of(request, NO_CONTROLS), text, vector) is None
