"""Similar to what you just viewed: an item-to-item candidate source. Pure: a
``UserState`` and the model's published neighbours in, scores out; the service blends
them (``serving.blend_viewed_similar``) and its filters decide what may show.

A marketplace visit moves between alternatives: the shopper who looked at three phone
cases in the last half hour is likely to look at a fourth. Each of the customer's
recent items (an *anchor*) lends its weight to its neighbours; a candidate's score is
the sum over the anchors of the anchor's weight times the pair's similarity. The
neighbours are published with the model at retrain (``ModelArtifact.knn_ids``, item-kNN
cosine over the training matrix; or the ALS neighbours), so a request reads no key for
them; the anchors come from the state the one-call customer read already returns. No
state of its own, so erasure has nothing to add: an erased customer has no anchors.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from feature_store.reader import UserState
from models.artifacts import ModelArtifact

Neighbours = Callable[[str], Sequence[tuple[str, float]]]


@dataclass(frozen=True, slots=True)
class SimilarToViewed:
    scores: dict[str, float]
    because: dict[str, str]  # candidate -> the anchor that gave it the largest part


def recent_anchors(state: UserState, half_life_s: float, limit: int) -> dict[str, float]:
    """The customer's ``limit`` strongest recent items, each weighted as the resume
    source weighs a viewed item (``serving/again.py``): its interaction weight relative
    to the strongest, halving per ``half_life_s`` between its last view and the
    customer's latest one (an item out of the recent views counts as old as the oldest).
    Carted items are anchors; bought ones are not: a bought item's neighbours are its
    substitutes (a second kettle), and on Online Retail, where every item is bought,
    they cost up to half of Recall@20 on validation (``results/tune_viewed_round1.json``).

    >>> s = UserState("u", [("b", 100.0), ("a", 40.0)], {}, {"d": 1}, {}, {},
    ...               [(b"a", 1.0), (b"b", 1.0), (b"c", 3.0), (b"d", 5.0)], None, {})
    >>> {k: round(v, 3) for k, v in recent_anchors(s, 60.0, 2).items()}
    {'c': 0.5, 'b': 0.135}
    """
    bought = state.bought
    weights = {item: w for item, w in state.weights.items() if item not in bought}
    if not weights or limit <= 0:
        return {}
    top = max(weights.values())
    seen = dict(state.views)
    newest = max(seen.values(), default=0.0)
    oldest = min(seen.values(), default=0.0)
    scored = {item: math.exp(w - top)
              * 0.5 ** (max(newest - seen.get(item, oldest), 0.0) / half_life_s)
              for item, w in weights.items()}
    best = sorted(scored.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]
    return {item: w for item, w in best if w > 0}


def similar_to_viewed(anchors: dict[str, float], neighbours: Neighbours, per_anchor: int,
                      norm: str = "cosine") -> SimilarToViewed:
    """Score every neighbour of the anchors: sum of anchor weight × similarity over the
    ``per_anchor`` nearest of each anchor. ``norm="row"`` first divides an anchor's
    similarities by its best one, so an anchor whose neighbours are all weak (a popular
    item similar to everything a little) counts as much as one with a close twin.

    >>> near = {"case": [("case2", 0.8), ("film", 0.4)], "film": [("case2", 0.2)]}
    >>> got = similar_to_viewed({"case": 1.0, "film": 0.5}, lambda a: near.get(a, []), 5)
    >>> {k: round(v, 3) for k, v in got.scores.items()}, got.because["case2"]
    ({'case2': 0.9, 'film': 0.4}, 'case')
    """
    scores: dict[str, float] = {}
    because: dict[str, tuple[float, str]] = {}
    for anchor, weight in anchors.items():
        near = [(item, sim) for item, sim in neighbours(anchor)[:per_anchor] if sim > 0]
        if not near:
            continue
        scale = 1.0 / max(sim for _, sim in near) if norm == "row" else 1.0
        for item, sim in near:
            part = weight * sim * scale
            scores[item] = scores.get(item, 0.0) + part
            if part > because.get(item, (0.0, ""))[0]:
                because[item] = (part, anchor)
    return SimilarToViewed(scores, {item: anchor for item, (_, anchor) in because.items()})


def published_neighbours(art: ModelArtifact | None, source: str) -> Neighbours:
    """The model's neighbours of an item, best first: ``"knn"`` (item-kNN cosine, when
    the artifact has it) or ``"als"`` (factor cosine, support-shrunk)."""
    if art is None:
        return lambda item: ()
    ids, scores = ((art.knn_ids, art.knn_scores) if source == "knn"
                   else (art.similar_ids, art.similar_scores))
    if ids is None or scores is None:
        return lambda item: ()
    index, names = art.item_index, art.item_ids

    def near(item: str) -> list[tuple[str, float]]:
        j = index.get(item)
        if j is None:
            return []
        return [(names[k], s) for k, s in zip(ids[j].tolist(), scores[j].tolist(),
                                              strict=True) if k >= 0]
    return near


def similar_reason(anchor: str, state: UserState, title: str) -> str:
    if anchor in state.cart:
        return f"because you added {title} to your cart"
    return f"because you viewed {title}"
