"""Customer reads kept in the API's memory while Valkey tracks their keys
(feature_store/tracking.py): a kept read skips the store, and any change to the
customer's keys (another client's write, an expiry), or the loss of either connection,
makes the next read go to the store again."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import msgspec
import pytest
import redis
import redis.asyncio as aioredis

from feature_store.keys import Keys
from feature_store.multiplexed import Multiplexed
from feature_store.reader import FeatureReader
from feature_store.tracking import LocalCopies
from serving.crm import CustomerService, PopulationHolder

pytestmark = pytest.mark.integration

Scenario = Callable[[aioredis.Redis, FeatureReader, LocalCopies, Keys], Awaitable[None]]


def run(redis_url: str, scenario: Scenario, **client_options: Any) -> None:
    async def go() -> None:
        client = aioredis.Redis.from_url(redis_url, **client_options)
        keys = Keys(f"tk{uuid.uuid4().hex[:6]}", 4)
        local = LocalCopies(keys.user_of, 100)
        fast = Multiplexed.of(client, local)
        assert fast is not None
        reader = FeatureReader(client, keys, fast=fast, local=local)
        try:
            await scenario(client, reader, local, keys)
        finally:
            await fast.close()
            await client.aclose()
    asyncio.run(go())


async def kept_cart(client: aioredis.Redis, reader: FeatureReader, local: LocalCopies,
                    keys: Keys) -> list:
    """Customer u1 with {i1: 1} in their cart, read until the read is kept."""
    await client.hset(keys.user("u1", "cart"), "i1", 1)
    return await tracked_read(reader, local, "u1")


async def cart(reader: FeatureReader, user: str) -> dict[str, float]:
    """The customer's cart as the next read returns it (kept or from the store)."""
    return reader.customer_from(user, await reader.customer_replies(user)).state.cart


async def execs(client: aioredis.Redis) -> int:
    """Transactions the store has run so far (every read not kept is one)."""
    return int((await client.info("commandstats")).get("cmdstat_exec", {}).get("calls", 0))


async def tracked_read(reader: FeatureReader, local: LocalCopies, user: str) -> list:
    """Read until a read is kept (the first read of a connection sets tracking up)."""
    for _ in range(100):
        replies = await reader.customer_replies(user)
        if local.get(user, True) is not None:
            return replies
        await asyncio.sleep(0.01)
    raise AssertionError("no read was kept")


async def until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if check():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("the store's invalidation never came")


def test_a_kept_read_skips_the_store_until_another_client_writes(redis_url: str) -> None:
    async def scenario(client: aioredis.Redis, reader: FeatureReader, local: LocalCopies,
                       keys: Keys) -> None:
        first = await kept_cart(client, reader, local, keys)
        before = await execs(client)
        again = [await reader.customer_replies("u1") for _ in range(5)]
        assert reader.kept_replies("u1") == first  # the same, without a coroutine
        assert await execs(client) == before  # nothing sent
        assert all(r == first for r in again)
        assert reader.kept_replies("u2") is None  # never read: the store must be
        dropped = local.dropped
        await client.hset(keys.user("u1", "cart"), "i2", 3)
        await until(lambda: local.dropped > dropped)
        assert reader.kept_replies("u1") is None
        assert await cart(reader, "u1") == {"i1": 1.0, "i2": 3.0}
        assert await execs(client) == before + 1
    run(redis_url, scenario)


def test_a_key_that_expires_drops_the_copy(redis_url: str) -> None:
    async def scenario(client: aioredis.Redis, reader: FeatureReader, local: LocalCopies,
                       keys: Keys) -> None:
        await kept_cart(client, reader, local, keys)
        await client.pexpire(keys.user("u1", "cart"), 1000)  # setting it is a change too
        await until(lambda: local.get("u1", True) is None)
        kept = reader.customer_from("u1", await tracked_read(reader, local, "u1")).state
        assert kept.cart == {"i1": 1.0}  # kept, then the store deletes the key itself:
        await until(lambda: local.get("u1", True) is None)
        assert await cart(reader, "u1") == {}
    run(redis_url, scenario)


