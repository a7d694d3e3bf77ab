"""Gathering only what a matching rule can take (``serving.crm.fit_candidates`` with
``serving.offers.wanted_sources``) decides exactly as filtering every list did."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from feature_store.reader import ItemInfo
from models.customer import FALLBACK_SEGMENT, LIFECYCLE_STAGES, SEGMENTS
from models.customer_types import TierStatus
from serving.crm import fit_candidates
from serving.offers import OfferCandidates, decide, remaining_budget, wanted_sources
from tests.unit.test_offers import CLOCK, POLICY, customer

ITEMS = [f"i{n}" for n in range(24)]
ids = st.lists(st.sampled_from(ITEMS), max_size=30)


def every_item_filtered(currency: str, infos: dict[str, ItemInfo], fit: set[str],
                        favorites: list[str], bought: list[str], due: list[str],
                        trending: list[str]) -> OfferCandidates:
    """What the API gathered before: every list filtered in full, whatever the rules."""
    def keep(items: list[str]) -> list[str]:
        return [i for i in items if i in infos and i in fit]

    sellers = keep(trending)
    priced = sorted(((i, infos[i].price) for i in sellers if infos[i].price > 0),
                    key=lambda kv: kv[1])
    return OfferCandidates(currency=currency, favorites=keep(favorites), bought=keep(bought),
                           replenishment=keep(due), priced_items=priced,
                           bestsellers=sellers[:20])


@settings(max_examples=400, deadline=None)
@given(segment=st.sampled_from([*SEGMENTS, FALLBACK_SEGMENT]),
       lifecycle=st.sampled_from(list(LIFECYCLE_STAGES)),
       gap=st.one_of(st.none(), st.floats(0.5, 80.0)),
       due=st.lists(st.sampled_from(ITEMS), max_size=5, unique=True),
       favorites=st.lists(st.sampled_from(ITEMS), max_size=6), bought=ids,
       trending=st.lists(st.sampled_from(ITEMS), unique=True),
       known=st.sets(st.sampled_from(ITEMS), min_size=8),
       unfit=st.sets(st.sampled_from(ITEMS), max_size=8),
       prices=st.lists(st.sampled_from([0.0, 5.0, 12.5, 20.0, 35.0, 60.0]), min_size=24,
                       max_size=24),
       spent=st.sets(st.sampled_from(list(POLICY.budgets)), max_size=2))
def test_gathering_what_matching_rules_take_decides_the_same(
        segment: str, lifecycle: str, gap: float | None, due: list[str],
        favorites: list[str], bought: list[str], trending: list[str], known: set[str],
        unfit: set[str], prices: list[float], spent: set[str]) -> None:
    fit = set(ITEMS) - unfit  # out of stock, disliked, complained about
    tier = TierStatus(tier="member", window_spend=100.0,
                      next_tier="silver" if gap is not None else None, gap=gap)
    profile = customer(segment=segment, lifecycle=lifecycle, tier=tier, due=tuple(due))
    infos = {i: ItemInfo(i, i, price=prices[n]) for n, i in enumerate(ITEMS) if i in known}
    budget = remaining_budget(POLICY, {k: 10**6 for k in spent})
    before = decide(profile, CLOCK, POLICY, [], [], every_item_filtered(
        "GBP", infos, fit, favorites, bought, due, trending), budget)
    wanted = wanted_sources(POLICY, profile)
    if not wanted:  # the API answers without gathering or deciding
        assert before.show == [] and before.issue is None
        return
    now = fit_candidates(wanted, "GBP", infos, lambda info: info.item_id in fit,
                         favorites=favorites, bought=bought, due=due, trending=trending)
    assert decide(profile, CLOCK, POLICY, [], [], now, budget) == before


def test_wanted_sources_of_the_shipped_policy() -> None:
    assert wanted_sources(POLICY, customer(segment="dormant")) == {"favorites_or_bought": 4}
    assert wanted_sources(POLICY, customer(lifecycle="prospect")) == {"bestsellers": 6}
    near = TierStatus(tier="member", window_spend=265.0, next_tier="silver", gap=35.0)
    far = TierStatus(tier="member", window_spend=100.0, next_tier="silver", gap=200.0)
    assert wanted_sources(POLICY, customer(tier=near, due=("soap",))) == {
        "gap_closers": 2, "replenishment": 3}
    assert wanted_sources(POLICY, customer(tier=far)) == {}
    assert wanted_sources(POLICY, customer()) == {}


def test_lists_stop_at_what_a_rule_takes_and_skip_what_does_not_fit() -> None:
    infos = {i: ItemInfo(i, i, price=10.0) for i in ITEMS}
    fit = set(ITEMS) - {"i1", "i3"}
    got = fit_candidates({"favorites_or_bought": 4, "replenishment": 3}, "GBP", infos,
                         lambda info: info.item_id in fit, favorites=[],
                         bought=["i0", "i0", "i1", "i2", "i3", "i4", "gone", "i5", "i6"],
                         due=["i3", "i7"], trending=["i8"])
    assert (got.favorites, got.bought, got.replenishment) == ([], ["i0", "i2", "i4", "i5"],
                                                             ["i7"])
    assert (got.bestsellers, got.priced_items) == (["i8"], [])  # no gap_closers rule matched
    gap = fit_candidates({"gap_closers": 2}, "GBP", infos, lambda info: True,
                         trending=["i9", "i2"])
    assert gap.priced_items == [("i9", 10.0), ("i2", 10.0)]
