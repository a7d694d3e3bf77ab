"""Push-notification candidates through the real broker, worker and Valkey: each trigger
fires with the right content; purchase, opt-out and erasure suppress; quiet hours hold
and release; caps let the highest priority through; a worker killed mid-drain loses and
duplicates nothing; the schedule and fatigue ledger are rebuilt from the log."""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
import redis
from aiokafka import AIOKafkaConsumer

from aisle.settings import PushSettings, Settings
from aisle.stack import Stack, aisle_argv, child_env
from feature_store.client import open_redis, open_redis_sync
from feature_store.keys import Keys
from feature_store.redis_store import RedisStore
from feature_store.updates import Folder
from push.candidate import Candidate, decode_candidate
from push.drain import PushDrainer
from push.sweep import SweepResult, sweep
from streams.events import decode_event, encode_event
from streams.lag import end_offsets, wait_caught_up
from streams.pipeline import BatchProcessor, Record
from streams.topics import EventProducer, ensure_topics
from tests.integration.conftest import isolated_settings
from tests.integration.faults_util import live_equals_rebuild, restart_worker
from tests.integration.util import catalog, eventually, uid

pytestmark = pytest.mark.integration
# 10:00 in London (BST), 17:00 in Shanghai: outside the default quiet hours (21-9) for
# London customers. Each test works on its own day, since the log clock is shared.
DAY0 = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)
QUICK = {"session_timeout_s": 3.0, "heartbeat_interval_s": 0.5, "rebalance_timeout_s": 3.0}


@pytest.fixture(scope="module")
def stack(servers: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    settings = isolated_settings(servers, tmp_path_factory.mktemp("push"), **QUICK)
    settings = settings.model_copy(update={"push": PushSettings(
        drain_interval_s=0.3, lease_s=3.0, claim_batch=25)})
    s = Stack.start(settings, workers=1, api=True)
    try:
        send(s.settings, [catalog("p1", "Red Kettle", price=25.0, stock=10),
                          catalog("p2", "Blue Mug", price=6.5, stock=10)])
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def store(stack: Stack) -> Iterator[redis.Redis]:
    client = open_redis_sync(stack.settings)
    yield client
    client.close()


def ev(type_: str, user: str | None, at: datetime, payload: dict[str, Any],
       eid: str | None = None) -> dict[str, Any]:
    doc = {"type": type_, "event_id": eid or f"{type_}-{uid('e')}", "user_id": user,
           "occurred_at": at.isoformat(), "source": "test", "payload": payload}
    return {k: v for k, v in doc.items() if v is not None}


def send(settings: Settings, docs: list[dict[str, Any]]) -> None:
    events = [decode_event(msgspec.json.encode(d)) for d in docs]

    async def go() -> None:
        async with EventProducer(settings) as producer:
            await producer.send_events(events)

    asyncio.run(go())


def tick(settings: Settings, at: datetime) -> None:
    """Move the log's clock: an event of a bystander at ``at``."""
    send(settings, [ev("product.viewed", uid("clock"), at, {"item_id": "p2"})])


async def _candidates(settings: Settings) -> list[Candidate]:
    topic = settings.topics.push
    ends = {tp: end for tp, end in (await end_offsets(settings, [topic])).items() if end > 0}
    if not ends:
        return []
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers,
                                enable_auto_commit=False)
    await consumer.start()
    out: list[Candidate] = []
    try:
        consumer.assign(list(ends))
        await consumer.seek_to_beginning(*ends)
        left = dict(ends)
        while left:
            for tp, msgs in (await consumer.getmany(*left, timeout_ms=1000)).items():
                out += [decode_candidate(m.value or b"") for m in msgs]
                if msgs and msgs[-1].offset >= left[tp] - 1:
                    del left[tp]
    finally:
        await consumer.stop()
    return out


def candidates(settings: Settings, users: set[str] | None = None) -> list[Candidate]:
    return [c for c in asyncio.run(_candidates(settings)) if users is None or c.subject in users]


def pending(settings: Settings, store: redis.Redis, users: set[str]) -> dict[str, float]:
    """Triggers of these customers still scheduled or claimed: trigger -> due time."""
    k = Keys(settings.features.key_prefix, settings.features.shards)
    out: dict[str, float] = {}
    for shard in range(k.shards):
        for key in (k.push_due(shard), k.push_lease(shard)):
            for member, score in store.zrange(key, 0, -1, withscores=True):
                if member.decode().split("|", 1)[0] in users:
                    out[member.decode()] = score
    return out