def test_offers_reads_kept_or_not_answer_as_the_store_does(redis_url: str) -> None:
    async def scenario(client: aioredis.Redis, reader: FeatureReader, local: LocalCopies,
                       keys: Keys) -> None:
        await client.hset(keys.user("u1", "cart"), "i1", 1)
        await client.hset(keys.user("u1", "offers"), "o1", b'{"x": 1}')
        await client.zadd(keys.user("u1", "views"), {"i9": 5.0})
        await client.zadd(keys.user("u1", "ia"), {"i9": 1.5})
        await client.hset(keys.user("u1", "bought"), "i3", 2)
        plain = FeatureReader(client, keys, fast=Multiplexed.of(client))
        try:
            from_store = await plain.customer_replies("u1", offers_only=True)
            parsed = await plain.customer("u1", offers_only=True)
        finally:
            await plain.fast.close()  # type: ignore[union-attr]
        await tracked_read(reader, local, "u1")  # a full read kept
        assert await reader.customer_replies("u1", offers_only=True) == from_store
        assert reader.kept_replies("u1", offers_only=True) == from_store
        kept = await reader.customer("u1", offers_only=True)  # made from the full parse
        assert kept == parsed and kept.state.weights == parsed.state.weights
        assert kept.state.bought == {"i3": 2} and kept.offers == parsed.offers
        local.reset()
        for _ in range(50):  # an offers read kept
            assert await reader.customer_replies("u1", offers_only=True) == from_store
            if local.get("u1", False) is not None:
                break
            await asyncio.sleep(0.01)
        assert local.get("u1", True) is None  # serves no full read
    run(redis_url, scenario)


@pytest.mark.parametrize("which", ["subscriber", "reader"])
def test_losing_either_connection_drops_every_copy_and_tracking_resumes(
        redis_url: str, which: str) -> None:
    async def scenario(client: aioredis.Redis, reader: FeatureReader, local: LocalCopies,
                       keys: Keys) -> None:
        await kept_cart(client, reader, local, keys)
        fast = reader.fast
        assert isinstance(fast, Multiplexed) and fast._invalidations is not None
        victim = (fast._invalidations.client_id if which == "subscriber"
                  else await fast.execute("CLIENT", "ID"))
        resets = local.resets
        assert await client.client_kill_filter(_id=victim) == 1
        await until(lambda: local.resets > resets)  # noticed when the socket closes
        assert local.get("u1", True) is None
        await tracked_read(reader, local, "u1")  # tracked again, by a new subscriber
        await client.hset(keys.user("u1", "cart"), "i1", 7)
        await until(lambda: local.get("u1", True) is None)
        assert await cart(reader, "u1") == {"i1": 7.0}
    run(redis_url, scenario)


def test_the_state_alone_comes_from_a_kept_read(redis_url: str) -> None:
    """``FeatureReader.user`` (personalised related items, the fallback) reads the
    first eight keys of the customer read: a kept full read answers it."""
    async def scenario(client: aioredis.Redis, reader: FeatureReader, local: LocalCopies,
                       keys: Keys) -> None:
        await client.hset(keys.user("u1", "cart"), "i1", 1)
        await client.zadd(keys.user("u1", "views"), {"i9": 5.0})
        plain = FeatureReader(client, keys, fast=Multiplexed.of(client))
        try:
            await tracked_read(reader, local, "u1")
            before = await execs(client)
            state = await reader.user("u1")
            assert await execs(client) == before  # nothing sent
            assert state == await plain.user("u1") and state.views == [("i9", 5.0)]
            await client.hset(keys.user("u1", "cart"), "i1", 2)
            await until(lambda: local.get("u1", True) is None)
            assert (await reader.user("u1")).cart == {"i1": 2.0}
        finally:
            await plain.fast.close()  # type: ignore[union-attr]
    run(redis_url, scenario)


def test_a_kept_read_is_parsed_once_until_it_changes(redis_url: str) -> None:
    async def scenario(client: aioredis.Redis, reader: FeatureReader, local: LocalCopies,
                       keys: Keys) -> None:
        await client.hset(keys.user("u1", "cart"), "i1", 1)
        await client.zadd(keys.user("u1", "views"), {"i9": 5.0})
        await tracked_read(reader, local, "u1")
        full = await reader.customer("u1")
        assert await reader.customer("u1") is full and full.state.cart == {"i1": 1.0}
        offers = await reader.customer("u1", offers_only=True)
        assert await reader.customer("u1", offers_only=True) is offers
        assert offers.state.cart == {} and offers.state.views == []  # what offers read
        await client.hset(keys.user("u1", "cart"), "i1", 5)
        await until(lambda: local.get("u1", True) is None)
        assert (await reader.customer("u1")).state.cart == {"i1": 5.0}
    run(redis_url, scenario)


