"""02_dedup: the guide's md5(prompt) cache and its wrong answers, the canonical key and the dict-of-futures
single-flight built in cells, labkit's SingleFlight (tenants, streams, errors, cancellation, sampling), the
workload measurement and Redis across processes, executed with papermill at small sizes."""

import pytest
from nbrun import run_notebook

from labkit.lessons.checklist import gains

pytestmark = pytest.mark.notebook

#: The test sizes (tests/test_external_endpoint.py runs the same sizes against an external endpoint).
SIZES = {
    "PROFILE": "fast",
    "SIM_TPS": 100,  # streams last ~200 ms: readers join one in flight even on a busy machine
    "MODEL": "gpt-4o",
    "MAX_TOKENS": 20,
    "N_CONCURRENT": 8,
    "N_WORKERS": 2,
    "WORKER_REQUESTS": 2,
    "N_REQUESTS": 40,
    "N_DISTINCT": 60,
    "BURST_SIZE": 10,
    "ZIPF_EXPONENT": 1.5,
    "BURST_GAP_S": 0.3,
}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return run_notebook("02_dedup", tmp_path_factory.mktemp("nb02"), **SIZES)


def test_the_guides_cache_answers_a_repeat_faster_than_the_first_call(results):
    first, repeat = results["advice_s"]
    assert repeat < first / 10


def test_prompt_only_key_serves_wrong_answers_and_the_canonical_key_does_not(results):
    fp = results["fingerprint"]
    assert fp["naive_wrong"] == fp["needs_own_answer"] >= 4
    assert fp["labkit_wrong"] == 0
    assert fp["volatile_shared"] == 3


def test_identical_concurrent_requests_go_upstream_once_through_the_dict_of_futures(results):
    b = results["bursts"]
    assert b["no de-dup"]["upstream_calls"] == b["no de-dup"]["requests"] == SIZES["N_CONCURRENT"]
    assert b["dict of futures"]["upstream_calls"] == 1
    assert b["dict of futures"]["distinct_answers"] == 1


def test_labkits_single_flight_makes_one_upstream_call_for_the_same_burst(results):
    b = results["bursts"]["labkit SingleFlight"]
    assert (b["requests"], b["upstream_calls"], b["distinct_answers"]) == (SIZES["N_CONCURRENT"], 1, 1)


def test_sampling_policy_decides_how_many_upstream_calls(results):
    calls = {row["policy"]: row["upstream calls"] for row in results["sampling"]}
    assert calls == {"skip": 5, "share": 1, "keep(2)": 2}


def test_one_stream_is_fanned_out_to_every_reader_late_joiners_included(results):
    s = results["stream"]
    assert s["upstream_calls"] == 1
    assert s["same_text"]
    assert len(set(s["chunks"])) == 1
    assert s["late_joiners"] == s["readers"] - 1


def test_errors_reach_every_waiter_and_are_not_cached(results):
    e = results["errors"]
    assert e["waiters_with_error"] == e["waiters"]
    assert e["upstream_calls_for_the_burst"] == 1
    assert e["retry_ok"] and e["upstream_calls_after_retry"] == 2


def test_leaving_readers_do_not_cancel_the_others(results):
    c = results["cancel"]
    assert c["upstream_cancelled_while_one_reader_stayed"] == 0
    assert c["early_readers_chunks"] == [3, 5] and c["full_reader_chunks"] > 5
    assert c["upstream_cancelled_when_all_left"] == 1


def test_redis_coalesces_across_worker_processes(results):
    rounds = {r["mode"]: r for r in results["redis"]["rounds"]}
    workers, per_worker = results["redis"]["workers"], results["redis"]["requests_per_worker"]
    assert all(r["errors"] == 0 and r["distinct_answers"] == 1 for r in rounds.values())
    assert rounds["none"]["upstream_calls"] == workers * per_worker
    assert rounds["local"]["upstream_calls"] == workers
    assert rounds["redis"]["upstream_calls"] == 1


def test_saved_call_figures_are_consistent(results):
    spec = results["workload"]["spec"]
    runs = {r["config"]: r for r in results["workload"]["runs"]}
    for run in runs.values():
        assert run["errors"] == 0
        assert run["saved_calls"] == run["requests"] - run["upstream_calls"]
        assert run["sim_chat_requests"] == run["upstream_calls"]  # what the server saw
    assert runs["none"]["upstream_calls"] == spec["requests"]
    for config in ("cache", "coalesce", "both"):
        assert spec["distinct"] <= runs[config]["upstream_calls"] < spec["requests"]
        assert runs[config]["upstream_cost_usd"] < runs["none"]["upstream_cost_usd"]
    assert runs["both"]["upstream_calls"] <= min(runs["cache"]["upstream_calls"], runs["coalesce"]["upstream_calls"])


def test_the_guides_checklist_reads_a_measured_gain_from_these_results(results):
    measured = gains("02", results)
    assert measured and not [item for item, gain in measured.items() if gain.startswith("not measured")], measured
