"""Co-purchase pairs of big baskets: a seeded sample per item, weighted to stay unbiased."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

import pytest

from aisle.settings import Settings
from feature_store.keys import Keys
from feature_store.memory_store import MemoryStore
from feature_store.updates import Folder
from streams import events as ev

K = Keys("t", 4)
T0 = datetime(2011, 3, 1, 9, tzinfo=UTC)


def folder(items_max: int = 30, sample_k: int = 20, unbiased: bool = True) -> Folder:
    s = Settings(features={"basket_items_max": items_max, "basket_sample_k": sample_k,
                           "basket_sample_unbiased": unbiased})
    return Folder(K, s.features, s.model)


def basket(n: int, eid: str = "o1", user: str | None = None) -> ev.OrderPlaced:
    lines = [ev.OrderLine(item_id=f"i{j}", quantity=1, unit_price=1.0) for j in range(n)]
    return ev.OrderPlaced(event_id=eid, occurred_at=T0, user_id=user,
                          payload=ev.Order(order_id=eid, lines=lines))


def co_counts(f: Folder, events: list[ev.OrderPlaced]) -> dict[str, dict[str, float]]:
    store = MemoryStore(K, 86400.0)
    for n, e in enumerate(events):
        store.apply(f.shard(e), "t/0", [(e.event_id, n, e.ts, f.fold(e))])
    return {k.rsplit(":", 1)[1]: v for k, v in store.data.items() if ":co:buy:" in k}


def test_small_baskets_count_every_pair_once() -> None:
    co = co_counts(folder(), [basket(30)])
    assert all(len(others) == 29 and set(others.values()) == {1.0} for others in co.values())


def test_a_big_basket_pairs_every_item_with_k_others_at_weight_n_minus_1_over_k() -> None:
    co = co_counts(folder(items_max=30, sample_k=20), [basket(120)])
    assert len(co) == 120  # every line contributes, not just the first 30
    for item, others in co.items():
        assert len(others) == 20 and item not in others
        assert all(v == pytest.approx(119 / 20) for v in others.values())
    one = co_counts(folder(items_max=30, sample_k=20, unbiased=False), [basket(120)])
    assert all(len(o) == 20 and set(o.values()) == {1.0} for o in one.values())


def test_the_sample_is_seeded_by_the_event_id_so_a_replay_writes_the_same_pairs() -> None:
    f = folder()
    assert f.fold(basket(80, "o1")) == f.fold(basket(80, "o1"))
    assert folder().fold(basket(80, "o1")) == f.fold(basket(80, "o1"))  # a new process
    assert f.fold(basket(80, "o1")) != f.fold(basket(80, "o2"))
    once = co_counts(f, [basket(80, "o1", "u1")])
    store = MemoryStore(K, 86400.0)
    e = basket(80, "o1", "u1")
    for offset in (0, 1, 0):  # redelivered at a new offset, then replayed at the old one
        store.apply(f.shard(e), "t/0", [(e.event_id, offset, e.ts, f.fold(e))])
    assert {k.rsplit(":", 1)[1]: v for k, v in store.data.items() if ":co:buy:" in k} == once


def test_sampled_counts_are_unbiased_on_a_synthetic_basket() -> None:
    """With ``basket_sample_unbiased``, the same 60-item basket ordered 1,000 times:
    every pair's count averages 1 per order (exact counting gives exactly 1), and an
    item's total is exactly n - 1."""
    f = folder(items_max=30, sample_k=20)
    totals: Counter[tuple[str, str]] = Counter()
    per_item: Counter[str] = Counter()
    orders = 1000
    for n in range(orders):
        for op in f.fold(basket(60, f"o{n}")):
            if op[0] == "zincs":
                anchor = op[1].rsplit(":", 1)[1]
                for other in op[3:]:
                    totals[(anchor, other)] += op[2]
                    per_item[anchor] += op[2]
    assert len(totals) == 60 * 59  # every pair was drawn at some point
    means = [v / orders for v in totals.values()]
    # Each order adds 59/20 with probability 20/59: a pair's mean has sd 0.044 here.
    assert max(abs(m - 1) for m in means) < 0.25
    assert abs(sum(means) / len(means) - 1) < 1e-9
    assert all(v == pytest.approx(59 * orders) for v in per_item.values())


def test_neighbours_are_the_nearest_lines_and_the_rest_is_sampled() -> None:
    s = Settings(features={"basket_sample_k": 10, "basket_sample_neighbours": 10})
    near = co_counts(Folder(K, s.features, s.model), [basket(100)])
    assert set(near["i50"]) == {f"i{j}" for j in (*range(45, 50), *range(51, 56))}
    assert set(near["i0"]) == {f"i{j}" for j in range(1, 11)}  # shifted at the ends
    s = Settings(features={"basket_sample_k": 10, "basket_sample_neighbours": 4})
    mixed = co_counts(Folder(K, s.features, s.model), [basket(100)])
    assert len(mixed["i50"]) == 10 and {"i48", "i49", "i51", "i52"} <= set(mixed["i50"])
