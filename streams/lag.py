"""Consumer lag of the worker group: how far the workers are behind the log."""

from __future__ import annotations

import asyncio
import time

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from aisle.settings import Settings


async def end_offsets(settings: Settings, topics: list[str]) -> dict[TopicPartition, int]:
    """The high watermark of every partition, as a fetch reports it.

    Tansu answers ListOffsets(latest) with the base offset of the last record batch, not
    the end, so we seek there and read the high watermark from a fetch response, which is
    right on Tansu and on Kafka alike.
    """
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers,
                                enable_auto_commit=False, max_partition_fetch_bytes=1024)
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t in topics
               for p in (consumer.partitions_for_topic(t) or await _partitions(consumer, t))]
        listed = await consumer.end_offsets(tps)
        consumer.assign(tps)
        for tp, off in listed.items():
            consumer.seek(tp, max(0, off - 1))
        ends: dict[TopicPartition, int] = {}
        for _ in range(50):
            await consumer.getmany(*tps, timeout_ms=100, max_records=1)
            ends = {tp: hw for tp in tps if (hw := consumer.highwater(tp)) is not None}
            if len(ends) == len(tps):
                return ends
        return {tp: max(listed[tp], ends.get(tp, 0)) for tp in tps}
    finally:
        await consumer.stop()


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    await consumer._client.force_metadata_update()  # noqa: SLF001 - no public refresh
    return consumer.partitions_for_topic(topic) or set()


async def group_lag(settings: Settings) -> dict[TopicPartition, int]:
    topics = [settings.topics.events, settings.topics.catalog]
    ends = await end_offsets(settings, topics)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    await admin.start()
    try:
        # Explicit partitions: Tansu drops the connection on the "all partitions" form.
        committed = await admin.list_consumer_group_offsets(settings.worker.app_id,
                                                            partitions=list(ends))
    finally:
        await admin.close()
    lag = {}
    for tp, end in ends.items():
        meta = committed.get(tp)
        done = meta.offset if meta is not None and meta.offset >= 0 else 0
        lag[tp] = max(0, end - done)
    return lag


async def wait_caught_up(settings: Settings, timeout: float, poll_s: float = 0.5) -> float:
    """Wait until the worker group has committed everything produced so far."""
    started = time.monotonic()
    while True:
        lag = await group_lag(settings)
        if sum(lag.values()) == 0:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"workers still {sum(lag.values())} records behind")
        await asyncio.sleep(poll_s)
