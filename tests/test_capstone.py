"""The capstone's pieces: the workload generator and its ceiling, the table arithmetic, the runner, the assembly."""

from __future__ import annotations

import asyncio
import itertools
import json
import statistics
from collections import Counter

import pytest

from labkit.assemble import SWITCHES, ChainConfig, build_chain
from labkit.lessons import capstone
from labkit.lessons.cache.workload import Group
from labkit.lessons.capstone import Item, RunResult, Workload, WorkloadSpec
from labkit.lessons.capstone.arms import PATIENCE_S
from labkit.lessons.naive import NaiveClient

GROUPS = [Group(f"g{i}", f"question {i}?", (f"question {i}, said otherwise?", f"q{i} again?"), ()) for i in range(50)]


def spec(**changes):
    base = WorkloadSpec(
        name="t",
        rate_per_s=200.0,
        duration_s=10.0,
        warmup_s=0.0,
        exponent=1.1,
        n_distinct=50,
        contexts=1,
        paraphrase_share=0.25,
        seed=3,
    )
    return base.replace(**changes)


def item(index, meaning, text, *, warmup=False, context=0):
    messages = ({"role": "system", "content": f"context {context}"}, {"role": "user", "content": text})
    return Item(index, float(index), warmup, meaning, context, "usual", messages)


# -- the workload generator ---------------------------------------------------------------------------------


def test_the_same_spec_gives_the_same_requests():
    a, b = capstone.generate(spec(), GROUPS), capstone.generate(spec(), GROUPS)
    assert a.items == b.items


def test_another_seed_gives_other_requests():
    assert capstone.generate(spec(), GROUPS).items != capstone.generate(spec(seed=4), GROUPS).items


def test_poisson_arrivals_come_at_the_stated_rate_with_exponential_gaps():
    workload = capstone.generate(spec(rate_per_s=500.0, duration_s=20.0), GROUPS)
    times = [i.at_s for i in workload.items]
    assert times == sorted(times) and times[-1] < 20.0
    assert len(times) == pytest.approx(500 * 20, rel=0.05)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert statistics.fmean(gaps) == pytest.approx(1 / 500, rel=0.05)
    assert statistics.stdev(gaps) == pytest.approx(1 / 500, rel=0.1)  # exponential: sd equals the mean


def test_popularity_follows_the_zipf_ranks():
    workload = capstone.generate(spec(exponent=1.2), GROUPS)
    counts = Counter(i.meaning for i in workload.items)
    weights = capstone.zipf_weights(50, 1.2)
    n = len(workload.items)
    assert counts[0] / n == pytest.approx(weights[0], abs=0.03)
    assert counts[0] > counts[5] > counts[40]


def test_the_paraphrase_share_is_the_stated_one():
    workload = capstone.generate(spec(paraphrase_share=0.3), GROUPS)
    share = sum(i.wording == "paraphrase" for i in workload.items) / len(workload.items)
    assert share == pytest.approx(0.3, abs=0.03)


def test_arrivals_in_the_warmup_are_marked_and_not_measured():
    workload = capstone.generate(spec(warmup_s=2.0), GROUPS)
    assert all(i.warmup == (i.at_s < 2.0) for i in workload.items)
    assert 0 < len(workload.measured) < len(workload.items)


def test_context_lengths_follow_the_spec_bounds():
    texts, lengths = capstone.contexts(spec(contexts=20, prompt_median=200, prompt_min=80, prompt_max=400))
    assert len(texts) == 20 and len(set(texts)) == 20
    assert all(70 <= n <= 420 for n in lengths)  # the bounds, give or take the head sentence's tokens


def test_asking_for_more_meanings_than_exist_is_a_clear_error():
    with pytest.raises(ValueError, match="raise contexts"):
        capstone.generate(spec(n_distinct=51), GROUPS)


@pytest.mark.parametrize(
    "bad",
    [{"rate_per_s": 0}, {"exponent": -1}, {"paraphrase_share": 1.5}, {"fault_total": 1.0}, {"prompt_min": 0}],
)
def test_a_bad_spec_is_refused(bad):
    with pytest.raises(ValueError):
        spec(**bad)


def test_an_unknown_workload_name_lists_the_known_ones():
    with pytest.raises(KeyError, match="high_repetition"):
        WorkloadSpec.load("nope")


def test_both_documented_workloads_load_and_differ_in_repetition():
    high = capstone.generate(WorkloadSpec.load("high_repetition"))
    low = capstone.generate(WorkloadSpec.load("low_repetition"))
    assert high.ceiling()["ceiling"] > 0.7 > 0.4 > low.ceiling()["ceiling"]


