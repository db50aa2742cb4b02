"""The semantic cache guard's difference-aware check: every content word on each side must be found on the other.

`labkit.cache.guard.veto` runs it after the structural rules: a content word left over on one side only
(`added_words`) or on both (`other_words`), or another question word (`question_word`), refuses the hit
(`unexplained`, `other_question`). It does not depend on knowing the kind of hard negative in advance, so it is
what keeps the cache safe on kinds nobody tuned it on (the figures are in `labkit.cache.guard`). The word tables
it reads are in `labkit.cache.lexicon`.

What "normalising" means decides recall, so it is general-purpose and written down here:

- `normalise` rewrites phrases first, for every rule: "no more than" is "at most" (not a negation), "in what year"
  is "when", "what makes / the reason" is "why", "best way to" is "how to", chat idioms ("quick question", "does
  anyone know", "thanks in advance", "u", "r u", "wanna", letters stretched as in "sooo") go, and Chinese
  variants are unified (如何 / 怎样 / 咋 -> 怎么, 啥 -> 什么, 不同 / 差别 -> 区别, 特别 / 非常 -> 很; 有人知道,
  请教 ... dropped).
- `content_units` then drops stop words, fillers (greetings, hedges, intensifiers, chat words, apostrophe-less
  contractions) and light words ("steps", "tips", "convert", "reason"), stems crudely (plural, -ing, -ed, -ly, a
  final -e), and maps synonym groups to one spelling; groups that share a word are merged, and a group holding a
  stop word is dropped whole ("allowed" is "can", "create" is "make"). Chinese is compared by character, minus
  particles and function characters.
- Leftovers are then paired off as typos or derived forms (`near_typo`): a known derivational ending ("invent" /
  "inventor", not "week" / "weekend"), or, when one of the two words is outside the embedding model's WordPiece
  vocabulary (so probably misspelt), one edit in words of 4+ letters and two in words of 8+ ("recipie",
  "restaraunt"); two known words a letter apart ("plan" / "plant", "mile" / "mole") stay different. A short
  unknown word a letter away from a stop word ("teh", "waht") is that stop word. Two words on one side that make
  one on the other ("work out" / "workout") are one.
"""

from __future__ import annotations

import itertools
import re
from functools import lru_cache

from labkit.cache.lexicon import (
    ALIASES,
    DERIVED,
    DROP,
    DROPPED_UNITS,
    FILLER,
    NEGATIONS,
    PHRASES,
    QUESTION_CLASSES,
    QUESTION_MARKERS,
    STOPWORDS,
    SYNONYM_OF,
    ZH_FILLER,
    number_value,
)

_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?|\d+(?:[.,]\d+)*|[\u4e00-\u9fff]")
CJK = re.compile(r"[\u4e00-\u9fff]")


@lru_cache(maxsize=65_536)
def normalise(text: str) -> str:
    """The text with `PHRASES` rewritten (case kept): what every rule of `veto` reads."""
    text = re.sub(r"([A-Za-z])\1{2,}", r"\1", text.replace("’", "'"))  # "hiii", "sooo": chat lengthening
    for pattern, replacement in PHRASES:
        text = re.sub(pattern, replacement, text, flags=re.IGNORECASE)
    return text


@lru_cache(maxsize=65_536)
def unit_of(token: str) -> str | None:
    """One lower-case word's unit: its stem's spelling in the synonym table, None when it asks nothing."""
    token = ALIASES.get(token.removesuffix("'s"), token.removesuffix("'s"))
    if token in DROP or _misspelt_stopword(token):
        return None
    stem = _light_stem(token)
    unit = SYNONYM_OF.get(token) or _STEMS.get(stem) or stem
    return None if unit in DROP or stem in DROP or unit in DROPPED_UNITS else unit


@lru_cache(maxsize=65_536)
def content_units(text: str) -> tuple[str, ...]:
    """The text's content words, normalised: lower case, crude stems, synonyms to one spelling, fillers and
    stopwords dropped; each Chinese character is a unit (minus particles). Numbers and negation are left to
    the other rules (they are compared whole)."""
    units: list[str] = []
    for token in _WORD.findall(normalise(text).lower()):
        if CJK.match(token):
            if token not in ZH_FILLER:
                units.append(token)
            continue
        if token[0].isdigit() or token in NEGATIONS or token.endswith("n't") or number_value(token) is not None:
            continue
        if (unit := unit_of(token)) is not None:
            units.append(unit)
    return tuple(units)


