"""How much Redis memory one key prefix's state takes, and what it is made of.

``used_memory`` before and after a fresh prefix is filled gives the total; dividing it
by the number of customers is the crude per-customer figure. Because item aggregates
(catalog hashes, co-view partials, trending) are in that total too, the breakdown also
measures, with ``MEMORY USAGE key SAMPLES 0`` (every element counted), the keys of a
random sample of customers and of catalog items, and every per-shard key, and scales
the sample means up. What the scaled sum misses is the keyspace's own overhead (the
main dict and expiry tables), which ``used_memory`` includes.
"""

from __future__ import annotations

import random
import statistics
from typing import Any

import redis.asyncio as aioredis

from feature_store.keys import USER_SUFFIXES, Keys

SAMPLE = 1000
SHARD_KEYS = ("watermarks", "seen", "meta", "users", "items", "trending", "buyers",
              "rebuyers")


async def members(client: aioredis.Redis, keys: list[str]) -> list[str]:
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.smembers(key)
    return sorted(m.decode() for found in await pipe.execute() for m in found)


async def key_bytes(client: aioredis.Redis, keys: list[str]) -> list[int]:
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.memory_usage(key, samples=0)
    return [int(n or 0) for n in await pipe.execute()]


async def breakdown(client: aioredis.Redis, keys: Keys, delta_bytes: int,
                    seed: int = 0) -> dict[str, Any]:
    """Per-customer and per-item bytes of a prefix whose state took ``delta_bytes``."""
    shards = range(keys.shards)
    users = await members(client, [keys.users(s) for s in shards])
    items = await members(client, [keys.items(s) for s in shards])
    rng = random.Random(seed)
    user_sample = rng.sample(users, min(SAMPLE, len(users)))
    item_sample = rng.sample(items, min(SAMPLE, len(items)))
    per_user = await _per_entity(client, user_sample,
                                 lambda u: [keys.user(u, s) for s in USER_SUFFIXES])
    per_item = await _per_entity(client, item_sample, lambda i: [
        keys.item(i), *(keys.co(kind, s, i) for kind in ("view", "buy") for s in shards)])
    shard_total = sum(await key_bytes(client, [getattr(keys, name)(s)
                                               for name in SHARD_KEYS for s in shards]))
    user_mean = statistics.fmean(per_user) if per_user else 0.0
    item_mean = statistics.fmean(per_item) if per_item else 0.0
    accounted = user_mean * len(users) + item_mean * len(items) + shard_total
    return {
        "used_memory_delta_bytes": delta_bytes,
        "customers": len(users), "catalog_items": len(items),
        "naive_bytes_per_customer": round(delta_bytes / max(len(users), 1)),
        "sampled_customers": len(user_sample), "sampled_items": len(item_sample),
        "bytes_per_customer_keys": round(user_mean),
        "bytes_per_item_keys": round(item_mean),
        "per_shard_keys_bytes": shard_total,
        "accounted_bytes": round(accounted),
        "unaccounted_share": round(1 - accounted / delta_bytes, 3) if delta_bytes else None,
    }


async def _per_entity(client: aioredis.Redis, ids: list[str], names: Any) -> list[int]:
    """Summed bytes of each id's keys (absent keys count 0)."""
    groups = [names(i) for i in ids]
    flat = await key_bytes(client, [k for group in groups for k in group])
    out, at = [], 0
    for group in groups:
        out.append(sum(flat[at:at + len(group)]))
        at += len(group)
    return out
