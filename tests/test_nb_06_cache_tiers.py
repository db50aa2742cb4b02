"""06_cache_tiers: the guide's Redis snippet and its pitfalls, the cache key and the two-tier lookup built in cells,
labkit's CacheLayer, hit latency per tier, a Redis outage and the workload, executed with papermill at small sizes."""

import os

import pytest
from nbrun import run_notebook

from labkit.lessons.checklist import gains

pytestmark = pytest.mark.notebook


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return run_notebook(
        "06_cache_tiers",
        tmp_path_factory.mktemp("nb06"),
        PROFILE="fast",
        MODEL="gpt-4o",
        SIM_TPS=400,
        MAX_TOKENS=20,
        LAG_REQUESTS=100,
        WARM_KEYS=5,
        HIT_SAMPLES=100,
        MISS_SAMPLES=3,
        N_REQUESTS=60,
        CONCURRENCY=1,  # one at a time: hit rates then depend on the workload only, not on the machine's timing
        OUTAGE_REQUESTS=30,
        OUTAGE_GAP_S=0.05,
        OUTAGE_RETRY_S=0.2,
    )


def test_the_guides_cache_serves_a_repeat_faster_than_the_first_call(results):
    seconds = results["common_advice"]["seconds"]
    assert seconds["repeat (hit)"] < seconds["first call (miss)"] / 10


def test_the_synchronous_client_stalls_the_event_loop_far_longer_than_the_asyncio_one(results):
    lags = results["common_advice"]["loop_lag"]
    sync, aio = lags["redis.Redis (the guide)"], lags["redis.asyncio"]
    assert sync["lookups"] == aio["lookups"] == 100
    assert sync["loop_lag_max_ms"] > 3 * aio["loop_lag_max_ms"]


def test_the_key_built_in_the_notebook_separates_what_md5_of_the_prompt_merges(results):
    assert results["key_same_as_base"] == {
        "the same request again": True,
        "max_tokens=5": False,
        "another model": False,
        "another tenant": False,
    }


def test_the_built_two_tier_lookup_promotes_a_redis_hit_into_memory(results):
    assert results["built_two_tier"] == {"miss": 1, "memory": 2, "redis": 1}


def test_labkits_layer_serves_the_same_sequence_from_the_same_tiers(results):
    assert results["labkit_layer"] == {"memory": 2, "redis": 1, "misses": 1}


def test_every_tier_hit_is_faster_than_a_miss_and_memory_is_fastest(results):
    tiers = {row["tier"]: row["p50_us"] for row in results["tiers"]}
    miss = tiers.pop("miss (the service)")
    assert set(tiers) == {"memory", "redis", "memcached", "sqlite"}
    assert all(p50 < miss for p50 in tiers.values())
    assert tiers["memory"] == min(tiers.values())


def test_an_in_process_l1_beats_the_guides_redis_first_stack(results):
    guide, ours = results["stacks"]
    assert guide["stack"].startswith("guide") and ours["stack"].startswith("labkit")
    assert ours["hit p50 (µs)"] < guide["hit p50 (µs)"]


def test_every_request_through_cachelayer_succeeds_during_the_outage(results):
    outage = results["outage"]
    assert outage["requests"] == 30 and outage["succeeded"] == outage["requests"]


def _lab_started_redis() -> None:
    if os.environ.get("REDIS_URL"):
        pytest.skip(
            "REDIS_URL points at a Redis the lab did not start: the notebook never stops someone else's server, "
            "so there was no outage to observe (unset REDIS_URL to run this check against a lab-started Redis)"
        )


def test_the_guides_cache_and_the_built_lookup_fail_the_request_while_redis_is_down(results):
    _lab_started_redis()
    assert results["outage"]["probes"] == {
        "the guide's get_ai_response": "ConnectionError",
        "two_tier (built here)": "ConnectionError",
    }


def test_requests_are_served_through_a_redis_outage_and_redis_is_used_again(results):
    _lab_started_redis()
    outage = results["outage"]
    assert outage["restarted"], "the lab started this Redis, so the notebook should have stopped and restarted it"
    assert outage["redis"]["outages"] == 1 and outage["redis"]["recoveries"] == 1
    during = outage["sources"][outage["stopped_at"] : outage["back_at"]]
    after = outage["sources"][outage["back_at"] :]
    assert "redis" not in during[1:] and "redis" in after
    assert set(during[1:]) <= {"sqlite", "upstream"}  # while Redis was down the next tier (or the service) answered


def test_the_tiers_serve_the_workloads_repeats_and_save_their_cost(results):
    run, ceilings = results["workload"]["run"], results["workload"]["ceilings"]
    assert run["requests"] == 60 and run["semantic hits"] == 0 and run["wrong answers served"] == 0
    assert 0 < run["hit rate"] <= ceilings["exact ceiling"] + 1e-9
    assert 0 < run["cost saved"] < 1
    assert run["hit p50 (ms)"] < run["miss p50 (ms)"] / 10


def test_the_guides_checklist_reads_a_measured_gain_from_these_results(results):
    measured = gains("06", results)
    assert measured and not [item for item, gain in measured.items() if gain.startswith("not measured")], measured
