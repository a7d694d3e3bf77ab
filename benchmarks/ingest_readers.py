"""The two in-process readers of the ingest benchmark, over one shared fetch loop:
the baseline (fetch + msgspec decode, nothing else) and the pipeline without Faust
(fetch + :class:`streams.pipeline.BatchProcessor`, as ``aisle rebuild`` drives it).

Both read every partition of the given topics from the first offset to the end offsets
measured beforehand, in batches of ``worker.batch_max`` records, so what separates them
is exactly what the pipeline does with a batch.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, TopicPartition

from aisle.settings import Settings
from feature_store.keys import Keys
from feature_store.redis_store import RedisStore
from feature_store.updates import Folder
from models.online import ModelHolder, UserVectorUpdater
from streams.events import decode_event
from streams.pipeline import BatchProcessor, Record

OnBatch = Callable[[Sequence[Record]], Awaitable[None]]


@dataclass
class ReadTiming:
    """Like :class:`benchmarks.ingest_probe.Progress`, timed from inside the reader:
    the window starts when the first batch is done, so start-up is left out."""

    records: int
    first_batch: int
    first_s: float
    done_s: float
    started_s: float

    @property
    def steady_s(self) -> float:
        return self.done_s - self.first_s

    @property
    def events_per_s(self) -> float:
        return (self.records - self.first_batch) / max(self.steady_s, 1e-9)


async def read_log(settings: Settings, ends: dict[TopicPartition, int],
                   on_batch: OnBatch) -> ReadTiming:
    """Hand every record below ``ends`` to ``on_batch``, batch by batch."""
    started = time.perf_counter()
    remaining = {tp: end for tp, end in ends.items() if end > 0}
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers,
                                enable_auto_commit=False, max_partition_fetch_bytes=8 << 20)
    await consumer.start()
    records = first_batch = 0
    first_s = 0.0
    try:
        consumer.assign(list(remaining))
        await consumer.seek_to_beginning(*remaining)
        while remaining:
            fetched = await consumer.getmany(*remaining, timeout_ms=1000,
                                             max_records=settings.worker.batch_max)
            batch = _below_ends(fetched, remaining, consumer)
            if not batch:
                continue
            await on_batch(batch)
            records += len(batch)
            if not first_batch:
                first_batch, first_s = len(batch), time.perf_counter()
    finally:
        await consumer.stop()
    return ReadTiming(records, first_batch, first_s, time.perf_counter(), started)


def _below_ends(fetched: dict[TopicPartition, list], remaining: dict[TopicPartition, int],
                consumer: AIOKafkaConsumer) -> list[Record]:
    batch: list[Record] = []
    for tp, msgs in fetched.items():
        end = remaining.get(tp)
        if end is None:
            continue
        batch += [Record(tp.topic, tp.partition, m.offset, m.key, m.value)
                  for m in msgs if m.offset < end]
        if msgs and msgs[-1].offset >= end - 1:
            del remaining[tp]
            consumer.pause(tp)
    return batch


async def decode_only(settings: Settings, ends: dict[TopicPartition, int]) -> ReadTiming:
    """The baseline: the least any consumer of these topics has to do."""

    async def decode(batch: Sequence[Record]) -> None:
        for rec in batch:
            decode_event(rec.value or b"")

    return await read_log(settings, ends, decode)


async def pipeline_in_process(settings: Settings, ends: dict[TopicPartition, int],
                              ) -> tuple[ReadTiming, BatchProcessor]:
    """Every feature update, as a worker makes them, with no Faust in between.

    Built like the worker's context (a model holder and fold-in updater, which do
    nothing while no model is published), but without a dead-letter producer: the
    benchmark's events are all valid.
    """
    client = aioredis.Redis.from_url(settings.redis_url or "", decode_responses=False)
    processor = None
    try:
        processor = await build_processor(settings, client)
        timing = await read_log(settings, ends, _drop_result(processor))
    finally:
        if processor is not None:
            await processor.close()
        await client.aclose()
    return timing, processor


async def build_processor(settings: Settings, client: aioredis.Redis) -> BatchProcessor:
    s = settings
    keys = Keys(s.features.key_prefix, s.features.shards)
    holder = ModelHolder(client, s.features.key_prefix)
    await holder.refresh()
    vectors = UserVectorUpdater(client, keys, holder, s.model.half_life_d * 86400)
    return BatchProcessor(RedisStore(client, keys, s.features.dedupe_window_s),
                          Folder(keys, s.features, s.model), None, vectors)


def _drop_result(processor: BatchProcessor) -> OnBatch:
    async def apply(batch: Sequence[Record]) -> None:
        await processor.process(batch)

    return apply
