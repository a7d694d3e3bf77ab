"""Folds (event → ops) executed by the in-memory store: the semantics of store.lua."""

from __future__ import annotations

import doctest
import math
import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aisle.settings import Settings
from feature_store import canonical, keys, updates
from feature_store.keys import Keys
from feature_store.memory_store import MemoryStore
from feature_store.updates import Folder
from streams import events as ev

T0 = datetime(2011, 3, 1, 9, tzinfo=UTC)
K = Keys("t", 4)
FOLDER = Folder(K, Settings().features, Settings().model)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def view(user: str, item: str, minutes: float = 0, session: str | None = "s1",
         eid: str | None = None) -> ev.ProductViewed:
    return ev.ProductViewed(event_id=eid or f"v-{user}-{item}-{minutes}", occurred_at=at(minutes),
                            user_id=user, session_id=session, payload=ev.ItemRef(item_id=item))


def order(user: str | None, oid: str, items: dict[str, tuple[int, float]],
          minutes: float = 0) -> ev.OrderPlaced:
    lines = [ev.OrderLine(item_id=i, quantity=q, unit_price=p) for i, (q, p) in items.items()]
    return ev.OrderPlaced(event_id=f"o-{oid}", occurred_at=at(minutes), user_id=user,
                          payload=ev.Order(order_id=oid, lines=lines))


def apply(store: MemoryStore, events: list[ev.AnyEvent], first_offset: int = 0) -> None:
    for n, event in enumerate(events):
        store.apply(FOLDER.shard(event), "topic/0",
                    [(event.event_id, first_offset + n, event.ts, FOLDER.fold(event))])


def state(store: MemoryStore) -> dict[str, object]:
    """The dump without bookkeeping (watermarks move when duplicates arrive, state must not)."""
    return {k: v for k, v in store.dump().items() if not k.endswith((":wm", ":seen", ":meta"))}


def fresh() -> MemoryStore:
    return MemoryStore(K, 3 * 86400)


def test_doctests() -> None:
    for module in (keys, updates, canonical):
        assert doctest.testmod(module).failed == 0


def test_a_duplicated_event_changes_nothing() -> None:
    once, twice = fresh(), fresh()
    events = [view("u1", "a"), order("u1", "o1", {"a": (2, 3.0), "b": (1, 4.0)}, 5)]
    apply(once, events)
    apply(twice, events)
    apply(twice, events, first_offset=100)  # the same events again, at new offsets
    assert state(once) == state(twice)
    rfm = once.data[K.user("u1", "rfm")]
    assert rfm["orders"] == 1 and rfm["monetary"] == pytest.approx(10.0)


def test_a_replayed_offset_is_skipped_even_after_the_dedupe_window() -> None:
    store = MemoryStore(K, dedupe_window_s=60)
    first = view("u1", "a", 0)
    later = view("u1", "b", 600)  # ten minutes later: pushes `first` out of the window
    apply(store, [first, later])
    before = store.dump()
    shard = FOLDER.shard(first)
    result = store.apply(shard, "topic/0", [(first.event_id, 0, first.ts, FOLDER.fold(first))])
    assert result == (0, 0, 1)
    assert store.dump() == before


def test_decayed_sums_do_not_depend_on_arrival_order() -> None:
    events = [view("u1", "a", m, session=None, eid=f"e{m}") for m in (0, 90, 400, 1000)]
    events += [view("u2", "a", 30, session=None)]
    forward, backward = fresh(), fresh()
    apply(forward, events)
    apply(backward, list(reversed(events)))
    f = forward.data[K.trending(FOLDER.shard(events[0]))]["a"]
    b = backward.data[K.trending(FOLDER.shard(events[0]))]["a"]
    assert f == pytest.approx(b, rel=1e-12)


def test_trending_weight_halves_per_half_life() -> None:
    half_life = Settings().features.trending_half_life_h * 3600
    old = updates.forward_log_weight(1.0, 0.0, half_life)
    new = updates.forward_log_weight(1.0, 2 * half_life, half_life)
    assert math.exp(old - new) == pytest.approx(0.25)


