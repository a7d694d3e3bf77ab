"""The customer's own items as a candidate source: "pick up where you left off" and
"buy it again". Pure: a ``UserState`` in, scores out; the service blends them
(``serving.blend_resume``, ``serving.blend_rebuy``) and its filters decide what may show.

Shoppers come back to what they were just looking at (a marketplace visit returns to the
items viewed minutes ago), and wholesale and grocery customers reorder the same goods.
Neither is a discovery, but both are what the customer most likely wants next, so the
recommendations may show them, with a reason that says so. The rules that hide items
stay where they are: dislikes, complaints, stock and "a bought non-consumable is not
shown again" (``RecommendationService._keeper``) apply to these candidates as to every
other; an erased customer has no state, hence no candidates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from feature_store.reader import UserState


@dataclass(frozen=True, slots=True)
class OwnItems:
    resume: dict[str, float]  # recently viewed, never bought
    rebuy: dict[str, float]   # bought before
    orders: dict[str, int]    # of ``rebuy``: how many orders contained it


def own_items(state: UserState, resume_half_life_s: float) -> OwnItems:
    """Score the customer's own items.

    Both scores start from the item's interaction weight (the ``ia`` zset: every view,
    favourite, cart and purchase weighted and forward-decayed at the model's half-life),
    relative to the customer's strongest item, so "viewed it five times" outranks
    "glanced once" and last month's reorder outranks last year's. Viewed items are also
    decayed by how long before the customer's latest view they were last seen
    (``resume_half_life_s``; the clock is the customer's own, so a customer who returns
    after a month still finds where they left off).

    >>> s = UserState("u", [("b", 100.0), ("a", 40.0)], {}, {"c": 3}, {}, {},
    ...               [(b"a", 1.0), (b"b", 1.0), (b"c", 2.0)], None, {})
    >>> got = own_items(s, resume_half_life_s=60.0)
    >>> {k: round(v, 3) for k, v in got.resume.items()}, list(got.rebuy), got.orders
    ({'b': 0.368, 'a': 0.184}, ['c'], {'c': 3})
    """
    weights = {(m.decode() if isinstance(m, bytes) else m): w for m, w in state.interactions}
    if not weights:
        return OwnItems({}, {}, {})
    top = max(weights.values())
    strength = {item: math.exp(w - top) for item, w in weights.items()}
    resume: dict[str, float] = {}
    if state.views:
        newest = max(ts for _, ts in state.views)
        for item, ts in state.views:
            if item in state.bought or item not in strength:
                continue
            age = max(newest - ts, 0.0)
            resume[item] = strength[item] * 0.5 ** (age / resume_half_life_s)
    rebuy = {item: strength.get(item, 0.0) for item in state.bought}
    return OwnItems(resume, {i: v for i, v in rebuy.items() if v > 0}, dict(state.bought))


def rebuy_reason(orders: int) -> str:
    return "you buy this regularly" if orders >= 2 else "buy it again"