def decided(settings: Settings, store: redis.Redis, users: set[str]) -> bool:
    return not pending(settings, store, users)


def stats(settings: Settings, store: redis.Redis) -> Counter[str]:
    k = Keys(settings.features.key_prefix, settings.features.shards)
    total: Counter[str] = Counter()
    for shard in range(k.shards):
        for name, n in store.hgetall(k.push_stats(shard)).items():
            total[name.decode()] += int(float(n))
    return total


# ------------------------------------------------------------------ triggers and suppression

def test_cart_abandonment_fires_with_content_and_is_suppressed_by_rules(
        stack: Stack, store: redis.Redis) -> None:
    s, t = stack.settings, DAY0
    buyer, shopper, opted_out, erased = uid("buy"), uid("cart"), uid("out"), uid("gone")
    add = lambda u, item, m=0: ev("cart.item_added", u, t + timedelta(minutes=m),  # noqa: E731
                                  {"item_id": item, "quantity": 2})
    send(s, [
        add(shopper, "p1"), add(shopper, "p2", 5),
        add(buyer, "p1"),
        ev("order.placed", buyer, t + timedelta(minutes=20), {"order_id": uid("o"), "lines": [
            {"item_id": "p1", "quantity": 2, "unit_price": 25.0}]}),
        ev("consent.updated", opted_out, t - timedelta(days=1), {"push": False}),
        add(opted_out, "p1"),
        add(erased, "p1"),
        ev("user.erased", erased, t + timedelta(minutes=10), {}),
    ])
    users = {buyer, shopper, opted_out, erased}
    eventually(lambda: pending(s, store, users), timeout=20)  # scheduled, not yet due
    assert not candidates(s, users), "nothing is due before the delay has passed"
    tick(s, t + timedelta(minutes=70))  # 1 h after the shopper's last add
    eventually(lambda: decided(s, store, users), timeout=30)
    got = candidates(s, users)
    assert [c.subject for c in got] == [shopper], got
    c = got[0]
    assert (c.specversion, c.type, c.datacontenttype) == (
        "1.0", "com.aisle.push.candidate.v1", "application/json")
    d = c.data
    assert d.reason == "cart_abandon" and d.template == "push.cart_abandon.v1"
    assert [(i.item_id, i.title, i.price) for i in d.items] == [
        ("p1", "Red Kettle", 25.0), ("p2", "Blue Mug", 6.5)]
    assert d.variables == {"count": "2", "first_title": "Red Kettle", "total": "63.00"}
    # The check ran 1 h after the last add (minute 5), on the log's clock.
    assert d.send_after == "2024-05-01T10:10:00Z"
    assert d.expires_at == "2024-05-02T10:05:00Z"
    assert d.dedupe_key.startswith("cart_abandon:")
    drops = stats(s, store)
    assert drops["dropped:purchased"] >= 1 and drops["dropped:opted_out"] >= 1
    # Erasure took the erased customer's trigger away with the rest of their state.
    assert not pending(s, store, {erased})
    # The fatigue ledger the website reads: what was pushed to whom, when.
    k = Keys(s.features.key_prefix, s.features.shards)
    assert set(store.hgetall(k.user(shopper, "pushitems"))) == {b"p1", b"p2"}
    assert not store.exists(k.user(erased, "pushitems"))


def test_quiet_hours_hold_a_candidate_until_the_window_opens(
        stack: Stack, store: redis.Redis) -> None:
    s = stack.settings
    t = DAY0 + timedelta(days=1, hours=4, minutes=30)  # 13:30 UTC = 21:30 in Shanghai
    night_owl, londoner = uid("sh"), uid("ldn")
    send(s, [ev("consent.updated", night_owl, t - timedelta(days=1),
                {"push": True, "timezone": "Asia/Shanghai"}),
             ev("cart.item_added", night_owl, t, {"item_id": "p2"}),
             ev("cart.item_added", londoner, t, {"item_id": "p2"})])
    tick(s, t + timedelta(minutes=61))  # 22:31 in Shanghai, 15:31 in London
    eventually(lambda: candidates(s, {londoner}), timeout=30)
    opens = datetime(2024, 5, 3, 9, 0, tzinfo=UTC) - timedelta(hours=8)  # 09:00 Shanghai
    held = eventually(lambda: {k: v for k, v in pending(s, store, {night_owl}).items()
                               if v == opens.timestamp()}, timeout=20)
    assert list(held) == [f"{night_owl}|cart_abandon|"]
    assert not candidates(s, {night_owl})
    tick(s, opens + timedelta(minutes=1))
    got = eventually(lambda: candidates(s, {night_owl}), timeout=30)
    assert len(got) == 1 and got[0].data.send_after == "2024-05-03T01:01:00Z"


