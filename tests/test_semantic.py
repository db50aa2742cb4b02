"""The semantic cache: the offline embedding model against the reference model, the guard against hard
negatives, the labelled pairs, the threshold chosen on the tuning split, and the layer over the real simulated
service. The held-out evaluation per kind and `would_serve` are in tests/test_would_serve.py."""

import gc
import json
import os
import shutil
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
from conftest import Counting
from openai.types.chat import ChatCompletion

from labkit.cache.embeddings import (
    REFERENCE_MIN_COSINE,
    MiniLMEmbedder,
    ModelIntegrityError,
    compare_with_reference,
    default_embedder,
    onnx_model_path,
)
from labkit.cache.evaluation import HELDOUT_KINDS, HELDOUT_STYLES, evaluate, load_pairs, wilson
from labkit.cache.guard import veto
from labkit.cache.semantic import DEFAULT_THRESHOLD, SemanticCache, VectorIndex
from labkit.chain import Chain
from labkit.data import data_path
from labkit.endpoint import Endpoint
from labkit.request import ChatRequest
from labkit.transports.sdk import OpenAITransport

MODEL = "gpt-4o"

# -- the model --------------------------------------------------------------------------------------------------


def test_embeddings_match_the_reference_model_on_every_sentence():
    report = compare_with_reference()
    assert report["sentences"] >= 60
    assert report["min_cosine"] >= REFERENCE_MIN_COSINE
    assert report["mean_cosine"] >= 0.999


def test_embeddings_are_unit_vectors_of_384_dimensions():
    vectors = default_embedder().embed(["one", "two sentences here"])
    assert vectors.shape == (2, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_embed_refuses_a_bare_string():
    with pytest.raises(TypeError, match="list of texts"):
        default_embedder().embed("not a list")


def test_the_model_loads_and_runs_offline(tmp_path):
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "empty-hf-home"),  # no cached hub files to fall back on
        "HTTP_PROXY": "http://127.0.0.1:9",  # any network attempt would fail
        "HTTPS_PROXY": "http://127.0.0.1:9",
    }
    code = "from labkit.cache.embeddings import MiniLMEmbedder; print(MiniLMEmbedder().embed(['offline?']).shape)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "(1, 384)"


def test_a_model_file_that_is_not_the_pinned_one_is_refused(tmp_path):
    tampered = tmp_path / "model.onnx"
    shutil.copy(onnx_model_path(), tampered)
    with open(tampered, "r+b") as f:
        f.seek(1000)
        f.write(b"\0\0\0\0")
    with pytest.raises(ModelIntegrityError, match="SHA-256"):
        MiniLMEmbedder(model_path=tampered)


# -- the guard ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "a, b, reason",
    [
        ("How do I convert kilograms to pounds?", "How do I convert pounds to kilograms?", "swapped_roles"),
        ("Did the referee warn the coach?", "Did the coach warn the referee?", "swapped_roles"),
        ("Is Berlin bigger than Munich?", "Is Munich bigger than Berlin?", "swapped_roles"),
        ("How many seats does a plane with 3 engines have?", "How many seats does a plane with 4 engines have?",
         "other_number"),
        ("Can I freeze cooked pasta?", "Can I not freeze cooked pasta?", "negation"),
        ("How do I increase the font size?", "How do I decrease the font size?", "antonym"),
        ("What is the population of Madrid?", "What is the population of Lisbon?", "other_name"),
        ("How do I peel a mango quickly?", "How do I peel a kiwi quickly?", "minimal_pair"),
        ("How was the Colosseum built?", "Why was the Colosseum built?", "question_word"),
        ("how to steam broccoli", "how to steam broccoli in a rice cooker", "added_words"),
        ("Packing list for a sunny beach holiday", "Packing list for a snowy mountain skiing trip", "other_words"),
        ("convert 10 kg to pounds", "10 pounds in kilograms", "swapped_roles"),
        ("why doesnt the dishwasher drain", "why does the dishwasher drain", "negation"),
        ("Can my landlord evict me for one late payment?", "Can I evict my landlord for one late payment?",
         "swapped_roles"),
    ],
)  # fmt: skip
def test_the_guard_vetoes_hard_negatives(a, b, reason):
    assert veto(a, b) == reason


