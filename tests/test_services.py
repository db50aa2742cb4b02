"""labkit.lab.services starts real servers, honours the environment, and leaves no process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil
import pytest
import redis.asyncio
from openai import AsyncOpenAI
from pymemcache.client.base import Client as MemcacheClient

from labkit.lab.services import (
    SIM_API_KEY,
    Lab,
    MemcachedService,
    RedisService,
    ServiceError,
    SimService,
    start_lab,
    start_memcached,
    start_redis,
    start_sim,
)

REPO = Path(__file__).resolve().parent.parent
SERVICE_ENV = ("REDIS_URL", "MEMCACHED_URL", "OPENAI_BASE_URL", "OPENAI_API_KEY")
LOCAL_SERVERS: dict[str, Callable[[], RedisService | MemcachedService]] = {
    "redis": start_redis,
    "memcached": start_memcached,
}


@pytest.fixture
def no_service_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make labkit start its own servers even where CI exports REDIS_URL and friends."""
    for name in SERVICE_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def without_memcached(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, no_service_env: None) -> None:
    """A PATH on which no memcached binary can be found."""
    monkeypatch.setenv("PATH", str(tmp_path))


def is_gone(pid: int) -> bool:
    """True once ``pid`` no longer runs (a zombie waiting for a reaper counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not is_gone(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def child_pids() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True) if not is_gone(p.pid)}


# ---------------------------------------------------------------------------------------------------------
# Each server works with the client the lessons use
# ---------------------------------------------------------------------------------------------------------


async def test_redis_answers_ping_set_get(redis_service: RedisService) -> None:
    client = redis.asyncio.from_url(redis_service.url)
    try:
        assert await client.ping()
        await client.set("labkit:test", "hello")
        assert await client.get("labkit:test") == b"hello"
    finally:
        await client.aclose()


def test_memcached_sets_and_gets(memcached_service: MemcachedService) -> None:
    client = MemcacheClient(memcached_service.server, connect_timeout=2, timeout=2)
    try:
        client.set("labkit:test", b"hello")
        assert client.get("labkit:test") == b"hello"
    finally:
        client.close()


def test_sim_health_is_ok(sim: SimService) -> None:
    response = httpx.get(f"{sim.url}/health", timeout=5)
    assert response.status_code == 200
    assert sim.base_url == f"{sim.url}/v1"


async def test_sim_serves_a_chat_completion_through_the_openai_sdk(fresh_sim: SimService) -> None:
    async with AsyncOpenAI(base_url=fresh_sim.base_url, api_key=fresh_sim.api_key, max_retries=0) as client:
        model = (await client.models.list()).data[0].id
        completion = await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Say hello."}], max_tokens=8
        )
    assert model in fresh_sim.models
    assert completion.choices[0].message.content
    assert completion.usage is not None and completion.usage.completion_tokens > 0


def test_sim_faults_can_be_switched_at_run_time_and_reset(fresh_sim: SimService) -> None:
    fresh_sim.set_faults({"error_rates": {"503": 0.5}})
    assert fresh_sim.faults()["error_rates"]["503"] == 0.5
    fresh_sim.reset()
    assert fresh_sim.faults()["error_rates"]["503"] == 0.0


def test_sim_limits_can_be_changed_at_run_time(fresh_sim: SimService) -> None:
    fresh_sim.set_limits(rpm=1234)
    assert fresh_sim.limits()["rpm"] == 1234


def test_a_rejected_admin_call_raises_with_the_sims_message(fresh_sim: SimService) -> None:
    with pytest.raises(ServiceError, match="400"):
        fresh_sim.set_limits(rpm=-1)


async def test_sim_stats_count_generated_tokens_until_reset(fresh_sim: SimService) -> None:
    async with AsyncOpenAI(base_url=fresh_sim.base_url, api_key=fresh_sim.api_key, max_retries=0) as client:
        await client.chat.completions.create(model=fresh_sim.models[0], messages=[{"role": "user", "content": "Hi"}])
    assert (await fresh_sim.astats())["tokens_generated"] > 0
    await fresh_sim.areset()
    assert fresh_sim.stats()["tokens_generated"] == 0


async def test_sim_async_admin_helpers_match_the_sync_ones(fresh_sim: SimService) -> None:
    await fresh_sim.aset_limits(tpm=4321)
    assert (await fresh_sim.alimits()) == fresh_sim.limits()
    assert (await fresh_sim.afaults()) == fresh_sim.faults()


def test_two_sims_with_different_profiles_run_side_by_side(no_service_env: None) -> None:
    with start_lab(sims=("fast", "gpt-4o-class"), redis=False, memcached=False) as lab:
        first, second = lab.sims
        assert (first.profile, second.profile) == ("fast", "gpt-4o-class")
        assert (first.seed, second.seed) == (0, 1)
        assert len(set(lab.base_urls)) == 2
        assert lab.base_url == first.base_url
        assert first.health() and second.health()


# ---------------------------------------------------------------------------------------------------------
# The environment wins over starting servers
# ---------------------------------------------------------------------------------------------------------


def test_redis_url_from_env_wins(monkeypatch: pytest.MonkeyPatch, redis_service: RedisService) -> None:
    monkeypatch.setenv("REDIS_URL", redis_service.url)
    before = child_pids()
    found = start_redis()
    assert (found.url, found.managed, found.pid) == (redis_service.url, False, None)
    assert child_pids() == before
    found.stop()  # not ours to stop
    assert redis_service.running


def test_memcached_url_from_env_wins(monkeypatch: pytest.MonkeyPatch, memcached_service: MemcachedService) -> None:
    monkeypatch.setenv("MEMCACHED_URL", f"{memcached_service.host}:{memcached_service.port}")
    before = child_pids()
    found = start_memcached()
    assert (found.server, found.managed) == (memcached_service.server, False)
    assert found.url == memcached_service.url
    assert child_pids() == before


def test_openai_base_url_points_the_lab_at_a_real_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "https://api.example.com/v1/")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-real")
    lab = start_lab(redis=False, memcached=False)
    assert (lab.sims, lab.simulated) == ((), False)
    assert (lab.base_url, lab.api_key) == ("https://api.example.com/v1", "sk-real")
    with pytest.raises(ServiceError, match="OPENAI_BASE_URL"):
        _ = lab.sim


def test_the_simulated_lab_uses_the_placeholder_key(sim: SimService) -> None:
    assert sim.api_key == SIM_API_KEY


# ---------------------------------------------------------------------------------------------------------
# Stopping, restarting, and no orphans
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", LOCAL_SERVERS)
def test_stop_is_idempotent_and_leaves_no_process(kind: str, no_service_env: None) -> None:
    service = LOCAL_SERVERS[kind]()
    pid = service.pid
    assert pid is not None and not is_gone(pid)
    service.stop()
    service.stop()
    assert is_gone(pid)
    assert not service.running


def test_stopping_a_sim_leaves_no_process(no_service_env: None) -> None:
    with start_sim("fast") as service:
        pid = service.pid
        assert pid is not None
    service.stop()
    assert is_gone(pid)


@pytest.mark.parametrize("kind", LOCAL_SERVERS)
def test_restart_comes_back_empty_on_the_same_port(kind: str, no_service_env: None) -> None:
    with LOCAL_SERVERS[kind]() as service:
        port, old_pid = service.port, service.pid
        service.stop()
        with pytest.raises(httpx.TransportError):  # nothing listens on the port any more
            httpx.get(f"http://{service.host}:{port}/", timeout=1)
        service.restart()
        assert (service.port, service.running) == (port, True)
        assert service.pid != old_pid


def test_restart_refuses_a_server_labkit_did_not_start(
    monkeypatch: pytest.MonkeyPatch, redis_service: RedisService
) -> None:
    monkeypatch.setenv("REDIS_URL", redis_service.url)
    with pytest.raises(ServiceError, match="not started by labkit"):
        start_redis().restart()


PARENT_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from labkit.lab import services

    kind = sys.argv[1]
    start = {"redis": services.start_redis, "memcached": services.start_memcached, "sim": services.start_sim}
    service = start[kind]("fast") if kind == "sim" else start[kind]()
    print(service.pid, flush=True)
    time.sleep(120)
    """
)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["redis", "memcached", "sim"])
def test_killing_the_parent_leaves_no_orphan(kind: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in SERVICE_ENV}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT_SCRIPT, kind], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True
    )
    try:
        line = parent.stdout.readline() if parent.stdout else ""
        assert line.strip().isdigit(), (
            f"parent printed {line!r}; stderr: {parent.stderr.read() if parent.stderr else ''}"
        )
        child = int(line)
        assert not is_gone(child)
        parent.send_signal(signal.SIGKILL)  # no atexit, no finally: only the kernel can clean up now
        parent.wait()
        assert wait_gone(child, timeout=5.0), f"{kind} (pid {child}) outlived its killed parent"
    finally:
        parent.kill()
        parent.wait()