def test_caps_let_the_highest_priority_through(stack: Stack, store: redis.Redis) -> None:
    """Three triggers due at once for one customer, two pushes a day allowed: the offer
    about to lapse (80) and the cart (70) go, win-back (50) is capped."""
    s = stack.settings
    t = DAY0 + timedelta(days=3)
    user, offer = uid("cap"), uid("of")
    send(s, [
        ev("order.placed", user, t - timedelta(days=200), {"order_id": uid("o"), "lines": [
            {"item_id": "p2", "quantity": 1, "unit_price": 6.5}]}),
        ev("offer.issued", user, t, {
            "offer_id": offer, "rule_id": "winback-15", "policy_version": "offers-v1",
            "kind": "winback_coupon", "discount_pct": 15.0, "items": ["p1"],
            "expires_at": (t + timedelta(hours=7)).isoformat(), "reason": "we miss you",
            "trigger": "dormant"}),
        ev("cart.item_added", user, t, {"item_id": "p2"}),
    ])
    eventually(lambda: len(pending(s, store, {user})) == 2, timeout=20)  # due in 1 h
    # The stage change moves the clock past both: all three fall due in one pass.
    send(s, [ev("lifecycle.changed", user, t + timedelta(minutes=61),
                {"stage": "churned", "previous": "at_risk"})])
    eventually(lambda: len(pending(s, store, {user})) == 3, timeout=20, every=0.02)
    eventually(lambda: decided(s, store, {user}), timeout=30)
    got = sorted(candidates(s, {user}), key=lambda c: -c.data.priority)
    assert [c.data.reason for c in got] == ["offer_expiring", "cart_abandon"]
    first = got[0].data
    assert first.offer is not None and first.offer.offer_id == offer
    assert first.offer.discount_pct == 15.0 and first.items[0].title == "Red Kettle"
    assert first.variables["hours_left"] == "6"
    assert stats(s, store)["dropped:cap_day"] >= 1


def test_winback_carries_the_offer_the_policy_issues(stack: Stack, store: redis.Redis) -> None:
    """A customer quiet for 200 days turns churned: the offer policy (offers-v1: dormant
    → 15 % on what they bought, 24 h) issues the coupon, and the push carries it."""
    s = stack.settings
    t = DAY0 + timedelta(days=4, hours=2)
    user = uid("wb")
    send(s, [ev("order.placed", user, t - timedelta(days=200), {"order_id": uid("o"), "lines": [
        {"item_id": "p2", "quantity": 3, "unit_price": 6.5}]})])
    k = Keys(s.features.key_prefix, s.features.shards)
    eventually(lambda: store.hlen(k.user(user, "orders")) == 1, timeout=20)
    send(s, [ev("lifecycle.changed", user, t, {"stage": "churned", "previous": "at_risk"})])
    got = eventually(lambda: candidates(s, {user}), timeout=30)
    assert len(got) == 1 and got[0].data.reason == "winback"
    offer = got[0].data.offer
    assert offer is not None and offer.kind == "winback_coupon" and offer.discount_pct == 15.0
    assert [i.item_id for i in got[0].data.items] == ["p2"]
    # On record, as the API would have issued it: the same offer on the profile.
    eventually(lambda: store.hexists(k.user(user, "offers"), offer.offer_id), timeout=20)


def test_redeemed_offer_and_order_after_winback_are_not_pushed(
        stack: Stack, store: redis.Redis) -> None:
    s = stack.settings
    t = DAY0 + timedelta(days=4)
    user, offer = uid("red"), uid("of")
    before = stats(s, store)
    send(s, [
        ev("offer.issued", user, t, {
            "offer_id": offer, "rule_id": "winback-15", "policy_version": "offers-v1",
            "kind": "winback_coupon", "discount_pct": 15.0, "items": ["p1"],
            "expires_at": (t + timedelta(hours=8)).isoformat(), "reason": "we miss you",
            "trigger": "dormant"}),
        ev("lifecycle.changed", user, t, {"stage": "at_risk"}),
        ev("order.placed", user, t + timedelta(minutes=30), {
            "order_id": uid("o"), "offer_id": offer,
            "lines": [{"item_id": "p1", "quantity": 1, "unit_price": 25.0}]}),
    ])
    tick(s, t + timedelta(hours=3))
    rules = ("dropped:offer_used", "dropped:purchased")
    eventually(lambda: all(stats(s, store)[r] > before[r] for r in rules), timeout=30)
    assert decided(s, store, {user})
    assert not candidates(s, {user})