def test_co_view_counts_each_pair_once_per_session() -> None:
    store = fresh()
    apply(store, [view("u1", "a", 0), view("u1", "b", 1), view("u1", "a", 2),
                  view("u1", "c", 3, session="s2")])
    shard = K.shard_of("u1")
    assert store.data[K.co("view", shard, "a")] == {"b": 1.0}
    assert store.data[K.co("view", shard, "b")] == {"a": 1.0}
    assert K.co("view", shard, "c") not in store.data  # new session: nothing to pair with


def test_guest_orders_count_for_baskets_and_popularity_not_for_a_customer() -> None:
    store = fresh()
    guest = order(None, "g1", {"a": (1, 1.0), "b": (1, 1.0), "c": (1, 1.0)})
    apply(store, [guest])
    shard = K.shard_of("g1")
    assert store.data[K.co("buy", shard, "a")] == {"b": 1.0, "c": 1.0}
    assert set(store.data[K.trending(shard)]) == {"a", "b", "c"}
    assert not any(":u:" in key for key in store.data)


def test_buyers_and_rebuyers() -> None:
    store = fresh()
    apply(store, [order("u1", "o1", {"a": (1, 1.0)}), order("u1", "o2", {"a": (1, 1.0)}, 5),
                  order("u1", "o3", {"a": (1, 1.0)}, 9)])
    shard = K.shard_of("u1")
    assert store.data[K.buyers(shard)] == {"a": 1.0}
    assert store.data[K.rebuyers(shard)] == {"a": 1.0}
    assert store.data[K.user("u1", "bought")] == {"a": 3}


def test_whole_order_cancellation_subtracts_its_amount() -> None:
    store = fresh()
    cancel = ev.OrderCancelled(event_id="c1", occurred_at=at(10), user_id="u1",
                               payload=ev.Cancellation(order_id="o1"))
    apply(store, [order("u1", "o1", {"a": (2, 5.0)}), order("u1", "o2", {"b": (1, 3.0)}, 5),
                  cancel])
    rfm = store.data[K.user("u1", "rfm")]
    assert rfm["monetary"] == pytest.approx(3.0)
    assert rfm["cancels"] == 1


def test_an_older_catalog_upsert_cannot_overwrite_a_newer_one() -> None:
    def upsert(minutes: float, price: float) -> ev.CatalogItemUpserted:
        return ev.CatalogItemUpserted(
            event_id=f"c{minutes}", occurred_at=at(minutes),
            payload=ev.CatalogItem(item_id="a", title="Mug", price=price))

    store = fresh()
    apply(store, [upsert(10, 2.0), upsert(5, 9.0)])
    assert store.data[K.item("a")]["price"] == 2.0


def test_catalog_updates_are_numbered_per_shard_once_per_event() -> None:
    def upsert(eid: str, item: str, minutes: float = 1) -> ev.CatalogItemUpserted:
        return ev.CatalogItemUpserted(event_id=eid, occurred_at=at(minutes),
                                      payload=ev.CatalogItem(item_id=item, title="Mug"))

    store = fresh()
    shard = K.shard_of("a")
    same = [i for i in (f"x{n}" for n in range(40)) if K.shard_of(i) == shard][:2]
    # First sight of an item is in no cache: not a change. Updates are, in order.
    apply(store, [upsert("c1", same[0]), upsert("c2", same[1])])
    assert K.catalog_changes(shard) not in store.data
    apply(store, [upsert("c3", same[0], 2), upsert("c4", same[1], 2), upsert("c5", same[0], 3)],
          first_offset=2)
    assert store.data[K.catalog_changes(shard)] == {same[0]: 3.0, same[1]: 2.0}
    assert store.data[K.meta(shard)]["catalog"] == 3
    # A redelivered or an older event changes nothing; a removal is a change.
    apply(store, [upsert("c5", same[0], 3), upsert("c0", same[1], 0)], first_offset=10)
    assert store.data[K.meta(shard)]["catalog"] == 3
    apply(store, [ev.CatalogItemRemoved(event_id="r1", occurred_at=at(4),
                                        payload=ev.ItemRemoved(item_id=same[1]))],
          first_offset=12)
    assert store.data[K.catalog_changes(shard)][same[1]] == 4.0
    assert store.data[K.item(same[1])]["removed"] == 1


