"""Deterministic answer text whose token count is exact.

The answer is built from pieces that are each exactly one token of the model's tokenizer (a common
English word with its leading space, or a punctuation mark), so `completion_tokens` is the number of
pieces and each streamed chunk carries one real token. Topic words from the prompt are mixed in so the
answers read as related to the question. Everything is drawn from a `random.Random` the caller seeds,
so the same seed and request give the same answer.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import orjson

from labkit.tokens import encoding_for, message_text

_WORD_LIST = """
the a an of to in for on with by from as at about into over after before between through under is
are was were be been being has have had do does can could should would may might will must this
that these those it its their our your his her they we you he she one two three many most more less
some each every other such same new first last next best good high low large small fast slow simple
clear important main common useful likely possible different similar early recent data model system
server client request response time token tokens cache memory network latency throughput stream
streaming batch batches queue limit limits rate error errors retry value result results answer
question example case cases step steps way part point number order level cost price user users
service services process work design test tests code file files call calls page pages text word
words list table query queries report value values change changes problem problems idea method
approach reason reasons effect effects use uses need needs run runs make makes take takes give
gives show shows find finds keep keeps help helps start starts send sends read reads write also
only just even still then when while because since so but and or not if than very much well often
usually first second third finally however therefore instead overall simply quickly directly
important typically generally especially rather fairly quite enough across within without around
capital city country world history science language people place area power energy water light
computer software hardware application program function variable input output option options
performance efficient reliable stable robust careful measure measures measured average median
"""
_WORDS = _WORD_LIST.split()

_STARTERS = ["The", "This", "In", "Yes", "Here", "To", "When", "It", "For", "Most", "A", "Each"]
_STOP = set(_WORDS) | {"what", "which", "please", "answer", "briefly", "explain", "tell", "there", "here"}
_WORD_RE = re.compile(r"[A-Za-z]{4,14}")
_MAX_POOL = 20_000


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


class TokenPool:
    """Single-token pieces of one tokenizer, with their JSON encodings precomputed for the hot path."""

    def __init__(self, encoding_model: str) -> None:
        self._enc = encoding_for(encoding_model)
        self.pieces: list[str] = []
        self.json: list[bytes] = []
        self._index: dict[str, int] = {}
        self.starters = [i for w in _STARTERS if (i := self._add(w)) is not None]
        self.lower = [i for w in _WORDS if (i := self._add(" " + w)) is not None]
        self.upper = [i for w in _WORDS if (i := self._add(" " + w.capitalize())) is not None]
        self.period = self._add(".")
        self.comma = self._add(",")
        assert self.starters and self.lower and self.upper and self.period is not None and self.comma is not None
        self._build_corpus()

    def _add(self, piece: str) -> int | None:
        """Index of `piece` in the pool if it is exactly one token (added on first sight), else None."""
        i = self._index.get(piece)
        if i is not None:
            return i
        if len(self.pieces) >= _MAX_POOL or len(self._enc.encode(piece)) != 1:
            return None
        i = len(self.pieces)
        self.pieces.append(piece)
        self.json.append(orjson.dumps(piece))
        self._index[piece] = i
        return i

    def topic_words(self, messages: Sequence[Mapping[str, Any]], limit: int = 8) -> list[int]:
        """Up to `limit` single-token words of the last user message, so answers echo the question."""
        text = ""
        for m in reversed(messages):
            if m.get("role") == "user":
                text = message_text(m.get("content"))
                break
        seen: list[int] = []
        for w in _WORD_RE.findall(text[:4000]):
            lw = w.lower()
            if lw in _STOP:
                continue
            i = self._add(" " + lw)
            if i is not None and i not in seen:
                seen.append(i)
                if len(seen) >= limit:
                    break
        return seen

    def _build_corpus(self, size: int = 50_000) -> None:
        """A long fixed text (sentences: capitalised start, 5-14 words, commas, a full stop) that answers
        are cut from, so an answer costs a slice instead of a random draw per token."""
        rng = random.Random(0x5EED)
        out: list[int] = []
        starts: list[int] = []
        while len(out) < size:
            starts.append(len(out))
            out.append(rng.choice(self.upper if out else self.starters))
            for _ in range(rng.randint(5, 14)):
                if rng.random() > 0.93 and out[-1] != self.comma:
                    out.append(self.comma)  # type: ignore[arg-type]
                out.append(rng.choice(self.lower))
            out.append(self.period)  # type: ignore[arg-type]
        self._corpus = out
        self._starts = starts
        self._is_lower = set(self.lower)

    def generate(self, rng: random.Random, n: int, topic: Sequence[int] = ()) -> list[int]:
        """`n` piece indices of sentence-like text starting at a random sentence, with about one word in
        eight replaced by a topic word of the prompt; it ends with a full stop."""
        corpus = self._corpus
        start = self._starts[rng.randrange(len(self._starts) // 2)]  # the second half is spare room
        if start + n <= len(corpus):
            out = corpus[start : start + n]
        else:  # longer than the corpus: repeat it
            out = (corpus[start:] + corpus * (n // len(corpus) + 1))[:n]
        if topic and n > 2:
            is_lower, randrange, choice = self._is_lower, rng.randrange, rng.choice
            for _ in range(n // 8):
                i = randrange(1, n)
                if out[i] in is_lower:
                    out[i] = choice(topic)
        out[0] = rng.choice(self.starters)  # the corpus' sentences start with a space: the answer does not
        if n > 1:
            out[-1] = self.period  # type: ignore[call-overload]
        return out

    def text(self, ids: Sequence[int]) -> str:
        pieces = self.pieces
        return "".join(pieces[i] for i in ids)


@lru_cache(maxsize=8)
def pool_for(model: str) -> TokenPool:
    """The token pool of `model`'s tokenizer (cl100k models and o200k models get different pools)."""
    return TokenPool(model)


def request_fingerprint(model: str, messages: Any, max_tokens: int | None, seed: int | None) -> bytes:
    """Bytes that identify a request for determinism: equal requests give equal answers at temperature 0."""
    return orjson.dumps([model, messages, max_tokens, seed], option=orjson.OPT_SORT_KEYS)
