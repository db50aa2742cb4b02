"""Notebook 01 (batching) under papermill at test sizes: it asserts on what the notebook measured."""

from __future__ import annotations

import pytest
from nbrun import run_notebook

pytestmark = pytest.mark.notebook

PARAMS = {
    "SIM_TTFT": 0.05,
    "SIM_TPS": 1000.0,
    "N_ITEMS": 80,  # long enough that the sustained rate, not the opening burst, decides the wall time
    "RPM": 1200,
    "TPM": 60_000,
    "BURST_S": 0.5,  # a short window: the limit binds for the whole run, not only after a large opening burst
    "CONCURRENCY": 2,
    "SWEEP": [2, 8],
    "N_WORKERS": 2,
    "WORKER_ITEMS": 15,
    "CANCEL_ITEMS": 40,
    "CANCEL_AFTER_S": 0.5,
    "CAP_MAX_SEQUENCES": 4,
    "CAP_SWEEP": [2, 4, 8],
    "CAP_ROUNDS": 2,
    "CAP_ITEMS": 60,
    "BATCH_ITEMS": 10,
}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return run_notebook("01_batching", tmp_path_factory.mktemp("nb01"), **PARAMS)


def test_unbounded_gather_meets_429s_where_admission_meets_none(results):
    strategies = results["strategies"]
    assert strategies["unbounded gather"]["429"] > 0
    assert strategies["labkit admission"]["429"] == 0
    assert strategies["labkit admission"]["failed"] == 0


def test_admission_beats_the_sequential_loop(results):
    strategies = results["strategies"]
    assert strategies["labkit admission"]["wall_s"] < 0.75 * strategies["sequential loop"]["wall_s"]


def test_admission_beats_the_tuned_semaphore_at_zero_429s(results):
    strategies = results["strategies"]
    tuned = strategies[f"semaphore {results['tuned_semaphore']} (tuned)"]
    assert tuned["429"] == 0
    assert strategies["labkit admission"]["wall_s"] < tuned["wall_s"]


def test_admission_runs_at_90_percent_of_the_rate_the_limits_allow(results):
    admission = results["admission"]
    assert admission["sustained_fraction"] >= 0.90
    assert admission["sustained_rps"] <= admission["allowed_rps"] * 1.05  # and never above it


def test_admission_results_come_back_in_input_order(results):
    assert results["admission"]["results_in_order"]


def test_cancelled_batch_keeps_answers_and_sends_nothing_more(results):
    cancel = results["cancel"]
    assert cancel["ok"] > 0 and cancel["not_sent"] > 0
    assert cancel["server_received"] <= cancel["ok"] + cancel["cancelled"]


def test_workers_sharing_a_redis_budget_get_no_429(results):
    assert results["redis"]["429"] == 0
    assert results["redis"]["ok"] == PARAMS["N_WORKERS"] * PARAMS["WORKER_ITEMS"]


def test_adaptive_concurrency_settles_near_the_servers_capacity(results):
    adaptive = results["adaptive"]
    assert adaptive["max_sequences"] / 2 <= adaptive["settled"] <= adaptive["max_sequences"] * 3


def test_batch_api_costs_half_of_online_and_answers_later(results):
    batch = results["batch_api"]
    assert batch["ok"] == batch["items"] == batch["online_ok"]
    assert batch["cost_usd"] == pytest.approx(batch["online_cost_usd"] / 2, rel=0.2)
    assert batch["wall_s"] > batch["online_latency_p50_s"]
