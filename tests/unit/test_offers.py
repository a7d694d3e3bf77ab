"""The offer policy: the shipped policy file, decisions, idempotence, caps, budgets."""

from __future__ import annotations

import doctest
import itertools
import json
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from msgspec import structs

from aisle.settings import Settings
from feature_store.keys import Keys
from feature_store.updates import Folder
from models.customer import FALLBACK_SEGMENT, LIFECYCLE_STAGES, SEGMENTS
from models.customer_types import CustomerProfile, Replenishment, TierStatus
from serving import offers
from serving.offers import (
    SINGLE_ITEM_OVERSHOOT,
    Decision,
    Offer,
    OfferCandidates,
    PolicyError,
    decide,
    gap_closers,
    is_active,
    issued_event,
    load_policy,
    offer_from_doc,
    parse_policy,
    remaining_budget,
    seconds_left,
)

CLOCK = datetime(2011, 12, 1, 10, tzinfo=UTC).timestamp()
HOUR, DAY = 3600.0, 86400.0
POLICY = load_policy()
BUDGET = remaining_budget(POLICY, {})
RULES = {rule.id: rule for rule in POLICY.rules}
NO_TIER = TierStatus(tier=None, window_spend=0.0, next_tier=None, gap=None)
PRICED = [("socks", 12.0), ("scarf", 45.0), ("mug", 30.0), ("cap", 25.0)]
CANDIDATES = OfferCandidates(currency="GBP", favorites=["fav1", "fav2"], bought=["b1", "b2"],
                             replenishment=["soap"], priced_items=PRICED,
                             bestsellers=["best1", "best2"], new_arrivals=["new1"])


def customer(segment: str = "regular", lifecycle: str = "growing", user: str = "u1",
             tier: TierStatus = NO_TIER, due: tuple[str, ...] = ()) -> CustomerProfile:
    replenishments = tuple(Replenishment(item_id=i, interval_days=30.0,
                                         last_purchase_ts=CLOCK - 28 * DAY,
                                         runout_ts=CLOCK + 2 * DAY, basis="customer")
                           for i in due)
    return CustomerProfile(
        user_id=user, clock=CLOCK, rfm=None, segment=segment, segment_reason="test",
        lifecycle=lifecycle, p_alive=None, churn_risk=None, tier=tier, top_categories=(),
        preferred_source=None, price_band=None, promotion_sensitivity=None,
        replenishments_due=replenishments)


def run(profile: CustomerProfile, clock: float = CLOCK, active: list[Offer] | None = None,
        recent: list[Offer] | None = None, candidates: OfferCandidates = CANDIDATES,
        budget: dict[str, int] | None = None) -> Decision:
    return decide(profile, clock, POLICY, active or [], recent or [], candidates,
                  BUDGET if budget is None else budget)


def issued(decision: Decision) -> Offer:
    assert decision.issue is not None
    assert decision.show == [decision.issue]
    return decision.issue


# ---------------------------------------------------------------- who gets what

def test_dormant_customer_gets_a_winback_coupon_on_favourites_else_bought_items() -> None:
    offer = issued(run(customer(segment="dormant")))
    assert (offer.kind, offer.rule_id, offer.items) == ("winback_coupon", "winback-dormant",
                                                        ("fav1", "fav2"))
    assert offer.discount_pct > 0 and offer.trigger == "segment:dormant"
    rule = RULES["winback-dormant"]
    assert offer.expires_at == CLOCK + rule.valid_hours * HOUR
    assert f"{offer.discount_pct:g}%" in offer.reason and f"{rule.valid_hours} h" in offer.reason
    no_favourites = replace(CANDIDATES, favorites=[])
    assert issued(run(customer(segment="dormant"), candidates=no_favourites)).items == ("b1", "b2")
    many = replace(CANDIDATES, favorites=[f"f{n}" for n in range(20)] + ["f0"])
    assert issued(run(customer(segment="dormant"), candidates=many)).items == \
        tuple(f"f{n}" for n in range(rule.max_items))


def test_prospect_gets_a_first_order_discount() -> None:
    offer = issued(run(customer(lifecycle="prospect")))
    assert offer.kind == "first_order_discount" and offer.discount_pct > 0
    assert offer.items == ("best1", "best2") and offer.trigger == "lifecycle:prospect"


def test_replenishment_due_gets_a_reminder_with_those_items() -> None:
    offer = issued(run(customer(due=("soap",))))
    assert (offer.kind, offer.items, offer.trigger) == ("replenishment_reminder", ("soap",),
                                                        "replenishment_due")
    assert "1 of your regular items" in offer.reason