def test_the_ceiling_counts_exact_repeats_and_paraphrases_of_earlier_requests():
    items = (
        item(0, 1, "a?", warmup=True),  # history only
        item(1, 1, "a?"),  # exact repeat of the warm-up
        item(2, 1, "a, said otherwise?"),  # paraphrase of meaning 1
        item(3, 2, "b?"),  # new
        item(4, 2, "b?"),  # exact repeat
    )
    ceiling = Workload(spec(), items, (10,)).ceiling()
    assert ceiling["requests"] == 4
    assert ceiling["exact_repeat_share"] == 0.5
    assert ceiling["paraphrase_share"] == 0.25
    assert ceiling["ceiling"] == 0.75


def test_the_same_question_in_another_context_is_not_a_repeat():
    items = (item(0, 1, "a?", context=0), item(1, 7, "a?", context=1))
    assert Workload(spec(), items, (10, 10)).ceiling()["ceiling"] == 0.0


def test_a_burst_puts_every_request_at_time_zero():
    workload = capstone.burst(capstone.generate(spec(), GROUPS), 30)
    assert len(workload) == 30 and {i.at_s for i in workload.items} == {0.0}


# -- the table ----------------------------------------------------------------------------------------------


def row(index, *, ok=True, upstream=True, ttfb=1.0, total=2.0, warmup=False, error=None, tokens=10):
    return {
        "index": index,
        "at_s": 0.0,
        "warmup": warmup,
        "wording": "usual",
        "ok": ok,
        "error": error,
        "ttfb_s": ttfb if ok else None,
        "total_s": total,
        "upstream": upstream if ok else None,
        "attempts": int(upstream),
        "source": "upstream" if upstream else "memory",
        "completion_tokens": tokens,
        "start_lag_s": 0.0,
    }


def stats(requests, answered, generated):
    return [{"requests_total": requests, "requests_by_status": {"200": answered}, "tokens_generated": generated}]


def test_summarize_computes_the_rows_over_measured_requests_only():
    rows = [
        row(0, warmup=True, ttfb=50.0),
        row(1, upstream=True, ttfb=1.0, total=3.0),
        row(2, upstream=False, ttfb=0.0, total=0.1),
        row(3, upstream=False, ttfb=0.2, total=0.3),
        row(4, ok=False, error="gave up (patience)", total=8.0),
    ]
    result = RunResult(rows, 5.0, 3, stats(0, 0, 0), stats(2, 2, 1000))
    workload = Workload(spec(duration_s=2.0), tuple(item(i, i, f"{i}?") for i in range(5)), (10,))
    s = capstone.summarize(result, workload, monthly_requests=1000, prompt_tokens=[100] * 5)
    assert s["requests"] == 4 and s["ok"] == 3
    assert s["error_rate"] == 0.25 and s["errors"] == {"gave up (patience)": 1}
    assert s["avg_response_s"] == pytest.approx(0.4)
    assert s["hit_rate"] == pytest.approx(2 / 3)
    assert s["completed_rps"] == 1.5
    # 2 answered x 100 prompt tokens at $2.50/M + 1000 generated at $10/M, over the run's 5 requests (warm-up
    # included: the cost counts the whole run), x 1000 a month
    assert s["cost_usd"] == pytest.approx((200 * 2.5 + 1000 * 10) / 1e6)
    assert s["cost_month_usd"] == pytest.approx(s["cost_usd"] / 5 * 1000)


def test_without_service_counters_the_cost_comes_from_the_answers_usage():
    rows = [row(0, upstream=True, tokens=100), row(1, upstream=False, tokens=100)]
    result = RunResult(rows, 1.0, 1)
    workload = Workload(spec(duration_s=1.0), (item(0, 0, "a?"), item(1, 0, "a?")), (10,))
    s = capstone.summarize(result, workload, prompt_tokens=[50, 50])
    assert s["upstream"]["source"].startswith("the answers' usage")
    assert s["cost_usd"] == pytest.approx((50 * 2.5 + 100 * 10) / 1e6)


def test_summarize_says_how_late_measured_requests_left_their_schedule():
    rows = [row(0, warmup=True) | {"start_lag_s": 9.0}] + [row(i) | {"start_lag_s": i / 100} for i in range(1, 21)]
    result = RunResult(rows, 1.0, 1)
    workload = Workload(spec(duration_s=1.0), tuple(item(i, i, f"{i}?") for i in range(21)), (10,))
    s = capstone.summarize(result, workload, prompt_tokens=[10] * 21)
    assert s["max_start_lag_s"] == pytest.approx(0.20)  # the warm-up's 9 s is not measured
    assert 0.19 <= s["p95_start_lag_s"] <= 0.20


