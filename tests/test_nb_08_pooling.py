"""08_pooling: the guide's pool, a client per request vs one pooled client (built in cells), labkit's ClientPool,
pool limits, and the SDK on httpx2, the SDK on aiohttp and the lean transport on the same pool."""

import pytest
from nbrun import run_notebook

from labkit.lessons.checklist import gains

pytestmark = pytest.mark.notebook

REQUESTS = 48
CONCURRENCY = 8
POOL_SIZE = 2
POOL_CALLERS = 16
STREAMS = 40


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return run_notebook(
        "08_pooling",
        tmp_path_factory.mktemp("nb05"),
        REQUESTS=REQUESTS,
        CONCURRENCY=CONCURRENCY,
        POOL_SIZE=POOL_SIZE,
        POOL_CALLERS=POOL_CALLERS,
        TRANSPORT_REQUESTS=128,
        TRANSPORT_CONCURRENCY=32,
        STREAMS=STREAMS,
        STREAM_TOKENS=10,
    )


def test_the_guides_http2_switch_still_speaks_http1_against_the_lab(results):
    snippet = results["guide_snippet"]
    assert snippet["http2_requested"] and snippet["http_version"] == "HTTP/1.1"
    assert snippet["shared"]


def test_a_client_per_request_makes_a_tls_handshake_for_every_call(results):
    per = results["build_it"]["client per request"]
    assert per["TLS handshakes"] == REQUESTS and per["TCP connects"] == REQUESTS


def test_the_pooled_client_makes_at_most_one_handshake_per_connection(results):
    pooled = results["build_it"]["one pooled client"]
    assert 0 < pooled["TLS handshakes"] <= CONCURRENCY


def test_the_pooled_client_serves_more_requests_for_less_client_cpu(results):
    # measured 7.6x requests/s and 8.9x CPU at the learner defaults (papermill, 2 shared cores)
    assert results["pooled_over_per_request_rps"] > 2.0
    assert results["per_request_over_pooled_cpu"] > 2.0


def test_labkits_pool_serves_every_call_on_no_more_connections_than_its_limit(results):
    run = results["labkit_pool"]
    assert run["completions"] == REQUESTS and not run["errors"]
    assert 0 < run["connections_opened"] <= CONCURRENCY


def test_labkits_pool_costs_less_client_cpu_than_a_client_per_request(results):
    per = results["build_it"]["client per request"]["client CPU ms/request"]
    assert results["labkit_pool"]["client_cpu_per_request_ms"] < per / 2


def test_pool_timeouts_appear_only_when_callers_outnumber_connections(results):
    by_callers = {r["concurrency"]: r for r in results["pool_limits"]}
    assert by_callers[POOL_SIZE]["pool_timeouts"] == 0
    assert by_callers[POOL_CALLERS]["pool_timeouts"] > 0


def test_the_sdk_on_httpx2_costs_more_client_cpu_than_the_lean_transport(results):
    assert results["sdk_over_lean_cpu"] > 1.5


def test_the_sdk_on_httpx2_costs_more_client_cpu_than_on_aiohttp(results):
    # measured 1.13x at the learner defaults and 1.4-1.9x in the benchmark (2 shared cores): noisy, so only the order
    assert results["httpx_over_aiohttp_cpu"] > 1.0


def test_every_stream_completed_on_every_transport(results):
    assert [r["transport"] for r in results["streams"]] == ["sdk_httpx", "sdk_aiohttp", "lean"]
    for run in results["streams"]:
        assert run["streams"] == STREAMS and run["completions"] == STREAMS and not run["errors"]


def test_the_lean_transport_adds_less_to_the_first_token_than_the_sdk_on_httpx2(results):
    added = {r["transport"]: r["ttft_added_ms"]["p50"] for r in results["streams"]}
    assert added["lean"] < added["sdk_httpx"]


def test_the_guides_checklist_reads_a_measured_gain_from_these_results(results):
    measured = gains("08", results)
    assert measured and not [item for item, gain in measured.items() if gain.startswith("not measured")], measured
