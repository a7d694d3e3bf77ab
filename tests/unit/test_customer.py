"""Customer intelligence: RFM, segments, lifecycle, tiers, rules file and the profile."""

from __future__ import annotations

import dataclasses
import doctest
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models import churn, customer, replenishment
from models.customer import (
    build_profile,
    lifecycle_stage,
    lifecycle_transitions,
    load_segment_rules,
    rfm_thresholds,
    rfm_values,
    score_rfm,
    segment,
    thresholds_stale,
    tier_status,
)
from models.customer_types import (
    BGNBDParams,
    CustomerFacts,
    PopulationStats,
    Purchase,
    RFMScore,
    RFMThresholds,
)

DAY = 86400.0
CLOCK = 1_315_526_400.0  # 2011-09-09T00:00:00Z
RULES = load_segment_rules()
LIFE = RULES.lifecycle
# Hand-made edges: R 5 for ≤10 days, 4 ≤30, 3 ≤60, 2 ≤120, else 1; F 1,2,3,4-5,6+.
THRESHOLDS = RFMThresholds(recency_days=(10.0, 30.0, 60.0, 120.0), frequency=(1.0, 2.0, 3.0, 5.0),
                           monetary=(100.0, 200.0, 400.0, 800.0), as_of=CLOCK, customers=100)


def facts(days_ago: list[float], monetary: float = 50.0, orders: int | None = None,
          first_seen_days_ago: float | None = None, **extra: object) -> CustomerFacts:
    """A customer with one purchase line per order, ``days_ago`` before CLOCK."""
    times = sorted(CLOCK - d * DAY for d in days_ago)
    lines = tuple(Purchase(f"o{i}", "sku", t, 1, 10.0, "bag")
                  for i, t in reversed(list(enumerate(times))))
    seen = CLOCK - first_seen_days_ago * DAY if first_seen_days_ago is not None else \
        (times[0] if times else None)
    return CustomerFacts(
        user_id="u1", first_seen_ts=seen, last_seen_ts=times[-1] if times else seen,
        first_order_ts=times[0] if times else None, last_order_ts=times[-1] if times else None,
        orders=len(times) if orders is None else orders, monetary=monetary if times else 0.0,
        purchases=lines, **extra)  # type: ignore[arg-type]


def score(r: int, f: int, m: int, days: float = 5.0) -> RFMScore:
    return RFMScore(recency_days=days, frequency=f, monetary=0.0, r=r, f=f, m=m)


@pytest.mark.parametrize("module", [customer, churn, replenishment])
def test_doctests(module: object) -> None:
    assert doctest.testmod(module).failed == 0  # type: ignore[arg-type]


# ---------------------------------------------------------------- RFM


def test_rfm_scores_on_a_known_population() -> None:
    # Ten customers: recency 1..10 days, spend 10..100; edges by linear interpolation.
    population = [facts([float(d)], monetary=10.0 * d) for d in range(1, 11)]
    recency, frequency, monetary = rfm_values(population + [facts([])], CLOCK)
    assert len(recency) == 10  # the prospect is not part of the population
    t = rfm_thresholds(recency, frequency, monetary, as_of=CLOCK)
    assert t.recency_days == (2.8, 4.6, 6.4, 8.2)
    assert t.monetary == (28.0, 46.0, 64.0, 82.0)
    assert t.frequency == (1.0, 1.0, 1.0, 1.0)
    got = [score_rfm(f, t, CLOCK) for f in population]
    assert [s.r for s in got if s] == [5, 5, 4, 4, 3, 3, 2, 2, 1, 1]
    assert [s.m for s in got if s] == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert {s.f for s in got if s} == {1}  # everyone tied at one order


def test_rfm_edges_belong_to_the_lower_bin() -> None:
    on_edge = score_rfm(facts([30.0] * 2, monetary=200.0), THRESHOLDS, CLOCK)
    above = score_rfm(facts([31.0] * 3, monetary=200.01), THRESHOLDS, CLOCK)
    assert on_edge is not None and (on_edge.r, on_edge.f, on_edge.m) == (4, 2, 2)
    assert above is not None and (above.r, above.f, above.m) == (3, 3, 3)
    assert above.code == "333"