def test_before_after_states_the_change_and_whether_each_target_was_met():
    before = {"avg_response_s": 3.2, "throughput_rps": 100, "hit_rate": 0.2, "cost_month_usd": 1000,
              "error_rate": 0.05, "p95_ttfb_s": 4.0}  # fmt: skip
    after = {"avg_response_s": 0.8, "throughput_rps": 900, "hit_rate": 0.8, "cost_month_usd": 400,
             "error_rate": 0.002, "p95_ttfb_s": 0.9}  # fmt: skip
    table = {r["key"]: r for r in capstone.before_after(before, after)}
    assert table["avg_response_s"]["change"] == "-75%" and table["avg_response_s"]["met"] is True
    assert table["throughput_rps"]["change"] == "9.0x" and table["throughput_rps"]["met"] is False
    assert table["hit_rate"]["met"] is True and table["cost_month_usd"]["met"] is True
    assert table["error_rate"]["met"] is False and table["p95_ttfb_s"]["met"] is True


def test_the_best_cost_cut_is_every_distinct_meaning_asked_once_against_what_the_naive_client_sent():
    assert capstone.best_cost_change(50, 100) == pytest.approx(-0.5)
    assert capstone.best_cost_change(100, 100) == 0.0
    assert capstone.best_cost_change(120, 100) == 0.0  # more meanings than the naive client sent: no cut possible
    assert capstone.best_cost_change(50, 0) is None


def test_a_missing_value_leaves_its_row_undecided():
    table = {r["key"]: r for r in capstone.before_after({"throughput_rps": None}, {"throughput_rps": 5})}
    assert table["throughput_rps"]["met"] is None and table["throughput_rps"]["change"] is None


def test_ablation_shares_are_the_part_of_the_gain_each_removal_loses():
    naive = {"avg_response_s": 3.0, "hit_rate": 0.2, "error_rate": 0.01}
    full = {"avg_response_s": 1.0, "hit_rate": 0.8, "error_rate": 0.01}
    variants = {"cache": {"avg_response_s": 2.5, "hit_rate": 0.2, "error_rate": 0.0},
                "hedge": {"avg_response_s": 0.9, "hit_rate": 0.8, "error_rate": 0.02}}  # fmt: skip
    shares = capstone.ablation_shares(naive, full, variants)
    assert shares["cache"]["avg_response_s"] == pytest.approx(0.75)
    assert shares["cache"]["hit_rate"] == pytest.approx(1.0)
    assert shares["hedge"]["avg_response_s"] == pytest.approx(-0.05)  # better without it
    assert shares["cache"]["error_rate"] is None  # no gain to share
    assert shares["cache"]["throughput_rps"] is None  # not measured


async def test_the_ladder_doubles_until_a_rung_fails():
    tried = []

    async def run_at(rate, step):
        tried.append(rate)
        return {"error_rate": 0.0 if rate <= 100 else 0.3, "completed_rps": rate * 0.98, "p95_ttfb_s": 0.5}

    result = await capstone.max_sustainable_rate(run_at, start_rate=25, max_rate=1000, refine=1)
    assert tried == [25, 50, 100, 200, pytest.approx(141.42, abs=0.01)]  # then one bisection step between
    assert result["throughput_rps"] == pytest.approx(98) and result["capped"] is False
    assert result["sustained_rps"] == 100 and result["first_failed_rps"] == pytest.approx(141.42, abs=0.01)


async def test_the_ladder_refines_below_its_first_rung_from_a_known_sustained_rate():
    async def run_at(rate, step):
        return {"error_rate": 0.0 if rate <= 40 else 0.3, "completed_rps": rate, "p95_ttfb_s": 0.5}

    result = await capstone.max_sustainable_rate(run_at, start_rate=50, max_rate=400, refine=2, floor_rate=25)
    assert [s["offered_rps"] for s in result["steps"]] == pytest.approx([50, 35.36, 42.04], abs=0.01)
    assert result["throughput_rps"] == pytest.approx(35.36, abs=0.01)


async def test_the_ladder_says_when_the_top_rung_was_sustained():
    async def run_at(rate, step):
        return {"error_rate": 0.0, "completed_rps": rate, "p95_ttfb_s": 0.5}

    result = await capstone.max_sustainable_rate(run_at, start_rate=50, max_rate=200)
    assert result["throughput_rps"] == 200 and result["capped"] is True


