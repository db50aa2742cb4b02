"""The simulated service answers in sentences of data/answers.jsonl on the prompt's topic, with exact token counts.

The HTTP tests ask the session's simulated service (profile "fast": answers of about 20 tokens, at most 200) with
raw httpx; the corpus is read here from the file itself, so the tests do not trust labkit's parser of it.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from labkit.sim.config import load_profiles
from labkit.sim.text import load_corpus, pool_for, topic_of
from labkit.tokens import count_text, encoding_for

DATA = Path(__file__).resolve().parents[1] / "data"
TOPICS = {row["topic"]: row for row in map(json.loads, (DATA / "answers.jsonl").read_text("utf-8").splitlines())}
MODEL = "gpt-4o"
LAB_PROMPTS = [json.loads(line)["prompt"] for line in (DATA / "prompts.jsonl").read_text("utf-8").splitlines()]


def chain_of(topic: str) -> list[str]:
    """The topic, its parent, ... up to a general set: the topics an answer may draw sentences from."""
    out = [topic]
    while TOPICS[out[-1]]["parent"] is not None:
        out.append(TOPICS[out[-1]]["parent"])
    return out


def split_sentences(text: str, topics: list[str]) -> tuple[list[str], str]:
    """`text` as whole sentences of `topics`, in order, plus a trailing part that is no whole sentence ("" if
    none). English sentences are joined by one space, Chinese ones directly."""
    sentences = {s for t in topics for s in TOPICS[t]["sentences"]}
    sep = "" if TOPICS[topics[0]]["lang"] == "zh" else " "
    whole: list[str] = []
    pos = 0
    while pos < len(text):
        found = max(
            (s for s in sentences if text.startswith(s, pos) and text[pos + len(s) : pos + len(s) + 1] in ("", sep)),
            key=len,
            default=None,
        )
        if found is None:
            return whole, text[pos:]
        whole.append(found)
        pos += len(found) + len(sep)
    return whole, ""


@pytest.fixture(scope="module")
def client(sim) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim.base_url, headers={"Authorization": "Bearer sk-text"}, timeout=30) as client:
        yield client


def ask(client: httpx.Client, prompt: str, **params: Any) -> dict[str, Any]:
    body = {"model": MODEL, "messages": [{"role": "user", "content": prompt}], **params}
    response = client.post("/chat/completions", json=body)
    response.raise_for_status()
    return response.json()


def content(answer: dict[str, Any]) -> str:
    return answer["choices"][0]["message"]["content"]


def test_an_answer_to_a_lab_prompt_is_whole_sentences_of_its_topic_cut_only_at_the_end(client):
    topics = chain_of("backoff")
    for seed in range(8):
        answer = ask(client, "Explain exponential backoff with jitter.", seed=seed, max_tokens=40)
        text = content(answer)
        whole, tail = split_sentences(text, topics)
        assert any(s.startswith(tail) for t in topics for s in TOPICS[t]["sentences"]), text
        opening = whole[0] if whole else tail
        assert any(s.startswith(opening) for s in TOPICS["backoff"]["sentences"]), text  # opens on the topic


def test_an_answer_that_ends_by_itself_ends_on_a_sentence_boundary_in_most_cases(client):
    ended = []
    for seed in range(20):
        answer = ask(client, "Describe how a Bloom filter works.", seed=seed)
        assert answer["choices"][0]["finish_reason"] == "stop"
        _, tail = split_sentences(content(answer), chain_of("bloom"))
        ended.append(tail == "")
    assert sum(ended) >= len(ended) // 2, ended


def test_completion_tokens_equal_the_tokenizer_count_of_the_text(client):
    for prompt in [*LAB_PROMPTS[::4], "请用三句话解释什么是连接池。", "Question number 7?"]:
        for max_tokens in (3, 17, 200):
            answer = ask(client, prompt, max_tokens=max_tokens, temperature=0)
            assert answer["usage"]["completion_tokens"] == count_text(content(answer), MODEL), (prompt, max_tokens)


def test_max_tokens_cuts_the_answer_at_exactly_that_many_tokens_with_finish_reason_length(client):
    answer = ask(client, "Write a long, detailed essay about the history of computing.", max_tokens=2, temperature=0)
    assert answer["choices"][0]["finish_reason"] == "length"
    assert answer["usage"]["completion_tokens"] == 2 == count_text(content(answer), MODEL)


def test_the_same_seed_and_request_give_the_same_text(client):
    first = ask(client, "Compare Redis and Memcached for caching.", seed=11, temperature=0.9, max_tokens=150)
    again = ask(client, "Compare Redis and Memcached for caching.", seed=11, temperature=0.9, max_tokens=150)
    assert content(first) == content(again)


def chat(client: httpx.Client, messages: list[dict[str, str]], **params: Any) -> dict[str, Any]:
    response = client.post("/chat/completions", json={"model": MODEL, "messages": messages, **params})
    response.raise_for_status()
    return response.json()


def test_a_shorter_context_before_the_same_question_keeps_the_answers_length(client):
    question = {"role": "user", "content": "Explain exponential backoff with jitter."}
    context = "Reference: " + "retries spread out over time when many clients fail together. " * 20
    lengths = set()
    for kept in (1.0, 0.8, 0.6, 0.4, 0.2, 0.1):
        system = {"role": "system", "content": context[: int(len(context) * kept)]}
        lengths.add(chat(client, [system, question], temperature=0)["usage"]["completion_tokens"])
    assert len(lengths) == 1


def test_different_questions_draw_different_answer_lengths(client):
    lengths = {ask(client, f"Question number {i} about caching?", temperature=0)["usage"]["completion_tokens"]
               for i in range(12)}  # fmt: skip
    assert len(lengths) > 1


def test_an_unknown_prompt_gets_the_general_fallback_set(client):
    for seed in range(5):
        text = content(ask(client, f"Question number {seed}?", seed=seed))
        whole, tail = split_sentences(text, ["general"])
        assert whole or tail, text
        assert tail == "" or any(s.startswith(tail) for s in TOPICS["general"]["sentences"]), text


def test_a_chinese_prompt_is_answered_from_chinese_sentences_on_its_topic(client):
    text = content(ask(client, "请用三句话解释什么是连接池。", temperature=0, max_tokens=100))
    whole, tail = split_sentences(text, chain_of("zh_pool"))
    opening = whole[0] if whole else tail
    assert opening and any(s.startswith(opening) for s in TOPICS["zh_pool"]["sentences"]), text
    assert tail == "" or any(s.startswith(tail) for t in chain_of("zh_pool") for s in TOPICS[t]["sentences"])


def test_streamed_chunks_concatenate_to_the_plain_answer_one_chunk_per_token(client):
    prompt = "Explain what Server-Sent Events are and how they differ from WebSockets."
    plain = ask(client, prompt, temperature=0, max_tokens=120)
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": prompt}],
        "temperature": 0,
        "max_tokens": 120,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    pieces: list[str] = []
    usage = None
    with client.stream("POST", "/chat/completions", json=body) as response:
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            usage = chunk.get("usage") or usage
            for choice in chunk["choices"]:
                if choice["delta"].get("content"):
                    pieces.append(choice["delta"]["content"])
    assert "".join(pieces) == content(plain)
    assert usage is not None and len(pieces) == usage["completion_tokens"] == plain["usage"]["completion_tokens"]


# -- the corpus itself (no HTTP: properties of the shipped file under each encoding the profiles use) ----------


def _encodings() -> list[str]:
    """One model per distinct tokenizer among the profiles' models."""
    seen: dict[tuple[int, ...], str] = {}
    for profile in load_profiles().values():
        for model in profile["models"]:
            seen.setdefault(tuple(encoding_for(model).encode("probe 连接池 429")), model)
    return list(seen.values())


