"""The semantic cache's guard: near-identical prompts that ask for another answer, refused on their wording.

Sentence embeddings encode *topic*, not the roles, numbers, names, polarity and constraints that decide an answer:
"convert Celsius to Fahrenheit" and "convert Fahrenheit to Celsius" score 0.995, and a long prompt with one
constraint added scores above 0.9 against the same prompt without it. `veto(stored, incoming)` returns why the
stored answer must not be served, or None. Two layers of rules:

1. Named hard negatives (the earlier rules): `other_number` (digits, number words, ordinals, Roman numerals),
   `negation` (not, no, never, n't, without ...), `antonym` (a small lexicon of opposites), `swapped_roles` (the
   same words in another order, a directional word with another object, names in the opposite order),
   `other_name` (each side names an entity the other does not), `minimal_pair` (one or two words replaced).
2. The difference-aware check, which does not depend on knowing the kind in advance: after normalising both
   prompts, *every content word on each side must be found on the other*. A word left over on one side only
   (`added_words`: a constraint, a qualifier such as "Illinois" or "3.13", a method or tool such as "pressure
   cooker") or on both (`other_words`: a changed slot or constraint), or another question word (`question_word`:
   why / when / where / who, asked on one side and neither asked nor implied on the other), refuses the hit.

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
- Leftovers are then paired off as typos or derived forms (`_near_typo`): a known derivational ending ("invent" /
  "inventor", not "week" / "weekend"), or, when one of the two words is outside the embedding model's WordPiece
  vocabulary (so probably misspelt), one edit in words of 4+ letters and two in words of 8+ ("recipie",
  "restaraunt"); two known words a letter apart ("plan" / "plant", "mile" / "mole") stay different. A short
  unknown word a letter away from a stop word ("teh", "waht") is that stop word. Two words on one side that make
  one on the other ("work out" / "workout") are one.
- Word order: the same words in another order refuse the hit only when two of them swap places around a word that
  stays between them ("kg to pounds" / "pounds to kg"), not when a phrase moves ("in 200 words, explain X" /
  "explain X in 200 words"), or when personal pronouns change role ("can my boss fire me" / "can I fire my boss"),
  and never for a symmetric question ("the difference between X and Y").

Why this design, measured on `data/semantic_pairs.jsonl` by `python -m labkit.cache.evaluation` (its `options`
list and `heldout_curve`; held-out split: kinds and author styles never used in tuning):

- Cosine alone at 0.89 served 280 held-out pairs, 157 of them wrongly (56%). The earlier rules alone (no
  difference check) served 204 at 0.89, 105 wrongly (51%): they catch the kinds they were written for and little
  else. The difference check is what makes the cache safe on kinds nobody tuned it on.
- Round 1 of the difference check (a strict normalisation) served 35 held-out pairs, 1 wrongly (2.9%), with a
  recall of 16% (34 of 215 paraphrases; 31% on tuning): the guard vetoed most true paraphrases for a filler,
  an inflection, a typo or a synonym. Round 2 (the normalisation above, written from the *tuning* split's vetoed
  paraphrases and 126 fresh casual pairs, see `labkit.cache.evaluation`) serves 55 held-out pairs, 1 wrongly
  (1.8%, 95% CI 0.3-9.6%), with a recall of 25% (54 of 215); on tuning 60% (225 of 372) with no wrong answer in
  251 negatives. On the lessons' 642 workload pairs (`python -m labkit.cache.evaluation --pairs
  data/paraphrases.jsonl`, both of its splits; used in neither round's tuning, but run once in round 2, where one
  wrong hit led to the pronoun-role rule) round 2 serves 55 with none wrong (the round-1 guard of commit 669993f:
  36, none wrong). Of the 398 held-out negatives of the six kinds never tuned on it still serves 1 (an antonym
  pair, as in round 1). The target of issue 14 (at most 1% wrong with at least 40% recall) is not
  met: the held-out paraphrases (chatty, typo-prone and chatty-Chinese authors) reword far more than the tuning
  styles do, and a lexical check cannot tell a reworded request from a changed one.
- Explaining leftover words by embeddings does not work: MiniLM puts "landlord" and "tenant", or "Monday" and
  "Friday", closer together than "common" and "typical", so a word-similarity cut-off that admits synonyms admits
  slot changes too. Measuring how far a sentence's embedding moves when its leftover words are removed does not
  separate them either (tried in round 2 on the tuning pairs and on hard negatives written for the purpose, not
  kept: "... in georgia" / "... in georgia the country" and "say hello in japanese" / "... formally" move it less
  than many true rewordings do). Serving only short prompts changes
  nothing once the difference check is on (the `options` list measures it).
- No offline cross-encoder or NLI model ships in a package this lab already installs; one would be the way to
  more recall at the same precision (and costs a model download and tens of milliseconds per candidate).

The cosine threshold matters little once the difference check decides (`heldout_curve` is flat up to 0.85):
`DEFAULT_THRESHOLD` is the lowest of the sweep with no tuning false hit. all-MiniLM-L6-v2 is an English model, so
for Chinese prompts the cosine says nothing and only the lexical check decides.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
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
        # the same without the apostrophe, as people type them in chat
        "dont",
        "doesnt",
        "didnt",
        "cant",
        "isnt",
        "arent",
        "wasnt",
        "werent",
        "wont",
        "wouldnt",
        "shouldnt",
        "couldnt",
        "havent",
        "hasnt",
        "hadnt",
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


_DEGREE = frozenset(["most", "least", "all"])


def _reordered(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """The same words, two of them in the opposite order with a word between them on both sides ("kg to pounds"
    / "pounds to kg", "the referee warned the coach"): a phrase moved as a whole ("in 200 words, explain X" /
    "explain X in 200 words") is not a swap."""
    if Counter(a) != Counter(b) or a == b or _is_rotation(a, b):
        return False
    if {"difference", "区"} & {_unit(w) or w for w in a}:
        return False  # "the difference between X and Y" and "between Y and X" ask the same
    pos_a, pos_b = {w: i for i, w in enumerate(a)}, {w: i for i, w in enumerate(b)}
    words = list(pos_a)
    for i, x in enumerate(words):
        for y in words[i + 1 :]:
            if (pos_a[x] - pos_a[y]) * (pos_b[x] - pos_b[y]) >= 0:
                continue
            between_a = set(a[min(pos_a[x], pos_a[y]) + 1 : max(pos_a[x], pos_a[y])])
            between_b = set(b[min(pos_b[x], pos_b[y]) + 1 : max(pos_b[x], pos_b[y])])
            if between_a & between_b:
                return True
    return False


_SUBJECT = {
    "i": "1",
    "me": "1",
    "we": "1p",
    "us": "1p",
    "he": "3m",
    "him": "3m",
    "she": "3f",
    "they": "3p",
    "them": "3p",
}


def _pronoun_roles(words: tuple[str, ...]) -> Counter[tuple[str, bool]]:
    """Each personal pronoun's person and whether it is the subject form ("I" / "me"): "can my boss fire me" and
    "can I fire my boss" use the same content words with the roles the other way round."""
    return Counter((_SUBJECT[w], w in ("i", "we", "he", "she", "they")) for w in words if w in _SUBJECT)


def _directional_swap(a: Analysis, b: Analysis) -> bool:
    """A directional word (to, from, than ...) whose object on one side is, on the other, elsewhere."""

    def objects(words: tuple[str, ...]) -> dict[str, set[str]]:
        found: dict[str, set[str]] = {}
        for i, word in enumerate(words[:-1]):
            if word in _DIRECTIONAL:
                following = next((w for w in words[i + 1 :] if w not in STOPWORDS and w not in _DEGREE), None)
                if following is not None:
                    found.setdefault(_DIRECTIONAL[word], set()).add(_stem(following))
        return found

    if "difference" in {_unit(w) for w in (*a.words, *b.words)}:
        return False  # "X differs from Y" and "Y differs from X" ask the same
    oa, ob = objects(a.words), objects(b.words)
    for p in oa.keys() & ob.keys():
        for x in oa[p] - ob[p]:
            for y in ob[p] - oa[p]:
                if x in b.stems and y in a.stems:
                    return True
    return False


def _bound_swap(a: Analysis, b: Analysis) -> bool:
    """The same number bound to another unit that the other side also names ("10 miles" / "10 kilometers")."""
    units_a = {n: _unit(u) or u for n, u in a.bound}
    units_b = {n: _unit(u) or u for n, u in b.bound}
    stems_a = {_unit(w) or w for w in a.stems}
    stems_b = {_unit(w) or w for w in b.stems}
    return any(
        units_a[n] != units_b[n] and units_a[n] in stems_b and units_b[n] in stems_a
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


def _word_unit(word: str) -> str | None:
    if _CJK.match(word):
        return None if word in ZH_FILLER else word
    return _unit(word)


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
    units_old = [u for w in old if (u := _word_unit(w)) is not None]
    units_new = [u for w in new if (u := _word_unit(w)) is not None]
    left = [u for u in units_old if u not in units_new]
    right = [u for u in units_new if u not in units_old]
    return bool(left and right) and not all(any(_near_typo(x, y) for y in right) for x in left)


# -- the difference-aware check: every content word on one side must be explained on the other -----------------

_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?|\d+(?:[.,]\d+)*|[\u4e00-\u9fff]")
_CJK = re.compile(r"[\u4e00-\u9fff]")


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


#: Words that carry no request of their own: greetings, politeness, hedges, intensifiers, "tell me", "I wonder".
FILLER = _words(
    "hey hi hello ok okay so um uh well actually really just please kindly thanks thank thx ty question "
    "wondering wonder curious anyone someone know tell give let explain describe need want like exactly "
    "basically real mind possible able idea anybody somebody guy guys pls plz im i'm i'd i've you're "
    "it's what's whats there's that's yeah yes hmm btw lol folks help "
    "roughly around approximately approx fully completely totally entirely quite pretty whether every "
    "anyway honestly seriously literally sure maybe perhaps currently supposed again properly correctly "
    "ive youre id hows whos wheres whens thats theres lets tho though kinda sorta idk tbh imo fyi omg ugh haha "
    "lmao dude bro asap urgent urgently advance appreciate appreciated hope hoping figure try trying tried "
    "abt pls plz thanx thnx"
)
#: Paraphrase vocabulary: words in one group stand for one another (spelling variants, common synonyms). Groups
#: that share a word are merged, and every member of a group maps to one spelling; a group whose spelling is a
#: stop word or filler is dropped whole ("create" is "make", which asks nothing of its own).
_SYNONYM_GROUPS = [
    "buy purchase bought", "car automobile", "big large", "start begin", "end finish", "fix repair mend",
    "quick fast", "cost price", "use utilize used", "need require required requirement necessary needed",
    "make create", "build construct built", "kid child", "flat apartment", "tap faucet", "mould mold",
    "colour color", "centre center", "metre meter m", "litre liter", "km kilometer kilometre",
    "mi mile", "kg kilogram", "percent %", "phone telephone", "shop store", "sick ill", "easy simple",
    "way method procedure", "write draft compose", "summary summarise summarize",
    "difference differ different distinguish vs versus", "memorise memorize", "vocab vocabulary",
    "intro introduction", "photo picture", "film movie", "email mail e-mail", "answer reply respond",
    "aeroplane airplane plane", "cancel cancellation", "renew renewal", "max maximum", "min minimum",
    "freeze frozen", "win won winner", "ask request", "temperature temp", "choose pick select",
    "display show", "lift elevator", "symptom sign", "common typical usual commonly", "deficiency lack shortage",
    "indicate mean", "appear look seem", "problem issue", "classic traditional", "polite courteous",
    "weigh weight", "allow allowed permitted can may", "arrive arrival", "recipe recipes",
    "website site", "online internet", "pic pics", "info information", "favourite favorite",
    "programme program", "organise organize", "optimise optimize", "analyse analyze", "travel trip",
    "oz ounce", "lb lbs pound", "ml millilitre milliliter", "g gram", "hr hour", "sec second",
    "tyre tire", "aluminium aluminum", "jewellery jewelry", "grey gray", "dict dictionary", "app application",
    "config configuration", "repo repository", "docs documentation", "spec specification", "admin administrator",
    "stats statistics", "env environment", "func function", "param parameter", "arg argument", "db database",
]  # fmt: skip
#: Words a paraphrase adds or drops without asking anything else ("python read csv file" / "read csv with python").
LIGHT = _words(
    "file instruction instructions step steps status name names meaning mean means definition info "
    "information detail details guide tip tips advice option options procedure thing things something "
    "stuff kind sort particular specific exactly basically generally normally typically usually "
    "following follow below one suggest suggestion idea ideas recommend recommended recommendation between "
    "convert conversion provide stay reason cause take appear look seem"
)
#: Phrases rewritten before anything else is compared (case kept): the same request in other words.
PHRASES = [
    (r"\b(?:no|not) more than\b", "at most"), (r"\b(?:no|not) less than\b", "at least"),
    (r"\b(?:no|not) (?:later|after) than\b", "by"), (r"\b(?:in )?(?:what|which) year\b", "when"),
    (r"\b(?:what is|what's|whats) the best way to\b|\bbest way to\b", "how to"), (r"\bhow come\b", "why"),
    (r"\bfor what reason\b", "why"), (r"\bwhat (?:makes|made|causes|caused)\b", "why does"),
    (r"\bthe reason (?:why|that)\b", "why"), (r"\bhow many people live in\b", "population of"),
    (r"\bsend (\w+ )?back\b", r"return \1"), (r"\bget rid of\b", "remove"), (r"\bfind out\b", "find"),
    (r"\bmost effective\b", "best"), (r"\bquick (?:question|q)\b", ""), (r"\bno idea\b", ""),
    (r"\b(?:i )?(?:can't|cant|cannot) (?:figure out|work out)\b", ""),
    (r"\b(?:i )?(?:don't|dont|do not) (?:know|understand|get)\b", ""), (r"\b(?:does )?any(?:one|body) know\b", ""),
    (r"\bthanks in advance\b", ""), (r"\bany help\b", ""), (r"\br u\b", "are you"), (r"\b(?:y|ya)\b", "you"),
    (r"\b(?:per|a|each|every) day\b(?! off)", "daily"), (r"\b(?:per|a|each|every) week\b", "weekly"),
    (r"\b(?:per|a|each|every) year\b", "yearly"), (r"\b(m|cm|km|ft)(?:2|²)", r"square \1"),
    (r"\bsq\.? ?(m|ft|km)\b", r"square \1"), (r"\bwanna\b", "want to"), (r"\bgonna\b", "going to"),
    (r"\bgotta\b", "have to"), (r"\bu\b", "you"), (r"\bur\b", "your"), (r"\bthru\b", "through"),
    (r"\bw/o\b", "without"), (r"\bw/", "with "), (r"\bbc\b|\bcuz\b|\bcos\b", "because"),
    (r"多长时间|多少时间", "多久"), (r"如何|怎样|怎么样|咋样|咋", "怎么"), (r"有没有", "有"),
    (r"能不能|可不可以|可以不可以", "能"), (r"什么|哪个|哪些", "什么"), (r"做法|方法|办法", "法"),
    (r"的时候|期间", "时"), (r"不同|差别|差异", "区别"), (r"特别|非常|十分|超级|挺|蛮", "很"), (r"啥|神马", "什么"),
    (r"肿么", "怎么"), (r"木有|没有", "没"),
    (r"(?:有没有人|有人|大家|谁)知道|请教|各位|谢谢|多谢|到底|究竟|大概|一般来说", ""),
]  # fmt: skip
#: Chinese characters that carry no content of their own (particles, pronouns, "how", "please", "can", "have").
ZH_FILLER = frozenset(
    "的了吗呢啊呀吧嘛么请问一下我你您他她它们要能可以是怎样如何咋应该需想帮给和跟与还就都也会这那个些在呗哈啦什法有时很用哦噢嗯诶哎喔呐滴急求"
)


def _union(groups: list[str]) -> dict[str, str]:
    """Every word of the groups to one spelling, groups that share a word merged (the first group's first word)."""
    merged: list[list[str]] = []
    for group in groups:
        words = group.split()
        joined = [m for m in merged if set(m) & set(words)]
        for m in joined:
            merged.remove(m)
        merged.append(list(dict.fromkeys([w for m in joined for w in m] + words)))
    return {w: m[0] for m in merged for w in m}


_DROP = STOPWORDS | FILLER | LIGHT
SYNONYM_OF: dict[str, str] = _union(_SYNONYM_GROUPS)
#: A group with a stop word or filler in it asks nothing of its own ("allowed" is "can", "create" is "make").
_DROPPED_UNITS = frozenset(c for w, c in SYNONYM_OF.items() if w in _DROP)


@lru_cache(maxsize=65_536)
def normalise(text: str) -> str:
    """The text with `PHRASES` rewritten (case kept): what every rule of `veto` reads."""
    text = re.sub(r"([A-Za-z])\1{2,}", r"\1", text.replace("’", "'"))  # "hiii", "sooo": chat lengthening
    for pattern, replacement in PHRASES:
        text = re.sub(pattern, replacement, text, flags=re.IGNORECASE)
    return text


@lru_cache(maxsize=65_536)
def _unit(token: str) -> str | None:
    """One lower-case word's unit: its stem's spelling in the synonym table, None when it asks nothing."""
    token = ALIASES.get(token.removesuffix("'s"), token.removesuffix("'s"))
    if token in _DROP or _misspelt_stopword(token):
        return None
    stem = _light_stem(token)
    unit = SYNONYM_OF.get(token) or _STEMS.get(stem) or stem
    return None if unit in _DROP or stem in _DROP or unit in _DROPPED_UNITS else unit


@lru_cache(maxsize=65_536)
def content_units(text: str) -> tuple[str, ...]:
    """The text's content words, normalised: lower case, crude stems, synonyms to one spelling, fillers and
    stopwords dropped; each Chinese character is a unit (minus particles). Numbers and negation are left to
    the other rules (they are compared whole)."""
    units: list[str] = []
    for token in _WORD.findall(normalise(text).lower()):
        if _CJK.match(token):
            if token not in ZH_FILLER:
                units.append(token)
            continue
        if token[0].isdigit() or token in NEGATIONS or token.endswith("n't") or _number(token) is not None:
            continue
        if (unit := _unit(token)) is not None:
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
    return any(_edit_distance_one(word, w) for w in _DROP if len(w) >= 3 and abs(len(w) - len(word)) <= 1)


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


#: Endings that make a word of the same root ("invent" / "inventor", "weigh" / "weight", "paint" / "painting").
_DERIVED = _words("er or ers ors ion ation tion ment al ly ity ness ive ic s es d ed ing ist ism ure")


def _near_typo(a: str, b: str) -> bool:
    """A typo or a derived form: one word the start of the other ("invent" / "inventor", "weigh" / "weight"); one
    letter dropped or two neighbours swapped in words of six letters or more ("pasword", "calcualte"); or, when
    one of the two is not a word the embedding model knows, any one-letter edit in words of four letters or more
    ("recipie", "ibuprofin"), two in words of eight or more ("restaraunt"): two known words a letter apart
    ("cat" / "car", "mile" / "mole") stay different."""
    short, long_ = (a, b) if len(a) <= len(b) else (b, a)
    if len(short) >= 4 and long_.startswith(short) and long_[len(short) :] in _DERIVED:
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
            if x in this and y in this and (match := next((z for z in other if _light_stem(z) == joined), None)):
                this.difference_update((x, y))
                other.discard(match)
    for x in list(only_a):
        match = next((y for y in only_b if _near_typo(x, y)), None)
        if match is not None:
            only_a.discard(x)
            only_b.discard(match)
    return frozenset(only_a), frozenset(only_b)


#: Question words that change what is asked: "how was it built" and "why was it built" want other answers.
QUESTION_CLASSES = {
    "why": "why", "when": "when", "where": "where", "who": "who", "whom": "who", "whose": "whose",
    "为什么": "why", "为何": "why", "原因": "why", "什么时候": "when", "何时": "when", "哪里": "where",
    "哪儿": "where", "在哪": "where", "谁": "who",
}  # fmt: skip
#: The same question asked without its question word: "the reason ...", "in what year", "the inventor of ...".
QUESTION_MARKERS = [
    (re.compile(r"\b(?:reasons?|causes?)\b", re.I), "why"),
    (re.compile(r"\b(?:what|which) (?:year|date|day|month|century|decade)\b", re.I), "when"),
    (re.compile(r"\b(?:located|location)\b|\b(?:what|which) (?:place|country|city)\b", re.I), "where"),
    (re.compile(r"\b(?:by whom|(?:what|which) (?:person|team|company))\b|\b\w+(?:or|er)s? of\b", re.I), "who"),
    (re.compile(r"\b(?:winner|inventor|founder|author|discoverer|creator)\b", re.I), "who"),
]


def question_classes(text: str) -> frozenset[str]:
    """Which of why / when / where / who the text asks (how, what and which are left out: they paraphrase)."""
    text = normalise(text)
    words = _WORD.findall(text.lower())
    found = {
        QUESTION_CLASSES[w]
        for i, w in enumerate(words)
        if w in QUESTION_CLASSES and (i == 0 or words[i - 1] in STOPWORDS or words[i - 1] in FILLER)
    }  # "the couple who ..." and "bad when ..." are relative clauses, not questions
    found |= {c for w, c in QUESTION_CLASSES.items() if _CJK.match(w) and w in text}
    return frozenset(found)


def _implied_classes(text: str) -> frozenset[str]:
    """The question classes a text asks without a question word ("the reason the sky is blue": why)."""
    return frozenset(c for pattern, c in QUESTION_MARKERS if pattern.search(normalise(text)))


def _other_question(a: str, b: str) -> bool:
    """Another question word: one asked on one side and neither asked nor implied on the other."""
    qa, qb = question_classes(a), question_classes(b)
    if qa == qb:
        return False
    return bool((qa - qb) - _implied_classes(b) or (qb - qa) - _implied_classes(a))


@lru_cache(maxsize=65_536)
def veto(text_a: str, text_b: str) -> str | None:
    """The reason two similar texts must not share an answer, or None if the guard lets the hit through."""
    text_a, text_b = normalise(text_a), normalise(text_b)
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
    if _reordered(a.stems, b.stems):
        return "swapped_roles"
    roles_a, roles_b = _pronoun_roles(a.words), _pronoun_roles(b.words)
    if Counter(a.stems) == Counter(b.stems) and a.stems != b.stems and roles_a and roles_b and roles_a != roles_b:
        return "swapped_roles"
    if _directional_swap(a, b) or _bound_swap(a, b) or _entity_swap(a, b) or _possessor_swap(a, b):
        return "swapped_roles"
    if _CJK.search(text_a) and _reordered(content_units(text_a), content_units(text_b)):
        return "swapped_roles"
    if _other_question(text_a, text_b):
        return "question_word"
    if (a.entities - b.entities) and (b.entities - a.entities):
        return "other_name"
    if _minimal_pair(a, b):
        return "minimal_pair"
    extra_a, extra_b = unexplained(text_a, text_b)
    if extra_a and extra_b:
        return "other_words"
    if extra_a or extra_b:
        return "added_words"
    return None


__all__ = ["Analysis", "analyse", "content_units", "normalise", "question_classes", "unexplained", "veto"]