# -- the runner ---------------------------------------------------------------------------------------------


async def test_the_open_loop_times_requests_from_their_scheduled_arrival_and_applies_patience():
    items = tuple(item(i, i, f"{i}?") for i in range(4))
    items = tuple(
        Item(i.index, 0.02 * i.index, False, i.meaning, 0, "usual", i.messages) for i in items
    )  # 0, 20, 40, 60 ms

    served_s = {}  # how long each call itself took, measured inside the call

    async def call(it):
        loop = asyncio.get_running_loop()
        began = loop.time()
        await asyncio.sleep(0.3 if it.index == 3 else 0.05)
        now = loop.time()
        served_s[it.index] = now - began
        return {"first": now, "done": now, "upstream": it.index % 2 == 0, "attempts": 1, "source": "x",
                "completion_tokens": 1}  # fmt: skip

    result = await capstone.run_open_loop(call, Workload(spec(), items, (10,)), patience_s=0.2)
    rows = result.rows
    assert [r["ok"] for r in rows] == [True, True, True, False]
    assert rows[3]["error"] == "gave up (patience)"
    for r in rows[:3]:
        # from the scheduled arrival: the call's own time plus how late it started, and nothing more (timed from
        # the run's start instead, a row would carry its 20-60 ms offset in the schedule)
        from_arrival = served_s[r["index"]] + r["start_lag_s"]
        assert from_arrival <= r["ttfb_s"] < from_arrival + 0.02
    assert result.peak_outstanding >= 3


async def test_a_warm_up_request_still_pending_when_the_measured_ones_end_is_not_waited_for():
    async def call(it):
        await asyncio.sleep(5.0 if it.warmup else 0.05)  # the warm-up request hangs
        now = asyncio.get_running_loop().time()
        return {"first": now, "done": now, "upstream": True, "attempts": 1, "source": "x", "completion_tokens": 1}

    items = (item(0, 0, "a?", warmup=True), item(1, 1, "b?"))
    result = await capstone.run_open_loop(call, Workload(spec(), items, (10,)), patience_s=10.0)
    assert result.wall_s < 2.5  # not the 5 s hang, nor the 10 s patience
    assert [(r["ok"], r["error"]) for r in result.rows] == [(False, "not awaited (warm-up)"), (True, None)]


async def test_a_failing_call_is_a_measured_outcome_not_a_crash():
    async def call(it):
        raise RuntimeError("boom")

    result = await capstone.run_open_loop(call, Workload(spec(), (item(0, 0, "a?"),), (10,)), patience_s=1.0)
    assert result.rows[0]["ok"] is False and result.rows[0]["error"] == "RuntimeError"


async def test_a_layers_own_timeout_is_named_by_its_class_not_as_the_callers_patience():
    from labkit.errors import FirstTokenTimeout

    async def call(it):
        raise FirstTokenTimeout("no first token within 4 s")

    result = await capstone.run_open_loop(call, Workload(spec(), (item(0, 0, "a?"),), (10,)), patience_s=1.0)
    assert result.rows[0]["error"] == "FirstTokenTimeout"


def test_a_lever_alone_carries_no_timer_that_only_its_partners_make_sound():
    levers = capstone.levers()
    assert levers["streaming"].client.streaming and levers["streaming"].client.first_token_timeout_s is None
    assert levers["retries"].client.retry_deadline_s == PATIENCE_S  # the caller's own patience, nothing shorter


def test_a_levers_record_keeps_why_its_requests_failed_beside_the_rows():
    from labkit.lessons.capstone.guide_table import lever_record

    summary = {"requests": 10, "ok": 7, "error_rate": 0.3, "p95_start_lag_s": 1.2,
               "errors": {"RateLimitError": 2, "MidStreamError": 1}, "sources": {"upstream": 7}}  # fmt: skip
    record = lever_record(summary)
    assert record["error_rate"] == 0.3 and record["requests"] == 10
    assert record["errors"] == {"RateLimitError": 2, "MidStreamError": 1}
    assert record["p95_start_lag_s"] == 1.2
    assert "sources" not in record  # the rows and the failures, not the whole summary


def test_rescale_brings_how_late_requests_left_back_to_real_seconds():
    from labkit.lessons.capstone.arms import rescale

    out = rescale({"p95_start_lag_s": 0.5, "max_start_lag_s": 1.5}, 2.0)
    assert (out["p95_start_lag_s"], out["max_start_lag_s"]) == (1.0, 3.0)


