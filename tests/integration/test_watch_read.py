"""The stored items a catalog batch is compared with (push/watch.py) are read with one
script call per shard: every stored item comes back with its fields, a missing field as
None, an item never stored as None, whatever shard each one is in."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis.asyncio as aioredis

from aisle.settings import PushSettings
from feature_store.keys import Keys
from push.watch import ItemWatchers, _Item

pytestmark = pytest.mark.integration


async def _read(redis_url: str) -> tuple[Keys, dict[str, _Item | None]]:
    keys = Keys(f"w{uuid.uuid4().hex[:6]}", 4)
    client = aioredis.Redis.from_url(redis_url)
    try:
        items = [f"i{n}" for n in range(40)]
        pipe = client.pipeline(transaction=False)
        for n, item in enumerate(items):
            if n % 3 == 0:
                continue  # never stored
            fields = {"ts": 100 + n, "price": 2.5 * n, "removed": n % 5 == 1}
            if n % 2:
                fields["stock"] = n % 4
            pipe.hset(keys.item(item), mapping={k: float(v) for k, v in fields.items()})
        await pipe.execute()
        return keys, await ItemWatchers(client, keys, PushSettings())._stored(items)
    finally:
        await client.aclose()


def test_stored_items_come_back_per_item_across_shards(redis_url: str) -> None:
    keys, stored = asyncio.run(_read(redis_url))
    assert len({keys.shard_of(f"i{n}") for n in range(40)}) == 4
    for n in range(40):
        got = stored[f"i{n}"]
        if n % 3 == 0:
            assert got is None
            continue
        assert got == _Item(100.0 + n, 2.5 * n, n % 4 if n % 2 else None, n % 5 == 1), n
