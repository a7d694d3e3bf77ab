"""Replenishment: when will a customer run out of what they buy again and again.

"The detergent you usually buy will last about 3 more days — reorder?" A purchase cycle
is the gap between two trips on which one customer bought the same item (or category).
Purchases less than :data:`SAME_TRIP_DAYS` apart are one trip: a second basket the same
afternoon is not a cycle of half an hour.

- :func:`population_cycles` (batch, run by the workers with the other population stats):
  per item and per category, the median over repeat customers of each customer's own
  median gap, for items/categories rebought by at least ``min_repeaters`` customers. The
  median of medians weighs customers equally, so one wholesaler rebuying weekly does not
  set the cycle for everyone.
- :func:`replenishments` (per customer, at answer time): the items due soon, each with
  the interval it was predicted from and its basis — the customer's own median gap, else
  the item's population cycle, else its category's.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from models.customer_types import CustomerFacts, PopulationStats, Purchase, Replenishment

__all__ = ["SAME_TRIP_DAYS", "population_cycles", "replenishments", "trip_gaps_days"]

DAY_S = 86400.0
SAME_TRIP_DAYS = 1.0


def trip_gaps_days(timestamps: Iterable[float]) -> list[float]:
    """Gaps in days between consecutive trips, given purchase times in any order.

    Plain Python: a customer's history holds a few dozen times per item at most.

    >>> trip_gaps_days([0.0, 3600.0, 10 * DAY_S, 24 * DAY_S])
    [9.958333333333334, 14.0]
    """
    times = sorted(timestamps)
    gaps = ((b - a) / DAY_S for a, b in zip(times, times[1:], strict=False))
    return [g for g in gaps if g >= SAME_TRIP_DAYS]


def _group_medians(groups: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Median of ``values`` within each group id: ``(unique groups, medians)``."""
    if groups.size == 0:
        return groups, values.astype(np.float64)
    order = np.lexsort((values, groups))
    g, v = groups[order], values[order].astype(np.float64)
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    counts = np.diff(np.r_[starts, g.size])
    lo = starts + (counts - 1) // 2
    hi = starts + counts // 2
    return g[starts], (v[lo] + v[hi]) / 2.0


def _cycles(customer: np.ndarray, key: np.ndarray, ts: np.ndarray, names: list[str],
            min_repeaters: int) -> dict[str, float]:
    """Median over customers of each customer's median trip gap, per key."""
    if not names:
        return {}
    order = np.lexsort((ts, key, customer))
    c, k, t = customer[order], key[order], ts[order]
    same = (c[1:] == c[:-1]) & (k[1:] == k[:-1])
    gaps = np.diff(t) / DAY_S
    keep = same & (gaps >= SAME_TRIP_DAYS)
    pair = c[1:][keep].astype(np.int64) * len(names) + k[1:][keep]
    pairs, own_medians = _group_medians(pair, gaps[keep])
    pair_keys = pairs % len(names)
    keys, medians = _group_medians(pair_keys, own_medians)
    repeaters = np.bincount(pair_keys, minlength=len(names))[keys]
    return {names[int(key_)]: float(m)
            for key_, m, n in zip(keys, medians, repeaters, strict=True) if n >= min_repeaters}


def population_cycles(purchases_by_customer: Iterable[Sequence[Purchase]],
                      min_repeaters: int = 3) -> tuple[dict[str, float], dict[str, float]]:
    """``(item_cycle_days, category_cycle_days)`` over all customers' purchase histories."""
    rows_c: list[int] = []
    rows_ts: list[float] = []
    items: list[str] = []
    cats: list[str | None] = []
    for index, purchases in enumerate(purchases_by_customer):
        for p in purchases:
            rows_c.append(index)
            rows_ts.append(p.ts)
            items.append(p.item_id)
            cats.append(p.category)
    customer = np.asarray(rows_c, dtype=np.int64)
    ts = np.asarray(rows_ts, dtype=np.float64)
    item_names, item_key = np.unique(np.asarray(items, dtype=object), return_inverse=True)
    item_cycles = _cycles(customer, item_key, ts, [str(n) for n in item_names], min_repeaters)
    has_cat = np.array([c is not None for c in cats], dtype=bool)
    cat_names, cat_key = np.unique(np.asarray([c for c in cats if c is not None], dtype=object),
                                   return_inverse=True)
    cat_cycles = _cycles(customer[has_cat], cat_key, ts[has_cat],
                         [str(n) for n in cat_names], min_repeaters)
    return item_cycles, cat_cycles


def replenishments(facts: CustomerFacts, stats: PopulationStats, clock: float,
                   due_within_days: float = 7.0, repeat_items: set[str] | None = None,
                   max_overdue_intervals: float = 3.0) -> list[Replenishment]:
    """The customer's rebuys predicted to run out by ``clock + due_within_days``, by run-out.

    Reads ``facts.purchases`` (bounded history). An item qualifies when this customer
    bought it on two trips or more (basis ``customer``: their median gap), or the
    population rebuys it (``population``: the item's cycle), or it is in
    ``repeat_items`` — items someone rebought, too few for a cycle of their own — and
    its category has a cycle (``category``). Items more than ``max_overdue_intervals``
    intervals past their run-out are left out: the customer has moved on.
    """
    # One pass over the purchases, then per item: most items are bought on one trip and
    # have no cycle of their own, so their fate is two dict lookups (no gaps, no median).
    times: dict[str, list[float]] = {}
    category: dict[str, str | None] = {}
    for p in facts.purchases:
        item = p.item_id
        stamps = times.get(item)
        if stamps is None:
            times[item] = [p.ts]
            category[item] = p.category
        else:
            stamps.append(p.ts)
            if category[item] is None:
                category[item] = p.category
    horizon = clock + due_within_days * DAY_S
    item_cycles, category_cycles = stats.item_cycle_days, stats.category_cycle_days
    due: list[Replenishment] = []
    for item, stamps in times.items():
        interval: float | None = None
        if len(stamps) > 1:
            stamps.sort()
            last = stamps[-1]
            gaps = sorted(g for g in ((b - a) / DAY_S for a, b in
                                      zip(stamps, stamps[1:], strict=False))
                          if g >= SAME_TRIP_DAYS)
            if gaps:  # the customer's own median gap, as statistics.median takes it
                n = len(gaps)
                half = n // 2
                interval = gaps[half] if n % 2 else (gaps[half - 1] + gaps[half]) / 2
                basis = "customer"
        else:
            last = stamps[0]
        if interval is None:
            interval = item_cycles.get(item)
            if interval is not None:
                basis = "population"
            # A category's rhythm only speaks for items known to be rebought at all.
            elif repeat_items is not None and item in repeat_items:
                cat = category[item]
                if cat is not None:
                    interval = category_cycles.get(cat)
                    basis = "category"
            if interval is None:
                continue
        runout = last + interval * DAY_S
        if runout <= horizon and clock - runout <= max_overdue_intervals * interval * DAY_S:
            due.append(Replenishment(item_id=item, interval_days=interval,
                                     last_purchase_ts=last, runout_ts=runout, basis=basis))
    due.sort(key=lambda r: (r.runout_ts, r.item_id))
    return due
