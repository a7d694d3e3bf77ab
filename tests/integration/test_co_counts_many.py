"""Several items' co-counts in one read: the same counts as one read per item and kind,
summed over every shard, with what the cache holds not read again."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis.asyncio as aioredis

from aisle.settings import Settings
from feature_store.keys import Keys
from feature_store.multiplexed import Multiplexed
from feature_store.reader import FeatureReader
from feature_store.redis_store import RedisStore
from feature_store.updates import Folder
from streams import events as ev

pytestmark = pytest.mark.integration
T0 = datetime(2011, 1, 1, tzinfo=UTC)


def order(n: int, user: str, items: list[str]) -> ev.OrderPlaced:
    lines = [ev.OrderLine(item_id=i, quantity=1, unit_price=2.0) for i in items]
    return ev.OrderPlaced(event_id=f"o{n}-{uuid.uuid4().hex[:6]}", user_id=user,
                          occurred_at=T0 + timedelta(minutes=n),
                          payload=ev.Order(order_id=f"O{n}", lines=lines))


def view(n: int, user: str, item: str) -> ev.ProductViewed:
    return ev.ProductViewed(event_id=f"v{n}-{uuid.uuid4().hex[:6]}", user_id=user,
                            session_id=f"s-{user}", occurred_at=T0 + timedelta(seconds=n),
                            payload=ev.ItemRef(item_id=item))


class CountingPipelines:
    """The client, counting the pipelines asked of it."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.client, self.pipelines = client, 0

    def pipeline(self, *args: Any, **kwargs: Any) -> Any:
        self.pipelines += 1
        return self.client.pipeline(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


async def _scenario(redis_url: str) -> None:
    keys = Keys(f"cc{uuid.uuid4().hex[:6]}", 4)
    s = Settings()
    folder = Folder(keys, s.features, s.model)
    client = aioredis.Redis.from_url(redis_url)
    store = RedisStore(client, keys, 86400.0)
    events: list[ev.AnyEvent] = []
    items = [f"i{n}" for n in range(8)]
    for n in range(40):  # customers over every shard buy and view overlapping sets
        user = f"u{n}"
        events.append(order(n, user, [items[n % 8], items[(n + 1) % 8], items[(n * 3) % 8]]))
        events += [view(100 * n + k, user, items[(n + k) % 8]) for k in range(3)]
    batches: dict[int, list[Any]] = {}
    for offset, e in enumerate(events):
        batches.setdefault(folder.shard(e), []).append((e.event_id, offset, e.ts, folder.fold(e)))
    assert len(batches) > 1
    await store.apply_many([(shard, "t/0", b) for shard, b in batches.items()])
    try:
        one_by_one = FeatureReader(client, keys)
        want = {(kind, i): await one_by_one.co_counts(kind, i)
                for i in items[:5] for kind in ("buy", "view")}
        assert all(want[("buy", i)] for i in items[:5]) and any(want[("view", i)]
                                                                for i in items[:5])
        counting = CountingPipelines(client)
        reader = FeatureReader(counting, keys)  # type: ignore[arg-type]
        await reader.co_counts("buy", items[0])  # one already in the cache
        before = counting.pipelines
        got = await reader.co_counts_many(list(want) + [("buy", items[1])])
        assert got == want
        assert counting.pipelines - before == 1  # everything missing, in one pipeline
        again = await reader.co_counts_many(list(want))
        assert again == want and counting.pipelines - before == 1  # all cached now
        # Over the API's pipelined connection: the same counts, and trending too.
        fast = Multiplexed.of(client)
        assert fast is not None
        over_fast = FeatureReader(client, keys, fast=fast)
        assert await over_fast.co_counts_many(list(want)) == want
        assert await over_fast.trending(5) == await one_by_one.trending(5)
        assert await over_fast.trending(5)
        await fast.close()
    finally:
        await client.aclose()


def test_many_items_co_counts_in_one_read(redis_url: str) -> None:
    asyncio.run(_scenario(redis_url))