def test_tier_gap_within_max_gap_gets_a_nudge_whose_items_close_the_gap() -> None:
    tier = TierStatus(tier="member", window_spend=265.0, next_tier="silver", gap=35.0)
    offer = issued(run(customer(tier=tier)))
    assert offer.kind == "tier_nudge" and offer.discount_pct == 0
    prices = dict(PRICED)
    assert sum(prices[i] for i in offer.items) >= 35.0
    assert offer.items == ("socks", "cap")  # 37: overshoots least
    assert offer.reason == "Add 35 GBP to reach Silver"
    far = replace(tier, gap=RULES["tier-nudge"].when.max_gap + 0.01)
    assert run(customer(tier=far)) == Decision([], None)


def test_high_value_loyal_gets_early_access_without_a_discount() -> None:
    offer = issued(run(customer(segment="high_value_loyal", lifecycle="mature")))
    assert (offer.kind, offer.discount_pct, offer.items) == ("early_access", 0, ("new1",))


def test_a_regular_customer_with_no_trigger_gets_nothing() -> None:
    assert run(customer()) == Decision([], None)


def test_the_highest_priority_matching_rule_wins() -> None:
    everything = customer(segment="dormant", due=("soap",),
                          tier=TierStatus("member", 290.0, "silver", 10.0))
    assert issued(run(everything)).rule_id == "winback-dormant"


# ---------------------------------------------------------------- idempotence and ids

def test_asking_again_returns_the_live_offer_and_issues_nothing() -> None:
    first = issued(run(customer(segment="dormant")))
    for later in (CLOCK, CLOCK + HOUR, first.expires_at - 1):
        again = run(customer(segment="dormant"), clock=later, active=[first], recent=[first])
        assert again == Decision([first], None)


