"""The API's per-customer caches (``serving.customer_cache_size``) against the real stack.

A request-time fold-in and a customer's facts + profile are kept in memory with the state
they were derived from. These tests build two API services over the same store, one
with the caches and one without, and check that the cached one answers exactly as the
uncached one after the customer's next event and after a new model version, and that the
cache was really holding the old values (so a cache that ignored either would fail).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import httpx
import msgspec
import numpy as np
import pytest
import redis

from aisle.settings import Settings
from aisle.stack import Stack
from benchmarks.serving_stack import republish
from feature_store.keys import Keys
from models.population import KEY as STATS_KEY
from models.population import decode_stats
from models.train import train_once
from serving.app import create_app
from serving.crm import EMPTY_STATS
from serving.service import ANSWERED, FALLBACKS
from streams.events import decode_event
from streams.lag import wait_caught_up
from streams.topics import EventProducer
from tests.integration.conftest import ADMIN_KEY, isolated_settings
from tests.integration.util import catalog, event, stack_over_slice, started_apps, uid

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def loaded(servers: dict[str, str], tmp_path_factory: pytest.TempPathFactory,
           ) -> Iterator[Stack]:
    """A worker over 3,000 Online Retail rows and a trained model; no API process. The
    training runs do not re-fold the customers' stored vectors (``refold_customers``):
    this module is about what the API solves and keeps when a customer's stored vector
    is missing or older than the model, which the re-fold otherwise leaves to customers
    whose events arrive while a model is being published."""
    base = isolated_settings(servers, tmp_path_factory.mktemp("serving-cache"))
    settings = base.model_copy(update={"model": base.model.model_copy(
        update={"refold_customers": False})})
    with stack_over_slice(settings, api=False) as stack:
        asyncio.run(train_once(settings))
        yield stack


@contextlib.asynccontextmanager
async def two_services(settings: Settings) -> AsyncIterator[tuple[Any, Any]]:
    """The API's state twice: with the per-customer caches, and with them off."""
    plain = settings.model_copy(update={
        "serving": settings.serving.model_copy(update={"customer_cache_size": 0})})
    cached_app, plain_app = create_app(settings), create_app(plain)
    async with cached_app.router.lifespan_context(cached_app), \
            plain_app.router.lifespan_context(plain_app):
        yield cached_app.state.aisle, plain_app.state.aisle


def buyers(settings: Settings, n: int) -> list[str]:
    """Customers with interactions and at least two orders (so they get a profile)."""
    k = Keys(settings.features.key_prefix, settings.features.shards)
    client = redis.Redis.from_url(settings.redis_url or "")
    try:
        out = sorted(raw.decode() for shard in range(k.shards)
                     for raw in client.smembers(k.users(shard))
                     if client.exists(k.user(raw.decode(), "ia"))
                     and float(client.hget(k.user(raw.decode(), "rfm"), "orders") or 0) >= 2)
    finally:
        client.close()
    assert len(out) >= n
    return out[:n]


def answer(a: Any) -> list[tuple[str, float, str]]:
    return [(s.item_id, s.score, s.reason) for s in a.items]


async def both(cached: Any, plain: Any, user: str) -> tuple[Any, Any]:
    return (await cached.service.recommendations(user, 10, None),
            await plain.service.recommendations(user, 10, None))


def test_cached_profile_follows_the_customers_next_event(loaded: Stack) -> None:
    s = loaded.settings
    user = buyers(s, 1)[0]

    async def check() -> None:
        async with two_services(s) as (cached, plain):
            first = await cached.customers.view(user)
            again = await cached.customers.view(user)
            assert again.profile is first.profile  # served from the cache
            a, b = await both(cached, plain, user)
            assert answer(a) == answer(b)

            order = event("order.placed", {"order_id": uid("o"), "lines": [
                {"item_id": uid("new-item"), "quantity": 3, "unit_price": 4.0}]}, user)
            async with EventProducer(s) as producer:
                await producer.send_events([decode_event(msgspec.json.encode(order))])
            await wait_for_orders(cached, user, first.facts.orders + 1)

            after = await cached.customers.view(user)
            fresh = await plain.customers.view(user)
            assert after.profile is not first.profile
            assert after.facts == fresh.facts and after.profile == fresh.profile
            assert after.facts.orders == first.facts.orders + 1
            a, b = await both(cached, plain, user)
            assert answer(a) == answer(b)

    asyncio.run(check())


