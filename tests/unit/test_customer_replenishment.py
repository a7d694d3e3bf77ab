"""Replenishment: population cycles, per-customer run-out, fallbacks and overdue exclusion."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.customer_types import CustomerFacts, PopulationStats, Purchase, RFMThresholds
from models.replenishment import population_cycles, replenishments

DAY = 86400.0
CLOCK = 1_315_526_400.0


def buys(*spec: tuple[str, float, str | None]) -> tuple[Purchase, ...]:
    """(item, day, category) → purchases, newest first as the store keeps them."""
    lines = [Purchase(f"o{day}", item, day * DAY, 1, 2.0, cat) for item, day, cat in spec]
    return tuple(sorted(lines, key=lambda p: -p.ts))


def customer(purchases: tuple[Purchase, ...]) -> CustomerFacts:
    times = [p.ts for p in purchases]
    return CustomerFacts("u", min(times), max(times), min(times), max(times),
                         orders=len({p.order_id for p in purchases}), monetary=1.0,
                         purchases=purchases)


def stats(items: dict[str, float] | None = None,
          categories: dict[str, float] | None = None) -> PopulationStats:
    return PopulationStats(rfm=RFMThresholds((), (), (), 0.0, 0), churn=None,
                           item_cycle_days=items or {}, category_cycle_days=categories or {},
                           as_of=0.0)


# ---------------------------------------------------------------- population


def test_population_cycle_is_the_median_of_customers_medians() -> None:
    histories = [
        buys(("soap", 0, "wash"), ("soap", 10, "wash"), ("soap", 20, "wash")),  # 10
        buys(("soap", 0, "wash"), ("soap", 30, "wash")),                        # 30
        buys(("soap", 0, "wash"), ("soap", 14, "wash"), ("soap", 15, "wash"),
             ("soap", 16, "wash"), ("soap", 17, "wash")),                       # 1,1,1,14: 1
        buys(("mug", 0, "kitchen"), ("mug", 50, "kitchen")),
        buys(("mug", 0, "kitchen"), ("mug", 70, "kitchen"), ("gel", 5, "wash")),
    ]
    items, categories = population_cycles(histories, min_repeaters=3)
    assert items == {"soap": 10.0}                 # mug: only 2 repeat customers
    # "wash": the same three customers (gel is a different item, not a rebuy of soap).
    assert categories == {"wash": 10.0}
    items2, categories2 = population_cycles(histories, min_repeaters=2)
    assert items2 == {"soap": 10.0, "mug": 60.0}
    assert categories2 == {"wash": 10.0, "kitchen": 60.0}


def test_same_trip_purchases_are_one_trip() -> None:
    hour = 1 / 24
    histories = [buys(("tea", 0, None), ("tea", hour, None), ("tea", 7, None))] * 3
    items, categories = population_cycles(histories)
    assert items == {"tea": pytest.approx(7 - hour)}  # the sub-day gap is not a cycle
    assert categories == {}  # no categories known


def test_single_purchases_make_no_cycle() -> None:
    assert population_cycles([buys(("a", 0, "x")), buys(("a", 3, "x"))], 1) == ({}, {})
    assert population_cycles([], 1) == ({}, {})


# ---------------------------------------------------------------- per customer


def test_own_rhythm_first() -> None:
    c = customer(buys(("soap", 0, "wash"), ("soap", 10, "wash"), ("soap", 22, "wash")))
    due = replenishments(c, stats({"soap": 99.0}), clock=30 * DAY, due_within_days=7)
    assert len(due) == 1
    r = due[0]
    assert (r.item_id, r.basis, r.interval_days) == ("soap", "customer", 11.0)
    assert (r.last_purchase_ts, r.runout_ts) == (22 * DAY, 33 * DAY)


@pytest.mark.parametrize(("clock_day", "is_due"), [(25.9, False), (26.1, True)])
def test_due_window_boundary(clock_day: float, is_due: bool) -> None:
    c = customer(buys(("soap", 0, None), ("soap", 11, None), ("soap", 22, None)))
    due = replenishments(c, stats(), clock=clock_day * DAY, due_within_days=7)
    assert bool(due) is is_due  # run-out on day 33


def test_fallbacks_population_then_category() -> None:
    c = customer(buys(("soap", 0, "wash"), ("gel", 2, "wash"), ("vase", 3, "decor"),
                      ("mug", 4, "kitchen")))
    s = stats({"soap": 20.0}, {"wash": 12.0, "decor": 10.0})
    due = replenishments(c, s, clock=15 * DAY, due_within_days=7, repeat_items={"gel", "mug"})
    assert [(r.item_id, r.basis, r.interval_days) for r in due] == [
        ("gel", "category", 12.0),     # rebought by someone, too few for its own cycle
        ("soap", "population", 20.0),
    ]
    # vase: its category has a cycle but nobody rebuys the vase; mug: no cycle at all.
    # Without repeat_items the category cycle speaks for no item.
    assert [r.item_id for r in replenishments(c, s, 15 * DAY, 7)] == ["soap"]


@pytest.mark.parametrize(("clock_day", "is_due"), [(39.0, True), (41.0, False)])
def test_long_overdue_items_are_dropped(clock_day: float, is_due: bool) -> None:
    # Interval 10 days, run-out on day 10: more than 3 intervals past it on day 40.
    c = customer(buys(("soap", 0, None)))
    due = replenishments(c, stats({"soap": 10.0}), clock=clock_day * DAY, due_within_days=7)
    assert bool(due) is is_due
    loose = replenishments(c, stats({"soap": 10.0}), clock=clock_day * DAY,
                           due_within_days=7, max_overdue_intervals=10)
    assert len(loose) == 1


def test_sorted_by_runout_then_item() -> None:
    c = customer(buys(("b", 0, None), ("a", 0, None), ("c", 1, None)))
    due = replenishments(c, stats({"a": 5.0, "b": 5.0, "c": 2.0}), clock=6 * DAY,
                         due_within_days=1)
    assert [r.item_id for r in due] == ["c", "a", "b"]


# ---------------------------------------------------------------- against a plain reference


def reference(facts: CustomerFacts, st_: PopulationStats, clock: float, within: float,
              repeat: set[str] | None, overdue: float) -> list[tuple[str, float, float, str]]:
    """The rule as the docstring states it, written the obvious way."""
    import statistics

    from models.replenishment import trip_gaps_days

    out = []
    for item in {p.item_id for p in facts.purchases}:
        mine = [p for p in facts.purchases if p.item_id == item]
        last = max(p.ts for p in mine)
        gaps = trip_gaps_days(p.ts for p in mine)
        cat = next((p.category for p in mine if p.category is not None), None)
        if gaps:
            interval, basis = statistics.median(gaps), "customer"
        elif item in st_.item_cycle_days:
            interval, basis = st_.item_cycle_days[item], "population"
        elif repeat is not None and item in repeat and cat in st_.category_cycle_days:
            interval, basis = st_.category_cycle_days[cat], "category"
        else:
            continue
        runout = last + interval * DAY
        if runout <= clock + within * DAY and clock - runout <= overdue * interval * DAY:
            out.append((item, interval, runout, basis))
    return sorted(out, key=lambda r: (r[2], r[0]))


@settings(max_examples=300, deadline=None)
@given(lines=st.lists(st.tuples(st.sampled_from("abcdef"), st.floats(0, 400),
                                st.sampled_from([None, "x", "y"])), min_size=1, max_size=30),
       clock_day=st.floats(0, 600), repeat=st.one_of(st.none(), st.sets(st.sampled_from("abcdef"))))
def test_replenishments_match_the_plain_reference(
        lines: list[tuple[str, float, str | None]], clock_day: float,
        repeat: set[str] | None) -> None:
    facts = customer(buys(*lines))
    population = stats({"b": 12.0, "e": 3.5}, {"x": 20.0, "y": 45.0})
    clock = clock_day * DAY
    got = [(r.item_id, r.interval_days, r.runout_ts, r.basis)
           for r in replenishments(facts, population, clock, 7.0, repeat, 3.0)]
    assert got == reference(facts, population, clock, 7.0, repeat, 3.0)
