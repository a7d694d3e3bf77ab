"""Catalog hints from a product title alone (Online Retail has no categories).

The category is the title's head noun, guessed as English puts it: the last word that is
not a colour, a size, a count, a pattern name or filler ("SET", "OF", "NO"). It is
lower-case and singular, so "JUMBO BAG RED RETROSPOT" and "JUMBO BAGS PINK" share "bag".
It is a heuristic, meant to group similar items for diversity and affinity, not a taxonomy.
"""

from __future__ import annotations

import re

UNKNOWN = "unknown"

COLOURS = frozenset({
    "white", "black", "red", "pink", "blue", "green", "yellow", "orange", "purple", "cream",
    "ivory", "gold", "silver", "grey", "gray", "brown", "turquoise", "lilac", "beige",
    "copper", "teal", "aqua", "natural",
})
# Words that end titles without naming the kind of thing.
_FILLER = frozenset({
    "set", "sets", "of", "no", "and", "the", "with", "in", "w", "a", "for", "to", "on",
    "small", "medium", "large", "mini", "jumbo", "big", "giant", "tiny", "extra",
    "assorted", "asst", "asstd", "design", "designs", "colour", "colours", "pack", "pc",
    "retrospot", "polkadot", "spotty", "spot", "paisley", "floral", "vintage", "antique",
    "regency",
})
_QUALIFIERS = frozenset({"with", "w", "in"})
# Words that look plural and are not.
_INVARIANT = frozenset({"christmas", "xmas", "news", "scissors", "trousers"})
_TOKEN = re.compile(r"[a-z][a-z'\-]*[a-z]|[a-z]")
_SIBILANT_ES = re.compile(r"(?:x|z|ch|sh|ss)es$")


def category_of(title: str) -> str:
    """The head noun of ``title``, lower-case and singular; ``"unknown"`` if none.

    >>> category_of("WHITE HANGING HEART T-LIGHT HOLDER")
    'holder'
    >>> category_of("CHILDRENS CUTLERY RETROSPOT RED ")
    'cutlery'
    >>> category_of("POLYESTER FILLER PAD 40x40cm")
    'pad'
    >>> category_of("DECORATIVE PLANT POT WITH FRIEZE")
    'pot'
    """
    words = _words(title)
    # "POT WITH FRIEZE", "CONFETTI IN TUBE": the noun comes before the qualifier.
    cut = next((i for i, w in enumerate(words) if w in _QUALIFIERS and i > 0), len(words))
    for word in reversed(words[:cut]):
        if word not in COLOURS and word not in _FILLER:
            return singular(word)
    return UNKNOWN


def colour_of(title: str) -> str | None:
    """The first colour word in ``title``, if any.

    >>> colour_of("WHITE HANGING HEART T-LIGHT HOLDER")
    'white'
    >>> colour_of("KNITTED UNION FLAG HOT WATER BOTTLE") is None
    True
    """
    for word in _words(title):
        if word in COLOURS:
            return "grey" if word == "gray" else word
    return None


def singular(word: str) -> str:
    """A plural's singular, by the few rules that cover shop titles.

    >>> [singular(w) for w in ("marbles", "boxes", "dishes", "glass", "candles", "christmas")]
    ['marble', 'box', 'dish', 'glass', 'candle', 'christmas']
    """
    if word in _INVARIANT:
        return word
    if _SIBILANT_ES.search(word):
        return word[:-2]
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith("s") and not word.endswith(("ss", "us", "is")) and len(word) > 3:
        return word[:-1]
    return word


def _words(title: str) -> list[str]:
    # Tokens with digits ("40x40cm", "S/6", "12") are sizes and counts: never the noun.
    return [m.group() for token in title.lower().split() if not any(c.isdigit() for c in token)
            for m in _TOKEN.finditer(token)]
