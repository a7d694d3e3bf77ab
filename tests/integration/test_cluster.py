"""Aisle on a real Redis Cluster: three Valkey primaries started from the embedded binary,
a real worker and API against them, an Online Retail slice through Kafka — answers,
erasure, push claims, and a rebuild from the log equal to the live state."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from aiokafka import AIOKafkaConsumer
from redis.crc import key_slot

from aisle.replay import replay_file
from aisle.runtime import CLUSTER_SLOTS
from aisle.settings import Settings
from aisle.stack import Stack
from feature_store.client import is_cluster, open_redis, open_redis_sync
from feature_store.dump import dump_state
from feature_store.keys import Keys
from feature_store.multiplexed import ClusterMultiplexed, pipelined
from feature_store.reader import FeatureReader
from feature_store.tracking import LocalCopies
from feature_store.updates import Folder
from models.online import decode_vector
from models.train import train_once
from push.drain import PushDrainer
from streams.events import decode_event, event_type
from streams.lag import end_offsets, wait_caught_up
from streams.rebuild import rebuild_from_log
from streams.timers import refresh_population
from streams.topics import EventProducer
from tests.conftest import ONLINE_RETAIL
from tests.integration.conftest import ADMIN_KEY, isolated_settings
from tests.integration.util import customers, event, eventually, keys_of, loaded, uid

pytestmark = pytest.mark.integration
PRIMARIES = 3
SHARDS = 8
LATER = 10**6  # minutes after util.BASE: after every Online Retail event


def spread_prefix(shards: int, primaries: int = PRIMARIES) -> str:
    """A key prefix whose shards land on every primary of a cluster whose slots are split
    evenly (aisle.runtime.start_cluster), so the test cannot pass on one node by luck."""
    def node(slot: int) -> int:
        return max(i for i in range(primaries) if i * CLUSTER_SLOTS // primaries <= slot)

    for n in range(10_000):
        prefix = f"cl{n}"
        if len({node(key_slot(Keys(prefix, shards).tag(s).encode()))
                for s in range(shards)}) == primaries:
            return prefix
    raise AssertionError("no prefix spreads the shards")  # pragma: no cover


@pytest.fixture(scope="module")
def stack(servers: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    base = isolated_settings(servers, tmp_path_factory.mktemp("cluster"))
    # No store URL and redis_cluster: the stack starts its own 3-primary cluster, as
    # `AISLE_REDIS_CLUSTER=true aisle up` does.
    settings = base.model_copy(update={
        "redis_url": None, "redis_cluster": True,
        "features": base.features.model_copy(
            update={"key_prefix": spread_prefix(SHARDS), "shards": SHARDS})})
    s = Stack.start(settings, workers=1, api=True)
    try:
        asyncio.run(replay_file(s.settings, ONLINE_RETAIL, limit_rows=20_000))
        asyncio.run(wait_caught_up(s.settings, timeout=120))
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def store(stack: Stack) -> Iterator[redis.RedisCluster]:
    client = open_redis_sync(stack.settings)
    assert isinstance(client, redis.RedisCluster)
    yield client
    client.close()


@pytest.fixture(scope="module")
def model_version(stack: Stack) -> str:
    return asyncio.run(train_once(stack.settings)).version


def test_the_stack_runs_on_a_three_primary_cluster(stack: Stack, store) -> None:
    assert stack.settings.redis_cluster
    assert len(store.get_primaries()) == PRIMARIES
    assert is_cluster(store)
    info = store.cluster_info()
    assert info["cluster_state"] == "ok" and int(info["cluster_known_nodes"]) == PRIMARIES


def test_each_shard_lives_on_one_node_and_every_node_holds_shards(stack: Stack, store) -> None:
    prefix = stack.settings.features.key_prefix
    shards_on: dict[str, set[int]] = {}
    for node in store.get_primaries():
        # Straight to the node, not through the cluster client: what it really stores.
        direct = redis.Redis(host=node.host, port=node.port)
        try:
            names = [k.decode() for k in direct.scan_iter(match=f"{{{prefix}:*", count=1000)]
        finally:
            direct.close()
        shards_on[node.name] = {int(n[len(prefix) + 2:n.index("}")]) for n in names
                                if n[len(prefix) + 2].isdigit()}
    assert all(shards_on.values()), shards_on  # every primary holds some shards
    owned = [s for shards in shards_on.values() for s in shards]
    assert len(owned) == len(set(owned)) == SHARDS  # and a shard is never split
    # The cluster client's SCAN visits every primary.
    seen = {int(k.decode()[len(prefix) + 2:k.decode().index("}")])
            for k in store.scan_iter(match=f"{{{prefix}:[0-9]*}}:users", count=1000)}
    assert seen == set(range(SHARDS))


def test_related_and_recommendations_on_the_cluster(api, stack, store, model_version) -> None:
    eventually(lambda: loaded(api, model_version))
    body = api.get("/v1/items/85123A/related", params={"limit": 10}).json()
    ids = [it["item_id"] for it in body["items"]]
    assert body["model_version"] == model_version and not body["degraded"]
    assert len(ids) == len(set(ids)) == 10 and "85123A" not in ids
    assert any("bought together with" in it["reason"] for it in body["items"]), body
    checked = 0
    for user in customers(stack, store)[:8]:
        recs = api.get(f"/v1/users/{user}/recommendations", params={"limit": 10}).json()
        assert recs["strategy"] == "personal" and not recs["degraded"], recs
        assert len({it["item_id"] for it in recs["items"]}) == 10
        checked += 1
    assert checked >= 5


def test_the_apis_pipelined_reads_route_by_slot_and_read_what_redis_py_reads(
        stack: Stack, store) -> None:
    """The API's customer read and co-count reads go to each key's node over its own
    pipelined connection (feature_store/multiplexed.py): the same as through redis-py's
    cluster client, for customers and items on every node."""
    users = customers(stack, store)[:12]
    k = keys_of(stack)
    assert len({store.keyslot(k.user(u, "ia")) for u in users}) > 1

    async def compare() -> None:
        client = open_redis(stack.settings)
        fast = pipelined(client)
        assert isinstance(fast, ClusterMultiplexed)
        plain, over_fast = FeatureReader(client, k), FeatureReader(client, k, fast=fast)
        try:
            first = await over_fast.customer(users[0])  # no slot map yet: via redis-py
            assert first == await plain.customer(users[0]) and first.state.bought
            for user in users:
                got = await over_fast.customer(user)
                assert got == await plain.customer(user), user
                assert await over_fast.user(user) == await plain.user(user) == got.state
            assert {(node.host, node.port) for node in store.get_primaries()} == set(
                fast._nodes), "every primary served some customer"
            assert fast.rerouted == 1  # only the first read, before the slot map
            items = [i for u in users[:4] for i in (await plain.customer(u)).state.bought][:6]
            wanted = [(kind, i) for i in items for kind in ("buy", "view")]
            assert await over_fast.co_counts_many(wanted) == await plain.co_counts_many(wanted)
            assert await over_fast.trending(20) == await plain.trending(20)
            assert fast.rerouted == 1
        finally:
            await fast.close()
            await client.aclose()

    asyncio.run(compare())


def test_customer_reads_are_kept_while_each_node_tracks_their_keys(stack: Stack,
                                                                   store) -> None:
    """Key tracking (feature_store/tracking.py) per primary: each node's reads are kept
    and each node's writes drop them. Made-up customers, so no real state changes."""
    k = keys_of(stack)
    users = [f"tracked-{n}" for n in range(12)]
    assert len({store.get_node_from_key(k.user(u, "cart")).name for u in users}) == PRIMARIES

    async def scenario() -> None:
        client = open_redis(stack.settings)
        local = LocalCopies(k.user_of, 100)
        fast = pipelined(client, local)
        reader = FeatureReader(client, k, fast=fast, local=local)
        try:
            for user in users:  # the first read of a node sets its tracking up
                for _ in range(200):
                    await reader.customer_replies(user)
                    if local.get(user, True) is not None:
                        break
                    await asyncio.sleep(0.01)
                else:
                    raise AssertionError(f"{user}'s read was never kept")
            for user in users:
                await client.hset(k.user(user, "cart"), "i1", 2)
            for _ in range(200):
                if all(local.get(user, True) is None for user in users):
                    break
                await asyncio.sleep(0.01)
            for user in users:
                state = reader.customer_from(user, await reader.customer_replies(user)).state
                assert state.cart == {"i1": 2.0}, user
        finally:
            for user in users:
                await client.delete(k.user(user, "cart"))
            await fast.close()  # type: ignore[union-attr]
            await client.aclose()

    asyncio.run(scenario())


