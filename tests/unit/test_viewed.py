"""Similar to what you just viewed (``serving/viewed.py``): the pure scores, the
published neighbours, and the service's filters applied to the candidates.

The service runs over the stand-in reader of ``test_again.py`` (state in dicts, no
store) and a small hand-made model; the real stack is covered by
``tests/integration/test_viewed_similar.py``."""

from __future__ import annotations

import asyncio
import io
from dataclasses import dataclass

import numpy as np
import pytest

from aisle.settings import Settings
from models.artifacts import ModelArtifact
from models.matrix import build_interactions
from models.train import knn_neighbours
from serving.service import RecommendationService
from serving.viewed import (
    published_neighbours,
    recent_anchors,
    similar_reason,
    similar_to_viewed,
)
from tests.unit.test_again import CATALOG, FakeReader, state


def test_recent_items_weigh_more_and_the_strongest_are_kept() -> None:
    s = state(views=[("new", 1000.0), ("old", 1000.0 - 3600)],
              ia={"new": 0.0, "old": 0.0, "often": 2.0})
    got = recent_anchors(s, half_life_s=3600, limit=10)
    assert got["old"] == got["new"] / 2  # one half-life before the latest view
    assert got["often"] == got["old"] * np.exp(2.0)  # out of the views: as old as the oldest
    assert list(recent_anchors(s, 3600, 2)) == ["often", "new"]  # the limit keeps the best


def test_carted_items_are_anchors_and_bought_ones_are_not() -> None:
    # A bought item's neighbours are its substitutes: nobody wants a second kettle.
    s = state(views=[("a", 10.0)], bought={"b": 1}, cart={"c": 1.0},
              ia={"a": 0.0, "b": 5.0, "c": 0.0})
    assert set(recent_anchors(s, 3600, 10)) == {"a", "c"}
    assert similar_reason("c", s, "Mug") == "because you added Mug to your cart"
    assert similar_reason("a", s, "Lamp") == "because you viewed Lamp"


def test_scores_sum_anchor_weight_times_similarity() -> None:
    near = {"a": [("x", 0.5), ("y", 0.25), ("z", 0.1)], "b": [("x", 0.2), ("w", 0.1)]}
    got = similar_to_viewed({"a": 1.0, "b": 2.0}, lambda i: near[i], per_anchor=2)
    assert got.scores == {"x": 0.5 + 0.4, "y": 0.25, "w": 0.2}  # z: past 2 per anchor
    assert got.because == {"x": "a", "y": "a", "w": "b"}  # the larger part: 0.5 vs 0.4


def test_row_normalisation_lets_an_anchor_with_weak_neighbours_count() -> None:
    near = {"popular": [("p1", 0.1)], "niche": [("n1", 0.8)]}
    plain = similar_to_viewed({"popular": 1.0, "niche": 1.0}, lambda i: near[i], 5)
    row = similar_to_viewed({"popular": 1.0, "niche": 1.0}, lambda i: near[i], 5, "row")
    assert plain.scores["p1"] < plain.scores["n1"]
    assert row.scores["p1"] == row.scores["n1"] == 1.0


def test_no_anchors_or_no_neighbours_give_nothing() -> None:
    assert recent_anchors(state(), 3600, 10) == {}
    got = similar_to_viewed({"a": 1.0}, lambda i: [], 5)
    assert (got.scores, got.because) == ({}, {})


# ---------------------------------------------------------------- the model's neighbours

def test_knn_neighbours_are_cosine_over_customers_best_first_without_the_item() -> None:
    inter = build_interactions([("u", "a", 1.0), ("u", "b", 1.0), ("v", "b", 1.0),
                                ("v", "c", 1.0), ("w", "a", 1.0), ("w", "b", 1.0),
                                ("x", "d", 1.0)])
    ids, scores = knn_neighbours(inter, 3)
    name = inter.item_ids
    a, b = name.index("a"), name.index("b")
    assert [name[j] for j in ids[a] if j >= 0] == ["b"]
    assert [name[j] for j in ids[b] if j >= 0] == ["a", "c"]  # a shares 2 customers, c 1
    assert scores[b, 0] > scores[b, 1] > 0 and scores[b, 2] == 0 and ids[b, 2] == -1
    assert np.isclose(scores[a, 0], 2 / np.sqrt(2 * 3))  # cosine of (1,0,1) and (1,1,1)
    assert (ids[name.index("d")] == -1).all()  # no customer shares it


@pytest.mark.parametrize("scale", [1e-30, 1e-36, 1e30])
def test_knn_neighbours_do_not_depend_on_the_scale_of_the_weights(scale: float) -> None:
    """Decayed weights of years-old events are tiny; the cosines must not change (in
    float32 every similarity of such items came out inf and NaN'd the served scores)."""
    rows = [("u", "a", 1.0), ("u", "b", 3.0), ("v", "b", 1.0), ("v", "c", 2.0),
            ("w", "a", 0.5), ("w", "c", 1.0)]
    ids, scores = knn_neighbours(build_interactions(rows), 2)
    small = build_interactions([(u, i, w * scale) for u, i, w in rows])
    ids_s, scores_s = knn_neighbours(small, 2)
    assert np.isfinite(scores_s).all() and (ids_s == ids).all()
    np.testing.assert_allclose(scores_s, scores, rtol=1e-5)
    # Mixed: old items next to current ones keep their own cosines.
    mixed = build_interactions(rows + [(u, f"old-{i}", w * scale) for u, i, w in rows])
    ids_m, scores_m = knn_neighbours(mixed, 2)
    assert np.isfinite(scores_m).all() and scores_m.max() <= 1.0 + 1e-6


