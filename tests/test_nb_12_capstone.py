"""12_capstone at reduced size: the measured table shows each improvement with a margin (simulated latency dominates).

Throughput needs the rate ladder, which is too slow for a test (`LADDER=False` here); the ladder's logic is unit
tested in test_capstone.py and the benchmark (`python -m labkit.lessons.capstone --bench`) measures it.
"""

import pytest
from nbrun import run_notebook

from labkit.assemble import SWITCHES

pytestmark = pytest.mark.notebook


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return run_notebook(
        "12_capstone",
        tmp_path_factory.mktemp("nb08"),
        RATE=20,
        DURATION_S=1.2,
        WARMUP_S=1.5,
        PATIENCE_S=5.5,  # above the chain's 4 s first-token timeout plus a retry: a hang is then recovered
        LADDER=False,
        ABLATION=["cache+semantic"],
        ABLATION_DURATION_S=1.2,
        ABLATION_WARMUP_S=1.5,
        CONCURRENT_USERS=200,
        ARM_REQUESTS=150,
        LEVER_REQUESTS=40,
        LEVERS=["cache (exact + semantic)", "max_tokens"],
    )


def values(results, workload, key):
    table = {row["key"]: row for row in results[workload]["table"]}
    return table[key]["before"], table[key]["after"]


def test_every_layer_was_on_in_the_full_chain(results):
    assert results["layers_on"] == list(SWITCHES)
    assert results["high_repetition"]["full"]["layers"]["off"] == []


def test_first_tokens_come_much_sooner_with_the_chain(results):
    for workload in ("high_repetition", "low_repetition"):
        before, after = values(results, workload, "avg_response_s")
        assert after < 0.5 * before
        before, after = values(results, workload, "p95_ttfb_s")
        assert after < 0.7 * before


def test_the_chain_serves_more_without_an_upstream_call_on_repetitive_traffic(results):
    before, after = values(results, "high_repetition", "hit_rate")
    assert after > before
    assert after >= 0.6 * results["high_repetition"]["ceiling"]["ceiling"]


def test_the_chain_costs_less_on_repetitive_traffic(results):
    before, after = values(results, "high_repetition", "cost_month_usd")
    assert after < 0.85 * before


def test_callers_see_almost_none_of_the_injected_faults(results):
    for workload in ("high_repetition", "low_repetition"):
        assert results[workload]["full"]["error_rate"] <= 0.03


def test_with_the_ladder_off_the_throughput_row_is_the_tables_rate_and_no_ladder_ran(results):
    """LADDER=False reaches the runs (the ladder itself is unit tested in test_capstone.py and benchmarked)."""
    workload = results["high_repetition"]
    for client in ("naive", "full"):
        assert workload["ladder"][client] is None
        assert workload[client]["throughput_note"] in {"at the table's rate (no ladder)", "not sustained"}


def test_the_concurrency_test_had_every_user_outstanding_at_once(results):
    assert results["concurrency"]["peak_outstanding"] == 200
    assert results["concurrency"]["availability"] >= 0.99


def test_the_ablation_without_the_caches_serves_less_from_cache(results):
    runs = results["ablation"]["runs"]
    assert runs["cache+semantic"]["hit_rate"] < runs["full"]["hit_rate"]
    assert "cache+semantic" in results["ablation"]["shares"]


def test_the_scorecard_has_the_four_objectives(results):
    assert [row["objective"] for row in results["scorecard"]] == [
        "time to first token, p95",
        "availability",
        "concurrent users",
        "cache hit rate",
    ]


def guide_row(results, key):
    return {row["key"]: row for row in results["guide_table"]["rows"]}[key]


def test_the_guide_table_puts_the_three_arms_beside_the_guides_own_figures(results):
    row = guide_row(results, "avg_response_s")
    assert row["before"] is not None and row["guide"] is not None and row["labkit"] is not None
    assert (row["guide_before"], row["guide_after"]) == (3.2, 0.8)
    assert results["guide_table"]["requests_per_arm"] >= 100


def test_labkit_answers_far_sooner_than_before_and_costs_less(results):
    assert guide_row(results, "avg_response_s")["met"] is True
    cost = guide_row(results, "cost_month_usd")
    assert cost["labkit"] < 0.6 * cost["before"]


def test_each_rate_row_carries_an_interval_per_arm(results):
    for key in ("hit_rate", "error_rate"):
        ci = guide_row(results, key)["ci95"]
        assert set(ci) == {"before", "guide", "labkit"}
        assert all(low <= high for low, high in ci.values())


def test_the_cost_breakdown_prices_each_lever_run_alone_and_the_totals(results):
    levers = [b["lever"] for b in results["cost_breakdown"]]
    assert levers[:2] == ["cache (exact + semantic)", "max_tokens"]
    assert "all together: labkit" in levers


def test_the_roadmap_names_a_first_lever_for_each_workload(results):
    for name in ("high_repetition", "low_repetition"):
        assert results["levers"][name]["roadmap"]["cost_month_usd"]["lever"] in (
            "cache (exact + semantic)",
            "max_tokens",
        )
