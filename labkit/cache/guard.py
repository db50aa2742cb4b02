"""A guard against the known failure of semantic caches: near-identical sentences that ask something else.

Sentence embeddings place "convert Celsius to Fahrenheit" and "convert Fahrenheit to Celsius" at cosine 0.995:
they encode *topic*, not the roles, numbers, names and polarity that decide the answer. A threshold alone
cannot separate them (a prototype measured 30% false hits at 0.95: docs/ARCHITECTURE.md). This guard vetoes
a candidate hit when the two texts differ in one of those respects, with simple lexical rules that are easy to
read and to audit:

- `other_number`: the numbers differ (digits, number words, ordinals, Roman numerals from II up);
- `negation`: one is negated and the other not (not, no, never, n't, without ...);
- `antonym`: a word on one side has its opposite on the other (from a small lexicon);
- `swapped_roles`: the same content words in another order (not a mere rotation), or a directional word
  (to, from, than, for ...) followed by a word that the other side has after another one;
- `other_name`: each side names an entity (a capitalised word inside the sentence) that the other does not;
- `minimal_pair`: the wording is the same but for one replaced word or two (a different name, object or
  qualifier), unless the replacement is a known synonym.

It costs recall (some true paraphrases are vetoed) and it is English-only; the lesson measures both on
labelled pairs. The rules were written alongside the labelled set, so the held-out figures say how well they
generalise to new questions of the same kinds, not to every kind of user text. A cross-encoder or an LLM judge
is the stronger (and slower) alternative in production.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections import Counter
from functools import lru_cache

_TOKEN = re.compile(r"\d+(?:[.,]\d+)*%?|[A-Za-z]+(?:'[A-Za-z]+)?|[^\sA-Za-z\d]")

NUMBER_WORDS = {
    "zero": 0, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
    "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15, "sixteen": 16,
    "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50,
    "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90, "hundred": 100, "thousand": 1000,
    "million": 1_000_000, "billion": 1_000_000_000, "half": 0.5, "twice": 2, "double": 2, "triple": 3,
    "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7, "eighth": 8, "ninth": 9,
    "tenth": 10, "dozen": 12,
}  # fmt: skip
#: "one", "a" and "first" are left out on purpose: "a pound" and "one pound" ask the same.
ROMAN = {"II": 2, "III": 3, "IV": 4, "V": 5, "VI": 6, "VII": 7, "VIII": 8, "IX": 9, "X": 10}
NEGATIONS = frozenset(
    [
        "not",
        "no",
        "never",
        "none",
        "nobody",
        "nothing",
        "neither",
        "nor",
        "without",
        "cannot",
        "can't",
        "don't",
        "doesn't",
        "didn't",
        "isn't",
        "aren't",
        "wasn't",
        "weren't",
        "won't",
        "wouldn't",
        "shouldn't",
        "couldn't",
        "haven't",
        "hasn't",
        "hadn't",
        "mustn't",
    ]
)
#: Opposite classes: a word of one class on one side and of the other on the other side is a veto.
_OPPOSITES = [
    ("increase increases increased raise raises rise rises higher up more grow boost", "decrease decreases "
     "decreased lower lowers fall falls drop drops reduce reduces down less shrink"),
    ("hot warm heat heating", "cold cool cooling freezing"), ("buy purchase", "sell"), ("before", "after within"),
    ("soft runny", "hard"), ("start begin", "end finish"), ("fast faster fastest quick quicker", "slow slower slowest"),
    ("big bigger biggest large larger largest", "small smaller smallest"), ("best better", "worst worse"),
    ("cheap cheaper cheapest", "expensive dearer"), ("win won beat", "lose lost"),
    ("accept accepted", "reject rejected declined decline"), ("connect", "disconnect"), ("read load", "write save"),
    ("legal", "illegal"), ("safe", "dangerous unsafe"), ("rational", "irrational"), ("countable", "uncountable"),
    ("pass", "fail"), ("upgrade", "downgrade"), ("tall taller tallest long longer", "short shorter shortest"),
    ("absorb absorbs take", "release releases emit"), ("boil boiling", "freeze freezing"),
    ("fridge refrigerator refrigerated", "freezer frozen"), ("raw", "cooked baked"), ("min minimum", "max maximum"),
    ("add", "remove"), ("import", "export"), ("open", "close"), ("enable", "disable"), ("encrypt", "decrypt"),
    ("upload", "download"), ("push", "pull"), ("true", "false"), ("most", "least"), ("first", "last"),
    ("early earlier", "late later"), ("inside", "outside"), ("deficiency lack", "overdose excess"),
    ("last longer", "drain"),
]  # fmt: skip
ANTONYMS: dict[str, frozenset[str]] = {}
for _left, _right in _OPPOSITES:
    for _word in _left.split():
        ANTONYMS[_word] = ANTONYMS.get(_word, frozenset()) | frozenset(_right.split())
    for _word in _right.split():
        ANTONYMS[_word] = ANTONYMS.get(_word, frozenset()) | frozenset(_left.split())
#: Words that may replace each other in a paraphrase (for the minimal-pair rule).
SYNONYMS = [
    {"quickest", "fastest"}, {"quick", "fast"}, {"car", "automobile"}, {"big", "large"}, {"bigger", "larger"},
    {"biggest", "largest"}, {"buy", "purchase"}, {"house", "home"}, {"pavement", "sidewalk"},
    {"shipping", "delivery"}, {"ill", "sick"}, {"colour", "color"}, {"okay", "ok", "fine"}, {"km", "kilometers"},
    {"usd", "dollars"}, {"begin", "start"}, {"end", "finish"}, {"mean", "average"}, {"can", "may", "could"},
    {"do", "should"}, {"what", "which"}, {"how", "what"}, {"use", "utilize"}, {"cost", "price"},
]  # fmt: skip
ALIASES = {"usa": "united_states", "us": "united_states", "uk": "united_kingdom", "britain": "united_kingdom",
           "postgres": "postgresql"}  # fmt: skip
STOPWORDS = frozenset(
    [
        "a",
        "an",
        "the",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "being",
        "am",
        "do",
        "does",
        "did",
        "doing",
        "have",
        "has",
        "had",
        "having",
        "i",
        "me",
        "my",
        "we",
        "our",
        "you",
        "your",
        "he",
        "she",
        "it",
        "its",
        "they",
        "them",
        "their",
        "this",
        "that",
        "these",
        "those",
        "what",
        "which",
        "who",
        "whom",
        "whose",
        "how",
        "why",
        "when",
        "where",
        "can",
        "could",
        "should",
        "would",
        "will",
        "shall",
        "may",
        "might",
        "must",
        "to",
        "of",
        "in",
        "on",
        "at",
        "by",
        "for",
        "from",
        "with",
        "about",
        "as",
        "into",
        "than",
        "then",
        "so",
        "if",
        "or",
        "and",
        "but",
        "also",
        "just",
        "only",
        "very",
        "too",
        "s",
        "there",
        "here",
        "any",
        "some",
        "each",
        "much",
        "many",
        "get",
        "got",
        "make",
        "made",
        "way",
        "please",
        "tell",
    ]
)
_DIRECTIONAL = {
    "to": "to",
    "into": "to",
    "onto": "to",
    "from": "from",
    "than": "than",
    "for": "for",
    "of": "of",
    "in": "in",
    "by": "by",
    "before": "before",
    "after": "after",
    "over": "over",
    "against": "against",
}


@dataclasses.dataclass(frozen=True)
class Analysis:
    """What the rules look at in one text."""

    words: tuple[str, ...]  # lower-case word tokens, possessives stripped, aliases applied
    numbers: Counter[float]
    negated: bool
    entities: frozenset[str]
    content: tuple[str, ...]  # words that are not stopwords, numbers or negations
    stems: tuple[str, ...]  # the content words, crudely singular ("pounds" -> "pound")
    bound: tuple[tuple[float, str], ...]  # each number and the word after it ("10 miles" -> (10, "mile"))
    possessors: frozenset[str]  # words marked with 's ("an employee's email" -> "employee")
    passive: bool  # "was betrayed by": the agent comes last


def _number(token: str) -> float | None:
    cleaned = token.rstrip("%").replace(",", "")
    try:
        return float(cleaned)
    except ValueError:
        return NUMBER_WORDS.get(token.lower()) if token.lower() in NUMBER_WORDS else ROMAN.get(token)


@lru_cache(maxsize=65_536)
def analyse(text: str) -> Analysis:
    """Tokenise and extract numbers, negation, entities and content words (cached: texts repeat)."""
    text = re.sub(r"\bone and a half\b", "1.5", text, flags=re.IGNORECASE)
    tokens = [t for t in _TOKEN.findall(text)]
    words: list[str] = []
    numbers: Counter[float] = Counter()
    entities: set[str] = set()
    negations = 0
    possessors: set[str] = set()
    sentence_start = True
    for token in tokens:
        if not (token[0].isalnum()):
            sentence_start = sentence_start or token in ".!?:;\"'"
            continue
        if token.lower().endswith("n't") or token.lower() in NEGATIONS:
            negations += 1
            sentence_start = False
            continue
        value = _number(token)
        if value is not None:
            numbers[value] += 1
            sentence_start = False
            continue
        word = token.lower()
        if word.endswith("'s"):
            word = word[:-2]
            possessors.add(_stem(word))
        word = ALIASES.get(word, word)
        if (token[0].isupper() and not sentence_start and token not in ("I",)) or (token.isupper() and len(token) > 1):
            entities.add(_stem(word))
        words.append(word)
        sentence_start = False
    content = tuple(w for w in words if w not in STOPWORDS)
    bound: list[tuple[float, str]] = []
    for i, token in enumerate(tokens):
        value = _number(token)
        if value is None:
            continue
        unit = next((t.lower() for t in tokens[i + 1 :] if t[0].isalpha() and t.lower() not in STOPWORDS), None)
        if unit is not None:
            bound.append((value, _stem(ALIASES.get(unit, unit))))
    for i, word in enumerate(words[:-2]):  # "how many ounces": the quantity asked for is a role too
        if word == "how" and words[i + 1] in ("many", "much"):
            unit = next((w for w in words[i + 2 :] if w not in STOPWORDS), None)
            if unit is not None:
                bound.append((-1.0, _stem(unit)))
    passive = bool(
        re.search(r"\b(?:was|were|is|are|been|be|being|get|got)\s+(?:\w+\s+)?\w+(?:ed|en|wn)\s+by\b", text, re.I)
    )
    return Analysis(
        tuple(words),
        numbers,
        negations % 2 == 1,
        frozenset(entities),
        content,
        tuple(_stem(w) for w in content),
        tuple(bound),
        frozenset(possessors),
        passive,
    )


def _stem(word: str) -> str:
    """A crude singular: enough to see that "pounds" and "pound" are one unit."""
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def _number_order(text: str) -> list[float]:
    return [v for t in _TOKEN.findall(text) if (v := _number(t)) is not None]


def _synonyms(a: str, b: str) -> bool:
    return any(a in group and b in group for group in SYNONYMS)


def _is_rotation(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    return len(a) == len(b) and any(a[i:] + a[:i] == b for i in range(len(a)))


def _directional_swap(a: Analysis, b: Analysis) -> bool:
    """A directional word (to, from, than ...) whose object on one side is, on the other, elsewhere."""

    def objects(words: tuple[str, ...]) -> dict[str, set[str]]:
        found: dict[str, set[str]] = {}
        for i, word in enumerate(words[:-1]):
            if word in _DIRECTIONAL:
                following = next((w for w in words[i + 1 :] if w not in STOPWORDS), None)
                if following is not None:
                    found.setdefault(_DIRECTIONAL[word], set()).add(_stem(following))
        return found

    oa, ob = objects(a.words), objects(b.words)
    for p in oa.keys() & ob.keys():
        for x in oa[p] - ob[p]:
            for y in ob[p] - oa[p]:
                if x in b.stems and y in a.stems:
                    return True
    return False


def _bound_swap(a: Analysis, b: Analysis) -> bool:
    """The same number bound to another unit that the other side also names ("10 miles" / "10 kilometers")."""
    units_a, units_b = dict(a.bound), dict(b.bound)
    return any(
        units_a[n] != units_b[n] and units_a[n] in b.stems and units_b[n] in a.stems
        for n in units_a.keys() & units_b.keys()
    )


def _possessor_swap(a: Analysis, b: Analysis) -> bool:
    """The owner changes places: "the manager reads the employee's email" / "the employee reads the manager's"."""
    only_a, only_b = a.possessors - b.possessors, b.possessors - a.possessors
    return any(x in b.stems for x in only_a) and any(y in a.stems for y in only_b)


def _entity_swap(a: Analysis, b: Analysis, entities_only: bool = True) -> bool:
    """Two names in the opposite order, with a shared word between them on both sides ("X beat Y" / "Y beat X")."""
    shared = [w for w in a.stems if w in b.stems]
    names = [w for w in dict.fromkeys(shared) if (w in a.entities and w in b.entities) or not entities_only]
    pos_a = {w: a.stems.index(w) for w in shared}
    pos_b = {w: b.stems.index(w) for w in shared}
    flipped = a.passive != b.passive  # active vs passive voice: the same roles appear in the opposite order
    for i, x in enumerate(names):
        for y in names[i + 1 :]:
            if flipped != (
                (pos_a[x] - pos_a[y]) * (pos_b[x] - pos_b[y]) < 0
                and abs(pos_a[x] - pos_a[y]) > 1
                and abs(pos_b[x] - pos_b[y]) > 1
            ):
                return True
    return False


def _minimal_pair(a: Analysis, b: Analysis) -> bool:
    matcher = difflib.SequenceMatcher(a=a.words, b=b.words, autojunk=False)
    changes = [op for op in matcher.get_opcodes() if op[0] != "equal"]
    if len(changes) != 1 or changes[0][0] != "replace":
        return False
    _, i1, i2, j1, j2 = changes[0]
    if i2 - i1 > 2 or j2 - j1 > 2:
        return False
    old, new = a.words[i1:i2], b.words[j1:j2]
    if len(old) == len(new) and all(x == y or _synonyms(x, y) for x, y in zip(old, new, strict=True)):
        return False
    return any(w not in STOPWORDS for w in (*old, *new))


def veto(text_a: str, text_b: str) -> str | None:
    """The reason two similar texts must not share an answer, or None if the guard lets the hit through."""
    a, b = analyse(text_a), analyse(text_b)
    if a.numbers != b.numbers:
        return "other_number"
    if len(a.numbers) > 1 and _number_order(text_a) != _number_order(text_b):
        return "swapped_roles"
    if a.negated != b.negated:
        return "negation"
    only_a, only_b = set(a.words) - set(b.words), set(b.words) - set(a.words)
    if any(ANTONYMS.get(w, frozenset()) & only_b for w in only_a):
        return "antonym"
    if Counter(a.stems) == Counter(b.stems) and a.stems != b.stems and not _is_rotation(a.stems, b.stems):
        return "swapped_roles"
    if _directional_swap(a, b) or _bound_swap(a, b) or _entity_swap(a, b) or _possessor_swap(a, b):
        return "swapped_roles"
    if (a.entities - b.entities) and (b.entities - a.entities):
        return "other_name"
    if _minimal_pair(a, b):
        return "minimal_pair"
    return None


__all__ = ["Analysis", "analyse", "veto"]
