"""Deterministic, readable answer text whose token count is exact.

Answers are composed from whole sentences of `data/answers.jsonl`, a corpus written for this repository: each
topic there (the lab's prompts, the question groups of `data/paraphrases.jsonl`, the lessons' demo prompts) has
keywords, a few sentences and a parent topic whose sentences continue a longer answer (a domain such as
"cooking", then a general set). The prompt's words choose the topic; a prompt no topic matches gets the general
set (in Chinese for a Chinese prompt). Every sentence is tokenized once per tokenizer when the pool is built, so
an answer is a concatenation of precomputed token tuples cut at the answer's length: `completion_tokens` is the
number of token ids, each streamed chunk carries the text of one real token, and the text re-encodes to that
many tokens (tests/test_sim_text.py checks it for the shipped corpus). Sentence order is drawn from a
`random.Random` the caller seeds, so the same seed and request give the same answer (verified stream resume in
labkit/layers/retry.py relies on it).
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import orjson

from labkit.tokens import encoding_for, message_text

ANSWERS_PATH = Path(__file__).resolve().parents[2] / "data" / "answers.jsonl"
FALLBACK = {"en": "general", "zh": "general_zh"}

_WORD_RE = re.compile(r"[a-z0-9]+")
_CJK_RE = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_SCAN_CHARS = 1500  # of each message: the words that decide a topic are near the start
_SCAN_MESSAGES = 6  # the last user message first, then earlier messages (a system prompt often names the domain)


@dataclass(frozen=True)
class LengthDist:
    """Output length in tokens: lognormal around `median` (sigma 0 means always `median`), clamped."""

    median: float
    sigma: float = 0.0
    min: int = 1
    max: int = 4096

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LengthDist:
        return cls(float(d["median"]), float(d.get("sigma", 0.0)), int(d.get("min", 1)), int(d.get("max", 4096)))

    def sample(self, rng: random.Random) -> int:
        n = self.median if self.sigma <= 0 else math.exp(rng.gauss(math.log(self.median), self.sigma))
        return max(self.min, min(self.max, round(n)))


# -- the corpus (independent of the tokenizer) ---------------------------------------------------------------


@dataclass(frozen=True)
class Topic:
    """One topic of the corpus: its sentences, then its parent's, then the parent's parent's (`chain`)."""

    index: int
    name: str
    lang: str
    chain: tuple[int, ...]  # topic indexes: this topic, its parent, ..., a root (general set)


@dataclass(frozen=True)
class Corpus:
    """The parsed answers file with a keyword index, so choosing a topic costs a few dict lookups."""

    topics: tuple[Topic, ...]
    sentences: tuple[tuple[str, ...], ...]  # by topic index
    words: dict[str, tuple[int, ...]]  # stemmed single-word keyword -> topic indexes
    phrases: dict[str, tuple[tuple[str, int], ...]]  # first word of an English phrase -> (phrase, topic)
    cjk_phrases: tuple[tuple[str, int], ...]  # Chinese keywords, matched as substrings
    by_name: dict[str, int]


def _stem(word: str) -> str:
    """Plural and singular match ("caches" and "cache"); crude, but applied alike to prompts and keywords."""
    return word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word


