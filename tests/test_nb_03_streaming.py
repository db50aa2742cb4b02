"""03_streaming: streamed first text against the plain call's, what max_tokens moves, the stream reader built in
cells against labkit's `consume()`, broken streams and timeouts, the live view and its Stop."""

import pytest
from nbrun import run_notebook

from labkit.lessons.checklist import gains

pytestmark = pytest.mark.notebook

# 'bench-prefill': 0.3 s plus 0.25 ms per uncached prompt token to the first token, then 20 ms per token, no
# randomness: output length moves the total by a known amount and leaves the first token where it is
PARAMETERS = {
    "PROFILE": "bench-prefill",
    "MODEL": "gpt-4o",
    "PROFILE_B": "fast",
    "MODEL_B": "gpt-4o-mini",
    "MAX_TOKENS_SWEEP": [8, 40],
    "REPEATS": 2,
    "CONCURRENCY": 8,
    "LIVE_MAX_TOKENS": 50,
    "STOP_AFTER_TOKENS": 10,
}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return run_notebook("03_streaming", tmp_path_factory.mktemp("nb03"), **PARAMETERS)


def test_the_guides_streaming_loop_shows_text_long_before_the_plain_call(results):
    advice = results["advice"]
    assert advice["streamed"]["first text s"] < 0.6 * advice["plain"]["first text s"]


def test_streaming_shows_text_long_before_the_plain_call(results):
    longest = results["longest"]
    assert longest["stream_ttft_s"] < 0.6 * longest["plain_first_text_s"]


def test_streaming_does_not_change_the_total(results):
    longest = results["longest"]
    assert 0.75 < longest["stream_total_s"] / longest["plain_total_s"] < 1.33


def test_max_tokens_moves_the_total_not_the_ttft(results):
    short, long = results["by_max_tokens"]["8"]["stream"], results["by_max_tokens"]["40"]["stream"]
    assert long["total_s"] > 1.5 * short["total_s"]  # 32 more tokens at 20 ms: about 1.1 s against 0.45 s
    # the first token moves by less than a quarter of what the total moved
    assert abs(long["ttft_s"] - short["ttft_s"]) < 0.25 * (long["total_s"] - short["total_s"])
    # each extra token costs about one inter-token gap, as measured on the same streams
    assert 0.5 < results["total_s_per_extra_token"] / long["itl_p50_s"] < 2


def test_the_reader_built_in_cells_times_like_labkits_consume(results):
    mine, labkit = results["read_stream"], results["labkit_consume"]
    assert mine["completion_tokens"] == labkit["completion_tokens"] == 40
    assert 0.5 < mine["ttft_s"] / labkit["ttft_s"] < 2
    assert 0.5 < mine["itl_p50_s"] / labkit["itl_p50_s"] < 2


def test_live_view_streams_both_endpoints(results):
    assert [o["status"] for o in results["live"]] == ["ok", "ok"]
    assert all(o["ttft_s"] < o["total_s"] and o["completion_tokens"] > 0 for o in results["live"])


def test_stop_closes_the_stream_upstream_and_accounts_usage(results):
    stop = results["stop"]
    assert stop["status"] == "stopped" and stop["disconnects"] == 1
    assert stop["usage_estimated"] and 10 <= stop["completion_tokens"] < 50
    assert stop["metrics_outcome"] == "cancelled"


def test_metrics_record_an_itl_for_the_streams(results):
    assert results["metrics"]["streams"] >= 6
    assert results["metrics"]["with_itl"] >= results["metrics"]["streams"] - 2


def test_broken_streams_and_timeouts_become_clear_errors(results):
    failures = results["failures"]
    assert failures["stream_error_rate"]["kind"] == "error_event"
    assert failures["drop_mid_stream_rate"]["kind"] == "dropped"
    assert failures["first token"]["kind"] == "FirstTokenTimeout"
    assert failures["whole stream"]["kind"] == "StreamTimeout" and failures["whole stream"]["partial_chars"] > 0


def test_the_guides_checklist_reads_a_measured_gain_from_these_results(results):
    measured = gains("03", results)
    assert measured and not [item for item, gain in measured.items() if gain.startswith("not measured")], measured
