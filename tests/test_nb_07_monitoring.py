"""07_monitoring: the common advice's monitor measured, labkit's metrics, stages, Prometheus, dashboard, alerts."""

import re

import pytest
from nbrun import run_notebook

pytestmark = pytest.mark.notebook

NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return run_notebook(
        "07_monitoring",
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


def test_the_list_grows_with_traffic_and_the_histogram_does_not(results):
    small, large = results["memory"][0], results["memory"][-1]
    assert large["list_MB"] > 20 * small["list_MB"]
    assert large["histogram_MB"] < 3 * small["histogram_MB"] + 0.01
    assert large["histogram_p95_rel_error"] <= 0.01


def test_a_clock_step_corrupts_the_guides_figures_and_not_the_monotonic_ones(results):
    clock = results["clock"]
    assert clock["adjustable"] == {"time": True, "perf_counter": False, "monotonic": False}
    assert clock["wall_min_ms"] < 0 and clock["guide_p95_ms"] > 5 * clock["true_p95_ms"]


def test_the_guide_has_no_early_p95_and_the_histogram_has_one(results):
    for row in results["early"]:
        assert (row["guide p95 (s)"] is None) == (row["requests"] <= 20)
        assert row["histogram p95 (s)"] is not None


def test_histogram_percentiles_match_the_exact_ones_within_the_bound(results):
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
