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
    resume: dict[str, float]  # viewed, saved or carted, never bought
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
    after a month still finds where they left off); an item no longer among the recent
    views counts as old as the oldest of them.

    >>> s = UserState("u", [("b", 100.0), ("a", 40.0)], {}, {"c": 3}, {}, {},
    ...               [(b"a", 1.0), (b"b", 1.0), (b"c", 2.0)], None, {})
    >>> got = own_items(s, resume_half_life_s=60.0)
    >>> {k: round(v, 3) for k, v in got.resume.items()}, list(got.rebuy), got.orders
    ({'a': 0.184, 'b': 0.368}, ['c'], {'c': 3})
    """
    weights = state.weights
    if not weights:
        return OwnItems({}, {}, {})
    top = max(weights.values())
    strength = {item: math.exp(w - top) for item, w in weights.items()}
    seen = dict(state.views)
    newest = max(seen.values(), default=0.0)
    oldest = min(seen.values(), default=0.0)  # an item out of the recent views: older
    bought = state.bought
    # Every item out of the recent views decays alike: one power for all of them.
    old = 0.5 ** (max(newest - oldest, 0.0) / resume_half_life_s)
    resume = {item: s * old for item, s in strength.items() if item not in bought}
    for item, ts in seen.items():
        if item in resume:
            resume[item] = strength[item] * 0.5 ** (max(newest - ts, 0.0)
                                                      / resume_half_life_s)
    rebuy = {item: v for item in bought if (v := strength.get(item, 0.0)) > 0}
    return OwnItems(resume, rebuy, dict(bought))


def resume_reason(item: str, state: UserState) -> str:
    return "you viewed this" if any(i == item for i, _ in state.views) else \
        "you were looking at this"


def rebuy_reason(orders: int) -> str:
    return "you buy this regularly" if orders >= 2 else "buy it again"