def test_a_connection_no_longer_tracked_is_noticed_and_tracked_again(redis_url: str) -> None:
    async def scenario(client: aioredis.Redis, reader: FeatureReader, local: LocalCopies,
                       keys: Keys) -> None:
        await kept_cart(client, reader, local, keys)
        await reader.fast.execute("CLIENT", "TRACKING", "OFF")  # type: ignore[union-attr]
        local.reset()  # so the next read goes to the store, where CACHING is refused
        resets = local.resets
        assert await cart(reader, "u1") == {"i1": 1.0} and local.resets > resets
        await tracked_read(reader, local, "u1")  # set up again
        await client.hset(keys.user("u1", "cart"), "i1", 4)
        await until(lambda: local.get("u1", True) is None)
    run(redis_url, scenario)


def test_a_store_that_refuses_tracking_is_read_every_time(redis_url: str) -> None:
    """An ACL without CLIENT: reads work, nothing is kept, tracking is given up."""
    admin = redis.Redis.from_url(redis_url)
    user, password = f"notrack{uuid.uuid4().hex[:6]}", "pw"
    admin.acl_setuser(user, enabled=True, passwords=[f"+{password}"], keys=["*"],
                      channels=["*"], commands=["+@all", "-client"])

    async def scenario(client: aioredis.Redis, reader: FeatureReader, local: LocalCopies,
                       keys: Keys) -> None:
        await client.hset(keys.user("u1", "cart"), "i1", 1)
        for _ in range(20):
            assert await cart(reader, "u1") == {"i1": 1.0}
            await asyncio.sleep(0.01)
        assert local.get("u1", True) is None
        assert reader.fast._invalidations is None  # type: ignore[union-attr]
    try:
        run(redis_url, scenario, username=user, password=password)
    finally:
        admin.acl_deluser(user)
        admin.close()


def offer_doc(offer_id: str, item: str) -> bytes:
    return msgspec.json.encode({
        "offer_id": offer_id, "rule_id": "r", "policy_version": "1", "kind": "winback",
        "discount_pct": 10.0, "items": [item], "issued_at": 1.0e9, "expires_ts": 2.0e9,
        "reason": "we miss you", "trigger": "dormant"})


def test_a_kept_reads_offers_are_parsed_once_until_they_change(redis_url: str) -> None:
    async def scenario(client: aioredis.Redis, reader: FeatureReader, local: LocalCopies,
                       keys: Keys) -> None:
        crm = CustomerService(reader, keys, PopulationHolder(client, keys))
        await client.hset(keys.user("u1", "offers"), "o1", offer_doc("o1", "i1"))
        await tracked_read(reader, local, "u1")

        async def offers() -> list:
            return (await crm.view("u1", derive=False, offers_only=True)).offers

        first, again = await offers(), await offers()
        assert [o.offer_id for o in first] == ["o1"] and first[0].items == ("i1",)
        assert again[0] is first[0]  # parsed once
        pending = replace(first[0], offer_id="o9", issued_at=1.5e9)

        async def send(events: list) -> None:
            return None

        await crm.record_issue(pending, send)  # issued here, not yet read back
        assert [o.offer_id for o in await offers()] == ["o1", "o9"]
        crm.forget("u1")
        assert [o.offer_id for o in await offers()] == ["o1"]  # the kept parse untouched
        dropped = local.dropped
        await client.hset(keys.user("u1", "offers"), "o2", offer_doc("o2", "i2"))
        await until(lambda: local.dropped > dropped)
        await tracked_read(reader, local, "u1")
        changed = await offers()
        assert sorted(o.offer_id for o in changed) == ["o1", "o2"]
        assert all(o is not first[0] for o in changed)  # the new read parsed anew
        local.reset()  # nothing kept: parsed from each read, the same offers
        assert sorted(o.offer_id for o in await offers()) == ["o1", "o2"]
    run(redis_url, scenario)
