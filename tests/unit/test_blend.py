"""Blending and selection in the service: pure parts, no store."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from aisle.settings import Settings
from feature_store.reader import ItemInfo, UserState
from models.artifacts import ModelArtifact
from models.matrix import log_weight
from serving.service import Candidates, RecommendationService


def test_sources_are_scaled_by_their_own_maximum_before_weighting() -> None:
    c = Candidates()
    c.add({"a": 40.0, "b": 10.0}, 0.6, lambda i: "bought together")
    c.add({"b": 0.9, "c": 0.45}, 1.0, lambda i: "similar")
    assert c.scores["a"] == 0.6
    assert c.scores["b"] == 0.15 + 1.0
    assert c.scores["c"] == 0.5
    assert [item for item, _, _ in c.ranked()] == ["b", "a", "c"]


def test_an_item_keeps_the_reason_of_its_largest_share_weighed_by_specificity() -> None:
    c = Candidates()
    c.add({"x": 1.0}, 1.0, lambda i: "similar shoppers")
    c.add({"x": 1.0}, 0.6, lambda i: "bought together", specificity=2.0)
    assert c.ranked()[0][2] == "bought together"
    c.add({"y": 1.0}, 1.0, lambda i: "similar shoppers")
    c.add({"y": 1.0}, 0.3, lambda i: "bought together", specificity=2.0)
    assert dict((i, r) for i, _, r in c.ranked())["y"] == "similar shoppers"


def test_empty_or_non_positive_sources_add_nothing() -> None:
    c = Candidates()
    c.add({}, 1.0, lambda i: "x")
    c.add({"a": 0.0}, 1.0, lambda i: "x")
    c.add({"a": 1.0}, 0.0, lambda i: "x")
    assert c.scores == {}


def test_select_filters_unavailable_excluded_and_unknown_items() -> None:
    c = Candidates()
    c.add({"ok": 5, "gone": 4, "empty": 3, "self": 2, "unknown": 1, "ok2": 0.5}, 1.0,
          lambda i: "r")
    infos = {"ok": ItemInfo("ok", "OK"), "gone": ItemInfo("gone", "G", removed=True),
             "empty": ItemInfo("empty", "E", stock=0), "self": ItemInfo("self", "S"),
             "ok2": ItemInfo("ok2", "OK2", stock=3)}
    picked = RecommendationService._select(c, infos, 10, {"self"}, lambda i: True,
                                           degraded=False)
    assert [s.item_id for s in picked] == ["ok", "ok2"]
    # When the store is away, items we cannot look up are still served (flagged upstream).
    degraded = RecommendationService._select(c, {}, 2, set(), lambda i: True, degraded=True)
    assert [s.item_id for s in degraded] == ["ok", "gone"]


def test_dislike_tags_cover_attributes_category_and_brand() -> None:
    info = ItemInfo("i", "Shirt", category="Shirts", brand="Acme",
                    attributes={"Material": "Polyester"})
    assert info.tags == {"material:polyester", "category:shirts", "brand:acme"}


def test_items_with_a_zero_score_are_left_out_and_ranking_never_fails() -> None:
    """A decayed popularity can underflow to 0.0 next to positive ones (found by the soak)."""
    c = Candidates()
    c.add({"hot": 1.0, "cold": 0.0}, 0.5, lambda i: "popular now")
    assert [item for item, _, _ in c.ranked()] == ["hot"]


@given(st.dictionaries(st.sampled_from("abcdefgh"),
                       st.one_of(st.just(0.0), st.floats(-1.0, 1e6), st.just(1e-320),
                                 st.just(math.nan), st.just(math.inf)),
                       max_size=8),
       st.floats(0.01, 10.0), st.sampled_from([1.0, 1.5, 2.0]))
def test_the_first_source_is_added_as_a_merge_into_nothing_would_be(
        source: dict[str, float], weight: float, specificity: float) -> None:
    """The first source takes a shortcut (nothing to merge with); it must land as the
    merging path would land it, tiny and non-positive values included. A NaN or an
    infinity (the kNN neighbours of a model fitted on underflowing weights were all inf)
    adds nothing: every score that lands is finite and has a reason to show."""
    first, merged = Candidates(), Candidates()
    merged.scores["~"] = 0.0  # one entry sends the add down the merging path
    first.add(source, weight, lambda i: "r", specificity)
    merged.add(source, weight, lambda i: "r", specificity)
    del merged.scores["~"]
    assert first.scores == merged.scores
    assert {i: s for i, (s, _) in first.best.items()} == {
        i: s for i, (s, _) in merged.best.items()}
    assert all(math.isfinite(v) for v in first.scores.values())
    assert all(first.reason(i) == "r" for i, v in first.scores.items() if v > 0)


def test_a_customer_folded_in_long_after_the_models_training_gets_the_same_vector() -> None:
    """The request-time fold-in decays a customer's weights to their newest event, so
    the same history gives the same vector a day or sixteen years after the model's
    reference time; decayed to the model's time, the weights overflowed the solve."""
    rng = np.random.default_rng(3)
    k, half_life = 8, 30 * 86400.0
    art = ModelArtifact(
        version="v1", created_at=0.0, ref_ts=1291223160.0,
        params={"factors": k, "regularization": 0.05, "alpha": 4.0},
        item_ids=[f"i{n}" for n in range(20)],
        item_factors=rng.standard_normal((20, k)).astype(np.float32),
        similar_ids=np.zeros((20, 1), dtype=np.int32),
        similar_scores=np.zeros((20, 1), dtype=np.float32), consumable=np.zeros(20, bool),
        stats={})
    service = RecommendationService(Settings(), None, None)  # type: ignore[arg-type]

    def vector(after_s: float) -> np.ndarray:
        last = art.ref_ts + after_s
        events = [(b"i1", 1.0, last - 3 * 86400), (b"i4", 5.0, last - 86400), (b"i7", 2.0, last)]
        state = UserState(f"u{after_s}", [], {}, {}, {}, {},
                          [(i, log_weight(w, ts, half_life)) for i, w, ts in events], None,
                          {"last_seen": last})
        vec = service._vector(art, state)
        assert vec is not None and np.isfinite(vec).all()
        return vec

    np.testing.assert_allclose(vector(16 * 365 * 86400.0), vector(86400.0), rtol=1e-4)
    assert np.abs(vector(86400.0)).max() > 0.01  # a real vector, not the zero fallback


