"""Shared fixtures: real servers, started once per test session through labkit.lab.services."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from labkit.lab.services import MemcachedService, RedisService, SimService, start_memcached, start_redis, start_sim


@pytest.fixture(scope="session")
def sim() -> Iterator[SimService]:
    """One fast simulated service for the whole session (seed 0, so its faults are reproducible)."""
    with start_sim("fast", seed=0) as service:
        yield service


@pytest.fixture
def fresh_sim(sim: SimService) -> Iterator[SimService]:
    """The session's simulated service with no faults, default limits and zeroed counters.

    It is reset again afterwards, so a test that injects faults cannot leak them into one that uses ``sim``.
    """
    sim.reset()
    yield sim
    sim.reset()


@pytest.fixture(scope="session")
def redis_service() -> Iterator[RedisService]:
    """A Redis server: REDIS_URL if CI provides one, else a local one for the session."""
    with start_redis() as service:
        yield service


@pytest.fixture(scope="session")
def memcached_service() -> Iterator[MemcachedService]:
    """A Memcached server: MEMCACHED_URL if CI provides one, else a local one for the session."""
    with start_memcached() as service:
        yield service