def test_demo_and_ops_pages_read_every_shard(api, stack, model_version) -> None:
    eventually(lambda: loaded(api, model_version))
    customers_ = api.get("/v1/demo/customers", params={"limit": 20}).json()["customers"]
    assert len(customers_) == 20, customers_
    body = api.get("/v1/ops/summary").json()
    assert body["model"]["version"] == model_version
    assert body["events"]["applied_total"] > 1_000, body["events"]


def test_profile_with_population_stats_from_every_shard(api, stack, store) -> None:
    async def refresh() -> int:
        client = open_redis(stack.settings)
        try:
            async with EventProducer(stack.settings) as producer:
                return await refresh_population(stack.settings, client, producer)
        finally:
            await client.aclose()

    asyncio.run(refresh())
    user = customers(stack, store)[0]
    body = api.get(f"/v1/users/{user}/profile").json()
    assert body["known"] and body["rfm"]["frequency"] >= 3, body
    assert body["segment"] and body["segment"] != "prospect", body
    assert body["recent_purchases"], body


def test_fold_in_writes_the_vector_in_the_customers_slot(api, stack, store,
                                                          model_version) -> None:
    eventually(lambda: loaded(api, model_version))
    user = uid("fresh")
    views = [event("product.viewed", {"item_id": item}, user, minutes=n, session_id="s")
             for n, item in enumerate(["22423", "22697", "22699"])]
    assert api.post("/v1/events", json=views).status_code == 202
    raw = eventually(lambda: store.get(keys_of(stack).user(user, "vec")))
    assert decode_vector(raw, model_version) is not None
    assert api.get(f"/v1/users/{user}/recommendations").json()["strategy"] == "personal"


