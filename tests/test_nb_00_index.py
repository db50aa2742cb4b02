"""00_index: the guide's loop, the measuring harness and MetricsLayer measure the same requests; the lesson table
reads each chapter's stated run time; the checklist maps every item of the guide to a lesson."""

import json

import pytest
from nbrun import NOTEBOOKS, run_notebook

from labkit.lab.notebook import LESSONS, lesson_rows, stated_run_time
from labkit.lessons import checklist
from labkit.lessons.checklist import CHECKLIST, ROADMAP

N = 3
notebook = pytest.mark.notebook


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return run_notebook(
        "00_index", tmp_path_factory.mktemp("nb00"), PROFILE="fast", MODEL="gpt-4o-mini", N_REQUESTS=N, MAX_TOKENS=30
    )


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("**Run time** at the defaults: about 45 s on 2 cores.", 45),
        ("Run time at the defaults: about a minute on 2 cores (57 s measured with papermill).", 60),
        ("**Run time** at the defaults: about\n60-65 s on 2 cores (two papermill runs).", 65),
        ("Measured: handshakes. About 30 s at the defaults on a 2-core machine.", 30),
        ("**Run time** at the defaults: about 2 minutes.", 120),
    ],
)
def test_reads_the_run_time_a_chapter_states(text, seconds):
    assert stated_run_time(text)[1] == seconds


@pytest.mark.parametrize(
    "text",
    ["**Run time** at the defaults: about RUNTIME s on 2 cores.", "Uses 2 cores and 300 tokens.", ""],
)
def test_a_chapter_without_a_stated_run_time_has_none(text):
    assert stated_run_time(text) is None


def test_lesson_rows_mark_missing_notebooks_as_absent_and_read_present_ones(tmp_path):
    cell = {"cell_type": "markdown", "metadata": {}, "source": ["# 01\n", "**Run time** at the defaults: about 45 s."]}
    (tmp_path / LESSONS[1][0]).write_text(json.dumps({"cells": [cell]}), encoding="utf-8")
    rows = lesson_rows(tmp_path)
    assert [r["present"] for r in rows[:3]] == [False, True, False]
    assert (rows[1]["run_time_s"], rows[2]["run_time_s"]) == (45, None)


def test_every_checklist_item_and_roadmap_step_names_a_lesson_of_the_course():
    numbers = {name[:2] for name, _, _ in LESSONS}
    items = [entry.lesson for group in CHECKLIST.values() for entry in group]
    steps = [n for *_, lessons in ROADMAP for n in lessons]
    assert len(items) == 16 and set(items + steps) <= numbers


def test_a_checklist_item_whose_lesson_has_not_run_says_so_instead_of_a_figure(tmp_path):
    rows = checklist.checklist_rows(checklist.load_results(tmp_path))
    assert all(row["gain"].startswith("not run yet") for row in rows)


def test_a_results_json_without_a_figure_reads_not_measured():
    assert checklist.gains("02", {"bursts": {}}) == {"De-duplicate requests": "not measured: 'no de-dup'"}


def test_the_roadmap_answer_prefers_the_capstone_bench_over_the_notebooks_smaller_run(tmp_path):
    answer = {"cost_month_usd": {"lever": "cache", "change": -0.7}}
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "12_capstone.json").write_text(json.dumps({"levers": {"w": {"roadmap": {}}}}))
    bench = tmp_path / "capstone.json"
    assert checklist.roadmap_measured(tmp_path / "results", bench)["source"].startswith("12_capstone")
    bench.write_text(json.dumps({"workloads": {"w": {"roadmap": answer}}}))
    assert checklist.roadmap_measured(tmp_path / "results", bench) == {"source": str(bench), "workloads": {"w": answer}}


@notebook
def test_every_run_makes_every_request_without_errors(results):
    runs = ("guide_loop", "guide_gather", "sequential", "concurrent", "labkit")
    assert [results[run]["requests"] for run in runs] == [N] * len(runs)
    assert results["labkit"]["errors"] == 0


@notebook
def test_one_after_another_the_wall_time_is_at_least_the_sum_of_latencies(results):
    for run in ("sequential", "labkit"):
        assert results[run]["wall_s"] >= results[run]["latency_sum_s"]


@notebook
def test_all_at_once_the_requests_overlap(results):
    assert results["concurrent"]["wall_s"] < results["concurrent"]["latency_sum_s"]


@notebook
def test_a_streams_first_token_arrives_before_its_end_in_the_harness_and_the_layer(results):
    for stream in (results["stream"], results["labkit"]["stream"]):
        assert 0 < stream["ttft_s"] < stream["total_s"]


@notebook
def test_the_layer_records_tokens_and_cost(results):
    assert results["labkit"]["completion_tokens"] > 0 and results["labkit"]["cost_usd"] > 0


@notebook
def test_the_lesson_list_covers_the_course_and_marks_what_exists(results):
    assert [r["file"] for r in results["lessons"]] == [name for name, _, _ in LESSONS]
    assert [r["present"] for r in results["lessons"]] == [(NOTEBOOKS / name).exists() for name, _, _ in LESSONS]