def artifact(knn: dict[str, list[tuple[str, float]]]) -> ModelArtifact:
    items = sorted(CATALOG)
    index = {i: n for n, i in enumerate(items)}
    width = max(map(len, knn.values()))
    ids = np.full((len(items), width), -1, dtype=np.int32)
    sims = np.zeros((len(items), width), dtype=np.float32)
    for anchor, row in knn.items():
        for n, (item, sim) in enumerate(row):
            ids[index[anchor], n], sims[index[anchor], n] = index[item], sim
    return ModelArtifact("v1", 0.0, 0.0, {"regularization": 0.1, "alpha": 1.0}, items,
                         np.ones((len(items), 2), dtype=np.float32),
                         np.full((len(items), 1), -1, dtype=np.int32),
                         np.zeros((len(items), 1), dtype=np.float32),
                         np.zeros(len(items), dtype=bool), knn_ids=ids, knn_scores=sims)


def test_the_neighbours_travel_with_the_artifact() -> None:
    art = artifact({"lamp": [("popular", 0.5)]})
    back = ModelArtifact.from_bytes(art.to_bytes())
    assert published_neighbours(back, "knn")("lamp") == [("popular", 0.5)]
    assert published_neighbours(back, "knn")("unknown") == []
    # A blob written before the neighbours existed loads, and the source stays silent.
    buf = io.BytesIO()
    with np.load(io.BytesIO(art.to_bytes())) as npz:
        np.savez(buf, **{k: npz[k] for k in npz.files if not k.startswith("knn")})
    old = ModelArtifact.from_bytes(buf.getvalue())
    assert old.knn_ids is None and published_neighbours(old, "knn")("lamp") == ()


# ---------------------------------------------------------------- through the service

@dataclass
class Holder:
    current: ModelArtifact
    version: str = "v1"


ONLY_THIS = {"blend_als": 0.0, "blend_session": 0.0, "blend_resume": 0.0,
             "blend_rebuy": 0.0}
NEAR_LAMP = {"lamp": [("fridge", 0.9), ("shirt", 0.8), ("broken", 0.7), ("soldout", 0.6),
                      ("cups", 0.5), ("popular", 0.4)]}


def served(s, knn=None, **serving: float) -> dict[str, str]:  # type: ignore[no-untyped-def]
    settings = Settings(serving={**ONLY_THIS, **serving})
    service = RecommendationService(settings, FakeReader(s, CATALOG),
                                    Holder(artifact(knn or NEAR_LAMP)))  # type: ignore[arg-type]
    answer = asyncio.run(service.recommendations("u", 10, None))
    return {x.item_id: x.reason for x in answer.items}


def test_neighbours_show_with_their_reason_and_every_filter_applies() -> None:
    s = state(views=[("lamp", 100.0)], bought={"fridge": 1, "cups": 2},
              ia={"lamp": 1.0, "fridge": 3.0, "cups": 3.0},
              dislikes={"material:polyester": {"source": "staff"}},
              negatives={"broken": {"reason": "complaint"}})
    got = served(s)
    assert got["popular"] == "because you viewed Lamp"
    assert got["cups"] == "because you viewed Lamp"  # a consumable may come back
    assert "fridge" not in got   # a bought non-consumable is never re-shown
    assert "shirt" not in got    # disliked material
    assert "broken" not in got   # complained about
    assert "soldout" not in got  # out of stock


def test_carted_neighbours_stay_out_and_a_weight_of_zero_turns_the_source_off() -> None:
    s = state(views=[("lamp", 100.0)], cart={"popular": 1.0}, ia={"lamp": 1.0})
    assert "popular" not in served(s)  # the cart is on screen already
    off = served(state(views=[("lamp", 100.0)], ia={"lamp": 1.0}),
                 blend_viewed_similar=0.0)
    assert "cups" not in off and off == {"popular": "popular now"}


def test_the_als_neighbours_can_be_the_source() -> None:
    s = state(views=[("lamp", 100.0)], ia={"lamp": 1.0})
    art = artifact(NEAR_LAMP)
    art.similar_ids, art.similar_scores = art.knn_ids, art.knn_scores
    art.knn_ids = art.knn_scores = None
    service = RecommendationService(
        Settings(serving={**ONLY_THIS, "viewed_similar_source": "als"}),
        FakeReader(s, CATALOG), Holder(art))  # type: ignore[arg-type]
    answer = asyncio.run(service.recommendations("u", 10, None))
    assert answer.items[0].item_id == "fridge"
    assert answer.items[0].reason == "because you viewed Lamp"


def test_an_experiment_variant_can_turn_the_source_off() -> None:
    from feature_store.keys import Keys
    from serving.experiments import Assignment, ExperimentRegistry

    s = state(views=[("lamp", 100.0)], ia={"lamp": 1.0})
    registry = ExperimentRegistry(None, Keys("a", 8))  # type: ignore[arg-type]
    base = RecommendationService(Settings(serving=ONLY_THIS), FakeReader(s, CATALOG),
                                 Holder(artifact(NEAR_LAMP)))  # type: ignore[arg-type]
    off = registry.service_for(base, [Assignment("x", "b", "l", "recommendations",
                                                 {"blend_viewed_similar": 0.0})])
    on = asyncio.run(base.recommendations("u", 10, None))
    assert on.items[0].reason == "because you viewed Lamp"
    answer = asyncio.run(off.recommendations("u", 10, None))
    assert [x.reason for x in answer.items] == ["popular now"]


def test_doctests() -> None:
    import doctest

    from serving import viewed
    assert doctest.testmod(viewed).failed == 0
