"""12_capstone at reduced size: the chain assembled step by step, the guide's table with three arms, the levers.

Throughput needs the rate ladder, which is too slow for a test; the bench (`python -m labkit.lessons.capstone
--bench`) measures it and runs every lever; the ladder's logic is unit tested in test_capstone.py.
"""

import pytest
from nbrun import run_notebook

from labkit.assemble import SWITCHES

pytestmark = pytest.mark.notebook

LEVERS = ["max_tokens"]  # one lever (two runs: it and "before"); the bench runs every lever
ARM_REQUESTS = 100


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return run_notebook(
        "12_capstone",
        tmp_path_factory.mktemp("nb12"),
        PROFILE="fast",  # the "Build it" steps' service answers in milliseconds; the table's runs keep gpt-4o-class
        ARM_REQUESTS=ARM_REQUESTS,
        ARM_WARMUP_S=2.0,  # a third of the file's warm-up: caches start colder, the ceiling counts the same history
        LEVER_REQUESTS=20,
        LEVERS=LEVERS,
        LEVER_WORKLOADS=["high_repetition"],  # the breakdown's workload; the bench runs both
        FAULT_REQUESTS=20,
        PATIENCE_S=10.0,  # bounds the wait on a hung request of "before" (the notebook's default: the guide's 30 s)
        INTERACTIVE=False,
    )


def guide_row(results, key):
    return {row["key"]: row for row in results["guide_table"]["rows"]}[key]


def test_the_default_chain_has_every_layer_on(results):
    assert results["layers_on"] == list(SWITCHES)


def test_nothing_was_skipped_against_the_simulated_service(results):
    assert results["simulated"] is True
    assert results["skipped"] == []


def test_the_guide_table_puts_the_three_arms_beside_the_guides_own_figures(results):
    row = guide_row(results, "avg_response_s")
    assert row["before"] is not None and row["guide"] is not None and row["labkit"] is not None
    assert (row["guide_before"], row["guide_after"]) == (3.2, 0.8)
    assert results["guide_table"]["requests_per_arm"] >= 0.8 * ARM_REQUESTS  # Poisson arrivals: about that many


def test_labkit_answers_far_sooner_than_before_and_costs_less(results):
    assert guide_row(results, "avg_response_s")["met"] is True
    cost = guide_row(results, "cost_month_usd")
    assert cost["labkit"] < 0.6 * cost["before"]


def test_labkit_serves_more_from_cache_than_the_guides_snippets(results):
    hits = guide_row(results, "hit_rate")
    assert hits["labkit"] > hits["before"]
    assert hits["labkit"] >= 0.6 * results["guide_table"]["ceiling"]["ceiling"]


def test_callers_of_labkit_see_fewer_of_the_injected_faults_than_before(results):
    errors = guide_row(results, "error_rate")
    assert errors["labkit"] < errors["before"]
    assert errors["labkit"] <= 0.03


def test_each_rate_row_carries_an_interval_per_arm(results):
    for key in ("hit_rate", "error_rate"):
        ci = guide_row(results, key)["ci95"]
        assert set(ci) == {"before", "guide", "labkit"}
        assert all(low <= high for low, high in ci.values())


def test_the_cost_breakdown_prices_each_lever_run_alone_and_the_totals(results):
    levers = [b["lever"] for b in results["cost_breakdown"]]
    assert levers[: len(LEVERS)] == LEVERS
    assert "all together: labkit" in levers


def test_the_roadmap_names_max_tokens_alone_as_a_saving_on_cost(results):
    assert list(results["levers"]) == ["high_repetition"]
    answer = results["levers"]["high_repetition"]["roadmap"]["cost_month_usd"]
    assert answer["lever"] == "max_tokens" and answer["change"] < 0  # capped answers cost less than before's


def test_each_lever_run_keeps_its_failures_by_kind_and_how_late_it_left(results):
    runs = results["levers"]["high_repetition"]["runs"]
    failed = {name: run for name, run in runs.items() if run["error_rate"]}
    assert failed  # the faults are on: some lever run failed requests
    for run in failed.values():
        assert sum(run["errors"].values()) == round(run["error_rate"] * run["requests"])
    assert all(run["p95_start_lag_s"] is not None for run in runs.values())


def test_the_report_gets_the_guides_checklist_read_from_the_folder_of_its_results(results):
    rows = results["report_tables"]["The guide's checklist, measured in this run"]
    assert len(rows) == 16
    assert all(row["gain"].startswith("not run yet") for row in rows)  # the test's folder holds no other lesson's


def test_the_scorecard_reads_three_objectives_from_the_labkit_arm(results):
    assert [row["objective"] for row in results["scorecard"]] == [
        "time to first token, p95",
        "availability",
        "cache hit rate",
    ]