@given(st.dictionaries(st.text("abcdef", min_size=1, max_size=3),
                       st.sampled_from([0.25, 0.5, 1.0, 2.0]) | st.floats(0.01, 10.0),
                       max_size=80),
       st.integers(1, 30))
def test_the_head_is_the_first_k_of_the_full_order_ties_included(
        scores: dict[str, float], k: int) -> None:
    """Few distinct scores force ties at the cut: they must break by item id, as the
    full order does."""
    c = Candidates()
    c.scores.update(scores)
    assert c.head(k) == c.order()[:k]


@given(st.lists(st.sampled_from([0.0, -1.0, 1e-300, 0.5, 2.0, math.nan, math.inf])
                | st.floats(-5.0, 5.0), max_size=40),
       st.floats(0.0, 3.0), st.sampled_from([1.0, 1e-10, 2.0]), st.booleans())
def test_a_pool_given_as_arrays_adds_exactly_as_the_same_dict(
        raw: list[float], weight: float, specificity: float, first: bool) -> None:
    """The ALS pool's numpy path: the same scores and reasons, bit for bit, as add()."""
    items = [f"i{n}" for n in range(len(raw))]
    why = lambda i: "picked for you"  # noqa: E731
    a, b = Candidates(), Candidates()
    if not first:  # not the first source: the dict path
        for c in (a, b):
            c.add({"i0": 1.0, "other": 2.0}, 1.0, lambda i: "earlier")
    a.add(dict(zip(items, raw, strict=True)), weight, why, specificity)
    b.add_pool(items, np.array(raw, dtype=np.float64), weight, why, specificity)
    assert a.scores == b.scores
    assert list(a.scores) == list(b.scores)
    assert {i: (p, r("x")) for i, (p, r) in a.best.items()} == \
        {i: (p, r("x")) for i, (p, r) in b.best.items()}
