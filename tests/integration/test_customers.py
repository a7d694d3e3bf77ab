"""Customer intelligence and limited-time offers on an Online Retail slice, through the
real broker, worker and API."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from aisle.replay import replay_file
from aisle.stack import Stack
from feature_store.client import open_redis, open_redis_sync
from feature_store.keys import Keys
from feature_store.lease import Lease
from feature_store.reader import FeatureReader
from models.customer import load_segment_rules
from models.population import (
    all_customers,
    in_sample,
    load_stats,
    publish_stats,
    read_all_facts,
    refresh,
)
from serving.crm import iso
from streams.events import LifecycleChanged
from streams.lag import wait_caught_up
from streams.timers import refresh_population
from streams.topics import EventProducer
from tests.conftest import ONLINE_RETAIL
from tests.integration.conftest import isolated_settings
from tests.integration.util import eventually, eventually_async, started_apps, uid

pytestmark = pytest.mark.integration
SEGMENTS = {"prospect", "new", "lost", "dormant", "at_risk", "high_value_loyal", "potential",
            "regular"}


@pytest.fixture(scope="module")
def stack(servers: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    settings = isolated_settings(servers, tmp_path_factory.mktemp("crm"))
    s = Stack.start(settings, workers=1, api=True)
    try:
        asyncio.run(replay_file(s.settings, ONLINE_RETAIL, limit_rows=150_000))
        asyncio.run(wait_caught_up(s.settings, timeout=180))
        asyncio.run(_refresh(s))
        asyncio.run(wait_caught_up(s.settings, timeout=60))  # the lifecycle events
        yield s
    finally:
        s.stop()


async def _refresh(stack: Stack) -> int:
    client = open_redis(stack.settings)
    try:
        async with EventProducer(stack.settings) as producer:
            return await refresh_population(stack.settings, client, producer)
    finally:
        await client.aclose()


def clock_of(api: httpx.Client) -> datetime:
    body = api.get(f"/v1/users/{uid()}/profile").json()
    return datetime.fromisoformat(body["clock"].replace("Z", "+00:00"))


def at(t: datetime) -> str:
    return t.astimezone(UTC).isoformat()


def post(api: httpx.Client, docs: list[dict]) -> None:
    assert api.post("/v1/events", json=docs).status_code == 202


def test_profiles_of_real_customers(api: httpx.Client) -> None:
    segments, lifecycles = set(), set()
    for user in ["17850", "13047", "12583", "14688", "15311", "16098", "18074", "13748"]:
        body = api.get(f"/v1/users/{user}/profile").json()
        assert body["known"], user
        assert body["segment"] in SEGMENTS
        assert body["segment_reason"]
        rfm = body["rfm"]
        assert all(1 <= rfm[k] <= 5 for k in "rfm")
        assert rfm["frequency"] >= 1 and rfm["monetary"] != 0
        assert body["tier"]["tier"] is not None
        assert body["recent_purchases"] and body["recent_purchases"][0]["title"]
        assert body["lifecycle_history"], "the sweep recorded lifecycle events"
        assert body["lifecycle_history"][-1][0] in {"first_purchase", "growing", "mature",
                                                    "at_risk", "churned", "reactivated"}
        segments.add(body["segment"])
        lifecycles.add(body["lifecycle"])
    assert len(segments) >= 2  # real customers do not all fall in one bucket


def offers_from_a_fresh_api(stack: Stack, user: str) -> list[tuple[str, list[tuple[str, str]]]]:
    async def ask() -> list[tuple[str, list[tuple[str, str]]]]:
        async with started_apps(stack.settings) as [(_, c)]:
            body = (await c.get(f"/v1/users/{user}/offers")).json()
        return [(o["offer_id"], [(i["item_id"], i["title"]) for i in o["items"]])
                for o in body["offers"]]

    return asyncio.run(ask())


def test_a_dormant_customer_gets_one_winback_offer_that_expires(api, stack) -> None:
    now = clock_of(api)
    user, item = uid("sleepy"), "85123A"
    old = now - timedelta(days=200)
    post(api, [
        {"type": "product.favorited", "event_id": uid("e"), "user_id": user,
         "occurred_at": at(old - timedelta(days=1)), "payload": {"item_id": item}},
        {"type": "order.placed", "event_id": uid("e"), "user_id": user, "occurred_at": at(old),
         "payload": {"order_id": uid("o"), "lines": [
             {"item_id": "22423", "quantity": 1, "unit_price": 12.75}]}},
    ])
    keys = Keys(stack.settings.features.key_prefix, stack.settings.features.shards)
    rfm = keys.user(user, "rfm")
    # Today's coupons of this kind, which the daily budget caps (by the log's clock).
    budget = keys.control(f"budget:winback_coupon:{now.strftime('%Y-%m-%d')}")

    store = open_redis_sync(stack.settings)
    eventually(lambda: store.hget(rfm, "orders"))
    profile = api.get(f"/v1/users/{user}/profile").json()
    assert profile["segment"] in {"dormant", "lost"}
    counted = int(store.get(budget) or 0)
    first = api.get(f"/v1/users/{user}/offers").json()
    assert first["issued"]
    offer = first["offers"][0]
    assert offer["kind"] == "winback_coupon"
    assert offer["issued_at"][:10] == now.strftime("%Y-%m-%d")
    assert int(store.get(budget) or 0) == counted + 1  # counted once, when issued
    assert 2 * 86400 < store.ttl(budget) <= 3 * 86400
    assert offer["discount_pct"] > 0
    assert [i["item_id"] for i in offer["items"]][0] == item  # the saved item first
    assert 0 < offer["seconds_left"] <= 48 * 3600
    assert offer["reason"]
    again = api.get(f"/v1/users/{user}/offers").json()
    assert again["issued"] is None  # no new coupon per page view
    assert int(store.get(budget) or 0) == counted + 1
    assert [o["offer_id"] for o in again["offers"]] == [offer["offer_id"]]
    # Once folded from its event, the profile shows it too.
    eventually(lambda: api.get(f"/v1/users/{user}/profile").json()["active_offers"])
    # A fresh API process, whose catalog is not read yet, shows it with its items.
    assert offers_from_a_fresh_api(stack, user) == [
        (offer["offer_id"], [(i["item_id"], i["title"]) for i in offer["items"]])]
    # The customer's recommendations bring back what they saved.
    recs = api.get(f"/v1/users/{user}/recommendations").json()["items"]
    assert any(r["item_id"] == item and r["reason"] == "you saved this" for r in recs)
    # Expired: an explicit offer.expired ends it; within its cap no new one comes.
    post(api, [{"type": "offer.expired", "event_id": uid("e"), "user_id": user,
                "occurred_at": at(now), "payload": {"offer_id": offer["offer_id"]}}])
    eventually(lambda: not api.get(f"/v1/users/{user}/profile").json()["active_offers"])
    after = api.get(f"/v1/users/{user}/offers").json()
    assert offer["offer_id"] not in [o["offer_id"] for o in after["offers"]]
    assert all(o["kind"] != "winback_coupon" for o in after["offers"])
    store.close()


def test_a_live_offer_is_answered_again_from_the_kept_read(api, stack) -> None:
    """While the customer's kept read, the log's clock and their offers are the same, the
    offers route gives the answer it made (no decision is made again), as the full path
    would give it; a moved clock makes it again."""
    now = clock_of(api)
    user = uid("kept")
    post(api, [
        {"type": "product.favorited", "event_id": uid("e"), "user_id": user,
         "occurred_at": at(now - timedelta(days=201)), "payload": {"item_id": "85123A"}},
        {"type": "order.placed", "event_id": uid("e"), "user_id": user,
         "occurred_at": at(now - timedelta(days=200)), "payload": {"order_id": uid("o"),
         "lines": [{"item_id": "22423", "quantity": 1, "unit_price": 12.75}]}},
    ])
    store = open_redis_sync(stack.settings)
    rfm = Keys(stack.settings.features.key_prefix, stack.settings.features.shards).user(user,
                                                                                       "rfm")
    eventually(lambda: store.hget(rfm, "orders"))
    store.close()
    assert api.get(f"/v1/users/{user}/offers").json()["issued"]  # made by the stack's API
    eventually(lambda: api.get(f"/v1/users/{user}/profile").json()["active_offers"])
    plain = stack.settings.model_copy(update={  # no kept reads: the full path every time
        "serving": stack.settings.serving.model_copy(update={"tracked_customers": 0})})
    path = f"/v1/users/{user}/offers"

    async def check() -> None:
        async with started_apps(stack.settings, plain) as [(kept_app, kept), (_, full)]:
            customers = kept_app.state.aisle.customers
            decided: list[str] = []
            real = customers.decide_now

            def counted(view: Any) -> Any:
                decided.append(view.user_id)
                return real(view)

            customers.decide_now = counted

            async def both() -> tuple[dict, dict]:
                a, b = (await kept.get(path)).json(), (await full.get(path)).json()
                assert a.pop("request_id") != b.pop("request_id")
                return a, b

            for _ in range(2):  # read (and the read kept), then made from the kept read
                await kept.get(path)
            made = len(decided)
            a, b = await both()
            assert a == b and len(a["offers"]) == 1 and a["issued"] is None
            assert len(decided) == made  # given again: no decision made
            # Another customer's later event moves the log's clock: made again, from the
            # first answer after the kept app has read the new clock (the catalog check,
            # due once a second, would send the full path the new clock too, later).
            before = a["clock"]
            post(api, [{"type": "product.viewed", "event_id": uid("e"), "user_id": uid(),
                        "occurred_at": at(clock_of(api) + timedelta(seconds=90)),
                        "payload": {"item_id": "22423"}}])
            reader = kept_app.state.aisle.reader

            async def new_clock_read() -> bool:
                await kept.get(path)  # the kept app rereads its clock once a second
                known = reader.clock_now()
                return known is not None and iso(known) != before

            async def agreed() -> tuple[dict, dict] | None:
                a, b = await both()
                return (a, b) if a["clock"] == b["clock"] else None

            await eventually_async(new_clock_read)
            assert (await kept.get(path)).json()["clock"] != before
            a, b = await eventually_async(agreed)
            assert a["clock"] != before and a == b and len(decided) > made

    asyncio.run(check())


def test_dislikes_filter_offers_recommendations_and_related(api, stack) -> None:
    now = clock_of(api)
    user = uid("allergic")
    before = api.get("/v1/items/84879/related", params={"limit": 10}).json()["items"]
    polyester = [i["item_id"] for i in before[:3]]
    assert len(polyester) == 3
    docs = [{"type": "catalog.item_upserted", "event_id": uid("c"),
             "occurred_at": at(now + timedelta(seconds=1)),
             "payload": {"item_id": i, "title": f"POLYESTER THING {i}",
                         "attributes": {"material": "polyester"}}} for i in polyester]
    docs.append({"type": "preference.stated", "event_id": uid("p"), "user_id": user,
                 "occurred_at": at(now), "payload": {"dislikes": ["material:polyester"]}})
    docs.append({"type": "product.viewed", "event_id": uid("v"), "user_id": user,
                 "session_id": "s", "occurred_at": at(now), "payload": {"item_id": "84879"}})
    post(api, docs)

    def served() -> set[str]:
        recs = api.get(f"/v1/users/{user}/recommendations", params={"limit": 50}).json()
        rel = api.get("/v1/items/84879/related",
                      params={"limit": 50, "user_id": user}).json()
        offers = api.get(f"/v1/users/{user}/offers").json()["offers"]
        return ({i["item_id"] for i in recs["items"]} | {i["item_id"] for i in rel["items"]}
                | {i["item_id"] for o in offers for i in o["items"]})

    eventually(lambda: api.get(f"/v1/users/{user}/profile").json()["dislikes"])
    # The catalog change reaches the API's item cache within its TTL (2 s).
    eventually(lambda: not served() & set(polyester), timeout=15)
    for _ in range(3):  # and stays filtered
        assert not served() & set(polyester)
    # Without the customer, related items may include them: the filter is personal.
    plain = api.get("/v1/items/84879/related", params={"limit": 50}).json()
    assert {i["item_id"] for i in plain["items"]} & set(polyester)


def lapsed_buyers(api: httpx.Client, stack: Stack, users: list[str]) -> None:
    """Each of ``users`` bought once, 200 days before the log's clock; applied."""
    s = stack.settings
    keys = Keys(s.features.key_prefix, s.features.shards)
    old = clock_of(api) - timedelta(days=200)
    post(api, [{"type": "order.placed", "event_id": uid("e"), "user_id": u,
                "occurred_at": at(old), "payload": {"order_id": uid("o"), "lines": [
                    {"item_id": "22423", "quantity": 1, "unit_price": 12.75}]}}
               for u in users])
    with contextlib.closing(open_redis_sync(s)) as store:
        eventually(lambda: all(store.hget(keys.user(u, "rfm"), "orders") for u in users))


