"""Builds the Faust app and its agents from settings. The agents are thin loops:
take a batch of records → :class:`streams.pipeline.BatchProcessor` → ack.

Authoritative state lives in Redis, not in Faust tables (the embedded broker has no
transactions and compaction is not first-class), so the app uses the memory table store
and never creates changelog topics.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import faust
from aiokafka.errors import KafkaError
from redis.exceptions import RedisError
from threadpoolctl import threadpool_limits

from aisle.settings import Settings
from feature_store.client import open_redis
from feature_store.keys import Keys
from feature_store.redis_store import RedisStore
from feature_store.updates import Folder
from models.online import ModelHolder, UserVectorUpdater
from push.drain import PushDrainer
from push.sweep import sweep as push_sweep
from push.watch import ItemWatchers
from streams.ahead import AheadWriter, ordered_connection
from streams.batching import BatchApp, BatchConsumer, batch_consumer, quiet_gc
from streams.pipeline import BatchProcessor, BatchResult, PreparedBatch, Record
from streams.timers import (
    population_due,
    refresh_items_if_due,
    refresh_population,
    retrain_if_due,
)
from streams.topics import EventProducer, ensure_topics

log = logging.getLogger(__name__)
T = TypeVar("T")


class WorkerContext:
    """Clients a worker opens once, when its first batch arrives."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = asyncio.Lock()
        self.processor: BatchProcessor | None = None
        self.holder: ModelHolder | None = None
        self._producer: EventProducer | None = None

    async def get(self) -> BatchProcessor:
        async with self._lock:
            if self.processor is None:
                self.processor = await self._open()
        return self.processor

    async def _open(self) -> BatchProcessor:
        s = self.settings
        threadpool_limits(1, "blas")  # fold-in solves are small: threads cost more than they give
        quiet_gc(s.worker.gc_gen0_threshold)
        client = open_redis(s)
        keys = Keys(s.features.key_prefix, s.features.shards)
        self.holder = ModelHolder(client, s.features.key_prefix)
        await self.holder.refresh()
        self.holder.start_polling(s.worker.model_poll_s)
        producer = self._producer = EventProducer(s)
        await producer.__aenter__()
        vectors = UserVectorUpdater(client, keys, self.holder, s.model.half_life_d * 86400)
        watchers = ItemWatchers(client, keys, s.push) if s.push.drain_interval_s > 0 else None
        ordered = ordered_connection(client, s)
        return BatchProcessor(RedisStore(client, keys, s.features.dedupe_window_s),
                              Folder(keys, s.features, s.model, s.push), producer, vectors,
                              watchers=watchers, ordered=ordered)

    async def close(self) -> None:
        if self.holder is not None:
            await self.holder.stop()
        if self._producer is not None:
            await self._producer.__aexit__(None, None, None)
        if self.processor is not None:
            await self.processor.close()
            await self.processor.store.client.aclose()