# -- the clients against a real (simulated) service ---------------------------------------------------------


def test_the_default_config_switches_every_layer_on():
    assert ChainConfig().switches() == dict.fromkeys(SWITCHES, True)


def test_an_unknown_ablation_switch_is_refused():
    with pytest.raises(ValueError, match="unknown layer switch"):
        ChainConfig().without("turbo")


def test_a_pair_of_switches_removes_both():
    config = ChainConfig().without("cache+semantic")
    assert not config.cache and not config.semantic and config.dedup


async def test_the_full_chain_answers_a_stream_then_serves_the_repeat_without_an_upstream_call(fresh_sim):
    assembled = build_chain(ChainConfig(semantic=False), fresh_sim.endpoint)
    try:
        assert "cache" in assembled.on
        call = capstone.chain_caller(assembled, model="gpt-4o", max_tokens=20)
        first = await call(item(0, 0, "What is a circuit breaker?"))
        again = await call(item(1, 0, "What is a circuit breaker?"))
        assert first["upstream"] is True and again["upstream"] is False and again["source"] == "memory"
        assert fresh_sim.stats()["requests_total"] == 1
    finally:
        await assembled.aclose()


async def test_without_the_cache_the_repeat_goes_upstream(fresh_sim):
    assembled = build_chain(ChainConfig().without("cache", "semantic"), fresh_sim.endpoint)
    try:
        call = capstone.chain_caller(assembled, model="gpt-4o", max_tokens=20)
        await call(item(0, 0, "What is a circuit breaker?"))
        again = await call(item(1, 0, "What is a circuit breaker?"))
        assert again["upstream"] is True and fresh_sim.stats()["requests_total"] == 2
    finally:
        await assembled.aclose()


async def test_the_semantic_cache_serves_a_streamed_paraphrase(fresh_sim):
    assembled = build_chain(ChainConfig(), fresh_sim.endpoint)
    try:
        call = capstone.chain_caller(assembled, model="gpt-4o", max_tokens=20)
        await call(item(0, 0, "How do I convert Celsius to Fahrenheit?"))
        para = await call(item(1, 0, "Hi! How do I convert Celsius to Fahrenheit, please?"))
        assert para["upstream"] is False and para["source"] == "semantic"
        assert assembled.layers["semantic"].stats.hits == 1
    finally:
        await assembled.aclose()


async def test_the_naive_client_caches_exact_prompts_in_redis_through_a_sync_client(fresh_sim, redis_service):
    naive = NaiveClient(fresh_sim.endpoint, cache="redis", redis_url=redis_service.url)
    try:
        messages = [{"role": "user", "content": f"naive capstone test {id(naive)}"}]
        _, usage, source = await naive.ask(messages, model="gpt-4o", max_tokens=10, temperature=0)
        text, usage2, source2 = await naive.ask(messages, model="gpt-4o", max_tokens=10, temperature=0)
        assert (source, source2) == ("upstream", "cache") and usage is not None and usage2 is None and text
        assert naive.stats()["max_retries"] == 2  # the SDK's default, as in the guide
        assert naive.clear() >= 1
        _, _, source3 = await naive.ask(messages, model="gpt-4o", max_tokens=10, temperature=0)
        assert source3 == "upstream"
    finally:
        await naive.aclose()


def test_the_naive_client_refuses_an_unknown_cache_mode_and_redis_without_a_url(sim):
    with pytest.raises(ValueError, match="cache must be one of"):
        NaiveClient(sim.endpoint, cache="lru")
    with pytest.raises(ValueError, match="redis_url"):
        NaiveClient(sim.endpoint, cache="redis")


# -- the three arms of the guide's table ----------------------------------------------------------------------


def test_the_wilson_interval_of_no_errors_in_ten_thousand_is_below_the_guides_error_target():
    low, high = capstone.wilson(0, 10_000)
    assert low == 0.0 and 0.0003 < high < 0.001  # 0 in 10,000 separates 0.1% from 1%


def test_the_wilson_interval_of_a_small_sample_cannot_show_the_error_target():
    assert capstone.wilson(0, 100)[1] > 0.001


def test_the_wilson_interval_contains_the_observed_share():
    low, high = capstone.wilson(83, 100)
    assert low < 0.83 < high


def summary(**values):
    base = {"requests": 1000, "ok": 1000, "hit_rate": 0.0, "error_rate": 0.0, "avg_response_s": 1.0}
    base.update(values)
    return base