def test_the_stats_come_from_a_stable_sample_and_the_transitions_from_everyone(
        api: httpx.Client, stack: Stack) -> None:
    """A refresh past ``sample_max`` customers computes the stats from the customers its
    id hash picks (the same ones each time) and still finds the lifecycle transitions of
    a customer outside the sample. The store's own stats are put back afterwards."""
    s = stack.settings
    keys = Keys(s.features.key_prefix, s.features.shards)
    rules = load_segment_rules()
    with contextlib.closing(open_redis_sync(s)) as store:
        share = 200 / sum(int(store.scard(keys.users(n))) for n in range(keys.shards))
    # A customer the sample leaves out, last seen buying 200 days ago: not yet swept.
    user = next(u for u in (uid("gone") for _ in range(1000)) if not in_sample(u, share))
    lapsed_buyers(api, stack, [user])

    async def go() -> None:
        client = open_redis(s)
        try:
            kept = await load_stats(client, keys)
            assert kept is not None
            everyone = await all_customers(client, keys)
            facts = await read_all_facts(FeatureReader(client, keys, ttl=600.0), everyone)
            buyers = {f.user_id for f in facts if f.orders > 0}
            whole, _ = await refresh(client, keys, rules)
            assert whole.rfm.customers == len(buyers)
            share = 200 / len(everyone)
            picked = {u for u in buyers if in_sample(u, share)}
            assert 0 < len(picked) < len(buyers) // 2 and user not in picked
            emitted: list[LifecycleChanged] = []

            async def collect(events: list[LifecycleChanged]) -> None:
                emitted.extend(events)

            part, found = await refresh(client, keys, rules, collect, sample_max=200)
            assert part.rfm.customers == len(picked)
            assert found == len(emitted) and user in {e.user_id for e in emitted}
            again, _ = await refresh(client, keys, rules, sample_max=200)
            assert again.rfm == part.rfm and again.item_cycle_days == part.item_cycle_days
            await publish_stats(client, keys, kept)
        finally:
            await client.aclose()

    asyncio.run(go())


