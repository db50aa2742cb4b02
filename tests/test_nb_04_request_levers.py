"""04_request_levers: prompt length moves the first token (prefill), and three levers measured without and
with: a fitted max_tokens, history trimmed to a budget (built in cells, then labkit's), a cached prefix."""

import pytest
from nbrun import run_notebook

from labkit.lessons.checklist import gains

pytestmark = pytest.mark.notebook

# 'bench-prefill': 0.3 s plus 0.25 ms per uncached prompt token (4000 prompt tokens/s) to the first token, then
# 20 ms per token, no randomness: prompt length and prefix-cache hits move TTFT by a known amount
PARAMETERS = {
    "PROFILE": "bench-prefill",
    "MODEL": "gpt-4o",
    "PROMPT_TOKENS_SWEEP": [100, 2000],
    "MAX_TOKENS": 8,
    "REPEATS": 2,
    "CONCURRENCY": 8,
    "PREFIX_TOKENS": 1500,
    "HISTORY_TURNS": 12,
    "HISTORY_BUDGET": 400,
}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return run_notebook("04_request_levers", tmp_path_factory.mktemp("nb04"), **PARAMETERS)


def test_the_guides_call_without_max_tokens_writes_the_whole_answer(results):
    assert results["advice"]["output tokens"] > 5 * results["levers"]["max_tokens"]["after"]["completion_tokens"]


def test_prompt_length_moves_the_ttft_not_the_itl(results):
    # 100 -> 2000 prompt tokens: about 1800 more tokens to prefill at 0.25 ms each, i.e. +0.45 s to the first token
    short, long = results["by_prompt_tokens"]["100"], results["by_prompt_tokens"]["2000"]
    assert long["stream"]["prompt_tokens"] > short["stream"]["prompt_tokens"] + 1500
    assert long["stream"]["ttft_s"] > 1.5 * short["stream"]["ttft_s"]
    assert long["plain"]["ttft_s"] > 1.5 * short["plain"]["ttft_s"]  # a plain call waits for the prefill too
    # the profile's 250 ms per 1000 tokens is a floor the service's sleeps keep (a busy machine only adds)
    assert results["ttft_ms_per_1k_prompt_tokens"] > 125
    assert results["ttft_moves_with_prompt"]
    assert long["stream"]["itl_p50_s"] < 2 * short["stream"]["itl_p50_s"]
    decode_s = [p["stream"]["total_s"] - p["stream"]["ttft_s"] for p in (short, long)]
    assert abs(decode_s[1] - decode_s[0]) < 0.25 * min(decode_s)


def test_a_fitted_max_tokens_cuts_output_and_total(results):
    lever = results["levers"]["max_tokens"]
    assert lever["after"]["completion_tokens"] <= 5 < lever["before"]["completion_tokens"]
    assert lever["after"]["total_s"] < lever["before"]["total_s"]


def test_trimmed_history_fits_the_budget_and_prefills_faster(results):
    lever = results["levers"]["history"]
    assert lever["after"]["prompt_tokens"] <= 400 < lever["before"]["prompt_tokens"]
    assert lever["after"]["cost_usd"] < lever["before"]["cost_usd"]
    assert lever["after"]["ttft_s"] < 0.75 * lever["before"]["ttft_s"]


def test_the_trimmer_built_in_cells_keeps_what_trim_history_keeps(results):
    trim = results["trim"]
    assert trim["minimal"]["prompt_tokens"] <= 400
    assert abs(trim["minimal"]["prompt_tokens"] - trim["labkit"]["prompt_tokens"]) <= 50


def test_static_instructions_first_are_served_from_the_prefix_cache(results):
    lever = results["levers"]["prefix_cache"]
    assert lever["before"]["cached_tokens"] == 0 and lever["after"]["cached_tokens"] >= 1024
    assert lever["after"]["cost_usd"] < lever["before"]["cost_usd"]
    # cached tokens skip prefill: about 1400 of ~1450 prompt tokens, i.e. some 0.35 s less to the first token
    assert lever["after"]["ttft_s"] < 0.75 * lever["before"]["ttft_s"]


def test_the_guides_checklist_reads_a_measured_gain_from_these_results(results):
    measured = gains("04", results)
    assert measured and not [item for item, gain in measured.items() if gain.startswith("not measured")], measured
