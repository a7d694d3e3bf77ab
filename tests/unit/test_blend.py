"""Blending and selection in the service: pure parts, no store."""

from __future__ import annotations

from feature_store.reader import ItemInfo
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
