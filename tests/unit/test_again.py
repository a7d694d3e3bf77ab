"""The customer's own items as candidates ("pick up where you left off", "buy it
again"): the pure scores, and the service's filters applied to them.

The service runs over a stand-in for ``FeatureReader`` (state in dicts, no store); the
real store's reads are covered by the integration suite."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from aisle.settings import Settings
from feature_store.keys import Keys
from feature_store.reader import CustomerRead, ItemInfo, UserState
from serving.again import own_items, rebuy_reason, resume_reason
from serving.service import RecommendationService


def state(views: list[tuple[str, float]] | None = None, bought: dict[str, int] | None = None,
          ia: dict[str, float] | None = None, dislikes: dict[str, Any] | None = None,
          negatives: dict[str, Any] | None = None, cart: dict[str, float] | None = None,
          ) -> UserState:
    return UserState("u", views or [], cart or {}, bought or {}, dislikes or {},
                     negatives or {}, [(k.encode(), v) for k, v in (ia or {}).items()],
                     None, {})


def test_viewed_items_not_bought_resume_newest_and_strongest_first() -> None:
    s = state(views=[("new", 1000.0), ("old", 1000.0 - 7200), ("bought", 999.0)],
              bought={"bought": 1}, ia={"new": 0.0, "old": 0.0, "bought": 3.0})
    got = own_items(s, resume_half_life_s=3600)
    assert set(got.resume) == {"new", "old"}  # a bought item is not "left off"
    assert got.resume["old"] == got.resume["new"] / 4  # two half-lives older
    strong = own_items(state(views=[("a", 10.0), ("b", 10.0)], ia={"a": 2.0, "b": 0.0}),
                       3600)
    assert strong.resume["a"] > strong.resume["b"]  # viewed more often, same last view


def test_an_item_out_of_the_recent_views_counts_as_old_as_the_oldest_view() -> None:
    s = state(views=[("a", 1000.0), ("b", 1000.0 - 3600)], ia={"a": 0.0, "b": 0.0, "fav": 0.0})
    got = own_items(s, resume_half_life_s=3600)
    assert got.resume["fav"] == got.resume["b"] == got.resume["a"] / 2
    assert resume_reason("a", s) == "you viewed this"
    assert resume_reason("fav", s) == "you were looking at this"


def test_rebuy_scores_follow_the_decayed_interaction_weight() -> None:
    got = own_items(state(bought={"cups": 6, "kettle": 1},
                          ia={"cups": 5.0, "kettle": 1.0}), 3600)
    assert got.rebuy["cups"] == 1.0 and got.rebuy["kettle"] < got.rebuy["cups"]
    assert got.orders == {"cups": 6, "kettle": 1}
    assert rebuy_reason(6) == "you buy this regularly" and rebuy_reason(1) == "buy it again"


def test_an_erased_or_unknown_customer_has_no_own_items() -> None:
    got = own_items(state(), 3600)
    assert (got.resume, got.rebuy) == ({}, {})


# ---------------------------------------------------------------- through the service

@dataclass
class FakeClient:
    async def hgetall(self, key: str) -> dict[bytes, bytes]:
        return {}


@dataclass
class FakeReader:
    """What ``RecommendationService.recommendations`` reads, from dicts."""
    user_state: UserState
    catalog: dict[str, ItemInfo]
    keys: Keys = field(default_factory=lambda: Keys("t", 8))
    client: FakeClient = field(default_factory=FakeClient)

    async def user(self, user_id: str) -> UserState:
        return self.user_state

    async def customer(self, user_id: str) -> CustomerRead:
        return CustomerRead(self.user_state, (), ({}, {}), {})

    async def customer_replies(self, user_id: str) -> list[Any]:
        return [[["not digested"]]]  # nested: fingerprint() is None, nothing is reused

    def customer_from(self, user_id: str, replies: list[Any]) -> CustomerRead:
        return CustomerRead(self.user_state, (), ({}, {}), {})

    read_of = customer_from
    local = None

    def kept_replies(self, user_id: str) -> list[Any] | None:
        return None  # nothing kept: every read is customer_replies'

    def same_items(self, ids: list[str], entries: Any) -> bool:
        return False  # always the looked-up path

    def memo(self, user_id: str, replies: list[Any]) -> None:
        return None  # nothing kept between reads

    async def items(self, ids: list[str]) -> dict[str, ItemInfo]:
        return {i: self.catalog[i] for i in ids if i in self.catalog}

    def cached_item(self, item_id: str) -> ItemInfo | None:
        return self.catalog.get(item_id)

    def fresh_items(self, ids: list[str]) -> dict[str, ItemInfo] | None:
        return None  # always the awaited path, items()

    async def co_counts(self, kind: str, item_id: str, n: int = 50) -> dict[str, float]:
        return {}

    async def co_counts_many(self, wanted: list[tuple[str, str]], n: int = 50,
                             ) -> dict[tuple[str, str], dict[str, float]]:
        return {key: {} for key in wanted}

    async def trending(self, n: int = 100) -> list[tuple[str, float]]:
        return [("popular", 0.0)]

    def cached_trending(self) -> list[tuple[str, float]]:
        return []

    async def clock(self) -> float:
        return 0.0


@dataclass
class NoModel:
    current: None = None
    version: None = None


CATALOG = {
    "cups": ItemInfo("cups", "Paper cups", consumable=True),
    "fridge": ItemInfo("fridge", "Fridge", consumable=False),
    "shirt": ItemInfo("shirt", "Shirt", attributes={"material": "polyester"}),
    "lamp": ItemInfo("lamp", "Lamp"),
    "soldout": ItemInfo("soldout", "Sold out", stock=0),
    "broken": ItemInfo("broken", "Broken toaster"),
    "popular": ItemInfo("popular", "Popular"),
}


def served(s: UserState, **serving: float) -> dict[str, str]:
    settings = Settings(serving=serving)
    service = RecommendationService(settings, FakeReader(s, CATALOG), NoModel())  # type: ignore[arg-type]
    answer = asyncio.run(service.recommendations("u", 10, None))
    return {x.item_id: x.reason for x in answer.items}


SHOPPER = state(
    views=[("lamp", 100.0), ("shirt", 90.0), ("soldout", 80.0), ("broken", 70.0)],
    bought={"cups": 5, "fridge": 1},
    ia={"lamp": 1.0, "shirt": 1.0, "soldout": 1.0, "broken": 1.0, "cups": 3.0, "fridge": 2.0},
    dislikes={"material:polyester": {"source": "staff"}},
    negatives={"broken": {"reason": "complaint"}})


def test_own_items_are_shown_with_their_reason() -> None:
    got = served(SHOPPER)
    assert got["cups"] == "you buy this regularly"  # a consumable reorder
    assert got["lamp"] == "you viewed this"


def test_the_existing_rules_still_hide_own_items() -> None:
    got = served(SHOPPER)
    assert "fridge" not in got      # a bought non-consumable is never re-shown
    assert "shirt" not in got       # disliked material
    assert "broken" not in got      # complained about
    assert "soldout" not in got     # out of stock


def test_a_weight_of_zero_turns_the_source_off() -> None:
    got = served(SHOPPER, blend_resume=0.0, blend_rebuy=0.0)
    assert set(got) == {"popular"}


def test_cart_items_stay_out_of_recommendations() -> None:
    carted = state(views=[("lamp", 100.0)], ia={"lamp": 2.0}, cart={"lamp": 1.0})
    assert "lamp" not in served(carted)


def test_doctests() -> None:
    import doctest

    from serving import again
    assert doctest.testmod(again).failed == 0


def test_an_experiment_variant_can_turn_the_source_off() -> None:
    from serving.experiments import Assignment, ExperimentRegistry

    registry = ExperimentRegistry(None, Keys("a", 8))  # type: ignore[arg-type]
    base = RecommendationService(Settings(), FakeReader(SHOPPER, CATALOG), NoModel())  # type: ignore[arg-type]
    off = registry.service_for(base, [Assignment("x", "b", "l", "recommendations",
                                                 {"blend_resume": 0.0, "blend_rebuy": 0.0})])
    answer = asyncio.run(off.recommendations("u", 10, None))
    assert [x.item_id for x in answer.items] == ["popular"]
