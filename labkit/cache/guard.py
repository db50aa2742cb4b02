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
   prompts (lower case, crude stems, a few spelling variants and synonyms, fillers such as "hey", "please",
   "tell me" and words like "file" or "steps" dropped, one-letter typos in long words matched, Chinese by
   character without particles), *every content word on each side must be found on the other*. A word left over
   on one side only (`added_words`: a constraint, a qualifier such as "Illinois" or "3.13", a method or tool such
   as "pressure cooker") or on both (`other_words`: a changed slot or constraint), or another question word
   (`question_word`: why / when / where / who), refuses the hit.

Why this design, measured on `data/semantic_pairs.jsonl` by `python -m labkit.cache.evaluation` (its `options`
list; held-out split, kinds and author styles never used in tuning):

- The earlier rules alone served 195 held-out pairs at threshold 0.89, 101 of them wrongly (52%): they catch the
  kinds they were written for and little else. Cosine alone at 0.89: 157 of 280 wrong (56%).
- With the difference check the guard served 35 held-out pairs, 1 wrongly (2.9%, 95% CI 0.5-14.5%), and 93 tuning
  pairs with none wrong; it let through 1 of the 398 negatives of the six kinds never tuned on.
- It costs recall: 16% of held-out paraphrases (31% of tuning ones) are served, because a paraphrase that
  rewords ("population of Madrid" / "how many people live in Madrid") has content words the other side lacks.
  Explaining such words by their embeddings does not work: MiniLM puts "landlord" and "tenant", or "Monday" and
  "Friday", closer together than "common" and "typical", so a word-similarity cut-off that admits synonyms admits
  slot changes too (tried while designing, not kept). Letting two-sided rewordings of short prompts through above
  a high cosine added little recall and some wrong answers (tried, not kept). Serving only short prompts changes
  almost nothing once the difference check is on: long templated prompts that differ in one slot are refused
  anyway (the `options` list measures it).
- No offline cross-encoder or NLI model ships in a package this lab already installs; one would be the way to
  more recall at the same precision (and costs a model download and tens of milliseconds per candidate).

The cosine threshold matters little once the difference check decides: `DEFAULT_THRESHOLD` is the lowest of the
sweep with no tuning false hit. all-MiniLM-L6-v2 is an English model, so for Chinese prompts the cosine says
nothing and only the lexical check decides.
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


# -- the difference-aware check: every content word on one side must be explained on the other -----------------

_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?|\d+(?:[.,]\d+)*|[\u4e00-\u9fff]")
_CJK = re.compile(r"[\u4e00-\u9fff]")


#: Words that carry no request of their own: greetings, politeness, hedges, "tell me", "I was wondering".
def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


FILLER = _words(
    "hey hi hello ok okay so um uh well actually really just please kindly thanks thank quick question "
    "wondering wonder curious anyone someone know tell give let explain describe need want like exactly "
    "basically real mind possible able idea anybody somebody guy guys pls plz im i'm i'd i've you're "
    "it's what's whats there's that's yeah yes hmm"
)
#: Paraphrase vocabulary: words in one group stand for one another (spelling variants, common synonyms).
_SYNONYM_GROUPS = [
    "buy purchase", "car automobile", "big large", "start begin", "end finish", "fix repair mend", "quick fast",
    "cost price", "use utilize", "need require", "make create", "build construct", "kid child", "flat apartment",
    "tap faucet", "mould mold", "colour color", "centre center", "metre meter", "litre liter",
    "km kilometer kilometre kilometers kilometres", "mi mile", "kg kilogram", "percent %", "phone telephone",
    "shop store", "sick ill", "easy simple", "way method", "write draft compose", "summary summarise summarize",
    "difference differ different distinguish vs versus", "memorise memorize", "vocab vocabulary",
    "intro introduction", "photo picture", "film movie", "email mail", "answer reply", "aeroplane airplane plane",
    "cancel cancellation", "renew renewal", "build built", "max maximum", "min minimum", "freeze frozen",
    "need required requirement necessary", "bought buy", "win won winner", "ask request", "temperature temp",
    "choose pick select", "display show", "lift elevator",
]  # fmt: skip
#: Words a paraphrase adds or drops without asking anything else ("python read csv file" / "read csv with python").
LIGHT = _words(
    "file instruction instructions step steps status name names meaning mean means definition info "
    "information detail details guide tip tips advice option options procedure thing things something "
    "stuff kind sort particular specific exactly basically generally normally typically usually "
    "following follow below one suggest suggestion idea recommend recommended recommendation between"
)
SYNONYM_OF: dict[str, str] = {w: g.split()[0] for g in _SYNONYM_GROUPS for w in g.split()}
#: Question words that change what is asked: "how was it built" and "why was it built" want other answers.
QUESTION_CLASSES = {
    "why": "why", "when": "when", "where": "where", "who": "who", "whom": "who", "whose": "whose",
    "为什么": "why", "为何": "why", "什么时候": "when", "何时": "when", "哪里": "where", "哪儿": "where",
    "在哪": "where", "谁": "who",
}  # fmt: skip
#: Chinese characters that carry no content of their own (particles, pronouns, "how", "please", "can").
#: Phrases rewritten before the words are compared: the same request in other words, English and Chinese.
PHRASES = [
    (r"\b(?:per|a|each|every) day\b", "daily"), (r"\b(?:per|a|each|every) week\b", "weekly"),
    (r"\b(?:per|a|each|every) year\b", "yearly"), (r"\bget rid of\b", "remove"), (r"\bfind out\b", "find"),
    (r"多长时间|多少时间", "多久"), (r"如何|怎样|怎么样", "怎么"), (r"有没有", "有"), (r"能不能|可不可以", "能"),
    (r"什么|哪个|哪些", "什么"), (r"做法|方法|办法", "法"),
]  # fmt: skip
ZH_FILLER = frozenset(
    "的了吗呢啊呀吧嘛么请问一下我你您他她它们要能可以是怎样如何咋应该需想帮给和跟与还就都也会这那个些在呗哈啦什法"
)


