"""Where the ceiling is: how much of "all items" Recall@20 / NDCG@20 any list can reach
from the customer's own items, against item-kNN, on the eval's customers.

Run from the repo root: ``python -m benchmarks.quality_ceiling [--dataset NAME]``.
Writes ``benchmarks/results/quality_ceiling.json``.

A diagnosis, not a tuning step: nothing here picks a parameter. For the validation
split (what the searches see) and the test split (what ``eval_quality`` scores), same
seeded customers as the eval:

* ``item_knn``: the best Taobao baseline (``quality_baselines.item_knn``, history allowed);
* ``oracle_own``: a list holding exactly the test items the customer had touched before
  the cut, in the best order (hits first): the most any method can score from history;
* ``oracle_own_no_cart``: the same without the items in the cart at the cut (added, not
  bought since), which the served recommendations keep out on purpose;
* ``oracle_own_no_cart_popular_fill`` (and ``oracle_own_popular_fill``, the cart kept):
  that list with its free places filled by the most popular items (customers per item in
  training) the customer never touched: past their own items, popular items are the only
  hits any method finds on the Taobao slice;
* the truth's make-up: share of (customer, item) pairs that were in the history, in the
  cart, and that are items never seen in training at all.

If ``oracle_own_no_cart`` is below 1.1 × item-kNN, the ≥ 10% aim needs hits on items the
customer never touched, where every method is at noise level on these splits; if the
popular fill is below it too, not even a perfect order plus popularity gets there.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from typing import Any

from rich.console import Console

from benchmarks.bench_foldin import write_result
from benchmarks.bench_ingest import machine_info, tree_state
from benchmarks.eval_quality import K, sample_users
from benchmarks.quality_baselines import count_matrix, item_knn, popularity
from benchmarks.quality_data import DATASETS, Split, load, test_split, validation_split
from models.evaluation import evaluate
from streams.events import CartItemAdded, OrderPlaced

USERS = 1000
#: The oracle lists compared with item-kNN (``*_vs_knn_pct``).
ORACLES = ("oracle_own_no_cart", "oracle_own_popular_fill", "oracle_own_no_cart_popular_fill")
console = Console(width=None if sys.stdout.isatty() else 150)


def cart_at_cut(split: Split) -> dict[str, set[str]]:
    """Items added to the cart before the cut and not ordered after being added."""
    cart: dict[str, set[str]] = defaultdict(set)
    for ev in sorted(split.train, key=lambda e: e.ts):
        if isinstance(ev, CartItemAdded) and ev.user_id:
            cart[ev.user_id].add(ev.payload.item_id)
        elif isinstance(ev, OrderPlaced) and ev.user_id:
            cart[ev.user_id] -= {line.item_id for line in ev.payload.lines}
    return cart


def ceiling(split: Split, users: list[str]) -> dict[str, Any]:
    truth = {u: t for u, t in split.truth(False).items() if u in set(users)}
    cart = cart_at_cut(split)
    catalog = split.catalog
    lists = {
        "item_knn": item_knn(count_matrix(split), users, K, False),
        "oracle_own": {u: sorted(truth.get(u, set()) & split.history[u])[:K] for u in users},
        "oracle_own_no_cart": {u: sorted((truth.get(u, set()) & split.history[u])
                                         - cart[u])[:K] for u in users},
    }
    popular = popularity(count_matrix(split), users, K, True, split.history)
    for row in ("oracle_own", "oracle_own_no_cart"):
        lists[f"{row}_popular_fill"] = {u: (own + [i for i in popular[u] if i not in own])[:K]
                                        for u, own in lists[row].items()}
    out: dict[str, Any] = {}
    for name, got in lists.items():
        scores = evaluate(got, truth, K, len(catalog))
        scores["hits"] = sum(len(set(items) & truth.get(u, set())) for u, items in got.items())
        out[name] = scores
    hits_knn = [(u, i) for u, items in lists["item_knn"].items() for i in items
                if i in truth.get(u, set())]
    out["item_knn"]["hits_outside_history"] = sum(i not in split.history[u]
                                                  for u, i in hits_knn)
    pairs = [(u, i) for u, t in truth.items() for i in t]
    out["truth"] = {
        "pairs": len(pairs),
        "in_history": round(sum(i in split.history[u] for u, i in pairs) / len(pairs), 4),
        "in_cart_at_cut": round(sum(i in cart[u] for u, i in pairs) / len(pairs), 4),
        "never_seen_in_training": round(sum(i not in catalog for _, i in pairs) / len(pairs),
                                        4)}
    knn = out["item_knn"]
    for row in ORACLES:
        out[f"{row}_vs_knn_pct"] = {
            m: round(100 * (out[row][m] / knn[m] - 1), 1) if knn[m] else None
            for m in ("recall", "ndcg")}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="taobao")
    args = parser.parse_args()
    tree = tree_state()
    events = load(args.dataset)
    result: dict[str, Any] = {"benchmark": "quality_ceiling", "machine": machine_info(tree),
                              "dataset": args.dataset, "k": K}
    for name, split in (("validation", validation_split(events)), ("test", test_split(events))):
        users = sample_users(split, USERS)
        result[name] = ceiling(split, users)
        r = result[name]
        console.print(f"{name}: truth {r['truth']}")
        for row in ("item_knn", "oracle_own", *ORACLES):
            console.print(f"  {row:<32} recall {r[row]['recall']:.4f} ndcg {r[row]['ndcg']:.4f}"
                          f" hits {r[row]['hits']}")
        console.print(f"  oracle without the cart vs item-kNN: "
                      f"{r['oracle_own_no_cart_vs_knn_pct']}; with popular items after it: "
                      f"{r['oracle_own_no_cart_popular_fill_vs_knn_pct']}; the same with the "
                      f"cart: {r['oracle_own_popular_fill_vs_knn_pct']}")
    console.print(f"wrote {write_result('quality_ceiling.json', result)}")


if __name__ == "__main__":
    main()