def test_the_workers_split_a_refresh_s_lifecycle_part(api: httpx.Client, stack: Stack) -> None:
    """While one worker holds the refresh, another finds the lifecycle transitions of the
    shards nobody has claimed, each shard once per refresh; the holder skips what it did
    not claim and still computes the stats from everyone."""
    from streams.timers import POPULATION_RUN, _claim

    s = stack.settings
    keys = Keys(s.features.key_prefix, s.features.shards)
    lapsed = [uid("lapsed") for _ in range(12)]  # spread over the shards
    lapsed_buyers(api, stack, lapsed)

    async def go() -> None:
        client = open_redis(s)
        try:
            kept = await load_stats(client, keys)
            # Nothing is produced (no producer), so every call finds the same ones.
            whole = await refresh_population(s, client, None)
            assert whole >= len(lapsed)
            everyone = await load_stats(client, keys)
            assert everyone is not None
            # Another worker holds the refresh of run "r1": this one helps.
            holder = Lease(client, keys.control("population-lock"), 60)
            assert await holder.acquire()
            await client.set(keys.control(POPULATION_RUN), b"r1")
            assert await refresh_population(s, client, None) == whole
            assert await refresh_population(s, client, None) == 0  # every shard claimed
            await holder.release()
            # The holder of run "r2" meets half its shards claimed by helpers.
            half = range(0, keys.shards, 2)
            for shard in half:
                assert await _claim(client, keys, b"r2", shard)
            found = {}

            async def collect(events: list[LifecycleChanged]) -> None:
                for e in events:
                    found[e.user_id] = True

            stats, n = await refresh(client, keys, load_segment_rules(), collect,
                                     claim=lambda shard: _claim(client, keys, b"r2", shard))
            assert 0 < n < whole
            assert all(keys.shard_of(u) not in half for u in found)
            assert stats.rfm == everyone.rfm  # the stats still from every customer
            assert kept is not None
            await publish_stats(client, keys, kept)
        finally:
            await client.aclose()

    asyncio.run(go())