def test_price_drop_and_restock_reach_the_watchers(stack: Stack, store: redis.Redis) -> None:
    """Catalog changes live in the item's shard, watchers in theirs: each watcher of the
    item gets its own trigger; a customer who was erased is no longer a watcher."""
    s = stack.settings
    t = DAY0 + timedelta(days=5)
    viewer, fan, bystander, erased = uid("v"), uid("f"), uid("b"), uid("x")
    k = Keys(s.features.key_prefix, s.features.shards)
    send(s, [catalog("p3", "Green Teapot", minutes=0, price=40.0, stock=3),
             catalog("p4", "Yellow Bowl", minutes=0, price=12.0, stock=0)])
    send(s, [ev("product.viewed", viewer, t, {"item_id": "p3"}),
             ev("product.favorited", fan, t, {"item_id": "p4"}),
             ev("product.viewed", erased, t, {"item_id": "p3"}),
             ev("product.viewed", bystander, t, {"item_id": "p2"}),
             ev("user.erased", erased, t + timedelta(minutes=1), {})])
    watching = lambda: {m.decode() for sh in range(k.shards)  # noqa: E731
                        for m in store.zrange(k.push_watch(sh, "p3"), 0, -1)}
    eventually(lambda: watching() == {viewer}, timeout=20)
    send(s, [ev("catalog.item_upserted", None, t + timedelta(minutes=30),
                {"item_id": "p3", "title": "Green Teapot", "price": 30.0, "stock": 3}),
             ev("catalog.item_upserted", None, t + timedelta(minutes=30),
                {"item_id": "p4", "title": "Yellow Bowl", "price": 12.0, "stock": 5})])
    users = {viewer, fan, bystander, erased}
    got = eventually(lambda: len(candidates(s, users)) == 2 and candidates(s, users),
                     timeout=30)
    by_user = {c.subject: c.data for c in got}
    assert set(by_user) == {viewer, fan}
    assert by_user[viewer].reason == "price_drop"
    assert by_user[viewer].variables["price"] == "30.00"
    assert [(i.item_id, i.price) for i in by_user[viewer].items] == [("p3", 30.0)]
    assert by_user[fan].reason == "back_in_stock" and by_user[fan].items[0].item_id == "p4"


def test_sweep_finds_replenishment_and_tier_nudges(stack: Stack, store: redis.Redis) -> None:
    """A customer who buys a 135.00 hamper every 10 days, last time 9 days ago: the next
    one runs out tomorrow (replenish), and 270 spent is 30 short of silver (300): the
    saved teapot (30.00 since its price drop) closes the gap (tier nudge)."""
    s = stack.settings
    user = _hamper_buyer(s, store, uid("rep"), saves="p3")
    first = _sweep(s)
    assert first.written >= 2 and first.written == first.found
    got = eventually(lambda: len(candidates(s, {user})) == 2 and candidates(s, {user}),
                     timeout=30)
    by_reason = {c.data.reason: c.data for c in got}
    assert [(i.item_id, i.title) for i in by_reason["replenish"].items] == [("p5", "Hamper")]
    assert by_reason["replenish"].variables["days_left"] == "1"
    nudge = by_reason["tier_nudge"]
    assert nudge.variables["next_tier"] == "silver" and nudge.variables["gap"] == "30.00"
    assert [i.item_id for i in nudge.items] == ["p3"]
    asyncio.run(wait_caught_up(s, timeout=60))
    # The same triggers again, every one already applied (the event-id dedupe window
    # holds them): found, not sent again.
    again = _sweep(s)
    assert (again.found, again.written) == (first.found, 0), (first, again)
    assert len(candidates(s, {user})) == 2