@lru_cache(maxsize=65_536)
def content_units(text: str) -> tuple[str, ...]:
    """The text's content words, normalised: lower case, crude stems, synonyms to one spelling, fillers and
    stopwords dropped; each Chinese character is a unit (minus particles). Numbers and negation are left to
    the other rules (they are compared whole)."""
    units: list[str] = []
    text = text.lower().replace("’", "'")
    for pattern, replacement in PHRASES:
        text = re.sub(pattern, replacement, text)
    for token in _WORD.findall(text):
        if _CJK.match(token):
            if token not in ZH_FILLER:
                units.append(token)
            continue
        if token[0].isdigit() or token in NEGATIONS or token.endswith("n't") or _number(token) is not None:
            continue
        token = token.removesuffix("'s")
        token = ALIASES.get(token, token)
        if token in STOPWORDS or token in FILLER or token in LIGHT:
            continue
        units.append(SYNONYM_OF.get(token) or _STEMS.get(_light_stem(token)) or _light_stem(token))
    return tuple(units)


def _light_stem(word: str) -> str:
    """Plural, -ing, -ed and a final -e off, so that "cooking", "cooked" and "cook" compare equal."""
    for suffix, keep in (("ies", 3), ("sses", 4), ("ches", 4), ("shes", 4), ("xes", 4)):
        if word.endswith(suffix) and len(word) > keep + 1:
            word = word[: -len(suffix)] + ("y" if suffix == "ies" else suffix[:-2])
            break
    else:
        if word.endswith("s") and not word.endswith(("ss", "us", "is")) and len(word) > 3:
            word = word[:-1]
    for suffix in ("ing", "ed"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            word = word[: -len(suffix)]
            break
    if word.endswith("e") and len(word) > 3:
        word = word[:-1]
    return SYNONYM_OF.get(word, word)


_STEMS: dict[str, str] = {_light_stem(w): c for w, c in SYNONYM_OF.items()}


def _near_typo(a: str, b: str) -> bool:
    """One letter dropped or two neighbours swapped, in words of six letters or more ("pasword", "calcualte"), or
    one word the start of the other (a derived form: "invent" / "inventor", "weigh" / "weight")."""
    if min(len(a), len(b)) >= 4 and (a.startswith(b) or b.startswith(a)):
        return True
    if min(len(a), len(b)) < 6 or a[0] != b[0] or abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        return len(diff) == 2 and diff[1] == diff[0] + 1 and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]]
    short, long_ = (a, b) if len(a) < len(b) else (b, a)
    return any(long_[:i] + long_[i + 1 :] == short for i in range(len(long_)))


def unexplained(text_a: str, text_b: str) -> tuple[frozenset[str], frozenset[str]]:
    """Content units of each side that the other side does not have (after synonyms, stems and typos)."""
    a, b = set(content_units(text_a)), set(content_units(text_b))
    only_a, only_b = a - b, b - a
    for x in list(only_a):
        match = next((y for y in only_b if _near_typo(x, y)), None)
        if match is not None:
            only_a.discard(x)
            only_b.discard(match)
    return frozenset(only_a), frozenset(only_b)


def question_classes(text: str) -> frozenset[str]:
    """Which of why / when / where / who the text asks (how, what and which are left out: they paraphrase)."""
    words = _WORD.findall(text.lower())
    found = {
        QUESTION_CLASSES[w]
        for i, w in enumerate(words)
        if w in QUESTION_CLASSES and (i == 0 or words[i - 1] in STOPWORDS or words[i - 1] in FILLER)
    }  # "the couple who ..." and "bad when ..." are relative clauses, not questions
    found |= {c for w, c in QUESTION_CLASSES.items() if _CJK.match(w) and w in text}
    return frozenset(found)


@lru_cache(maxsize=65_536)
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
    units_a, units_b = content_units(text_a), content_units(text_b)
    same_units = Counter(units_a) == Counter(units_b) and units_a != units_b
    if _CJK.search(text_a) and same_units and not _is_rotation(units_a, units_b):
        return "swapped_roles"
    if question_classes(text_a) != question_classes(text_b):
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


__all__ = ["Analysis", "analyse", "content_units", "question_classes", "unexplained", "veto"]
