"""Canonical dump of the whole derived state (``aisle dump``; rebuild-equals-live tests)."""

from __future__ import annotations

from typing import Any

from aisle.settings import Settings
from feature_store.client import open_redis
from feature_store.keys import Keys
from feature_store.redis_store import RedisStore


async def dump_state(settings: Settings) -> dict[str, Any]:
    client = open_redis(settings)
    try:
        keys = Keys(settings.features.key_prefix, settings.features.shards)
        return await RedisStore(client, keys, settings.features.dedupe_window_s).dump()
    finally:
        await client.aclose()