def test_rfm_small_and_empty_populations() -> None:
    none = rfm_thresholds(np.array([]), np.array([]), np.array([]), as_of=CLOCK)
    assert none.customers == 0 and none.recency_days == ()
    s = score_rfm(facts([3.0]), none, CLOCK)
    assert s is not None and (s.r, s.f, s.m) == (3, 3, 3)
    one = rfm_thresholds(np.array([5.0]), np.array([2.0]), np.array([9.0]), as_of=CLOCK)
    assert one.frequency == (2.0,) * 4
    assert score_rfm(facts([]), one, CLOCK) is None


def test_thresholds_refresh_rule() -> None:
    assert not thresholds_stale(THRESHOLDS, CLOCK + 0.5 * DAY, customers=104)
    assert thresholds_stale(THRESHOLDS, CLOCK + 1 * DAY, customers=100)
    assert thresholds_stale(THRESHOLDS, CLOCK, customers=106)


# ---------------------------------------------------------------- segments


def seg(f: CustomerFacts, p: float | None = None, s: RFMScore | None = None) -> str:
    s = s if s is not None else score_rfm(f, THRESHOLDS, CLOCK)
    return segment(f, s, p, CLOCK, RULES)[0]


def test_prospect_has_no_order() -> None:
    assert segment(facts([], first_seen_days_ago=3), None, None, CLOCK, RULES) == \
        ("prospect", "has not ordered yet")


@pytest.mark.parametrize(("first_days", "expected"), [(29, "new"), (31, "regular")])
def test_new_boundary(first_days: float, expected: str) -> None:
    assert seg(facts([first_days])) == expected


@pytest.mark.parametrize(("days", "expected"), [(119, "regular"), (121, "dormant"),
                                                (239, "dormant"), (241, "lost")])
def test_one_time_buyers_go_quiet_by_days(days: float, expected: str) -> None:
    # p_alive is 1 for one-time buyers (BG/NBD): recency in days decides alone.
    assert seg(facts([days]), p=1.0, s=score(r=3, f=1, m=1, days=days)) == expected


@pytest.mark.parametrize(("p", "expected"), [(0.09, "lost"), (0.11, "dormant"),
                                             (0.29, "dormant"), (0.31, "at_risk"),
                                             (0.49, "at_risk"), (0.51, "regular")])
def test_p_alive_boundaries(p: float, expected: str) -> None:
    assert seg(facts([200.0, 40.0]), p=p, s=score(r=3, f=2, m=2, days=40)) == expected


@pytest.mark.parametrize(("r", "f", "m", "expected"), [
    (2, 4, 1, "at_risk"), (2, 1, 4, "at_risk"), (3, 4, 4, "regular"), (2, 3, 3, "regular"),
    (4, 4, 4, "high_value_loyal"), (5, 5, 3, "regular"), (3, 5, 5, "regular")])
def test_rfm_rules(r: int, f: int, m: int, expected: str) -> None:
    assert seg(facts([300.0, 50.0]), p=0.9, s=score(r, f, m)) == expected


@pytest.mark.parametrize(("days", "expected"), [
    ([200.0, 89.0, 10.0], "potential"),      # 2 in the last 90 days, 0 before
    ([200.0, 91.0, 10.0], "regular"),        # 1 in the last 90 days
    ([170.0, 100.0, 60.0, 10.0], "regular"),  # 2 and 2: not rising
    ([170.0, 60.0, 30.0, 10.0], "potential"),  # 3 vs 1
])
def test_potential_needs_rising_frequency(days: list[float], expected: str) -> None:
    assert seg(facts(days), p=0.9, s=score(3, 3, 3)) == expected


def test_precedence_is_data() -> None:
    f, s = facts([300.0, 100.0]), score(2, 5, 5, days=100)
    assert seg(f, 0.9, s) == "at_risk"
    order = ("prospect", "new", "lost", "dormant", "high_value_loyal", "at_risk", "potential")
    loyal_first = dataclasses.replace(RULES, precedence=order, loyal_min_score=2)
    assert segment(f, s, 0.9, CLOCK, loyal_first)[0] == "high_value_loyal"


