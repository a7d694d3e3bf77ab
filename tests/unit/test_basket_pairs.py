"""Co-purchase pairs of big baskets: the exact head plus a seeded sample per later line."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

from aisle.settings import Settings
from feature_store.keys import Keys
from feature_store.memory_store import MemoryStore
from feature_store.updates import Folder, sampled_pairs
from streams import events as ev

K = Keys("t", 4)
T0 = datetime(2011, 3, 1, 9, tzinfo=UTC)


def folder(items_max: int = 30, sample_k: int = 10) -> Folder:
    s = Settings(features={"basket_items_max": items_max, "basket_sample_k": sample_k})
    return Folder(K, s.features, s.model)


def basket(n: int, eid: str = "o1", user: str | None = None) -> ev.OrderPlaced:
    lines = [ev.OrderLine(item_id=f"i{j}", quantity=1, unit_price=1.0) for j in range(n)]
    return ev.OrderPlaced(event_id=eid, occurred_at=T0, user_id=user,
                          payload=ev.Order(order_id=eid, lines=lines))


def co_counts(f: Folder, events: list[ev.OrderPlaced],
              offsets: list[int] | None = None) -> dict[str, dict[str, float]]:
    store = MemoryStore(K, 86400.0)
    for n, e in zip(offsets or range(len(events)), events, strict=False):
        store.apply(f.shard(e), "t/0", [(e.event_id, n, e.ts, f.fold(e))])
    return {k.rsplit(":", 1)[1]: v for k, v in store.data.items() if ":co:buy:" in k}


def test_small_baskets_count_every_pair_once() -> None:
    co = co_counts(folder(), [basket(30)])
    assert all(len(others) == 29 and set(others.values()) == {1.0} for others in co.values())


def test_a_big_basket_keeps_its_exact_head_and_samples_pairs_for_every_later_line() -> None:
    co = co_counts(folder(items_max=30, sample_k=10), [basket(120)])
    assert len(co) == 120  # every line contributes, not just the first 30
    head = {f"i{j}" for j in range(30)}
    for j in range(30):  # the head's exact pairs are all there
        assert head - {f"i{j}"} <= set(co[f"i{j}"])
    # A later line has its 10 draws plus whatever drew it; every count is a whole order.
    assert all(len(co[f"i{j}"]) >= 10 for j in range(30, 120))
    assert all(v == int(v) for others in co.values() for v in others.values())
    total = sum(sum(others.values()) for others in co.values())
    assert total == 30 * 29 + 2 * 10 * 90  # n² pairs became head² + 2·k·(n - head)


def test_k_zero_drops_the_lines_past_the_cap_as_before() -> None:
    co = co_counts(folder(items_max=30, sample_k=0), [basket(120)])
    assert set(co) == {f"i{j}" for j in range(30)}


def test_the_sample_is_seeded_by_the_event_id_so_a_replay_writes_the_same_pairs() -> None:
    f = folder()
    assert f.fold(basket(80, "o1")) == folder().fold(basket(80, "o1"))  # a new process
    once = co_counts(f, [basket(80, "o1", "u1")])
    e = basket(80, "o1", "u1")
    # redelivered at a new offset, then replayed at the old one: no change
    assert co_counts(f, [e, e, e], offsets=[0, 1, 0]) == once
    assert co_counts(f, [basket(80, "o2", "u1")]) != once  # another order, another draw


def test_every_other_line_is_equally_likely_to_be_drawn() -> None:
    """The sampler is uniform: over 2,000 seeds, the last line of a 60-line order drew
    each of the 59 others k/(n - 1) of the time (sd ~0.01 here)."""
    drawn: Counter[int] = Counter()
    seeds = range(1, 2001)
    for seed in seeds:
        pairs = sampled_pairs(seed, 60, 59, 10)
        assert len({j for _, j in pairs}) == 10 and all(j != 59 for _, j in pairs)
        drawn.update(j for _, j in pairs)
    assert set(drawn) == set(range(59))
    assert max(abs(c / len(seeds) - 10 / 59) for c in drawn.values()) < 0.06