async def wait_for_orders(state: Any, user: str, orders: int) -> None:
    key = state.reader.keys.user(user, "rfm")
    for _ in range(300):
        if float(await state.redis.hget(key, "orders") or 0) >= orders:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"the worker did not apply the order for {user} in 30 s")


def test_cached_fold_in_follows_a_new_model(loaded: Stack) -> None:
    s = loaded.settings
    users = buyers(s, 6)[1:]  # not the customer the other test sent an event for

    async def check() -> None:
        async with two_services(s) as (cached, plain):
            v1 = cached.holder.version
            assert v1 is not None and plain.holder.version == v1
            for user in users:
                a, b = await both(cached, plain, user)
                assert answer(a) == answer(b) and a.model_version == v1
            # Replayed before there was a model: their vectors are solved per request.
            held = {u: cached.service._vectors[u] for u in users}
            assert all(key[0] == v1 for key, _, _ in held.values())

            # Other customers buy; a retrain gives every item new factors.
            docs = [event("order.placed", {"order_id": uid("o"), "lines": [
                {"item_id": item, "quantity": 1, "unit_price": 2.0} for item in pair]},
                uid(), minutes=n) for n, pair in enumerate(
                    zip(cached.holder.current.item_ids[:40:2],
                        cached.holder.current.item_ids[1:40:2], strict=True))]
            async with EventProducer(s) as producer:
                await producer.send_events([decode_event(msgspec.json.encode(d))
                                            for d in docs])
            await wait_caught_up(s, timeout=60)
            v2 = (await train_once(s)).version
            for state in (cached, plain):
                await state.holder.refresh()
            assert cached.holder.version == v2 != v1

            moved = 0
            for user in users:
                a, b = await both(cached, plain, user)
                assert answer(a) == answer(b) and a.model_version == v2
                key, _, vec = cached.service._vectors[user]
                assert key[0] == v2
                moved += not np.allclose(vec, held[user][2])
            assert moved  # the old vectors were wrong for the new model

    asyncio.run(check())


def test_answers_equal_uncached_for_new_and_unknown_customers(loaded: Stack) -> None:
    s = loaded.settings

    async def check() -> None:
        async with two_services(s) as (cached, plain):
            for user in [uid("nobody"), *buyers(s, 3)]:
                for _ in range(2):
                    a, b = await both(cached, plain, user)
                    assert answer(a) == answer(b) and a.strategy == b.strategy
                view_a, view_b = (await cached.customers.view(user),
                                  await plain.customers.view(user))
                assert view_a.profile == view_b.profile

    asyncio.run(check())



def test_a_derived_profile_lasts_a_minute_of_log_clock(loaded: Stack) -> None:
    s = loaded.settings
    user = buyers(s, 4)[-1]

    async def check() -> None:
        async with two_services(s) as (cached, plain):
            record = await cached.reader.customer(user)
            clock = await cached.reader.clock()
            derive = cached.customers._derived
            _, first = await derive(user, record, clock)
            _, later = await derive(user, record, clock + 30)
            assert later is first  # half a minute on: reused
            _, stale = await derive(user, record, clock + 7 * 86400)
            _, fresh = await plain.customers._derived(user, record, clock + 7 * 86400)
            assert stale is not first and stale == fresh  # a week on: derived again
            assert stale.clock == clock + 7 * 86400 and first.clock == clock

    asyncio.run(check())