@pytest.mark.parametrize("model", _encodings())
def test_every_prefix_of_every_sentence_re_encodes_to_its_own_token_count(model):
    pool = pool_for(model)
    enc = encoding_for(model)
    for variant in (pool._first, pool._next):
        for sentences in variant:
            for seq in sentences:
                for k in range(1, len(seq) + 1):
                    assert len(enc.encode(pool.text(seq[:k]))) == k, pool.text(seq)


@pytest.mark.parametrize("model", _encodings())
def test_sentences_join_at_token_boundaries_so_any_answer_re_encodes_to_its_length(model):
    pool = pool_for(model)
    enc = encoding_for(model)
    rng = random.Random(0)
    for topic in pool.corpus.topics:
        for n in (9, 61, 333, 1500):
            ids = pool.generate(rng, n, topic, whole=True)
            assert len(ids) == n == len(enc.encode(pool.text(ids))), topic.name


def test_every_wording_of_a_paraphrase_group_gets_that_groups_topic():
    corpus = load_corpus()
    aliases = {"g000": "temperature_convert", "g011": "binary_search"}
    for line in (DATA / "paraphrases.jsonl").read_text("utf-8").splitlines():
        row = json.loads(line)
        group = row["group"]
        wordings = [row["a"], row["b"]] if row["label"] == 1 else [row["a"]]
        for wording in wordings:
            name = topic_of(corpus, [{"role": "user", "content": wording}]).name
            assert name.startswith(group + "_") or name == aliases.get(group), (wording, name)


def test_every_lab_prompt_gets_a_topic_of_its_own_not_the_fallback():
    corpus = load_corpus()
    names = [topic_of(corpus, [{"role": "user", "content": p}]).name for p in LAB_PROMPTS]
    assert not {"general", "general_zh"} & set(names)
    assert len(set(names)) == len(LAB_PROMPTS)
