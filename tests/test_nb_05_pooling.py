"""05_pooling: a client per request vs a shared pool, HTTP clients and pool limits, HTTP/2, the lean transport."""

import pytest
from nbrun import run_notebook

pytestmark = pytest.mark.notebook

REQUESTS = 24
CONCURRENCY = 8


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return run_notebook(
        "05_pooling",
        tmp_path_factory.mktemp("nb05"),
        REQUESTS=REQUESTS,
        CONCURRENCY=CONCURRENCY,
        TRANSPORT_REQUESTS=128,
        TRANSPORT_CONCURRENCY=32,
        POOL_SIZES=[2, 16],
        POOL_CONCURRENCY=[4, 16],
        REQUESTS_PER_WORKER=2,
        H2_REQUESTS=64,
        H2_CONCURRENCY=16,
        H2_POOL_SIZES=[1, 16],
        STREAM_LEVELS=[10, 40],
        STREAM_TOKENS=10,
    )


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_shared_pool_serves_several_times_the_requests_of_a_client_per_request(results, scheme):
    assert results["pooled_over_per_request_rps"][scheme] > 2.0
    assert results["per_request_over_pooled_cpu"][scheme] > 2.0


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_the_server_sees_a_connection_per_request_without_a_pool(results, scheme):
    modes = results["per_request_vs_pooled"][scheme]
    assert modes["per_request"]["connections_opened"] >= REQUESTS
    assert modes["no_keepalive"]["connections_opened"] >= REQUESTS
    assert modes["pooled"]["connections_opened"] <= CONCURRENCY


def test_every_call_of_part_one_succeeded(results):
    for modes in results["per_request_vs_pooled"].values():
        for run in modes.values():
            assert run["completions"] == REQUESTS and not run["errors"]


def test_the_sdk_on_httpx2_costs_more_client_cpu_than_the_lean_transport(results):
    assert results["sdk_over_lean_cpu"] > 1.5


def test_the_sdk_on_httpx2_costs_more_client_cpu_than_on_aiohttp(results):
    transports = results["transports"]
    ratio = (
        transports["sdk_httpx"]["client_cpu_per_request_ms"] / transports["sdk_aiohttp"]["client_cpu_per_request_ms"]
    )
    # measured 1.4-1.9x (benchmark and full notebook runs, 2 shared cores); the margin allows for the small test run
    assert ratio > 1.1


def test_pool_timeouts_appear_only_when_callers_outnumber_connections(results):
    rows = results["pool_limits"]
    assert all(r["pool_timeouts"] == 0 for r in rows if r["concurrency"] <= r["max_connections"])
    assert any(r["pool_timeouts"] > 0 for r in rows if r["concurrency"] >= 8 * r["max_connections"])


def test_http2_multiplexes_a_burst_on_one_connection_and_http1_does_not(results):
    by = {(r["http2_requested"], r["max_connections"]): r for r in results["http_versions"]}
    h2, h1 = by[(True, 16)], by[(False, 16)]
    assert set(h2["http_versions"]) == {"HTTP/2"} and set(h1["http_versions"]) == {"HTTP/1.1"}
    assert h2["cold"]["front"]["connections_opened"] == 1
    assert h1["cold"]["front"]["connections_opened"] > 1


def test_http2_switched_on_where_it_cannot_work_is_shown(results):
    mistakes = results["http2_mistakes"]
    assert "h2" in mistakes["without_h2"]
    assert mistakes["over_http"] == "HTTP/1.1"
    assert mistakes["http1_server_tls"] == "HTTP/1.1"


def test_every_stream_completed_on_every_transport(results):
    assert {r["transport"] for r in results["streams"]} == {"sdk_httpx", "sdk_aiohttp", "lean"}
    for run in results["streams"]:
        assert run["completions"] == run["streams"] and not run["errors"]