@pytest.mark.parametrize(
    "a, b",
    [
        ("How do I convert kilograms to pounds?", "hey, how do I convert kilograms to pounds please"),
        ("What is the population of Madrid?", "Madrid's population?"),
        ("How long should I steep green tea?", "how long should i steep green tea"),
        ("Can I freeze cooked pasta?", "Cooked pasta: can I freeze it?"),
        ("What is the difference between a crocodile and an alligator?",
         "What is the difference between an alligator and a crocodile?"),
        ("In 300 words, describe the water cycle for children.", "Describe the water cycle for children in 300 words."),
        ("how long shoud I boil quinoa", "how long should i boil quinoa"),
    ],
)  # fmt: skip
def test_the_guard_lets_paraphrases_through(a, b):
    assert veto(a, b) is None


# -- the labelled pairs -----------------------------------------------------------------------------------------


def test_the_labelled_set_has_1000_pairs_10_domains_and_100_chinese():
    pairs = load_pairs()
    assert len(pairs) >= 1000
    assert len({p["domain"] for p in pairs}) >= 10
    assert sum(p["lang"] == "zh" for p in pairs) >= 100
    assert len({(p["a"], p["b"]) for p in pairs}) == len(pairs)
    assert all((p["label"] == 1) == (p["kind"] == "paraphrase") for p in pairs)


def test_the_split_holds_out_whole_kinds_and_author_styles():
    pairs = load_pairs()
    tuning = [p for p in pairs if p["split"] == "tuning"]
    assert not {p["kind"] for p in tuning} & HELDOUT_KINDS
    assert not {p["style"] for p in tuning} & HELDOUT_STYLES
    assert all(p["split"] == "heldout" for p in pairs if p["kind"] in HELDOUT_KINDS or p["style"] in HELDOUT_STYLES)


def test_the_lessons_workload_file_still_loads_in_its_older_format():
    pairs = load_pairs(data_path("paraphrases.jsonl"))
    assert len(pairs) >= 300 and {p["label"] for p in pairs} == {0, 1}


def test_a_malformed_pairs_file_is_refused_with_its_line(tmp_path):
    bad = tmp_path / "pairs.jsonl"
    bad.write_text('{"a": "x", "b": "y", "label": 1, "kind": "paraphrase", "split": "tuning"}\n{"a": "x"}\n')
    with pytest.raises(ValueError, match=r"pairs.jsonl:2"):
        load_pairs(bad)


def test_wilson_interval():
    low, high = wilson(0, 100)
    assert low == 0.0 and high == pytest.approx(0.037, abs=0.001)
    low, high = wilson(50, 100)
    assert low == pytest.approx(0.404, abs=0.002) and high == pytest.approx(0.596, abs=0.002)


@pytest.fixture(scope="module")
def evaluation():
    return evaluate()


def test_the_threshold_in_the_library_is_the_one_chosen_on_the_tuning_split(evaluation):
    assert evaluation["threshold"] == DEFAULT_THRESHOLD
    assert evaluation["tuning"]["fp"] == 0


def test_the_guard_is_what_makes_the_cache_safe(evaluation):
    """Cosine alone at the same threshold serves mostly wrong answers on the held-out pairs; the guard's upper
    95% bound stays below the lower bound of cosine alone (not luck of the held-out draw)."""
    cosine_only = evaluation["heldout_cosine_only"]
    cosine_low, _ = wilson(cosine_only["fp"], cosine_only["tp"] + cosine_only["fp"])
    _, guarded_high = evaluation["heldout"]["false_hit_rate_ci95"]
    assert guarded_high < cosine_low


# -- the index and the layer ---------------------------------------------------------------------------------------


def test_vector_index_returns_the_best_first_and_evicts_the_oldest():
    index = VectorIndex(2, max_entries=3)
    evicted = [index.add(np.array([np.cos(a), np.sin(a)], dtype=np.float32), i) for i, a in enumerate([0, 0.5, 1, 1.5])]
    assert evicted == [None, None, None, 0] and len(index) == 3
    found = index.search(np.array([1.0, 0.0], dtype=np.float32), k=3)
    assert [payload for _, payload in found] == [1, 2, 3]  # entry 0 was evicted
    assert found[0][0] > found[1][0] > found[2][0]


def test_a_text_evicted_from_a_full_index_can_be_stored_again():
    cache = SemanticCache(default_embedder(), max_entries=2)
    completion = ChatCompletion.model_validate(
        {"id": "c", "object": "chat.completion", "created": 0, "model": MODEL,
         "choices": [{"index": 0, "message": {"role": "assistant", "content": "x"}, "finish_reason": "stop"}]}
    )  # fmt: skip
    vectors = cache.embedder.embed(["first", "second", "third"])
    for text, vector in zip(["first", "second", "third"], vectors, strict=True):
        cache.add("scope", text, vector, completion, 60.0)
    assert not cache.knows("scope", "first") and cache.knows("scope", "third")
    cache.add("scope", "first", vectors[0], completion, 60.0)
    assert cache.knows("scope", "first") and cache.stats.stored == 4


