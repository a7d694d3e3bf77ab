"""The related endpoint's own ALS weight (``serving.related_blend_als``): pure service
parts over a stub reader, no store."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from aisle.settings import Settings
from models.artifacts import ModelArtifact
from serving.service import RecommendationService


class CoCounts:
    """Only what ``_related_candidates`` reads: co-purchase and co-view counts."""

    async def co_counts(self, kind: str, item_id: str, n: int = 50) -> dict[str, float]:
        return {"bought_with": 3.0} if kind == "buy" else {}

    async def co_counts_many(self, wanted: list[tuple[str, str]], n: int = 50,
                             ) -> dict[tuple[str, str], dict[str, float]]:
        return {(kind, item): await self.co_counts(kind, item, n) for kind, item in wanted}

    def cached_item(self, item_id: str) -> Any:
        return None


def model() -> ModelArtifact:
    ids = ["anchor", "als_neighbour", "bought_with"]
    return ModelArtifact(version="v1", created_at=0.0, ref_ts=0.0,
                         params={"regularization": 0.1, "alpha": 1.0}, item_ids=ids,
                         item_factors=np.eye(3, dtype=np.float32),
                         similar_ids=np.array([[1], [0], [0]], dtype=np.int32),
                         similar_scores=np.array([[0.9], [0.9], [0.9]], dtype=np.float32),
                         consumable=np.zeros(3, dtype=bool))


def candidates(settings: Settings, als: float | None) -> dict[str, float]:
    service = RecommendationService(settings, CoCounts(), None)  # type: ignore[arg-type]
    cands = asyncio.run(service._related_candidates("anchor", model(), [], 1.0, als=als))
    return cands.scores


def test_the_related_endpoint_leaves_als_neighbours_out_by_default() -> None:
    s = Settings()
    assert s.serving.related_blend_als == 0.0
    assert candidates(s, s.serving.related_blend_als) == {
        "bought_with": s.serving.blend_copurchase}


def test_its_weight_brings_them_back_and_recommendations_keep_blend_als() -> None:
    s = Settings(serving={"related_blend_als": 0.5})
    assert candidates(s, s.serving.related_blend_als)["als_neighbour"] == 0.5
    # Recommendations' related candidates (no override) still weigh them by blend_als.
    assert candidates(s, None)["als_neighbour"] == s.serving.blend_als


def test_a_full_answer_about_an_item_not_yet_listed_keeps_only_briefly() -> None:
    """Orders can come before the item's listing: the answer's reasons then name it by
    id, so it is kept for ``cache_ttl_s``, not ``related_cache_ttl_s``."""
    from serving.service import Answer, Scored

    s = Settings()
    listed: dict[str, Any] = {}

    class Reader(CoCounts):
        def cached_item(self, item_id: str) -> Any:
            return listed.get(item_id)

    service = RecommendationService(s, Reader(), None)  # type: ignore[arg-type]
    answer = Answer([Scored("bought_with", 1.0, "bought together with anchor")], "v1",
                    "related", False)
    assert service._related_ttl(("anchor", 1), answer) == s.serving.cache_ttl_s
    listed["anchor"] = object()
    assert service._related_ttl(("anchor", 1), answer) == s.serving.related_cache_ttl_s
    degraded = Answer(answer.items, "v1", "related", True)
    assert service._related_ttl(("anchor", 1), degraded) == 0.0


def test_an_item_without_a_category_is_filled_with_popular_items_not_popular_in_unknown(
        ) -> None:
    """The popular fill of a related list names the anchor's category, when it has one."""
    from feature_store.reader import UNKNOWN_CATEGORY, ItemInfo

    catalog = {"mug": ItemInfo("mug", "Mug", category="kitchen"),
               "lamp": ItemInfo("lamp", "Lamp")}
    assert catalog["lamp"].category == UNKNOWN_CATEGORY

    class Trending(CoCounts):
        async def trending(self, n: int = 100) -> list[tuple[str, float]]:
            return [("mug", 2.0), ("lamp", 1.0)]

        def cached_trending(self) -> list[tuple[str, float]]:
            return []

        def fresh_items(self, ids: list[str]) -> Any:
            return {i: catalog[i] for i in ids if i in catalog}

    service = RecommendationService(Settings(), Trending(), None)  # type: ignore[arg-type]
    unknown = asyncio.run(service._popular([], UNKNOWN_CATEGORY))
    assert {unknown.reason(i) for i in unknown.scores} == {"popular now"}
    kitchen = asyncio.run(service._popular([], "kitchen"))
    assert kitchen.reason("mug") == "popular in kitchen"