def test_a_scheduled_sweep_is_split_between_workers_and_runs_once_per_interval(
        stack: Stack, store: redis.Redis) -> None:
    """Each state shard is claimed before it is swept, and on a schedule the claim lasts
    most of the interval: two workers ticking at once sweep each customer once between
    them, and another tick within the interval sweeps nothing."""
    s = stack.settings
    _hamper_buyer(s, store, uid("rep2"))
    k = Keys(s.features.key_prefix, s.features.shards)
    whole = _sweep(s)
    assert whole.customers >= 1 and whole.found >= 1
    claims = [k.control(f"push-sweep:{shard}") for shard in range(s.features.shards)]
    assert store.exists(*claims) == 0  # a direct sweep frees its claims

    async def two_at_once() -> list[SweepResult]:
        return list(await asyncio.gather(_sweep_async(s, interval_s=300),
                                         _sweep_async(s, interval_s=300)))

    split = asyncio.run(two_at_once())
    assert sum(r.customers for r in split) == whole.customers, split
    assert sum(r.found for r in split) == whole.found, split
    ttls = [store.ttl(c) for c in claims]
    assert all(0 < t <= 270 for t in ttls), ttls
    assert _sweep(s, interval_s=300).customers == 0  # another tick, same interval
    store.delete(*claims)
    assert _sweep(s, interval_s=300).customers == whole.customers  # the next interval
    store.delete(*claims)


def _hamper_buyer(s: Settings, store: redis.Redis, user: str, saves: str | None = None) -> str:
    """A customer who bought the 135.00 hamper 19 and 9 days ago (and saved ``saves``
    yesterday), applied by the worker."""
    clock = clock_of(store, s)
    send(s, [catalog("p5", "Hamper", minutes=0, price=135.0, stock=50)])
    send(s, [ev("order.placed", user, clock - timedelta(days=d), {
                "order_id": uid("o"), "lines": [
                    {"item_id": "p5", "quantity": 1, "unit_price": 135.0}]})
             for d in (19, 9)]
             + ([ev("product.favorited", user, clock - timedelta(days=1), {"item_id": saves})]
                if saves else []))
    k = Keys(s.features.key_prefix, s.features.shards)
    eventually(lambda: store.hlen(k.user(user, "orders")) == 2 and
               store.zcard(k.user(user, "fav")) == (1 if saves else 0), timeout=20)
    return user


async def _sweep_async(settings: Settings, interval_s: float = 0.0) -> SweepResult:
    client = open_redis(settings)
    try:
        async with EventProducer(settings) as producer:
            return await sweep(settings, client, producer, interval_s)
    finally:
        await client.aclose()


def _sweep(settings: Settings, interval_s: float = 0.0) -> SweepResult:
    return asyncio.run(_sweep_async(settings, interval_s))


def clock_of(store: redis.Redis, settings: Settings) -> datetime:
    k = Keys(settings.features.key_prefix, settings.features.shards)
    ts = max(float(store.hget(k.meta(sh), "maxts") or 0) for sh in range(k.shards))
    return datetime.fromtimestamp(ts, UTC)


