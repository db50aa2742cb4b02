"""10_breakers: round robin on a sick and a slow service, the minimal breaker, P2C and hedge, and labkit's
CircuitBreaker, Balancer and HedgeLayer on the same services."""

import pytest
from nbrun import run_notebook

from labkit.lessons.checklist import gains

pytestmark = [pytest.mark.notebook, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return run_notebook(
        "10_breakers",
        tmp_path_factory.mktemp("nb10"),
        N_CALLS=60,
        N_SICK=30,
        N_HEDGE=200,  # p99 of fewer hinges on the one or two slow first tokens of the hedge's warm-up (20 samples)
        N_BREAKER=90,
        N_BALANCE=160,  # 80 per phase: fewer leave peak EWMA too few requests to learn that s0 slowed down
        BALANCE_PHASES=["steady", "one slows down"],  # what the assertions read: the slow-down after a steady start
        STRATEGIES=["round_robin", "peak_ewma"],  # the two the assertions compare
        CONCURRENCY=16,  # the round-robin, minimal and hedging runs; labkit's balancers keep their 8 (to learn)
        TAIL_S=0.7,  # still over twice the hedged p99 (0.2-0.3 s) the assertions compare with; less waiting
    )


def test_round_robin_sends_a_sick_service_its_full_share(results):
    sick = results["round_robin"]["s0 sick"]
    assert sick["upstream"]["s0"] == sick["calls"] // 3 and sick["failed"] == sick["upstream"]["s0"]


def test_the_minimal_breaker_refuses_calls_to_a_sick_service(results):
    breaker = results["minimal_breaker"]
    assert breaker["upstream"] < breaker["calls"] / 2 and breaker["state"] == "open"


def test_minimal_p2c_sends_less_to_a_slow_service_than_round_robin(results):
    shares = results["minimal_p2c"]
    assert shares["P2C peak EWMA"] < 0.5 * shares["round robin"]


def test_the_minimal_hedge_cuts_the_p99_for_few_extra_requests(results):
    plain, hedged = results["minimal_hedge"]["no hedge"], results["minimal_hedge"]["hedge at p90"]
    assert hedged["p99_ms"] < 0.6 * plain["p99_ms"]
    assert hedged["upstream_per_call"] < 1.3


def test_breakers_opened_and_the_fallback_answered(results):
    breaker = results["breaker"]
    assert breaker["events"]["s0"].get("opened", 0) >= 1
    assert breaker["fallback_share"] > 0 and breaker["caller_failed"] <= 0.05 * breaker["requests"]


def test_a_latency_aware_balancer_shuns_a_backend_that_slows_down(results):
    slow, balancing = "one slows down", results["balancing"]
    rr, ewma = balancing["round_robin"], balancing["peak_ewma"]
    assert ewma["phase_picks"][slow].get("s0", 0) < 0.5 * rr["phase_picks"][slow]["s0"]
    assert ewma["phases"][slow]["total_mean_ms"] < rr["phases"][slow]["total_mean_ms"]


def test_hedging_cuts_the_tail_within_its_cap(results):
    plain, hedged = results["hedging"]["no hedging"], results["hedging"]["hedge at p90"]
    assert hedged["ttft_p99_ms"] < 0.6 * plain["ttft_p99_ms"]
    assert hedged["hedge"]["hedge_share"] <= 0.15 + 0.03  # the cap plus its initial burst
    # losers were cancelled upstream (a loser cancelled while its service slept on a slow first byte may go
    # unnoticed by the service, so not every loser shows)
    assert hedged["disconnects"] > 0 and hedged["disconnects"] >= 0.5 * hedged["hedge"]["losers_cancelled"]


def test_the_guides_checklist_reads_a_measured_gain_from_these_results(results):
    measured = gains("10", results)
    assert measured and not [item for item, gain in measured.items() if gain.startswith("not measured")], measured
