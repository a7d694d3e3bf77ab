"""``aisle rebuild``: wipe derived state and fold the whole log again.

Workers keep running: they see the rebuild lock before each batch and wait. The rebuild
reads every partition from its first offset to the end offset it saw when it started,
through the same :class:`BatchProcessor` the workers use, writing ahead as they do
(``streams/ahead.py``); when it releases the lock the
workers go on, and the offset watermarks skip what the rebuild already applied.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict

import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer

from aisle.settings import Settings
from feature_store.client import cancel_and_wait, open_redis
from feature_store.keys import Keys
from feature_store.redis_store import RedisStore
from feature_store.updates import Folder
from models.online import ModelHolder, UserVectorUpdater
from streams.ahead import AheadWriter, ordered_connection
from streams.lag import end_offsets
from streams.pipeline import BatchProcessor, Record

LOCK_TTL_S = 60
# Long enough for a worker batch that passed the lock check to finish writing.
GRACE_S = 1.5


async def rebuild_from_log(settings: Settings) -> dict[str, float]:
    client = open_redis(settings)
    keys = Keys(settings.features.key_prefix, settings.features.shards)
    lock = keys.control("rebuild")
    started = time.monotonic()
    vectors: UserVectorUpdater | None = None
    processor: BatchProcessor | None = None
    try:
        await client.set(lock, b"1", ex=LOCK_TTL_S)
        keeper = asyncio.create_task(_keep_lock(client, lock))
        await asyncio.sleep(GRACE_S)
        store = RedisStore(client, keys, settings.features.dedupe_window_s)
        wiped = await store.wipe()
        holder = ModelHolder(client, settings.features.key_prefix)
        await holder.refresh()
        vectors = UserVectorUpdater(client, keys, holder, settings.model.half_life_d * 86400)
        folder = Folder(keys, settings.features, settings.model, settings.push)
        ordered = ordered_connection(client, settings)
        processor = BatchProcessor(store, folder, producer=None, vectors=vectors,
                                   respect_rebuild=False, ordered=ordered)
        # As a worker writes: each batch sent while the previous one is applied.
        writer = AheadWriter(processor, ordered) if ordered is not None else None
        for topic in (settings.topics.catalog, settings.topics.events):
            await _replay_topic(settings, topic, processor, writer)
        total = processor.counters.total
        await cancel_and_wait(keeper)
    finally:
        if processor is not None:
            await processor.close()
        elif vectors is not None:
            await vectors.close()
        await client.delete(lock)
        await client.aclose()
    return {"wiped_keys": wiped, **asdict(total), "seconds": time.monotonic() - started}


async def _keep_lock(client: aioredis.Redis, lock: str) -> None:
    while True:
        await asyncio.sleep(LOCK_TTL_S / 3)
        await client.expire(lock, LOCK_TTL_S)


async def _replay_topic(settings: Settings, topic: str, processor: BatchProcessor,
                        writer: AheadWriter | None = None) -> None:
    """Apply ``topic`` from its first offset to the end seen now; with ``writer``, every
    batch is in when this returns (the catalog is applied before the events)."""
    ends = {tp: off for tp, off in (await end_offsets(settings, [topic])).items() if off > 0}
    if not ends:
        return
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers,
                                enable_auto_commit=False, max_partition_fetch_bytes=8 << 20)
    await consumer.start()
    try:
        consumer.assign(list(ends))
        await consumer.seek_to_beginning(*ends)
        remaining = dict(ends)
        while remaining:
            fetched = await consumer.getmany(*remaining, timeout_ms=1000,
                                             max_records=settings.worker.batch_max)
            records: list[Record] = []
            for tp, msgs in fetched.items():
                end = remaining.get(tp)
                if end is None:
                    continue
                records += [Record(tp.topic, tp.partition, m.offset, m.key, m.value)
                            for m in msgs if m.offset < end]
                if msgs and msgs[-1].offset >= end - 1:
                    del remaining[tp]
                    consumer.pause(tp)
            if records:
                if writer is None:
                    await processor.process(records)
                else:
                    await writer.write(await processor.prepare_yielding(records))
        if writer is not None:
            await writer.drain()
    finally:
        await consumer.stop()