def test_push_tail_prints_candidates(stack: Stack) -> None:
    env = {**os.environ, **child_env(stack.settings)}
    out = subprocess.run([*aisle_argv("push", "tail", "--from-beginning", "--json",
                                      "--count", "2")],
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    docs = [msgspec.json.decode(line) for line in out.stdout.splitlines()]
    assert len(docs) == 2 and all(d["specversion"] == "1.0" for d in docs)


# ------------------------------------------------------------------ crash, then rebuild

def test_worker_killed_mid_drain_loses_and_duplicates_nothing(
        stack: Stack, store: redis.Redis) -> None:
    """300 carts fall due at once; the worker is killed (-9) once the first candidates are
    out; its successor waits for the leases to lapse and finishes the rest."""
    s = stack.settings
    t = DAY0 + timedelta(days=6)
    users = {uid("k") for _ in range(300)}
    send(s, [ev("cart.item_added", u, t, {"item_id": "p1"}) for u in users])
    eventually(lambda: len(pending(s, store, users)) == len(users), timeout=30)
    tick(s, t + timedelta(minutes=61))
    eventually(lambda: len(candidates(s, users)) >= 20, timeout=30, every=0.02)
    victim = stack.workers[0]
    victim.proc.kill()
    victim.proc.wait(10)
    halfway = len(candidates(s, users))
    restart_worker(stack, victim)
    eventually(lambda: decided(s, store, users), timeout=40)
    got = candidates(s, users)
    per_user = Counter(c.subject for c in got)
    assert set(per_user) == users, f"{len(users - set(per_user))} customers got nothing"
    assert max(per_user.values()) == 1, [u for u, n in per_user.items() if n > 1][:5]
    assert halfway < len(users), "the kill came after the drain had finished"


def test_an_item_just_pushed_is_not_the_top_web_recommendation(
        stack: Stack, store: redis.Redis) -> None:
    """p1 was carted by hundreds of customers: it tops everyone's popular list, except
    for a customer it was pushed to today."""
    import httpx

    s = stack.settings
    k = Keys(s.features.key_prefix, s.features.shards)
    # The customer p1 was pushed to most recently: earlier tests pushed it to others days
    # ago on the log's clock, outside the web's repeat window.
    watchers = {m.decode().split("|")[0] for sh in range(k.shards)
                for m in store.zrange(k.push_watch(sh, "p1"), 0, -1)}
    pushed_at = {u: float(ts) for u in watchers
                 if (ts := store.hget(k.user(u, "pushitems"), "p1")) is not None}
    pushed = max(pushed_at, key=pushed_at.__getitem__)
    send(s, [ev("cart.item_removed", pushed, DAY0 + timedelta(days=6, minutes=62),
                {"item_id": "p1"})])
    with httpx.Client(base_url=stack.api_url or "", timeout=10) as api:
        def top(user: str) -> list[str]:
            body = api.get(f"/v1/users/{user}/recommendations?limit=5").json()
            # A degraded answer (the store slow under load) skips the ledger: ask again.
            return [] if body["degraded"] else [i["item_id"] for i in body["items"]]

        assert eventually(lambda: top(uid("anyone")), timeout=20)[0] == "p1"
        ranked = eventually(lambda: (r := top(pushed)) and "p1" in r and r, timeout=20)
        assert ranked[0] != "p1"


class Killed(Exception):
    pass


class DiesMidSend(EventProducer):
    """A producer whose worker dies after Kafka acked the first ``survive`` candidates."""

    survive = 2

    async def send_to(self, topic: str, value: bytes, key: bytes, partition: int) -> int:
        if self.survive <= 0:
            raise Killed
        self.survive -= 1
        return await super().send_to(topic, value, key, partition)


def test_candidates_in_flight_when_a_worker_died_go_out_exactly_once(
        servers: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> None:
    """The drain in process, over its own topics and keys: the first drainer dies with two
    of five candidates acked and three never sent; the next one finds the two on the topic
    and sends only the three."""
    s = isolated_settings(servers, tmp_path_factory.mktemp("flight")).model_copy(
        update={"push": PushSettings(lease_s=0.2)})
    # All in one shard: one batch of five, as one worker sends them.
    k = Keys(s.features.key_prefix, s.features.shards)
    users = sorted(itertools.islice((u for u in iter(lambda: uid("f"), None)
                                     if k.shard_of(u) == 0), 5))
    t = DAY0 + timedelta(days=30)
    docs = [ev("cart.item_added", u, t, {"item_id": "p1"}) for u in users]
    docs.append(ev("product.viewed", uid("clock"), t + timedelta(hours=2), {"item_id": "p1"}))
    asyncio.run(_drain_twice(s, [decode_event(msgspec.json.encode(d)) for d in docs]))
    per_user = Counter(c.subject for c in candidates(s, set(users)))
    assert per_user == dict.fromkeys(users, 1)


async def _drain_twice(s: Settings, events: list[Any]) -> None:
    await ensure_topics(s)
    client = open_redis(s)
    keys = Keys(s.features.key_prefix, s.features.shards)
    processor = BatchProcessor(RedisStore(client, keys, 86400.0),
                               Folder(keys, s.features, s.model, s.push), None,
                               respect_rebuild=False)

    async def apply(evs: list[Any], first: int) -> None:
        await processor.process([Record("t", 0, first + i, None, encode_event(e))
                                 for i, e in enumerate(evs)])

    try:
        await apply(events, 0)
        async with DiesMidSend(s) as dying:
            dead = PushDrainer(s, client, dying)
            with pytest.raises(Killed):
                await dead.drain()
            await dead.close()
        shard = keys.shard_of(events[0].user_id)
        assert await client.hlen(keys.push_sending(shard)) == 5
        assert not await client.exists(keys.push_sent(shard))
        assert len(await _candidates(s)) == 2  # acked, never marked sent
        await asyncio.sleep(0.3)  # the dead worker's leases lapse
        async with EventProducer(s) as producer:
            drainer = PushDrainer(s, client, producer)
            for _ in range(3):
                await drainer.drain()
            await drainer.close()
    finally:
        await client.aclose()


def test_schedule_and_fatigue_ledger_are_rebuilt_from_the_log(stack: Stack) -> None:
    _, differ = live_equals_rebuild(stack.settings, timeout=60)
    assert not differ, differ[:20]