def _light_stem(word: str) -> str:
    """Plural, -ing, -ed, -ly and a final -e off, so that "cooking", "cooked" and "cook" compare equal."""
    for suffix, keep in (("ies", 3), ("sses", 4), ("ches", 4), ("shes", 4), ("xes", 4)):
        if word.endswith(suffix) and len(word) > keep + 1:
            word = word[: -len(suffix)] + ("y" if suffix == "ies" else suffix[:-2])
            break
    else:
        if word.endswith("s") and not word.endswith(("ss", "us", "is")) and len(word) > 3:
            word = word[:-1]
    for suffix in ("ing", "ed", "ly"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            word = word[: -len(suffix)]
            break
    if word.endswith("e") and len(word) > 3:
        word = word[:-1]
    return SYNONYM_OF.get(word, word)


_STEMS: dict[str, str] = {_light_stem(w): c for w, c in SYNONYM_OF.items()}


@lru_cache(maxsize=1)
def _vocabulary() -> frozenset[str]:
    """The embedding model's whole-word vocabulary (30,522 WordPiece entries): a word outside it is rare or
    misspelt, which is when a one-letter difference is read as a typo rather than as another word."""
    import json

    from labkit.data import data_path

    vocab = json.loads(data_path("all-MiniLM-L6-v2.tokenizer.json").read_text(encoding="utf-8"))["model"]["vocab"]
    return frozenset(w for w in vocab if w.isalpha())


def _misspelt_stopword(word: str) -> bool:
    """A short word the model does not know, a letter away from a stop word or filler ("teh", "waht", "hwo")."""
    if not 3 <= len(word) <= 5 or word in _vocabulary():
        return False
    return any(_edit_distance_one(word, w) for w in DROP if len(w) >= 3 and abs(len(w) - len(word)) <= 1)


def _edit_distance(a: str, b: str) -> int:
    """Optimal string alignment distance: insertions, deletions, replacements and swaps of neighbours."""
    previous2: list[int] = []
    previous = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        current = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = a[i - 1] != b[j - 1]
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                current[j] = min(current[j], previous2[j - 2] + 1)
        previous2, previous = previous, current
    return previous[len(b)]


def _edit_distance_one(a: str, b: str) -> bool:
    """One letter inserted, dropped or replaced, or two neighbours swapped."""
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        return len(diff) == 1 or (
            len(diff) == 2 and diff[1] == diff[0] + 1 and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]]
        )
    short, long_ = (a, b) if len(a) < len(b) else (b, a)
    return any(long_[:i] + long_[i + 1 :] == short for i in range(len(long_)))


def near_typo(a: str, b: str) -> bool:
    """A typo or a derived form: one word the start of the other ("invent" / "inventor", "weigh" / "weight"); one
    letter dropped or two neighbours swapped in words of six letters or more ("pasword", "calcualte"); or, when
    one of the two is not a word the embedding model knows, any one-letter edit in words of four letters or more
    ("recipie", "ibuprofin"), two in words of eight or more ("restaraunt"): two known words a letter apart
    ("cat" / "car", "mile" / "mole") stay different."""
    short, long_ = (a, b) if len(a) <= len(b) else (b, a)
    if len(short) >= 4 and long_.startswith(short) and long_[len(short) :] in DERIVED:
        return True
    if len(short) < 4 or (a[0] != b[0] and len(short) < 6):
        return False
    known = _vocabulary()
    if (a not in known and _light_stem(a) not in known) or (b not in known and _light_stem(b) not in known):
        return _edit_distance(a, b) <= (2 if len(short) >= 8 else 1)
    if len(short) < 6 or a[0] != b[0] or not _edit_distance_one(a, b):
        return False
    return len(a) != len(b) or sum(x != y for x, y in zip(a, b, strict=True)) == 2  # a letter dropped, or a swap


def unexplained(text_a: str, text_b: str) -> tuple[frozenset[str], frozenset[str]]:
    """Content units of each side that the other side does not have (after synonyms, stems and typos)."""
    a, b = set(content_units(text_a)), set(content_units(text_b))
    only_a, only_b = a - b, b - a
    for this, other, units in ((only_a, only_b, content_units(text_a)), (only_b, only_a, content_units(text_b))):
        for x, y in itertools.pairwise(units):  # "work out" / "workout", "note book" / "notebook"
            joined = _light_stem(x + y)
            match = next((z for z in sorted(other) if _light_stem(z) == joined), None)
            if x in this and y in this and match is not None:
                this.difference_update((x, y))
                other.discard(match)
    for x in sorted(only_a):  # sorted: the same pairing in every run (a set's order changes with the hash seed)
        match = next((y for y in sorted(only_b) if near_typo(x, y)), None)
        if match is not None:
            only_a.discard(x)
            only_b.discard(match)
    return frozenset(only_a), frozenset(only_b)


def question_classes(text: str) -> frozenset[str]:
    """Which of why / when / where / who the text asks (how, what and which are left out: they paraphrase)."""
    text = normalise(text)
    words = _WORD.findall(text.lower())
    found = {
        QUESTION_CLASSES[w]
        for i, w in enumerate(words)
        if w in QUESTION_CLASSES and (i == 0 or words[i - 1] in STOPWORDS or words[i - 1] in FILLER)
    }  # "the couple who ..." and "bad when ..." are relative clauses, not questions
    found |= {c for w, c in QUESTION_CLASSES.items() if CJK.match(w) and w in text}
    return frozenset(found)


def _implied_classes(text: str) -> frozenset[str]:
    """The question classes a text asks without a question word ("the reason the sky is blue": why)."""
    return frozenset(c for pattern, c in QUESTION_MARKERS if pattern.search(normalise(text)))


def other_question(a: str, b: str) -> bool:
    """Another question word: one asked on one side and neither asked nor implied on the other."""
    qa, qb = question_classes(a), question_classes(b)
    if qa == qb:
        return False
    return bool((qa - qb) - _implied_classes(b) or (qb - qa) - _implied_classes(a))


__all__ = [
    "CJK",
    "content_units",
    "near_typo",
    "normalise",
    "other_question",
    "question_classes",
    "unexplained",
    "unit_of",
]
