"""05_webchat: the streaming route built in cells and labkit's chat app both answer in many reads; a per-read
decode breaks split characters; bad input gets a bare 500 from the minimal route and a clear 4xx from labkit."""

import pytest
from nbrun import run_notebook

from labkit.lessons.checklist import gains

pytestmark = pytest.mark.notebook

# 'bench': first token after 0.3 s, then 20 ms per token, so 30 tokens spread the reads over about 0.6 s
PARAMETERS = {"PROFILE": "bench", "MODEL": "gpt-4o", "MAX_TOKENS": 30}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return run_notebook("05_webchat", tmp_path_factory.mktemp("nb05"), **PARAMETERS)


def test_decoding_each_read_alone_breaks_split_characters(results):
    assert "\ufffd" in results["decode"]["each read alone"]
    assert results["decode"]["stream: true"] == "流式响应"


@pytest.mark.parametrize("arm", ["route", "webchat"])
def test_the_answer_arrives_over_many_reads(results, arm):
    read = results[arm]
    assert read["status"] == 200 and read["reads"] >= 5
    assert read["last_read_s"] - read["first_read_s"] > 0.3  # 29 tokens at 20 ms after the first


def test_the_minimal_route_answers_malformed_input_with_a_bare_500(results):
    assert results["route_bad_input"]["malformed"] == {"status": 500, "message": "Internal Server Error"}


def test_labkits_app_rejects_bad_input_with_a_clear_4xx(results):
    bad = results["webchat"]["bad_input"]
    assert {label: b["status"] for label, b in bad.items()} == {"empty": 400, "malformed": 400, "oversized": 413}


def test_the_guides_checklist_reads_a_measured_gain_from_these_results(results):
    measured = gains("05", results)
    assert measured and not [item for item, gain in measured.items() if gain.startswith("not measured")], measured