# ---------------------------------------------------------------------------------------------------------
# Failures say what went wrong
# ---------------------------------------------------------------------------------------------------------


def test_a_bogus_sim_profile_fails_with_the_stderr_in_the_message(no_service_env: None) -> None:
    before = child_pids()
    with pytest.raises(ServiceError, match="no-such-profile") as failure:
        start_sim("no-such-profile")
    assert "stderr" in str(failure.value)
    assert child_pids() == before


def test_a_start_that_times_out_stops_the_process(no_service_env: None) -> None:
    before = child_pids()
    with pytest.raises(ServiceError, match="not ready after"):
        start_sim("fast", timeout=0.001)
    assert child_pids() == before


def test_missing_memcached_says_how_to_install_it(without_memcached: None) -> None:
    with pytest.raises(ServiceError, match="apt-get install memcached"):
        start_memcached()


def test_optional_memcached_warns_and_goes_on_without_it(without_memcached: None) -> None:
    with pytest.warns(UserWarning, match="apt-get install memcached"):
        lab = start_lab(sims=(), redis=False, memcached="optional")
    assert lab.memcached is None


def test_a_failed_lab_start_stops_what_it_had_started(without_memcached: None) -> None:
    before = child_pids()
    with pytest.raises(ServiceError, match="memcached"):
        start_lab(sims=(), redis=True, memcached=True)
    assert child_pids() == before


# ---------------------------------------------------------------------------------------------------------
# The lab reads well in a notebook
# ---------------------------------------------------------------------------------------------------------


def test_lab_shows_name_url_and_pid_of_each_service(
    sim: SimService, redis_service: RedisService, memcached_service: MemcachedService
) -> None:
    lab = Lab(sim.base_url, sim.api_key, (sim,), redis_service, memcached_service)
    text, table = repr(lab), lab._repr_html_()
    for service in (sim, redis_service, memcached_service):
        assert service.name in text and service.name in table
        assert str(service.pid or "external") in text
    assert sim.base_url in text and redis_service.url in table