def test_offer_ids_are_deterministic_per_customer_rule_and_period() -> None:
    rule = RULES["winback-dormant"]
    period = rule.valid_hours * HOUR
    start = (CLOCK // period) * period
    a = issued(run(customer(segment="dormant"), clock=start + 60))
    b = issued(run(customer(segment="dormant"), clock=start + period - 60))
    assert a.offer_id == b.offer_id  # two replicas in the same period: one offer
    assert issued(run(customer(segment="dormant"), clock=start + 60)) == a
    assert issued(run(customer(segment="dormant"), clock=start + period)).offer_id != a.offer_id
    assert issued(run(customer(segment="dormant", user="u2"))).offer_id != a.offer_id
    other = issued(run(customer(segment="at_risk")))
    assert other.offer_id != issued(run(customer(segment="dormant"))).offer_id


def test_an_offer_issued_and_redeemed_in_this_period_is_not_issued_again() -> None:
    first = issued(run(customer(segment="dormant")))
    uncapped = structs.replace(
        POLICY, rules=tuple(structs.replace(r, cap_days=0.0) for r in POLICY.rules))
    later = decide(customer(segment="dormant"), CLOCK + 60, uncapped, [], [first],
                   CANDIDATES, BUDGET)
    assert later == Decision([], None)
    next_period = decide(customer(segment="dormant"), first.expires_at, uncapped, [], [first],
                         CANDIDATES, BUDGET)
    assert issued(next_period).offer_id != first.offer_id


# ---------------------------------------------------------------- expiry, caps, budgets

def test_an_expired_offer_is_not_shown_and_its_rule_waits_for_the_cap_window() -> None:
    first = issued(run(customer(segment="dormant")))
    cap = RULES["winback-dormant"].cap_days * DAY
    expired = run(customer(segment="dormant"), clock=first.expires_at, active=[first],
                  recent=[first])
    assert expired == Decision([], None)
    near_end = run(customer(segment="dormant"), clock=CLOCK + cap - 1, recent=[first])
    assert near_end == Decision([], None)
    after = issued(run(customer(segment="dormant"), clock=CLOCK + cap, active=[first],
                       recent=[first]))
    assert after.rule_id == first.rule_id and after.offer_id != first.offer_id


def test_a_capped_rule_lets_the_next_matching_rule_through() -> None:
    first = issued(run(customer(segment="dormant")))
    both = customer(segment="dormant", due=("soap",))
    assert issued(run(both, clock=first.expires_at + 1, recent=[first])).kind == \
        "replenishment_reminder"


def test_budget_zero_blocks_the_kind() -> None:
    empty = {**BUDGET, "winback_coupon": 0}
    assert run(customer(segment="dormant"), budget=empty) == Decision([], None)
    missing = {k: v for k, v in BUDGET.items() if k != "winback_coupon"}
    assert run(customer(segment="dormant"), budget=missing) == Decision([], None)
    fallback = run(customer(segment="dormant", due=("soap",)), budget=empty)
    assert issued(fallback).kind == "replenishment_reminder"
    assert remaining_budget(POLICY, {"winback_coupon": 10**6})["winback_coupon"] == 0


def test_no_items_means_no_offer() -> None:
    nothing = OfferCandidates(currency="GBP")
    for profile in (customer(segment="dormant"), customer(lifecycle="prospect"),
                    customer(due=("soap",)), customer(segment="high_value_loyal"),
                    customer(tier=TierStatus("member", 290.0, "silver", 10.0))):
        assert run(profile, candidates=nothing) == Decision([], None)


def test_offer_clock_helpers() -> None:
    offer = issued(run(customer(segment="dormant")))
    assert seconds_left(offer, CLOCK + HOUR) == offer.expires_at - CLOCK - HOUR
    assert seconds_left(offer, offer.expires_at + 5) == 0
    assert is_active(offer, CLOCK, set())
    assert not is_active(offer, CLOCK, {offer.offer_id})
    assert not is_active(offer, offer.expires_at, set())


# ---------------------------------------------------------------- the event round trip

def test_issued_event_folds_into_the_document_the_offer_is_read_back_from() -> None:
    offer = issued(run(customer(tier=TierStatus("member", 265.0, "silver", 35.0))))
    event = issued_event(offer)
    assert event.event_id == issued_event(offer).event_id
    assert offer.offer_id in event.event_id
    folder = Folder(Keys("t", 4), Settings().features, Settings().model)
    [doc] = [json.loads(op[3]) for op in folder.fold(event) if op[0] == "hset"
             and op[1].endswith(":offers")]
    assert offer_from_doc(offer.user_id, doc) == offer


# ---------------------------------------------------------------- the policy file

BASE = """\
version = "test-v1"
[budgets]
winback_coupon = 5
tier_nudge = 5
early_access = 5
[[rules]]
id = "wb"
priority = 10
when = { segment = ["dormant"] }
kind = "winback_coupon"
discount_pct = 15
valid_hours = 24
items = "favorites_or_bought"
max_items = 4
reason = "{discount_pct}% off, {hours} h"
cap_days = 30
[[rules]]
id = "tier"
priority = 5
when = { trigger = "tier_gap", max_gap = 40.0 }
kind = "tier_nudge"
discount_pct = 0
valid_hours = 24
items = "gap_closers"
max_items = 2
reason = "Add {gap} {currency} to reach {next_tier}"
cap_days = 14
"""


def test_the_shipped_policy_loads_and_gives_every_kind_a_budget() -> None:
    assert POLICY.version == "offers-v1"
    assert {rule.kind for rule in POLICY.rules} <= set(POLICY.budgets)
    assert len(POLICY.rules) >= 5
    assert all(r.discount_pct == 0 for r in POLICY.rules if r.kind == "early_access")
    assert load_policy(Path(offers.__file__).parents[1] / "aisle" / "offers.v1.toml") == POLICY
    assert parse_policy(BASE).version == "test-v1"
    # Every segment and stage a rule names is one the customer model assigns.
    assert load_policy(segments={*SEGMENTS, FALLBACK_SEGMENT},
                       lifecycles=LIFECYCLE_STAGES) == POLICY


def test_priority_not_file_order_decides() -> None:
    policy = parse_policy(BASE.replace("priority = 5", "priority = 20"))
    both = customer(segment="dormant", tier=TierStatus("member", 290.0, "silver", 10.0))
    decision = decide(both, CLOCK, policy, [], [], CANDIDATES, remaining_budget(policy, {}))
    assert issued(decision).rule_id == "tier"
    assert issued(decide(both, CLOCK, parse_policy(BASE), [], [], CANDIDATES,
                         remaining_budget(policy, {}))).rule_id == "wb"


@pytest.mark.parametrize(("old", "new", "field"), [
    ("discount_pct = 15", 'discount_pct = "15"', "$.rules[0].discount_pct"),
    ("discount_pct = 15", "discount_pct = 150", "$.rules[0].discount_pct"),
    ("valid_hours = 24\nitems = \"fav", "valid_hours = 0\nitems = \"fav", "$.rules[0].valid_hours"),
    ('kind = "winback_coupon"', 'kind = "coupon"', "$.rules[0].kind"),
    ('items = "gap_closers"', 'items = "cheapest"', "$.rules[1].items"),
    ("max_items = 4", "max_items = 51", "$.rules[0].max_items"),
    ("cap_days = 30", "cap_days = 30\ncolour = 1", "$.rules[0]"),
    ('id = "wb"', 'id = "Win Back!"', "$.rules[0].id"),
    ('version = "test-v1"', "", "version"),
    ("winback_coupon = 5", "winback_coupon = -1", "$.budgets"),
    ("winback_coupon = 5", "", "$.budgets"),
    ("priority = 5", "priority = 10", "$.rules[1].priority"),
    ('id = "tier"', 'id = "wb"', "$.rules[1].id"),
    (", max_gap = 40.0", "", "$.rules[1].when.max_gap"),
    ('segment = ["dormant"] }', 'segment = ["dormant"], max_gap = 5.0 }',
     "$.rules[0].when.max_gap"),
    ('when = { trigger = "tier_gap", max_gap = 40.0 }', "", "$.rules[1].items"),
    ("{discount_pct}% off", "{discount}% off", "$.rules[0].reason"),
    ("{discount_pct}% off", "{gap} off", "$.rules[0].reason"),
    ("{discount_pct}% off", "{discount_pct:.1f}% off", "$.rules[0].reason"),
    ("{discount_pct}% off", "{discount_pct% off", "$.rules[0].reason"),
    ('kind = "tier_nudge"', 'kind = "early_access"\n#', "$.rules[1].discount_pct"),
    ("max_items = 4", "max_items = 4 =", "not valid TOML"),
])
def test_policy_errors_name_the_field(old: str, new: str, field: str) -> None:
    assert old in BASE
    text = BASE.replace(old, new, 1)
    if 'kind = "early_access"' in text:
        text = text.replace("discount_pct = 0", "discount_pct = 5")
    with pytest.raises(PolicyError, match="test.toml") as caught:
        parse_policy(text, "test.toml")
    assert field in str(caught.value)


def test_policy_names_are_checked_against_the_model_vocabulary(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text(BASE.replace('["dormant"]', '["dormnat"]'))
    assert load_policy(path).rules[0].when.segment == ("dormnat",)
    with pytest.raises(PolicyError, match=r"dormnat.*\$\.rules\[0\]\.when\.segment"):
        load_policy(path, segments={"dormant", "high_value_loyal"})


# ---------------------------------------------------------------- gap closers

def test_doctests() -> None:
    assert doctest.testmod(offers).failed == 0


def test_gap_closers_ignore_bad_prices_and_repeats() -> None:
    assert gap_closers([("a", -5.0), ("b", float("nan")), ("c", 0.0)], 1.0, 3) == []
    assert gap_closers([("a", 10.0), ("a", 10.0)], 15.0, 2) == []
    assert gap_closers(PRICED, 0.0, 2) == [] and gap_closers(PRICED, 10.0, 0) == []


prices = st.lists(st.integers(1, 200).map(float), max_size=12)


@settings(max_examples=300, deadline=None)
@given(prices, st.integers(1, 300).map(float))
def test_gap_closers_pick_the_least_overshoot_of_one_or_two_items(
        values: list[float], gap: float) -> None:
    priced = [(f"i{n}", p) for n, p in enumerate(values)]
    got = gap_closers(priced, gap, 2)
    price = dict(priced)
    baskets = [(i,) for i in price] + list(itertools.combinations(price, 2))
    closing = [sum(price[i] for i in b) for b in baskets if sum(price[i] for i in b) >= gap]
    if not closing:
        assert got == []
        return
    total = sum(price[i] for i in got)
    assert total >= gap and len(set(got)) == len(got) <= 2
    singles = [price[i] for i in price if price[i] >= gap]
    if singles and min(singles) <= gap * (1 + SINGLE_ITEM_OVERSHOOT):
        assert total == min(singles) and len(got) == 1
    else:
        assert total == min(closing)


def test_still_fit_shows_offers_as_issued_and_drops_what_no_longer_fits() -> None:
    from feature_store.reader import ItemInfo, UserState
    from serving.crm import still_fit

    def offer(offer_id: str, items: tuple[str, ...]) -> offers.Offer:
        return offers.Offer(offer_id=offer_id, user_id="u1", rule_id="r", policy_version="1",
                            kind="winback", discount_pct=10.0, items=items, issued_at=1.0,
                            expires_at=2.0, reason="", trigger="")

    infos = {"a": ItemInfo("a", "A"), "b": ItemInfo("b", "B", stock=0),
             "c": ItemInfo("c", "C", attributes={"material": "polyester"})}
    state = UserState("u1", [], {}, {}, {"material:polyester": {}}, {}, [], None, {})
    whole, some, none, empty = (offer("o1", ("a",)), offer("o2", ("a", "b", "x")),
                                offer("o3", ("b", "c")), offer("o4", ()))
    shown = still_fit([whole, some, none, empty], infos, state)
    assert [o.offer_id for o in shown] == ["o1", "o2"]
    assert shown[0] is whole  # as issued: not copied
    assert shown[1].items == ("a",) and some.items == ("a", "b", "x")  # the issued one kept
