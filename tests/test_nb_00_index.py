"""00_index: services start, first calls work, and the naive sequential baseline is measured."""

import pytest
from nbrun import run_notebook

pytestmark = pytest.mark.notebook


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return run_notebook(
        "00_index", tmp_path_factory.mktemp("nb00"), PROFILE="fast", MODEL="gpt-4o-mini", N_REQUESTS=6, MAX_TOKENS=30
    )


def test_runs_every_request_without_errors(results):
    assert results["n_requests"] == 6
    assert results["errors"] == 0


def test_sequential_wall_time_is_the_sum_of_latencies(results):
    assert results["wall_s"] >= 0.95 * results["latency_sum_s"]


def test_streamed_first_token_arrives_before_the_end(results):
    assert 0 < results["stream"]["ttft_s"] < results["stream"]["total_s"]