def test_a_stored_answer_keeps_a_few_objects_not_a_model_tree():
    cache = SemanticCache(default_embedder(), max_entries=100)
    vectors = np.eye(64, 384, dtype=np.float32)
    gc.collect()
    before = len(gc.get_objects())
    for i, vector in enumerate(vectors):
        answer = {"role": "assistant", "content": f"answer {i}"}
        completion = ChatCompletion.model_validate(
            {"id": f"c{i}", "object": "chat.completion", "created": 0, "model": MODEL,
             "choices": [{"index": 0, "message": answer, "finish_reason": "stop"}],
             "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}
        )  # fmt: skip
        cache.add("scope", f"question {i}", vector, completion, 60.0)
    gc.collect()
    assert (len(gc.get_objects()) - before) / len(vectors) <= 4  # a kept ChatCompletion is ~15 objects


@pytest.fixture
async def semantic_chain(sim):
    async with OpenAITransport(Endpoint(sim.base_url)) as transport:
        cache = SemanticCache(default_embedder())
        counting = Counting()
        yield Chain(transport, [cache, counting]), cache, counting


def ask(text, **extra):
    controls = extra.pop("controls", None)
    return ChatRequest.create(MODEL, text, controls=controls, **{"max_tokens": 20, "temperature": 0, **extra})


async def test_a_paraphrase_is_served_from_the_semantic_cache(semantic_chain):
    chain, cache, upstream = semantic_chain
    first = await chain(ask("What is the capital of Australia?"))
    second = await chain(ask("Hi! What's the capital of Australia, please?"))
    assert upstream.calls == 1 and cache.stats.hits == 1
    assert second.choices[0].message.content == first.choices[0].message.content


async def test_a_hard_negative_is_vetoed_and_goes_upstream(semantic_chain):
    chain, cache, upstream = semantic_chain
    await chain(ask("How do I convert Celsius to Fahrenheit?"))
    await chain(ask("How do I convert Fahrenheit to Celsius?"))
    assert upstream.calls == 2 and cache.stats.hits == 0
    assert cache.stats.vetoed["swapped_roles"] == 1


async def test_semantic_hits_stay_within_model_parameters_and_tenant(semantic_chain):
    chain, _, upstream = semantic_chain
    await chain(ask("What is the capital of Australia?"))
    await chain(ask("Hi! What's the capital of Australia, please?", max_tokens=5))
    await chain(ask("Hi! What's the capital of Australia, please?").replace(model="gpt-4o-mini"))
    await chain(ask("Hi! What's the capital of Australia, please?", controls={"tenant": "other"}))
    assert upstream.calls == 4


async def test_a_text_seen_recently_is_embedded_once(semantic_chain):
    chain, cache, _upstream = semantic_chain
    await chain(ask("What is the capital of Australia?"))
    await chain(ask("What is the capital of Australia?", max_tokens=5))  # another scope, the same text
    await chain(ask("Hi! What's the capital of Australia, please?"))
    assert cache.stats.embeds == 2 and cache.stats.embeds_reused == 1


async def test_the_same_question_answered_twice_is_stored_once(semantic_chain):
    chain, cache, upstream = semantic_chain
    await chain(ask("What is the capital of Australia?", controls={"no_cache": True}))
    await chain(ask("What is the capital of Australia?", controls={"no_cache": True}))
    assert upstream.calls == 2 and len(cache) == 1 and cache.stats.stored == 1


async def test_streams_and_sampled_requests_bypass_the_semantic_cache(semantic_chain):
    chain, cache, _upstream = semantic_chain
    stream = await chain(ask("Tell me a story", stream=True))
    await stream.text()
    await chain(ask("Tell me a story", temperature=0.7))
    assert cache.stats.bypassed == 2 and len(cache) == 0


def test_kinds_are_balanced_enough_to_measure(evaluation):
    per_kind = evaluation["heldout_per_kind"]
    assert Counter({k: v["pairs"] for k, v in per_kind.items()})["paraphrase"] >= 100
    assert all(v["pairs"] >= 20 for k, v in per_kind.items() if k in HELDOUT_KINDS)
    json.dumps(per_kind)  # plain data (the notebook writes it to its results)