def test_a_new_model_re_folds_every_customer_in_their_slot(stack, store, model_version,
                                                            ) -> None:
    # train_once re-solves every customer's vector against the model it published
    # (models.online.refold_all); its guarded writes go through redis-py on a Cluster.
    keys = keys_of(stack)
    users = sorted(u.decode() for shard in range(SHARDS)
                   for u in store.smembers(keys.users(shard)))
    assert len(users) > 100
    for user in users[::10]:
        raw = store.get(keys.user(user, "vec"))
        assert raw is not None and decode_vector(raw, model_version) is not None, user


def test_experiment_registry_and_per_shard_stats(api, stack, store, model_version) -> None:
    """The registry is one slot ({a:e}); exposures are counted per shard and merged."""
    eventually(lambda: loaded(api, model_version))
    xid = f"cl-{uid('x')}"
    spec = {"id": xid, "surfaces": ["recommendations"], "layer": "ranking",
            "layer_range": [0, 10000], "primary_metric": "ctr",
            "variants": [{"name": "control", "weight": 1},
                         {"name": "more-coview", "weight": 1,
                          "params": {"blend_coview": 0.6}}]}
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    assert api.post("/v1/admin/experiments", json=spec, headers=admin).status_code == 202
    eventually(lambda: [x for x in api.get("/v1/experiments").json()["experiments"]
                        if x["id"] == xid])
    users = customers(stack, store)[:12]
    k = keys_of(stack)
    assert len({k.shard_of(u) for u in users}) > 1  # exposures land in several shards
    for user in users:
        body = api.get(f"/v1/users/{user}/recommendations").json()
        assert [x["id"] for x in body["experiments"]] == [xid], body["experiments"]

    def results() -> dict | None:
        doc = api.get(f"/v1/experiments/{xid}/results").json()
        return doc if sum(v["exposures"] for v in doc["variants"]) >= len(users) else None

    doc = eventually(results)
    assert sum(v["users"] for v in doc["variants"]) == len(users)