def test_the_same_published_stats_keep_their_object(loaded: Stack) -> None:
    # The caches key on the stats object; a poll that rebuilt it from the same bytes
    # emptied them every second.
    s = loaded.settings

    async def check() -> None:
        async with two_services(s) as (cached, _):
            population = cached.customers.population
            await population.refresh()
            before = population.current
            await population.refresh()
            assert population.current is before
            key = cached.reader.keys.control(STATS_KEY)
            raw = await cached.redis.get(key)
            stats = decode_stats(raw) if raw else EMPTY_STATS
            try:
                changed = dataclasses.replace(stats, as_of=stats.as_of + 1)
                await cached.redis.set(key, msgspec.json.encode(changed))
                await population.refresh()
                assert population.current is not before
                assert population.current.as_of == changed.as_of
            finally:
                if raw is None:
                    await cached.redis.delete(key)
                else:
                    await cached.redis.set(key, raw)

    asyncio.run(check())


def test_erasure_leaves_nothing_in_the_caches(loaded: Stack) -> None:
    s = loaded.settings
    user = buyers(s, 8)[-1]

    async def check() -> None:
        async with two_services(s) as (cached, plain):
            await cached.service.recommendations(user, 10, None)
            assert user in cached.customers._derived_cache
            app = create_app(s)  # the erasure route of a third API process
            async with app.router.lifespan_context(app), httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=app), base_url="http://api") as api:
                resp = await api.delete(f"/v1/users/{user}",
                                        headers={"authorization": f"Bearer {ADMIN_KEY}"})
                assert resp.status_code == 202
            key = cached.reader.keys.user(user, "rfm")
            for _ in range(300):
                if not await cached.redis.exists(key):
                    break
                await asyncio.sleep(0.1)
            # The replica that did not take the DELETE: its entries no longer match.
            a, b = await both(cached, plain, user)
            assert answer(a) == answer(b) and a.strategy == "popular"
            assert user not in cached.service._vectors
            view = await cached.customers.view(user)
            assert view.facts.orders == 0 and view.facts.purchases == ()

    asyncio.run(check())


def test_an_unexpected_error_answers_popular_items_flagged_degraded(loaded: Stack) -> None:
    """A bug on the personal path (here: the fold-in and the related blend raise) still
    answers: popular items, degraded, counted; not a 500 on the shop's page."""
    s = loaded.settings
    user = buyers(s, 3)[-1]

    def broken(*_: Any) -> Any:
        raise RuntimeError("a bug")

    async def check() -> None:
        async with two_services(s) as (cached, plain):
            service = cached.service
            service._vector = broken
            service._related_answer = broken
            before = FALLBACKS.labels("recommendations")._value.get()
            got = await service.recommendations(user, 10, None)
            assert got.strategy == "popular" and got.degraded and len(got.items) == 10
            assert FALLBACKS.labels("recommendations")._value.get() == before + 1
            healthy = await plain.service.recommendations(user, 10, None)
            assert not healthy.degraded
            item = healthy.items[0].item_id
            related = await service.related(item, 5, None)
            assert related.strategy == "popular" and related.degraded
            assert item not in {x.item_id for x in related.items} and len(related.items) == 5

    asyncio.run(check())


def test_related_answers_follow_a_new_model_in_the_background(loaded: Stack) -> None:
    """A new model makes every cached related answer due, not missing: the next request
    still gets the old model's answer at once, one background task remakes them, and
    then the answers are the new model's, equal to answers made without the cache."""
    s = loaded.settings

    async def check() -> None:
        async with two_services(s) as (state, _):
            service, cache = state.service, state.service.related_cache
            v1 = state.holder.version
            items = [i for i in state.holder.current.item_ids[:60]][:25]
            for item in items:
                assert (await service.related(item, 10)).model_version == v1
            assert len(cache) == len(items) and cache.refreshes == 0

            v2 = await asyncio.to_thread(republish, s)
            await state.holder.refresh()
            assert state.holder.version == v2 != v1
            first = [await service.related(item, 10) for item in items]
            assert {a.model_version for a in first} == {v1}  # nobody waited
            assert cache.stale_answers >= len(items)
            for _ in range(200):
                if cache.queued == 0 and cache.refreshes >= len(items):
                    break
                await asyncio.sleep(0.05)
            assert cache.refreshes >= len(items)
            for item in items:
                a = await service.related(item, 10)
                fresh = await service._related_answer(item, 10, None)
                assert a.model_version == v2
                assert answer(a) == answer(fresh)

        # The metrics page reports the cache.
        app = create_app(s)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                # A degraded answer (the store slower than its 0.25 s budget, as on a
                # busy CI machine while the new app starts) is not kept: ask again.
                for _ in range(20):
                    got = await c.get(f"/v1/items/{items[0]}/related")
                    if not got.json()["degraded"]:
                        break
                    await asyncio.sleep(0.1)
                assert not got.json()["degraded"]
                body = (await c.get("/metrics")).text
        entries = [line for line in body.splitlines()
                   if line.startswith('aisle_related_answer_cache{what="entries"}')]
        assert entries == ['aisle_related_answer_cache{what="entries"} 1.0']
        assert 'aisle_catalog_cache{what="entries"}' in body

    asyncio.run(check())


