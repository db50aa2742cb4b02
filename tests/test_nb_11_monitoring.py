"""11_monitoring: the guide's monitor measured, a minimal DDSketch and burn-rate alert, then labkit's metrics,
stages, Prometheus, dashboard and alerts."""

import re

import pytest
from nbrun import run_notebook

from labkit.lessons.checklist import gains

pytestmark = pytest.mark.notebook

NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return run_notebook(
        "11_monitoring",
        tmp_path_factory.mktemp("nb07"),
        PROFILE="fast",
        MODEL="gpt-4o",
        RATE_RPS=25.0,
        PHASE_S=3.0,
        MAX_TOKENS=10,
        N_PROMPTS=30,
        FAULTS={
            "error_rates": {"500": 0.04, "insufficient_quota": 0.08},
            "slow_first_byte": {"rate": 0.3, "delay_s": 1.2},
        },
        MEMORY_SWEEP=[1000, 10_000, 50_000],
        DASH_WINDOW_S=2.0,
        REFRESH_S=0.25,
        ALERT_LONG_S=6.0,
        ALERT_SHORT_S=2.0,
    )


def test_the_list_grows_with_traffic_and_the_sketches_do_not(results):
    memory = results["memory"]
    lst = memory["the guide's list"]
    assert lst[-1]["MB"] > 20 * lst[0]["MB"]
    for name in ("MiniSketch", "labkit Histogram"):
        small, large = memory[name][0], memory[name][-1]
        assert large["MB"] < 3 * small["MB"] + 0.01, name
        assert all(row["p95_rel_error"] <= 0.01 * (1 + 1e-9) for row in memory[name]), name


def test_reading_a_p95_from_the_list_costs_more_than_from_the_sketch(results):
    memory = results["memory"]
    assert memory["the guide's list"][-1]["p95_read_ms"] > memory["MiniSketch"][-1]["p95_read_ms"]


def test_a_clock_step_corrupts_the_guides_figures_and_not_the_monotonic_ones(results):
    clock = results["clock"]
    assert clock["adjustable"] == {"time": True, "perf_counter": False, "monotonic": False}
    assert clock["wall_min_ms"] < 0 and clock["guide_p95_ms"] > 5 * clock["true_p95_ms"]


def test_the_guide_has_no_early_p95_and_the_sketch_has_one(results):
    for row in results["early"]:
        assert (row["guide p95 (s)"] is None) == (row["requests"] <= 20)
        assert row["sketch p95 (s)"] is not None


def test_the_minimal_sketch_matches_exact_percentiles_within_its_bound(results):
    assert all(row["relative error"] <= 0.01 * (1 + 1e-9) for row in results["sketch_check"])


def test_histogram_percentiles_match_the_exact_ones_of_the_load_within_the_bound(results):
    assert all(row["relative error"] <= 0.0101 for row in results["quantile_check"])


def test_the_snapshot_counts_outcomes_tokens_cost_and_cache_hits(results):
    total = results["snapshot"]
    assert total["requests"] == results["load"]["requests"]
    assert total["errors"] > 0 and total["cache_hits"] > 0
    assert total["output_tokens"] > 0 and total["cost_usd"] > 0 and total["saved_usd"] > 0
    assert results["window_snapshot"]["requests"] <= total["requests"]


def test_stages_add_up_and_a_miss_shows_every_stage(results):
    assert results["stage_sum_max_gap_s"] < 1e-6
    assert list(results["stages"]["miss"]) == ["cache_lookup", "admission_wait", "client", "connect",
                                                "first_token", "decode"]  # fmt: skip


def test_prometheus_output_parses_with_valid_names_and_layer_metrics(results):
    prom = results["prometheus"]
    assert prom["content_type"].startswith("text/plain") and prom["scrapes"] == 1
    assert all(NAME.match(name) for name in prom["families"])
    assert {"labkit_requests", "labkit_tokens", "labkit_cost_usd", "labkit_request_duration_seconds"} <= set(
        prom["families"]
    )
    layers = set(results["layer_metrics"])
    assert {
        "labkit_retry_retries_total",
        "labkit_cache_tier_hits_total",
        "labkit_single_flight_coalesced_total",
    } <= layers


def test_the_dashboard_refreshed_during_the_load(results):
    dash = results["dashboard"]
    assert dash["samples"] >= 10 and dash["refreshes"] >= 10 and dash["peak_error_rate_pct"] > 0


def test_availability_alert_fires_after_the_faults_and_not_before(results):
    alerts = results["alerts"]
    assert "availability" not in alerts["fired_before_faults"]
    assert alerts["first_fire_s"]["availability"] >= alerts["faults_at_s"]


def test_the_guides_checklist_reads_a_measured_gain_from_these_results(results):
    measured = gains("11", results)
    assert measured and not [item for item, gain in measured.items() if gain.startswith("not measured")], measured
