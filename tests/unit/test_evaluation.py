"""Ranking metrics on hand-made cases whose answers are worked out by hand."""

from __future__ import annotations

import math

import pytest

from models.evaluation import (
    catalog_coverage,
    evaluate,
    hit_at_k,
    ndcg_at_k,
    recall_at_k,
)


def test_recall_counts_hits_in_the_top_k_only() -> None:
    ranked = ["a", "b", "c", "d"]
    assert recall_at_k(ranked, {"c", "d"}, 2) == 0.0  # both below the cut
    assert recall_at_k(ranked, {"c", "d"}, 3) == 0.5
    assert recall_at_k(ranked, {"c", "d"}, 4) == 1.0


def test_recall_divides_by_k_when_more_are_relevant() -> None:
    # 5 relevant, k = 2, both slots hit: a perfect list, not 2/5.
    assert recall_at_k(["a", "b", "x"], {"a", "b", "c", "d", "e"}, 2) == 1.0
    assert recall_at_k(["a", "x"], {"a", "b", "c", "d", "e"}, 2) == 0.5


def test_short_and_empty_lists() -> None:
    assert recall_at_k([], {"a"}, 20) == 0.0
    assert ndcg_at_k([], {"a"}, 20) == 0.0
    assert recall_at_k(["a"], {"a", "b"}, 20) == 0.5


def test_ndcg_by_hand() -> None:
    # hits at ranks 2 and 3 of 3, two relevant: (1/log2 3 + 1/log2 4) / (1 + 1/log2 3)
    want = (1 / math.log2(3) + 0.5) / (1 + 1 / math.log2(3))
    assert ndcg_at_k(["x", "a", "b"], {"a", "b"}, 3) == pytest.approx(want)
    assert ndcg_at_k(["a", "b", "x"], {"a", "b"}, 3) == pytest.approx(1.0)
    # an earlier hit is worth more than a later one
    assert ndcg_at_k(["a", "x", "y"], {"a"}, 3) > ndcg_at_k(["x", "y", "a"], {"a"}, 3)


def test_ndcg_ideal_is_capped_at_k() -> None:
    assert ndcg_at_k(["a", "b"], {"a", "b", "c", "d"}, 2) == pytest.approx(1.0)


def test_nothing_relevant_is_an_error_not_a_zero() -> None:
    with pytest.raises(ValueError):
        recall_at_k(["a"], set(), 5)
    with pytest.raises(ValueError):
        ndcg_at_k(["a"], set(), 5)


def test_hit_and_coverage() -> None:
    assert hit_at_k(["a", "b"], {"b"}, 1) == 0.0
    assert hit_at_k(["a", "b"], {"b"}, 2) == 1.0
    assert catalog_coverage([["a", "b", "c"], ["a"]], 10, 2) == 0.2  # c is below the cut
    with pytest.raises(ValueError):
        catalog_coverage([["a"]], 0, 1)


def test_evaluate_averages_over_users_with_something_relevant() -> None:
    lists = {"u1": ["a", "b"], "u2": ["c", "d"], "u3": ["a"]}
    truth = {"u1": {"a"}, "u2": {"z"}, "u3": set(), "u4": {"a"}}  # u3 skipped, u4 no list
    got = evaluate(lists, truth, 2, 5)
    assert got["users"] == 3
    assert got["recall"] == pytest.approx(round(1 / 3, 4))
    assert got["hit_rate"] == pytest.approx(round(1 / 3, 4))
    assert got["ndcg"] == pytest.approx(round(1 / 3, 4))
    assert got["coverage"] == pytest.approx(0.8)  # a, b, c, d of 5 (u4 shows nothing)


def test_doctests() -> None:
    import doctest

    from models import evaluation

    assert doctest.testmod(evaluation).failed == 0