def test_reasons_say_why() -> None:
    name, reason = segment(facts([130.0]), None, None, CLOCK, RULES)
    assert name == "dormant" and "130 days" in reason and "120" in reason


# ---------------------------------------------------------------- lifecycle


def test_first_purchase_after_browsing() -> None:
    f = facts([10.0], first_seen_days_ago=15)
    assert lifecycle_transitions(f, CLOCK, LIFE) == [("prospect", CLOCK - 15 * DAY),
                                                      ("first_purchase", CLOCK - 10 * DAY)]
    assert lifecycle_stage(f, CLOCK, None, LIFE) == "first_purchase"
    assert lifecycle_stage(facts([], first_seen_days_ago=1), CLOCK, None, LIFE) == "prospect"


def test_quiet_customer_goes_at_risk_then_churned() -> None:
    # Orders on days 0..40 (every 10 days); clock 250 days after the first.
    f = facts([250.0, 240.0, 230.0, 220.0, 210.0])
    day = lambda d: CLOCK - 250 * DAY + d * DAY  # noqa: E731
    assert lifecycle_transitions(f, CLOCK, LIFE) == [
        ("first_purchase", day(0)), ("growing", day(10)), ("at_risk", day(130)),
        ("churned", day(220))]
    assert lifecycle_stage(f, CLOCK, None, LIFE) == "churned"


@pytest.mark.parametrize(("days", "expected"), [(89, "growing"), (91, "at_risk"),
                                                (179, "at_risk"), (181, "churned")])
def test_recency_boundaries(days: float, expected: str) -> None:
    assert lifecycle_stage(facts([days + 20, days]), CLOCK, None, LIFE) == expected


def test_reactivation_and_back_to_normal() -> None:
    # Back after a 190-day gap, but quiet again for 100 days: at risk, not reactivated.
    f = facts([300.0, 290.0, 100.0])
    assert lifecycle_stage(f, CLOCK, None, LIFE) == "at_risk"
    f = facts([300.0, 290.0, 50.0])
    start = CLOCK - 300 * DAY
    assert lifecycle_transitions(f, CLOCK, LIFE) == [
        ("first_purchase", start), ("growing", start + 10 * DAY),
        ("at_risk", start + 100 * DAY), ("churned", start + 190 * DAY),
        ("reactivated", CLOCK - 50 * DAY)]
    assert lifecycle_stage(f, CLOCK, None, LIFE) == "reactivated"
    again = facts([300.0, 290.0, 50.0, 20.0])
    assert lifecycle_transitions(again, CLOCK, LIFE)[-1] == ("growing", CLOCK - 20 * DAY)


@pytest.mark.parametrize(("gap", "expected"), [(89, "growing"), (91, "reactivated")])
def test_reactivation_gap_boundary(gap: float, expected: str) -> None:
    assert lifecycle_stage(facts([gap + 30, 30.0]), CLOCK, None, LIFE) == expected


@pytest.mark.parametrize(("tenure", "expected"), [(179, "growing"), (181, "mature")])
def test_mature_needs_orders_and_tenure(tenure: float, expected: str) -> None:
    f = facts([tenure, tenure - 20, tenure - 40, tenure - 60, tenure - 100])
    assert lifecycle_stage(f, CLOCK, None, LIFE) == expected
    if expected == "mature":  # time-driven: begins when tenure reaches 180 days
        assert lifecycle_transitions(f, CLOCK, LIFE)[-1] == ("mature", CLOCK - 1 * DAY)


@pytest.mark.parametrize(("p", "expected"), [(0.19, "churned"), (0.3, "at_risk"),
                                             (0.6, "growing"), (None, "growing")])
def test_p_alive_moves_a_buying_customer(p: float | None, expected: str) -> None:
    assert lifecycle_stage(facts([40.0, 30.0]), CLOCK, p, LIFE) == expected


