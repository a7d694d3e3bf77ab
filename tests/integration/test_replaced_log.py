"""A log that starts again under an old name (a memory broker restarted, a topic deleted
and made again). On the real Valkey: the first batch of a partition a worker is given
carries the log end its fetch reported; a watermark at or past it belongs to the earlier
log, in whichever shard it is kept, and is dropped, so the new log's events are applied;
a watermark below it is the current log's and is kept, so a redelivered batch still
counts once."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import redis.asyncio as aioredis

from aisle.settings import Settings
from feature_store.keys import Keys
from feature_store.redis_store import RedisStore
from feature_store.updates import Folder
from streams import events as ev
from streams.pipeline import BatchProcessor, Record

pytestmark = pytest.mark.integration
T0 = datetime(2024, 5, 1, tzinfo=UTC)
SHARDS = 4


def _views(first: int, n: int, tag: str) -> list[Record]:
    """Views of several customers (several shards) on partition 0 of ``events``."""
    out = []
    for i in range(first, first + n):
        e = ev.ProductViewed(event_id=f"{tag}{i}", occurred_at=T0 + timedelta(seconds=i),
                             user_id=f"u{i % 6}", session_id="s",
                             payload=ev.ItemRef(item_id=f"i{i}", category="mugs"))
        out.append(Record("events", 0, i, None, ev.encode_event(e)))
    return out


def _processor(client: aioredis.Redis, prefix: str) -> BatchProcessor:
    s = Settings()
    keys = Keys(prefix, SHARDS)
    return BatchProcessor(RedisStore(client, keys, 86400.0),
                          Folder(keys, s.features, s.model, s.push), None,
                          respect_rebuild=False)


async def _watermarks(client: aioredis.Redis, keys: Keys) -> list[int | None]:
    got = [await client.hget(keys.watermarks(shard), "events/0") for shard in range(SHARDS)]
    return [None if v is None else int(v) for v in got]


def test_a_new_log_below_the_watermarks_is_applied_in_every_shard(redis_url: str) -> None:
    async def go() -> None:
        client = aioredis.Redis.from_url(redis_url)
        try:
            p = _processor(client, f"t{uuid.uuid4().hex[:8]}")
            first = await p.process(_views(0, 12, "old"))
            assert first.applied == 12
            kept = await _watermarks(client, p.keys)
            assert sum(w is not None for w in kept) >= 2, kept  # spread over shards

            # The new log has 4 records; it must not be taken for offsets 0..3 of the old.
            dropped = await p.forget_replaced_logs({("events", 0): 4})
            assert dropped == {"events/0": 11}
            assert await _watermarks(client, p.keys) == [None] * SHARDS
            again = await p.process(_views(0, 4, "new"))
            assert (again.applied, again.already_applied) == (4, 0)
        finally:
            await client.aclose()

    asyncio.run(go())


def test_a_watermark_below_the_log_end_is_kept_and_a_redelivery_counts_once(
        redis_url: str) -> None:
    async def go() -> None:
        client = aioredis.Redis.from_url(redis_url)
        try:
            p = _processor(client, f"t{uuid.uuid4().hex[:8]}")
            await p.process(_views(0, 12, "old"))
            before = await _watermarks(client, p.keys)
            # The same log, given to this worker again: its end is past every watermark.
            assert await p.forget_replaced_logs({("events", 0): 12}) == {}
            assert await _watermarks(client, p.keys) == before
            redelivered = await p.process(_views(6, 6, "old"))
            assert (redelivered.applied, redelivered.already_applied) == (0, 6)
        finally:
            await client.aclose()

    asyncio.run(go())