def build_app(settings: Settings) -> faust.App:
    w = settings.worker
    app_type = BatchApp if w.batch_consumer else faust.App
    app = app_type(
        w.app_id,
        broker=f"kafka://{settings.bootstrap_servers}",
        store="memory://",
        datadir=str(settings.data_dir / "faust"),
        topic_partitions=settings.topics.partitions,
        topic_replication_factor=1,
        topic_disable_leader=True,
        table_standby_replicas=0,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=w.session_timeout_s,
        broker_heartbeat_interval=w.heartbeat_interval_s,
        broker_rebalance_timeout=w.rebalance_timeout_s,
        broker_max_poll_records=max(500, w.batch_max),
        stream_buffer_maxsize=max(4096, 2 * w.batch_max),
        # Wait for in-flight batches before shutdown hooks close the clients; otherwise a
        # stopped worker commits a batch it never applied (found by tests/integration/
        # test_faults.py).
        stream_wait_empty=True,
        web_enabled=False,
        id_format="{id}",
    )
    app.aisle_fetch_max_wait_ms = w.fetch_max_wait_ms  # type: ignore[attr-defined]
    ctx = WorkerContext(settings)
    app.aisle_context = ctx  # type: ignore[attr-defined]

    async def retried(step: Callable[[], Awaitable[T]]) -> T:
        # A batch must never be acked unapplied. Retrying is safe (watermarks + dedupe).
        delay = 0.2
        while True:
            try:
                return await step()
            except (RedisError, OSError, KafkaError) as exc:
                log.warning("batch not applied (%r); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(2 * delay, 5.0)

    async def run_batches(stream: Any) -> None:
        async for events in stream.take_events(w.batch_max, within=w.batch_within_s):
            records = [Record(e.message.topic, e.message.partition, e.message.offset,
                              e.message.key, e.message.value) for e in events]
            # take_events acks the batch when this body ends, even by an exception:
            # hence the retries until the batch is in.
            result = await retried(lambda r=records: _process(r))
            log.debug("batch: %s", result)

    async def _process(records: list[Record]) -> BatchResult:
        return await (await ctx.get()).process(records)

    async def _write(prepared: PreparedBatch) -> BatchResult:
        processor = await ctx.get()
        await processor.wait_while_rebuilding()
        return await processor.apply(prepared)

    async def run_fetched_batches(stream: Any) -> None:
        # The consumer hands this agent whole fetched batches (streams/batching.py);
        # the stream itself stays empty. One agent, so a partition's batches are written
        # in order: batch N+1 is decoded and folded while the store applies batch N, and
        # sent right behind N on one ordered connection (write_ahead, streams/ahead.py)
        # or, without one, only once N is in. Each batch is acked when its write is done.
        consumer = batch_consumer(app)
        processor = await retried(ctx.get)
        if processor.ordered is not None:
            await write_ahead(consumer, processor, AheadWriter(processor, processor.ordered,
                                                               retried))
        writing: asyncio.Task[BatchResult] | None = None
        while True:
            batch = await consumer.next_batch()
            try:
                if batch.ends:
                    await retried(lambda b=batch: processor.forget_replaced_logs(b.ends))
                prepared = await processor.prepare_yielding(batch.records)
                if writing is not None:
                    await asyncio.shield(writing)
            except BaseException:
                consumer.release_batch(batch)
                raise
            writing = asyncio.ensure_future(retried(lambda p=prepared: _write(p)))
            writing.add_done_callback(lambda done, b=batch: consumer.settle_batch(b, done))

    async def write_ahead(consumer: BatchConsumer, processor: BatchProcessor,
                          writer: AheadWriter) -> None:
        # run_fetched_batches' loop, with each batch sent as soon as it is folded
        # (streams/ahead.py); a batch that fails for good raises out of writer.write at
        # the next one, and the agent stops as it does there.
        while True:
            batch = await consumer.next_batch()
            try:
                if batch.ends:
                    await retried(lambda b=batch: processor.forget_replaced_logs(b.ends))
                prepared = await processor.prepare_yielding(batch.records)
                done = await writer.write(prepared)
            except BaseException:
                consumer.release_batch(batch)
                raise
            done.add_done_callback(lambda d, b=batch: consumer.settle_batch(b, d))

    if w.batch_consumer:
        both = app.topic(settings.topics.events, settings.topics.catalog,
                         value_serializer="raw", key_serializer="raw",
                         partitions=settings.topics.partitions)
        app.agent(both, name="fold-batches")(run_fetched_batches)
    else:
        for name in (settings.topics.events, settings.topics.catalog):
            topic = app.topic(name, value_serializer="raw", key_serializer="raw",
                              partitions=settings.topics.partitions)
            app.agent(topic, name=f"fold-{topic.get_topic_name()}")(run_batches)

    @app.task
    async def create_topics() -> None:
        await ensure_topics(settings)

    @app.on_before_shutdown.connect
    async def close_clients(app: faust.App, **kwargs: Any) -> None:
        await ctx.close()

    if w.population_interval_s > 0:
        # Checked often, swept when due: a fixed 5-minute timer left a new store without
        # stats (every customer unsegmented) for the first 5 minutes of every start.
        @app.timer(min(w.population_check_s, w.population_interval_s))
        async def scheduled_population() -> None:
            processor = await ctx.get()
            client = processor.store.client
            try:
                if await population_due(settings, client):
                    await refresh_population(settings, client, processor.producer)
            except Exception:  # stale stats are better than a stopped worker
                log.exception("population refresh failed; keeping the previous stats")

    if settings.push.drain_interval_s > 0:
        drainer: list[PushDrainer] = []

        @app.timer(settings.push.drain_interval_s)
        async def drain_push() -> None:
            processor = await ctx.get()
            if not drainer and processor.producer is not None:
                drainer.append(PushDrainer(settings, processor.store.client, processor.producer))
            try:
                result = await drainer[0].drain()
            except (RedisError, OSError, KafkaError) as exc:  # claimed triggers come back
                log.warning("push drain failed (%r); leases expire, the next pass retries", exc)
                return
            if result.claimed:
                log.info("push drain: %s", result)

        @app.on_before_shutdown.connect
        async def close_drainer(app: faust.App, **kwargs: Any) -> None:
            for d in drainer:
                await d.close()

    if settings.push.drain_interval_s > 0 and settings.push.sweep_interval_s > 0:
        @app.timer(settings.push.sweep_interval_s)
        async def sweep_push() -> None:
            processor = await ctx.get()
            if processor.producer is None:
                return
            try:
                await push_sweep(settings, processor.store.client, processor.producer,
                                 settings.push.sweep_interval_s)
            except Exception:  # the next sweep finds the same triggers
                log.exception("push sweep failed")

    if w.retrain_interval_s > 0:
        @app.timer(w.retrain_interval_s)
        async def scheduled_retrain() -> None:
            processor = await ctx.get()
            try:
                await retrain_if_due(settings, processor.store.client)
            except Exception:  # a failed retrain must not stop the worker
                log.exception("scheduled retrain failed; serving the previous model")

    if w.item_refresh_interval_s > 0:
        @app.timer(w.item_refresh_interval_s)
        async def scheduled_item_refresh() -> None:
            processor = await ctx.get()
            try:
                await refresh_items_if_due(settings, processor.store.client)
            except Exception:  # the next retrain refreshes everything anyway
                log.exception("scheduled item refresh failed; serving the previous model")

    return app