def test_truncated_history_invents_no_gap() -> None:
    # 12 orders, the history holds the last 3; the first was 400 days ago.
    f = dataclasses.replace(facts([30.0, 20.0, 10.0]), orders=12,
                            first_order_ts=CLOCK - 400 * DAY, first_seen_ts=CLOCK - 400 * DAY)
    stages = lifecycle_transitions(f, CLOCK, LIFE)
    assert [s for s, _ in stages] == ["first_purchase", "mature"]
    assert stages[-1][1] == CLOCK - 30 * DAY  # order no. 10 with tenure past 180 days
    assert lifecycle_stage(f, CLOCK, None, LIFE) == "mature"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0, 700), min_size=0, max_size=12),
       st.integers(0, 5))
def test_transitions_end_in_the_current_stage(days: list[float], extra_orders: int) -> None:
    f = facts(days, first_seen_days_ago=800)
    if days:
        f = dataclasses.replace(f, orders=f.orders + extra_orders,
                                first_order_ts=f.first_order_ts - extra_orders * DAY)
    stages = lifecycle_transitions(f, CLOCK, LIFE)
    assert stages == lifecycle_transitions(f, CLOCK, LIFE)
    assert stages[-1][0] == lifecycle_stage(f, CLOCK, None, LIFE)
    assert [t for _, t in stages] == sorted(t for _, t in stages)
    assert all(a[0] != b[0] for a, b in zip(stages, stages[1:], strict=False))


# ---------------------------------------------------------------- tiers