async def settled(service: Any, user: str, limit: int = 10) -> Any:
    """An answer that is not degraded (on a busy machine the store can miss its 0.25 s
    budget once; a degraded answer is not kept)."""
    for _ in range(20):
        got = await service.recommendations(user, limit, None)
        if not got.degraded:
            return got
        await asyncio.sleep(0.1)
    raise AssertionError(f"every answer for {user} was degraded")


async def reused(service: Any, user: str, limit: int = 10) -> tuple[Any, bool]:
    """A settled answer, and whether it was the customer's kept one (the API's counter
    moved); a degraded answer (the store late on a busy machine) is asked again."""
    counter = ANSWERED.labels("reused")
    for _ in range(20):
        before = counter._value.get()
        got = await service.recommendations(user, limit, None)
        if not got.degraded:
            return got, counter._value.get() == before + 1
        await asyncio.sleep(0.1)
    raise AssertionError(f"every answer for {user} was degraded")


def same(a: Any, b: Any) -> bool:
    return (answer(a) == answer(b) and a.strategy == b.strategy
            and a.model_version == b.model_version)


async def send(settings: Settings, *docs: dict[str, Any]) -> None:
    async with EventProducer(settings) as producer:
        await producer.send_events([decode_event(msgspec.json.encode(d)) for d in docs])


async def until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if await check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout} s")


def test_a_customers_answer_is_reused_until_their_next_event(loaded: Stack) -> None:
    s = loaded.settings
    user = buyers(s, 10)[-1]

    async def check() -> None:
        async with two_services(s) as (cached, plain):
            first = await settled(cached.service, user)
            again, was = await reused(cached.service, user)
            assert was and same(again, first) and again.items is not first.items
            assert not (await reused(cached.service, user, 5))[1]  # another shape
            assert not (await reused(plain.service, user))[1]  # customer_cache_size 0: off

            item = cached.holder.current.item_ids[0]
            await send(s, event("product.viewed", {"item_id": item}, user,
                                minutes=0))
            views = cached.reader.keys.user(user, "views")
            await until(lambda: cached.redis.zscore(views, item), "the view applied")
            after, was = await reused(cached.service, user)
            assert not was
            assert same(after, await settled(plain.service, user))
            again, was = await reused(cached.service, user)
            assert was and same(again, after)

    asyncio.run(check())


def test_a_reused_answer_is_sent_as_the_same_answer_derived(loaded: Stack) -> None:
    """A reused answer's JSON is encoded once and sent again with each request's id
    (routes._answer): the body must read as the one the plain service makes."""
    s = loaded.settings
    user = buyers(s, 10)[-2]
    plain = s.model_copy(update={
        "serving": s.serving.model_copy(update={"customer_cache_size": 0})})
    path = f"/v1/users/{user}/recommendations"

    async def check() -> None:
        async with started_apps(s, plain) as [(_, api), (_, plain_api)]:
            counter = ANSWERED.labels("reused")
            for n in range(20):
                before = counter._value.get()
                got = await api.get(path, headers={"X-Request-ID": f"again-{n}"})
                if counter._value.get() > before and not got.json()["degraded"]:
                    break
            else:
                raise AssertionError("no answer was reused")
            assert got.headers["x-request-id"] == got.json()["request_id"] == f"again-{n}"
            twice = await api.get(path)  # the encoding kept from the first reuse
            derived = await plain_api.get(path)
            bodies = [r.json() for r in (got, twice, derived)]
            assert len({b.pop("request_id") for b in bodies}) == 3
            assert bodies[0] == bodies[1] == bodies[2] and len(bodies[0]["items"]) == 10
            assert list(got.json()) == list(derived.json())  # the same fields, in order

    asyncio.run(check())