def test_the_guide_rows_judge_labkit_against_before_and_say_whether_it_is_ahead_of_the_snippets():
    rows = capstone.guide_rows(
        {
            "before": summary(avg_response_s=4.0, error_rate=0.05, ok=950),
            "guide": summary(avg_response_s=0.4, hit_rate=0.81),
            "labkit": summary(avg_response_s=0.1, hit_rate=0.84),
        }
    )
    by = {r["key"]: r for r in rows}
    assert by["avg_response_s"]["met"] is True and by["avg_response_s"]["labkit_ahead"] is True
    assert by["avg_response_s"]["guide_before"] == 3.2 and by["avg_response_s"]["guide_after"] == 0.8
    assert by["hit_rate"]["met"] is True and by["hit_rate"]["ci95"]["labkit"][0] >= 0.8
    assert by["throughput_rps"]["met"] is None and "ci95" not in by["throughput_rps"]


def test_a_hit_rate_whose_interval_reaches_below_80_percent_is_not_met():
    rows = capstone.guide_rows(
        {"before": summary(), "guide": summary(), "labkit": summary(requests=100, ok=100, hit_rate=0.82)}
    )
    assert {r["key"]: r for r in rows}["hit_rate"]["met"] is False


def test_trimming_shortens_the_context_and_keeps_the_question():
    wl = capstone.generate(spec(prompt_median=800, prompt_min=700, trim_keep=0.5), GROUPS)
    cut = capstone.trimmed(wl)
    assert sum(cut.prompt_tokens()) < 0.7 * sum(wl.prompt_tokens())
    assert [i.text for i in cut.items] == [i.text for i in wl.items]


def test_the_deferrable_share_is_the_stated_one_and_leaves_the_other_draws_alone():
    wl = capstone.generate(spec(defer_share=0.2), GROUPS)
    assert abs(sum(i.deferrable for i in wl.items) / len(wl) - 0.2) < 0.03
    plain = capstone.generate(spec(), GROUPS)
    assert [i.messages for i in plain.items] == [i.messages for i in wl.items]
    online, deferred = capstone.without_deferred(wl)
    assert len(online) + len(deferred) == len(wl) and all(i.deferrable for i in deferred)


def test_a_time_compressed_spec_sends_the_same_requests_faster():
    s = spec(warmup_s=2.0)
    fast = capstone.generate(capstone.scaled_spec(s, 4.0), GROUPS)
    assert 0.9 < len(fast) / len(capstone.generate(s, GROUPS)) < 1.1
    assert fast.items[-1].at_s < s.warmup_s + s.duration_s


async def test_the_before_arm_asks_every_repeat_upstream_without_max_tokens(fresh_sim):
    before = capstone.arms()["before"]
    assembled = build_chain(before.client, fresh_sim.endpoint)
    try:
        assert assembled.on == ["pooling"] and not assembled.stream
        call = capstone.chain_caller(assembled, model="gpt-4o", max_tokens=None)
        await call(item(0, 0, "What is a circuit breaker?"))
        again = await call(item(1, 0, "What is a circuit breaker?"))
        assert again["upstream"] is True and fresh_sim.stats()["requests_total"] == 2
    finally:
        await assembled.aclose()


# -- the results the notebook writes --------------------------------------------------------------------------

DEDUP_RESULTS = {
    "bursts": {"no de-dup": {"requests": 5, "upstream_calls": 5}, "labkit SingleFlight": {"upstream_calls": 1}}
}


def test_the_checklist_report_reads_the_gains_of_the_lessons_whose_results_lie_beside_the_capstones(tmp_path):
    (tmp_path / "02_dedup.json").write_text(json.dumps(DEDUP_RESULTS), encoding="utf-8")
    (tmp_path / "05_webchat.json").write_text(json.dumps({"profile": "fast"}), encoding="utf-8")  # no gain figures
    rows = capstone.checklist_report(tmp_path / "12_capstone.json")[capstone.CHECKLIST_TITLE]
    gains = {row["item"]: row["gain"] for row in rows}
    assert len(rows) == 16
    assert gains["De-duplicate requests"] == "5 identical requests at once: 5 → 1 upstream call"
    assert gains["Handle errors gracefully"].startswith("not measured")
    assert gains["Batch to cut the number of requests"] == "not run yet: run 01_batching.ipynb"


def test_without_a_results_path_the_capstones_results_carry_no_checklist():
    assert capstone.results({}, results_path=None)["report_tables"] == {}
