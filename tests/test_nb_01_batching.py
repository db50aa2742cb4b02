"""Notebook 01 (batching) under papermill at test sizes: it asserts on what the notebook measured."""

from __future__ import annotations

import pytest
from nbrun import run_notebook

from labkit.lessons.checklist import gains

pytestmark = pytest.mark.notebook

PARAMS = {
    "SIM_TTFT": 0.03,  # a request takes about 80 ms: the loop's 50 of them take 4 s, the paced arms under 2 s
    "SIM_TPS": 1000.0,
    "N_ITEMS": 50,  # long enough that the sustained rate, not the opening burst, decides the wall time
    # TPM binds at about 28 requests/s (a request is charged about 62 tokens), so the Little's-law semaphore
    # (rate x latency) is 2, one of SWEEP's sizes rather than a third size to run
    "RPM": 2000,
    "TPM": 104_000,
    "BURST_S": 0.5,  # a short window: the limit binds for the whole run, not only after a large opening burst
    "SWEEP": [2, 8],
}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return run_notebook("01_batching", tmp_path_factory.mktemp("nb01"), **PARAMS)


def test_unbounded_gather_meets_429s_where_admission_meets_none(results):
    strategies = results["strategies"]
    assert strategies["unbounded gather"]["429"] > 0
    assert strategies["labkit admission"]["429"] == 0
    assert strategies["labkit admission"]["failed"] == 0


def test_unbounded_gather_loses_items_after_the_sdks_retries(results):
    assert results["strategies"]["unbounded gather"]["failed"] > 0


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


def test_hand_written_token_bucket_meets_no_429(results):
    bucket = results["strategies"]["token bucket"]
    assert (bucket["429"], bucket["failed"]) == (0, 0)


def test_hand_written_token_bucket_runs_at_90_percent_of_the_rate_the_limits_allow(results):
    bucket = results["token_bucket"]
    assert bucket["sustained_fraction"] >= 0.90
    assert bucket["sustained_rps"] <= bucket["allowed_rps"] * 1.05


def test_admission_results_come_back_in_input_order(results):
    assert results["admission"]["results_in_order"]


def test_the_guides_checklist_reads_a_measured_gain_from_these_results(results):
    measured = gains("01", results)
    assert measured and not [item for item, gain in measured.items() if gain.startswith("not measured")], measured
