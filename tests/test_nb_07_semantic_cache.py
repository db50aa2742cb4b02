"""07_semantic_cache: the similarity-threshold recipe, the semantic lookup built in cells, labkit's decision per kind
on held-out pairs, and the semantic cache on the workload, executed with papermill at small sizes."""

import pytest
from nbrun import run_notebook

pytestmark = pytest.mark.notebook


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return run_notebook(
        "07_semantic_cache",
        tmp_path_factory.mktemp("nb07"),
        PROFILE="fast",
        MODEL="gpt-4o",
        SIM_TPS=400,
        MAX_TOKENS=20,
        N_REQUESTS=60,
        CONCURRENCY=1,  # one at a time: hit rates then depend on the workload only, not on the machine's timing
    )


def test_look_alikes_score_as_high_as_paraphrases(results):
    examples = results["examples"]
    lowest_same = min(e["cosine"] for e in examples if e["same"])
    assert max(e["cosine"] for e in examples if not e["same"]) > lowest_same


def test_cosine_alone_at_the_common_threshold_serves_many_wrong_answers(results):
    naive = results["common_advice"]["heldout"]
    assert results["common_advice"]["threshold"] == 0.9
    assert naive["false_hit_rate"] > 0.3 and naive["served"] > 0


def test_the_built_lookup_serves_the_near_identical_wording_and_refuses_every_look_alike(results):
    served = results["built"]["examples_served"]
    for example in results["examples"]:
        if not example["same"]:
            assert served[example["incoming"]] is False, example
    assert served["what's the boiling point of ethanol"] is True


def test_the_prose_claim_that_the_built_guard_refuses_every_held_out_pair_still_holds(results):
    assert results["built"]["heldout"]["wrong"] == 0 and results["built"]["heldout"]["served"] == 0


def test_labkits_decision_refuses_the_look_alike_examples(results):
    served = results["labkit"]["examples_served"]
    assert not any(served[e["incoming"]] for e in results["examples"] if not e["same"])


def test_labkits_held_out_false_hits_stay_low_on_kinds_never_tuned_on(results):
    ev = results["labkit"]["evaluation"]
    _low, high = ev["heldout"]["false_hit_rate_ci95"]
    assert high < 0.2  # the top of the guarded rate's 95 % interval (tests/test_would_serve.py states why 20 %)
    assert ev["heldout"]["false_hit_rate"] < ev["heldout_cosine_only"]["false_hit_rate"] / 5
    assert ev["unseen_kinds_negatives_served"] <= 3


def test_the_lesson_reports_every_held_out_kind(results):
    kinds = {row["kind"]: row for row in results["labkit"]["per_kind"]}
    assert {"qualified_entity", "question_word", "method_tool", "templated_slot", "antonym", "paraphrase"} <= set(kinds)
    for kind, row in kinds.items():
        assert row["served, guarded"] <= row["served, cosine alone"] or kind == "paraphrase"
        assert 0 <= row["decided right"] <= 1


def test_the_prose_claim_that_the_held_out_target_is_not_met_still_holds(results):
    """The notebook states that recall is about 16% and the 1% / 40% target of issue 14 is not met; if the guard
    improves, this fails so that the prose gets rewritten."""
    held = results["labkit"]["evaluation"]["heldout"]
    assert 0.1 < held["recall"] < 0.4


def test_the_semantic_cache_adds_hits_on_the_workload_without_wrong_answers(results):
    run, ceilings = results["workload"]["run"], results["workload"]["ceilings"]
    assert run["semantic hits"] > 0 and run["wrong answers served"] <= 1
    assert 0 < run["exact hits"] <= round(run["requests"] * ceilings["exact ceiling"])
    assert run["hit rate"] <= ceilings["semantic ceiling"] + 1e-9


def test_an_embedding_costs_less_than_a_miss_but_is_paid_on_every_lookup(results):
    semantic = results["workload"]["semantic"]
    assert semantic["embeds"] + semantic["embeds_reused"] == semantic["requests"] - semantic["bypassed"]
    assert 0 < results["embed_ms_per_lookup"] < results["workload"]["run"]["miss p50 (ms)"]