def test_a_catalog_event_naming_who_made_the_change_stays_in_the_items_shard() -> None:
    # The user_id says who changed the item. The item's state lives in the item's shard
    # (one hash tag per script call: a Cluster refuses keys of two slots), and the event
    # says nothing of that person: no first/last seen, no source count.
    item = "a"
    user = next(u for u in (f"u{n}" for n in range(40)) if K.shard_of(u) != K.shard_of(item))
    events: list[ev.AnyEvent] = [
        ev.CatalogItemUpserted(event_id="c1", occurred_at=at(1), user_id=user,
                               payload=ev.CatalogItem(item_id=item, title="Mug", price=2.0)),
        ev.CatalogItemRemoved(event_id="c2", occurred_at=at(2), user_id=user,
                              payload=ev.ItemRemoved(item_id=item))]
    for event in events:
        shard, ops = FOLDER.fold_sharded(event)
        assert event.routing_key == item and shard == K.shard_of(item) == FOLDER.shard(event)
        assert ops == FOLDER.fold(event)
        assert all(op[1].startswith(K.tag(shard) + ":") for op in ops)
    store = fresh()
    apply(store, events)
    assert store.data[K.item(item)]["removed"] == 1 and store.data[K.item(item)]["price"] == 2.0
    assert not [k for k in store.data if k.startswith(K.user_prefix(user))]


def test_dislikes_are_remembered_and_can_be_taken_back() -> None:
    def pref(eid: str, **kw: list[str]) -> ev.PreferenceStated:
        return ev.PreferenceStated(event_id=eid, occurred_at=at(0), user_id="u1",
                                   payload=ev.Preference(**kw))

    store = fresh()
    apply(store, [pref("p1", dislikes=["material:polyester", "brand:acme"])])
    assert set(store.data[K.user("u1", "dislikes")]) == {"material:polyester", "brand:acme"}
    apply(store, [pref("p2", retracts=["brand:acme"])], first_offset=1)
    assert set(store.data[K.user("u1", "dislikes")]) == {"material:polyester"}


def test_erasure_removes_every_key_of_the_customer() -> None:
    store = fresh()
    apply(store, [view("u1", "a"), order("u1", "o1", {"a": (1, 1.0)}, 1),
                  ev.UserErased(event_id="x", occurred_at=at(2), user_id="u1")])
    assert not [key for key in store.data if ":u:u1:" in key]
    assert "u1" not in store.data.get(K.users(K.shard_of("u1")), set())


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 6), st.integers(0, 3)),
                min_size=1, max_size=40), st.randoms())
def test_any_stream_applied_twice_equals_once(spec, rnd: random.Random) -> None:
    events: list[ev.AnyEvent] = []
    for n, (u, i, kind) in enumerate(spec):
        user, item = f"u{u}", f"i{i}"
        if kind == 0:
            events.append(view(user, item, n, eid=f"e{n}"))
        elif kind == 1:
            events.append(order(user, f"o{n}", {item: (1, 2.0), f"i{(i + 1) % 7}": (2, 1.0)}, n))
        elif kind == 2:
            events.append(ev.CartItemAdded(event_id=f"e{n}", occurred_at=at(n), user_id=user,
                                           payload=ev.CartLine(item_id=item)))
        else:
            events.append(order(None, f"g{n}", {item: (1, 1.0)}, n))
    once, twice = fresh(), fresh()
    apply(once, events)
    apply(twice, events)
    replay = events[:]
    rnd.shuffle(replay)
    apply(twice, replay, first_offset=10_000)
    assert state(once) == state(twice)