@lru_cache(maxsize=4)
def load_corpus(path: Path = ANSWERS_PATH) -> Corpus:
    """Read `path` (one topic per line: topic, parent, lang, keywords, sentences); parents must exist."""
    rows = [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
    by_name = {r["topic"]: i for i, r in enumerate(rows)}
    topics: list[Topic] = []
    words: dict[str, list[int]] = {}
    phrases: dict[str, list[tuple[str, int]]] = {}
    cjk: list[tuple[str, int]] = []
    for i, r in enumerate(rows):
        chain = [i]
        parent = r.get("parent")
        while parent is not None:
            j = by_name[parent]  # KeyError: a parent that is not in the file
            if j in chain:
                raise ValueError(f"topic {r['topic']!r}: its parents form a cycle")
            chain.append(j)
            parent = rows[j].get("parent")
        topics.append(Topic(i, r["topic"], r.get("lang", "en"), tuple(chain)))
        for kw in r.get("keywords", ()):
            kw = kw.lower()
            if _CJK_RE.search(kw):
                cjk.append((kw, i))
            elif _WORD_RE.fullmatch(kw):
                words.setdefault(_stem(kw), []).append(i)
            else:
                first = _WORD_RE.search(kw)
                if first is not None:
                    phrases.setdefault(_stem(first.group()), []).append((kw, i))
    for name in FALLBACK.values():
        if name not in by_name:
            raise ValueError(f"{path} has no fallback topic {name!r}")
    return Corpus(
        topics=tuple(topics),
        sentences=tuple(tuple(r["sentences"]) for r in rows),
        words={k: tuple(dict.fromkeys(v)) for k, v in words.items()},
        phrases={k: tuple(v) for k, v in phrases.items()},
        cjk_phrases=tuple(cjk),
        by_name=by_name,
    )


def choose_topic(corpus: Corpus, text: str) -> Topic | None:
    """The topic whose keywords `text` matches best (a phrase counts 2, a word 1; ties go to the more specific
    topic, then to the earlier one in the file), among topics of the text's language; None if none matches."""
    lower = text[:_SCAN_CHARS].lower()
    lang = "zh" if _CJK_RE.search(lower) else "en"
    scores: dict[int, int] = {}
    found = {_stem(w) for w in set(_WORD_RE.findall(lower))}
    for w in found:
        for i in corpus.words.get(w, ()):
            scores[i] = scores.get(i, 0) + 1
        for phrase, i in corpus.phrases.get(w, ()):
            if phrase in lower:
                scores[i] = scores.get(i, 0) + 2
    if lang == "zh":
        for phrase, i in corpus.cjk_phrases:
            if phrase in lower:
                scores[i] = scores.get(i, 0) + 2
    topics = corpus.topics
    best = None
    best_key = (0, 0, 0)
    for i, score in scores.items():
        t = topics[i]
        if t.lang != lang:
            continue
        key = (score, len(t.chain), -i)
        if key > best_key:
            best, best_key = t, key
    return best


def topic_of(corpus: Corpus, messages: Sequence[Mapping[str, Any]]) -> Topic:
    """The topic of a chat request: from its last user message, else from earlier messages (newest first),
    else the general set in the last user message's language."""
    texts: list[str] = []
    last_user = None
    for m in reversed(messages):
        text = message_text(m.get("content"))
        if last_user is None and m.get("role") == "user":
            last_user = text
            texts.insert(0, text)
        else:
            texts.append(text)
    for text in texts[:_SCAN_MESSAGES]:
        topic = choose_topic(corpus, text)
        if topic is not None:
            return topic
    lang = "zh" if last_user and _CJK_RE.search(last_user[:_SCAN_CHARS]) else "en"
    return corpus.topics[corpus.by_name[FALLBACK[lang]]]


# -- the corpus in one tokenizer's tokens ---------------------------------------------------------------------


class TokenPool:
    """The corpus' sentences as token tuples of one tokenizer, with each token's text and JSON precomputed.

    An answer is a list of piece indexes, one per real token; `pieces[i]` is that token's decoded text and
    `json[i]` its JSON string for the streaming hot path. A token that is only part of a UTF-8 character (a rare
    CJK character split into bytes) has the empty text, and the token that completes the character carries the
    whole character, so every chunk is valid text and the chunks still number exactly the tokens."""

    def __init__(self, encoding_model: str, corpus: Corpus | None = None) -> None:
        self._enc = encoding_for(encoding_model)
        self.corpus = corpus or load_corpus()
        self.pieces: list[str] = []
        self.json: list[bytes] = []
        self._index: dict[str, int] = {}
        self._whole: dict[int, int] = {}  # token id -> its piece, for tokens that decode alone
        self._first: list[tuple[tuple[int, ...], ...]] = []  # a sentence that opens the answer
        self._next: list[tuple[tuple[int, ...], ...]] = []  # a sentence after another one
        for topic, sentences in zip(self.corpus.topics, self.corpus.sentences, strict=True):
            sep = "" if topic.lang == "zh" else " "
            self._first.append(tuple(self._tokens(s) for s in sentences))
            self._next.append(tuple(self._tokens(sep + s) for s in sentences) if sep else self._first[-1])
        self.general = self.corpus.topics[self.corpus.by_name[FALLBACK["en"]]]
        # the sentences of each topic's chain by token length, to end an answer on a sentence boundary:
        # [topic][0 after a sentence, 1 opening the answer] -> length -> [(topic, sentence)], nearest level first
        self._by_len: list[tuple[dict[int, list[tuple[int, int]]], ...]] = []
        for topic in self.corpus.topics:
            maps: tuple[dict[int, list[tuple[int, int]]], ...] = ({}, {})
            for t in topic.chain:
                for variant, seqs in enumerate((self._next[t], self._first[t])):
                    for i, seq in enumerate(seqs):
                        maps[variant].setdefault(len(seq), []).append((t, i))
            self._by_len.append(maps)

    def _piece(self, text: str) -> int:
        i = self._index.get(text)
        if i is None:
            i = self._index[text] = len(self.pieces)
            self.pieces.append(text)
            self.json.append(bytes(memoryview(orjson.dumps(text))))  # a copy: orjson's own buffer is ~4 KB
        return i

    def _tokens(self, text: str) -> tuple[int, ...]:
        """`text`'s tokens as piece indexes; a run of tokens that only decodes together is grouped (see above)."""
        out: list[int] = []
        group: list[int] = []
        whole = self._whole
        for tok in self._enc.encode(text):
            if not group:
                i = whole.get(tok)
                if i is not None:  # a token seen before as a whole piece: most of them
                    out.append(i)
                    continue
            group.append(tok)
            try:
                piece = self._enc.decode(group)
            except ValueError:  # part of a multi-byte character: wait for the rest
                continue
            if "\ufffd" in piece:  # a decoder that replaces partial bytes instead of raising
                continue
            out.extend(self._piece("") for _ in group[1:])
            out.append(self._piece(piece))
            if len(group) == 1:
                whole[tok] = out[-1]
            group = []
        if group:  # cannot happen for valid UTF-8 input
            raise ValueError(f"text does not tokenize into whole characters: {text!r}")
        return tuple(out)

    def topic_for(self, messages: Sequence[Mapping[str, Any]]) -> Topic:
        """The corpus topic a request's answer is drawn from."""
        return topic_of(self.corpus, messages)

    def topic_words(self, messages: Sequence[Mapping[str, Any]]) -> Topic:
        """The name labkit.sim.chat calls: the request's topic (`topic_for`)."""
        return topic_of(self.corpus, messages)

    def generate(self, rng: random.Random, n: int, topic: Topic | None = None, *, whole: bool = False) -> list[int]:
        """`n` piece indexes: the sentences of `topic` in the order written (its first one answers the question),
        then its parents' sentences in an order drawn from `rng` (a general set's own sentences too), all
        repeated if the answer is longer.

        The sentence that does not fit is cut at `n` tokens, as `max_tokens` cuts a real answer. With `whole`
        (the answer ends by itself, finish_reason "stop") the answer ends on a sentence boundary instead when a
        sentence of the chain has exactly the tokens left, or replaces the last one exactly; else it is cut."""
        if n <= 0:
            return []
        chain = (topic or self.general).chain
        first, nxt = self._first, self._next
        out: list[int] = []
        last = 0  # where the last whole sentence starts in `out`
        used: set[tuple[int, int]] = set()  # sentences in `out`, not repeated by a whole ending
        while True:
            for level, t in enumerate(chain):
                order = list(range(len(nxt[t])))
                if level or len(chain) == 1:  # a root (the general set) answers nothing first: shuffle it too
                    rng.shuffle(order)
                for i in order:
                    seq = nxt[t][i] if out else first[t][i]
                    if len(out) + len(seq) > n and whole:
                        if self._end_exactly(rng, chain, out, last, n, used):
                            return out
                        whole = False
                    last = len(out)
                    out.extend(seq)
                    used.add((t, i))
                    if len(out) >= n:
                        del out[n:]
                        return out

    def _end_exactly(
        self, rng: random.Random, chain: tuple[int, ...], out: list[int], last: int, n: int, used: set[tuple[int, int]]
    ) -> bool:
        """Fill `out` to exactly `n` tokens with one or two sentences of `chain` (preferably not `used` yet), after
        its last sentence or in its place; False (and `out` unchanged) if no sentence or pair has that length."""
        by_len = self._by_len[chain[0]]
        for avoid, start in [
            (avoid, start) for avoid in (used, set()) for start in ((len(out), last) if out else (0,))
        ]:
            need = n - start
            opening = by_len[start == 0]
            picks: list[tuple[int, int]] = []
            own = chain[0] if start == 0 else None  # the opening sentence stays one of the topic's own
            one = _nearest([c for c in opening.get(need, ()) if c not in avoid and own in (None, c[0])])
            if one:
                picks = [rng.choice(one)]
            else:
                for length, heads in opening.items():
                    tails = _nearest([c for c in by_len[0].get(need - length, ()) if c not in avoid])
                    heads = _nearest([c for c in heads if c not in avoid and own in (None, c[0])])
                    if tails and heads:
                        head = rng.choice(heads)
                        tail = rng.choice(tails)
                        if tail != head:
                            picks = [head, tail]
                            break
            if picks:
                del out[start:]
                for k, (t, i) in enumerate(picks):
                    out.extend(self._first[t][i] if start == 0 and k == 0 else self._next[t][i])
                return True
        return False

    def text(self, ids: Sequence[int]) -> str:
        pieces = self.pieces
        return "".join(pieces[i] for i in ids)


_PROBE = "Tokenizer probe: caching, streaming, 429 errors and 连接池."


_POOLS: dict[tuple[int, ...], TokenPool] = {}  # by encoding: models whose tokenizers agree share one pool


def _nearest(candidates: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The candidates of the nearest level of a chain (they are listed nearest level first)."""
    return [c for c in candidates if c[0] == candidates[0][0]] if candidates else candidates


@lru_cache(maxsize=32)
def pool_for(model: str) -> TokenPool:
    """The token pool of `model`'s tokenizer, built once per encoding (every model of data/profiles.json is
    o200k_base, so a service builds one pool however many models it serves)."""
    key = tuple(encoding_for(model).encode(_PROBE))
    pool = _POOLS.get(key)
    if pool is None:
        pool = _POOLS[key] = TokenPool(model)
    return pool


def request_fingerprint(model: str, messages: Any, max_tokens: int | None, seed: int | None) -> bytes:
    """Bytes that identify a request for determinism: equal requests give equal answers at temperature 0."""
    return orjson.dumps([model, messages, max_tokens, seed], option=orjson.OPT_SORT_KEYS)