def test_push_triggers_are_claimed_per_shard(api, stack) -> None:
    user = uid("cart")
    docs = [event("cart.item_added", {"item_id": "85123A", "quantity": 1}, user,
                  minutes=LATER, session_id="c"),
            # Another customer's event moves the log clock past the abandonment delay.
            event("product.viewed", {"item_id": "22423"}, uid("clock"), minutes=LATER + 120)]
    assert api.post("/v1/events", json=docs).status_code == 202
    asyncio.run(wait_caught_up(stack.settings, timeout=60))

    async def drain() -> int:
        client = open_redis(stack.settings)
        try:
            async with EventProducer(stack.settings) as producer:
                result = await PushDrainer(stack.settings, client, producer).drain()
                return result.claimed
        finally:
            await client.aclose()

    assert asyncio.run(drain()) >= 1


def test_erasure_leaves_no_key_of_the_customer(api, stack, store) -> None:
    user = customers(stack, store)[1]
    pattern = f"{{{stack.settings.features.key_prefix}:*:u:{user}:*"
    assert list(store.scan_iter(match=pattern))
    erase = event("user.erased", {}, user, minutes=LATER + 200)
    assert api.post("/v1/events", json=erase, headers={"Authorization": f"Bearer {ADMIN_KEY}"}
                    ).status_code == 202
    eventually(lambda: not list(store.scan_iter(match=pattern)), timeout=60)
    k = keys_of(stack)
    assert not store.sismember(k.users(k.shard_of(user)), user)


async def logged_events(s: Settings) -> list[bytes]:
    """Every record of the stack's two topics, read from the first offset to the end."""
    ends = await end_offsets(s, [s.topics.catalog, s.topics.events])
    consumer = AIOKafkaConsumer(bootstrap_servers=s.bootstrap_servers, enable_auto_commit=False)
    await consumer.start()
    out: list[bytes] = []
    try:
        todo = {tp: end for tp, end in ends.items() if end > 0}
        consumer.assign(list(todo))
        await consumer.seek_to_beginning(*todo)
        while todo:
            for tp, msgs in (await consumer.getmany(*todo, timeout_ms=1000)).items():
                out += [m.value or b"" for m in msgs]
                if msgs and msgs[-1].offset >= todo[tp] - 1:
                    del todo[tp]
                    consumer.pause(tp)
    finally:
        await consumer.stop()
    return out


def _key_names(op: list[Any], prefix: str) -> Iterator[str]:
    for arg in op[1:]:
        if isinstance(arg, list):
            yield from _key_names([None, *arg], prefix)
        elif isinstance(arg, str) and arg.startswith(f"{{{prefix}:"):
            yield arg


def test_every_op_in_the_log_names_keys_of_its_events_slot(stack: Stack) -> None:
    """Valkey refuses a script's key on another node (so the run above would have failed)
    but not one in another slot of the same node, which breaks once that slot moves: every
    key name an event's ops carry must have the event's shard tag."""
    s: Settings = stack.settings
    k = keys_of(stack)
    folder = Folder(k, s.features, s.model, s.push)
    seen: set[str] = set()
    for raw in asyncio.run(logged_events(s)):
        event = decode_event(raw)
        tag = k.tag(folder.shard(event))
        for op in folder.fold(event):
            for name in _key_names(op, k.prefix):
                assert name.startswith(tag), (event_type(event), op)
        seen.add(event_type(event))
    assert {"catalog.item_upserted", "order.placed", "product.viewed", "cart.item_added",
            "user.erased", "experiment.created", "experiment.exposed"} <= seen, seen


def test_state_rebuilt_from_the_log_equals_the_live_state(stack: Stack) -> None:
    """Runs last: orders, views, carts, push decisions and the erasure are in the log."""
    s: Settings = stack.settings
    asyncio.run(wait_caught_up(s, timeout=60))
    live = asyncio.run(dump_state(s))
    result = asyncio.run(rebuild_from_log(s))
    rebuilt = asyncio.run(dump_state(s))
    assert result["wiped_keys"] > 1000 and len(live) > 1000
    assert rebuilt.keys() == live.keys()
    assert rebuilt == live