def month_clock(year: int, month: int, day: int) -> float:
    return datetime(year, month, day, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(("spend", "tier", "next_tier", "gap"), [
    (0.0, "member", "silver", 300.0), (299.99, "member", "silver", 0.01),
    (300.0, "silver", "gold", 700.0), (4999.5, "gold", "platinum", 0.5),
    (5000.0, "platinum", None, None), (12345.0, "platinum", None, None)])
def test_tier_gap_arithmetic(spend: float, tier: str, next_tier: str | None,
                             gap: float | None) -> None:
    f = facts([5.0], spend_by_month={"2011-09": spend})
    status = tier_status(f, CLOCK, RULES.tiers)
    assert (status.tier, status.window_spend, status.next_tier, status.gap) == \
        (tier, spend, next_tier, gap)


def test_tier_window_counts_months_that_begin_inside_it() -> None:
    spend = {"2010-09": 1.0, "2010-10": 10.0, "2011-08": 100.0, "2011-09": 1000.0,
             "2011-10": 10000.0}
    f = facts([5.0], spend_by_month=spend)
    # Window (2010-09-15, 2011-09-15]: Oct 2010 .. Sep 2011 count; Sep 2010 and the
    # future October do not.
    assert tier_status(f, month_clock(2011, 9, 15), RULES.tiers).window_spend == 1110.0
    # On the first of a month that month has begun (start <= clock) and the one a year
    # back begins exactly at the window's start: outside. Still twelve months.
    assert tier_status(f, month_clock(2011, 10, 1), RULES.tiers).window_spend == 11100.0
    # A month that began exactly at the window's start is outside it.
    rules = dataclasses.replace(RULES.tiers, window_days=30.0)
    assert tier_status(f, month_clock(2011, 9, 30), rules).window_spend == 1000.0
    assert tier_status(f, month_clock(2011, 10, 1) - 1, rules).window_spend == 1000.0


def test_no_tier_below_the_first_level() -> None:
    rules = dataclasses.replace(RULES.tiers, levels=(("silver", 300.0), ("gold", 1000.0)))
    status = tier_status(facts([5.0], spend_by_month={"2011-09": 120.0}), CLOCK, rules)
    assert (status.tier, status.next_tier, status.gap) == (None, "silver", 180.0)


# ---------------------------------------------------------------- rules file


def test_default_rules_values() -> None:
    assert RULES.precedence[0] == "prospect"
    assert (RULES.new_within_days, RULES.dormant_after_days, RULES.lost_after_days) == \
        (30.0, 120.0, 240.0)
    assert RULES.tiers.levels[1] == ("silver", 300.0) and RULES.tiers.currency == "GBP"
    assert (LIFE.at_risk_after_days, LIFE.churned_after_days) == (90.0, 180.0)


DEFAULT_TEXT = (Path(customer.__file__).parents[1] / "aisle" / "segments.default.toml"
                ).read_text()


@pytest.mark.parametrize(("old", "new", "message"), [
    ("new_within_days = 30", "new_within_days = 30\nnew_within_dayz = 3", "unknown keys"),
    ("lost_p_alive = 0.1\n", "", "missing"),
    ('"potential"]', '"potential", "vip"]', "precedence"),
    ("lost_p_alive = 0.1", "lost_p_alive = 1.5", "p_alive"),
    ("dormant_after_days = 120", 'dormant_after_days = "120"', "number"),
    ("min_spend = 1000", "min_spend = 100", "ascending"),
])
def test_bad_rules_are_rejected(tmp_path: Path, old: str, new: str, message: str) -> None:
    assert old in DEFAULT_TEXT
    path = tmp_path / "rules.toml"
    path.write_text(DEFAULT_TEXT.replace(old, new, 1))
    with pytest.raises(ValueError, match=message):
        load_segment_rules(path)


def test_own_rules_file_changes_answers(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(DEFAULT_TEXT.replace("dormant_after_days = 120", "dormant_after_days = 60"))
    f = facts([90.0])
    assert seg(f) == "regular"
    assert segment(f, None, None, CLOCK, load_segment_rules(path))[0] == "dormant"


# ---------------------------------------------------------------- profile


def stats(churn_params: BGNBDParams | None = None) -> PopulationStats:
    return PopulationStats(rfm=THRESHOLDS, churn=churn_params,
                           item_cycle_days={"soap": 30.0}, category_cycle_days={},
                           as_of=CLOCK)


def test_profile_ties_it_together() -> None:
    lines = (Purchase("o3", "soap", CLOCK - 25 * DAY, 2, 3.0, "soap"),
             Purchase("o3", "mug", CLOCK - 25 * DAY, 1, 9.0, "mug"),
             Purchase("o2", "mug", CLOCK - 60 * DAY, 1, 9.0, "mug"),
             Purchase("o1", "vase", CLOCK - 90 * DAY, 1, 20.0, "vase"))
    f = CustomerFacts(
        user_id="u7", first_seen_ts=CLOCK - 95 * DAY, last_seen_ts=CLOCK - 1 * DAY,
        first_order_ts=CLOCK - 90 * DAY, last_order_ts=CLOCK - 25 * DAY, orders=4,
        monetary=41.0, purchases=lines, promo_orders=1, sources={"app": 5, "web": 5, "sms": 1},
        spend_by_month={"2011-08": 41.0},
        categories={"mug": 2.0, "vase": 1.0, "soap": 2.0, "card": 0.5})
    params = BGNBDParams(r=0.5, alpha=5.0, a=0.8, b=2.5)
    p = build_profile(f, stats(params), CLOCK, RULES)
    assert p.rfm is not None and p.rfm.code == "441"
    x, t_x, big_t = churn.customer_rhythm(f, CLOCK)
    expected = churn.p_alive(params, np.array([x]), np.array([t_x]), np.array([big_t]))[0]
    assert p.p_alive == pytest.approx(expected) and p.churn_risk == pytest.approx(1 - expected)
    assert p.top_categories == ("mug", "soap", "vase")
    assert p.preferred_source == "app"            # ties broken by name
    assert p.price_band == "high"                 # 41 / 5 units = 8.2 a unit
    assert p.promotion_sensitivity == 0.25
    assert p.tier.tier == "member" and p.tier.gap == 259.0
    assert [r.item_id for r in p.replenishments_due] == ["soap"]  # 25 + 30 days: due in 5
    assert (p.segment, p.lifecycle) == ("potential", "growing")


def test_profile_of_a_one_time_buyer_has_no_p_alive() -> None:
    p = build_profile(facts([130.0]), stats(BGNBDParams(0.5, 5.0, 0.8, 2.5)), CLOCK, RULES)
    assert p.p_alive is None and p.churn_risk is None
    assert (p.segment, p.lifecycle) == ("dormant", "at_risk")
    assert p.price_band == "high"


def test_profile_of_a_prospect() -> None:
    p = build_profile(facts([], first_seen_days_ago=2), stats(), CLOCK, RULES)
    assert (p.rfm, p.segment, p.lifecycle, p.price_band) == (None, "prospect", "prospect", None)
    assert p.promotion_sensitivity is None and p.replenishments_due == ()
