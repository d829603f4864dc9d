"""A lexical check after the similarity check: words that flip an answer.

Sentence embeddings score "X" and "not X", "A to B" and "B to A", "15%" and
"25%" as near-identical (cosine 0.97-0.995 with all-MiniLM-L6-v2 on our
labelled pairs), so no threshold alone keeps them apart. Two prompts that
the threshold calls close are still refused as a match when they differ in:

- negation: one has a negation word (not, no, never, without, n't, ...) the other lacks;
- numbers: digits, roman numerals ii-xx, or number words differ;
- word order only: the same words in another order ("Celsius to Fahrenheit");
- a negating or reversing prefix: safe/unsafe, advantages/disadvantages,
  increase/decrease, encrypt/decrypt.

It cannot know antonyms without such a mark (soft/hard, fruit/vegetable):
the threshold and the scope have to carry those.
"""

from __future__ import annotations

import re
from collections import Counter

_WORD = re.compile(r"\d+(?:[.,]\d+)*|[a-z]+(?:'[a-z]+)?")
_NEGATIONS = frozenset({
    "not", "no", "never", "none", "nothing", "nobody", "nowhere", "neither", "nor", "without", "cannot",
})
# Number words by value, so "second" and "II" and "2" are the same number.
_NUMBER_WORDS: dict[str, float] = {
    w: v
    for v, names in enumerate([
        ("zero",), ("one", "first", "single"), ("two", "second", "double", "twice"), ("three", "third", "triple"),
        ("four", "fourth"), ("five", "fifth"), ("six", "sixth"), ("seven", "seventh"), ("eight", "eighth"),
        ("nine", "ninth"), ("ten", "tenth"), ("eleven",), ("twelve",),
    ])
    for w in names
}
_NUMBER_WORDS.update({"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "hundred": 100, "thousand": 1000,
                      "million": 10**6, "billion": 10**9, "half": 0.5, "quarter": 0.25})
# Roman numerals ii-xxxix; "i" is left out: it is far more often the pronoun.
_ROMAN = re.compile(r"^x{0,3}(?:ix|iv|v?i{0,3})$")
_ROMAN_VALUES = {"i": 1, "v": 5, "x": 10}
_NEGATING_PREFIXES = ("un", "in", "im", "il", "ir", "dis", "non", "de", "anti", "mis")
_SWAPPED_PREFIXES = ("en", "in", "im", "ex", "de", "un", "dis", "up", "down", "over", "under", "pre", "post")
_MIN_STEM = 3


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower().replace("\u2019", "'"))


def _is_negation(word: str) -> bool:
    return word in _NEGATIONS or word.endswith("n't")


def _number(word: str) -> float | str | None:
    """The value a word names, if it names a number."""
    if word[0].isdigit():
        return word.replace(",", "")
    if word in _NUMBER_WORDS:
        return _NUMBER_WORDS[word]
    if len(word) > 1 and _ROMAN.match(word):
        total = 0
        for i, ch in enumerate(word):
            v = _ROMAN_VALUES[ch]
            nxt = _ROMAN_VALUES[word[i + 1]] if i + 1 < len(word) else 0
            total += -v if v < nxt else v
        return total
    return None


def _numbers(ws: list[str]) -> Counter[float]:
    found: Counter[float] = Counter()
    for w in ws:
        n = _number(w)
        if n is not None:
            found[float(n)] += 1
    return found


def _prefix_flip(x: str, y: str) -> bool:
    for p in _NEGATING_PREFIXES:
        if (x == p + y and len(y) >= _MIN_STEM) or (y == p + x and len(x) >= _MIN_STEM):
            return True
    for p in _SWAPPED_PREFIXES:
        if x.startswith(p):
            stem = x[len(p):]
            if len(stem) >= _MIN_STEM and y.endswith(stem) and y != x and y[: -len(stem)] in _SWAPPED_PREFIXES:
                return True
    return False


def conflict(a: str, b: str) -> str:
    """Why ``a`` and ``b`` must not share an answer despite their similarity; "" if no reason is seen."""
    wa, wb = words(a), words(b)
    if wa == wb:
        return ""
    if sum(map(_is_negation, wa)) % 2 != sum(map(_is_negation, wb)) % 2:
        return "negation"
    if _numbers(wa) != _numbers(wb):
        return "numbers"
    if Counter(wa) == Counter(wb):
        return "word order"
    only_a, only_b = set(wa) - set(wb), set(wb) - set(wa)
    for x in only_a:
        for y in only_b:
            if _prefix_flip(x, y):
                return f"'{x}' vs '{y}'"
    return ""