def test_a_returning_customers_kept_answer_skips_the_full_path(loaded: Stack) -> None:
    """In no experiment, with their kept read and answer current, a returning customer
    is answered by the route from the kept answer alone (RecommendationService.reused):
    the full path is not entered, and the body is the one it would give. Anything else
    (here another shape, never answered) still takes the full path."""
    s = loaded.settings
    user = buyers(s, 10)[-3]
    path = f"/v1/users/{user}/recommendations"

    async def check() -> None:
        async with started_apps(s) as [(app, api)]:
            counter = ANSWERED.labels("reused")
            for _ in range(20):
                before = counter._value.get()
                kept = await api.get(path)
                if counter._value.get() > before and not kept.json()["degraded"]:
                    break
            else:
                raise AssertionError("no answer was reused")
            service = app.state.aisle.service

            async def full_path(*args: Any) -> Any:
                raise AssertionError("the full path was entered")

            service.recommendations = full_path
            before = counter._value.get()
            again = await api.get(path, headers={"X-Request-ID": "at-once"})
            assert again.status_code == 200 and counter._value.get() == before + 1
            bodies = [kept.json(), again.json()]
            assert bodies[1].pop("request_id") == "at-once" != bodies[0].pop("request_id")
            assert bodies[0] == bodies[1]
            with pytest.raises(AssertionError, match="full path"):
                await api.get(path, params={"limit": 5})

    asyncio.run(check())


def test_a_kept_answer_with_an_item_gone_out_of_stock_is_made_again(loaded: Stack) -> None:
    """The customer's state did not change, one of their answer's items did: the kept
    answer is not given once the API's catalog entry for the item has changed."""
    s = loaded.settings
    user = buyers(s, 10)[8]

    async def check() -> None:
        async with two_services(s) as (cached, plain):
            first = await settled(cached.service, user)
            assert (await reused(cached.service, user))[1]
            assert cached.service.reused(user, 10, None) is not None  # the route's way
            gone = first.items[0].item_id
            await send(s, catalog(gone, "sold out", minutes=0, stock=0))
            key = cached.reader.keys.item(gone)
            await until(lambda: cached.redis.hget(key, "stock"), "the upsert applied")

            async def not_at_once() -> bool:  # the route's way sees the change too
                return cached.service.reused(user, 10, None) is None

            await until(not_at_once, "the kept answer no longer given at once", timeout=10)

            async def dropped() -> bool:
                got = await cached.service.recommendations(user, 10, None)
                return not got.degraded and gone not in {x.item_id for x in got.items}

            await until(dropped, "the sold-out item left the answer", timeout=10)
            got = await settled(cached.service, user)
            assert answer(got) == answer(await settled(plain.service, user))

    asyncio.run(check())


def test_with_the_store_late_a_customer_gets_their_last_answer_flagged(loaded: Stack,
                                                                        ) -> None:
    s = loaded.settings
    user = buyers(s, 10)[6]

    async def check() -> None:
        async with two_services(s) as (cached, _):
            service = cached.service
            first = await settled(service, user)
            assert first.strategy == "personal"
            budget, service.timeout = service.timeout, 0.0  # no read answers in time
            try:
                late = await service.recommendations(user, 10, None)
                assert late.degraded and answer(late) == answer(first)
                assert late.strategy == first.strategy
                assert late.model_version == first.model_version
                # Nothing kept for this one: popular items, as before.
                other = await service.recommendations(uid("nobody"), 10, None)
                assert other.degraded and other.strategy == "popular" and other.items
            finally:
                service.timeout = budget
            again, was = await reused(service, user)  # the store back: the same state
            assert was and same(again, first) and not again.degraded

    asyncio.run(check())
