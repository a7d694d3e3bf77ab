"""Related items: where the store's co-purchase ranking parts from plain co-occurrence.

Run from the repo root: ``python -m benchmarks.related_gap [--dataset online_retail]``.
Writes ``benchmarks/results/related_gap.json``.

The served related hit rate (``eval_quality``) was 0.753 against plain co-occurrence
0.791 on Online Retail. The store's co-purchase counts are a pure function of the log
(``Folder._basket_pairs``: every pair of an order's first ``basket_items_max`` distinct
items, +1 each, guest orders included; no decay), so they can be recounted here in
Python, step by step, on the eval's own anchors (``eval_quality.anchors``):

- which orders are counted: the baseline counted only registered customers' orders
  (``quality_data.touched`` skips guests) while the store counts every order;
- the 30-line cap (``features.basket_items_max``);
- per-basket damping (1/log2(1 + n), 1/sqrt(n), 1/(n - 1)) as an alternative to a cap;
- the weight of a guest order's pairs (``features.guest_basket_weight``), searched on
  the validation split (the last 15% of the training period; the test period is read
  only to report the chosen value, never to choose it). Objective: the mean hit rate
  of customers' and guests' next orders.

Hit rates on the test period are given for two anchor sets: the eval's (registered
customers' next orders) and guests' next orders (same seeded sampling), so a weight
that helps one population at the other's expense shows.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from rich.console import Console

from benchmarks.bench_foldin import write_result
from benchmarks.bench_ingest import machine_info, tree_state
from benchmarks.eval_quality import (
    MAX_ANCHORS,
    RELATED_K,
    anchors,
    guest_anchors,
    related_hits,
)
from benchmarks.quality_baselines import co_related
from benchmarks.quality_data import (
    Split,
    load,
    order_baskets,
    test_split,
    validation_split,
)

console = Console(width=None if sys.stdout.isatty() else 150)
CAP = 30  # features.basket_items_max
GUEST_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)

Basket = tuple[list[str], bool]  # distinct items in line order, placed by a guest
Weight = Callable[[int, bool], float]


def co_counts(baskets: Sequence[Basket], cap: int | None, weight: Weight,
              ) -> dict[str, Counter[str]]:
    pairs: dict[str, Counter[str]] = defaultdict(Counter)
    for items, guest in baskets:
        w = weight(len(items), guest)
        if w <= 0:
            continue
        head = items[:cap] if cap else items
        for a in head:
            c = pairs[a]
            for b in head:
                if b != a:
                    c[b] += w
    return pairs


def hit(pairs_of: dict[str, Counter[str]], anchor_sets: dict[str, list[tuple[str, set[str]]]],
        catalog: int) -> dict[str, float]:
    out = {}
    for name, pairs in anchor_sets.items():
        lists = co_related(pairs_of, sorted({a for a, _ in pairs}), RELATED_K)
        out[name] = related_hits(lists, pairs, catalog)["hit_rate"]
    return out


def guest_weight(g: float) -> Weight:
    return lambda n, guest: g if guest else 1.0


DAMPING: dict[str, Weight] = {
    "1": lambda n, guest: 1.0,
    "1/log2(1+n)": lambda n, guest: 1.0 / math.log2(1 + n),
    "1/sqrt(n)": lambda n, guest: n ** -0.5,
    "1/(n-1)": lambda n, guest: 1.0 / (n - 1),
}


def period(events: list[Any], sp: Split, end: float) -> tuple[list[Basket], dict[str, Any]]:
    train = order_baskets(sp.train, -np.inf, sp.cut_ts)
    test = order_baskets(events, sp.cut_ts, end)
    known = sp.catalog | {i for items, _ in train for i in items}
    sets = {"customers": anchors(sp, MAX_ANCHORS),
            "guests": guest_anchors(test, known, MAX_ANCHORS)}
    return train, sets


def run(name: str, damping: bool = True) -> dict[str, Any]:
    started = time.perf_counter()
    events = load(name)
    test = test_split(events)
    val = validation_split(events)
    catalog = len(test.catalog)
    # The validation period ends where the test period begins.
    val_train, val_sets = period([ev for ev in events if ev.ts < test.cut_ts], val,
                                 test.cut_ts)
    train, test_sets = period(events, test, np.inf)
    console.print(f"{name}: {len(train):,} training orders "
                  f"({sum(g for _, g in train):,} guests'), anchors "
                  f"{ {k: len(v) for k, v in test_sets.items()} } (test), "
                  f"{ {k: len(v) for k, v in val_sets.items()} } (validation)")
    out: dict[str, Any] = {"dataset": name, "cap": CAP, "related_k": RELATED_K,
                           "training_orders": len(train),
                           "guest_orders": sum(g for _, g in train),
                           "anchors_test": {k: len(v) for k, v in test_sets.items()},
                           "anchors_validation": {k: len(v) for k, v in val_sets.items()}}
    steps: dict[str, dict[str, float]] = {}
    registered = [(b, g) for b, g in train if not g]
    steps["registered orders, every pair (the old baseline)"] = hit(
        co_counts(registered, None, DAMPING["1"]), test_sets, catalog)
    steps["registered orders, first 30 lines"] = hit(
        co_counts(registered, CAP, DAMPING["1"]), test_sets, catalog)
    for d, w in DAMPING.items() if damping else list(DAMPING.items())[:1]:
        steps[f"every order, every pair, weight {d}"] = hit(co_counts(train, None, w),
                                                            test_sets, catalog)
        steps[f"every order, first 30 lines, weight {d} (1: the store before)"] = hit(
            co_counts(train, CAP, w), test_sets, catalog)
    for label, row in steps.items():
        console.print(f"  {label:70s} {row}")
    out["test_steps"] = steps
    search: dict[str, dict[str, float]] = {}
    for g in GUEST_WEIGHTS:
        search[str(g)] = hit(co_counts(val_train, CAP, guest_weight(g)), val_sets, catalog)
        console.print(f"  validation, first 30 lines, guest weight {g}: {search[str(g)]}")
    out["validation_guest_weight"] = search
    # Objective: the mean over both anchor sets (a product page answers customers and
    # guests alike); ties go to the larger weight (1: every order counts the same).
    best = max(GUEST_WEIGHTS, key=lambda g: (
        search[str(g)]["customers"] + search[str(g)]["guests"], g))
    out["chosen_guest_weight"] = best
    out["test_at_chosen"] = {
        "cap30": hit(co_counts(train, CAP, guest_weight(best)), test_sets, catalog),
        "every_pair": hit(co_counts(train, None, guest_weight(best)), test_sets, catalog)}
    console.print(f"  chosen guest weight {best}: test {out['test_at_chosen']}")
    out["seconds"] = round(time.perf_counter() - started, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="online_retail")
    parser.add_argument("--no-damping", action="store_true",
                        help="skip the per-basket damping variants (the slow part)")
    args = parser.parse_args()
    result = {"machine": machine_info(), "tree": tree_state(),
              **run(args.dataset, not args.no_damping)}
    write_result("related_gap.json", result)


if __name__ == "__main__":
    main()
