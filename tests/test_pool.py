"""labkit.transports.pool: one shared client per endpoint and event loop, limits from config, closed cleanly."""

from __future__ import annotations

import asyncio
import sys

import httpx2
import openai
import pytest

from labkit.endpoint import Endpoint
from labkit.request import ChatRequest
from labkit.transports.pool import ClientPool, PoolConfig, PoolConfigError, shared_pool
from labkit.transports.sdk import OpenAITransport

MODEL = "gpt-4o-mini"


async def _opened(service) -> int:
    """Connections the sim saw since its reset, less the one this stats call arrives on."""
    return (await service.astats())["connections_opened"] - 1


@pytest.mark.parametrize(
    "bad",
    [
        {"max_connections": 0},
        {"max_keepalive": -1},
        {"keepalive_expiry": -1.0},
        {"pool_timeout": -0.5},
        {"timeout": 0},
        {"client": "requests"},
        {"http1": False, "http2": False},
        {"client": "aiohttp", "http2": True},
        {"max_retries": -1},
    ],
)
def test_config_refuses_settings_that_cannot_work(bad):
    with pytest.raises(PoolConfigError):
        PoolConfig(**bad)


def test_config_from_mapping_refuses_unknown_keys():
    with pytest.raises(PoolConfigError, match="max_conections"):
        PoolConfig.from_mapping({"max_conections": 10})


def test_config_from_mapping_takes_known_keys():
    assert PoolConfig.from_mapping({"max_connections": 7, "pool_timeout": 1.5}).limits().max_connections == 7


def test_http2_without_the_h2_package_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "h2", None)  # as if `h2` were not installed
    with pytest.raises(PoolConfigError, match="h2"):
        PoolConfig(http2=True)


async def test_one_client_per_endpoint_on_a_loop(sim):
    async with ClientPool() as pool:
        first, again = pool.openai(sim.endpoint), pool.openai(sim.endpoint)
        other = pool.openai(Endpoint(sim.base_url, "sk-other"))
        assert first is again
        assert other is not first
        assert pool.clients() == 2


async def test_another_event_loop_gets_its_own_client(sim):
    pool = ClientPool()
    mine = pool.openai(sim.endpoint)

    async def theirs() -> tuple[int, bool]:
        client = pool.openai(sim.endpoint)
        await pool.aclose()
        return id(client), client.is_closed()

    other_id, other_closed = await asyncio.to_thread(asyncio.run, theirs())
    assert other_id != id(mine)
    assert other_closed
    assert not mine.is_closed()
    await pool.aclose()


async def test_aclose_closes_every_client_of_the_loop(sim):
    pool = ClientPool()
    client = pool.openai(sim.endpoint)
    session = pool.session(sim.endpoint)
    await pool.aclose()
    assert client.is_closed()
    assert session.closed
    assert pool.clients() == 0


def test_a_client_outside_an_event_loop_is_refused(sim):
    with pytest.raises(RuntimeError):
        ClientPool().openai(sim.endpoint)


async def test_pooled_requests_reuse_one_connection(fresh_sim):
    async with ClientPool() as pool:
        client = pool.openai(fresh_sim.endpoint)
        for _ in range(5):
            await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert await _opened(fresh_sim) == 1


async def test_no_keepalive_opens_a_connection_per_request(fresh_sim):
    async with ClientPool(PoolConfig(max_keepalive=0)) as pool:
        client = pool.openai(fresh_sim.endpoint)
        for _ in range(4):
            await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert await _opened(fresh_sim) == 4


async def test_a_full_pool_raises_pool_timeout_through_the_sdk(fresh_sim):
    config = PoolConfig(max_connections=1, pool_timeout=0.05)
    async with ClientPool(config) as pool:
        client = pool.openai(fresh_sim.endpoint)
        messages = [{"role": "user", "content": "hi"}]
        held = await client.chat.completions.create(model=MODEL, messages=messages, stream=True)  # holds the one
        try:
            with pytest.raises(openai.APITimeoutError) as caught:
                await client.chat.completions.create(model=MODEL, messages=messages)
        finally:
            await held.close()
    assert isinstance(caught.value.__cause__, httpx2.PoolTimeout)


async def test_transport_takes_its_client_from_the_pool_and_leaves_it_open(sim):
    pool = ClientPool()
    transport = OpenAITransport(sim.endpoint, pool=pool)
    completion = await transport(ChatRequest.create(MODEL, "hi", max_tokens=4))
    assert completion.choices[0].message.content
    assert transport.client is pool.openai(sim.endpoint)
    await transport.aclose()
    assert not pool.openai(sim.endpoint).is_closed()
    await pool.aclose()


def test_transport_with_a_pool_refuses_a_client_too(sim):
    with pytest.raises(ValueError, match="pool"):
        OpenAITransport(sim.endpoint, pool=ClientPool(), client=openai.AsyncOpenAI(api_key="x", base_url=sim.base_url))


async def test_aiohttp_pool_serves_the_sdk(sim):
    async with ClientPool(PoolConfig(client="aiohttp")) as pool:
        client = pool.openai(sim.endpoint)
        completion = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert completion.choices[0].message.content


def test_shared_pool_is_one_and_refuses_another_config():
    assert shared_pool() is shared_pool()
    with pytest.raises(PoolConfigError):
        shared_pool({"max_connections": 3})
