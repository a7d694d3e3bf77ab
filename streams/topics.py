"""Topics, and the producer every writer of events shares (API, replay, tests, benchmarks).

User events go to ``topics.events`` keyed by customer (guest orders by order id), so one
customer's events stay in order on one partition; catalog events go to ``topics.catalog``
keyed by item; poison events go to ``topics.deadletter`` with the reason.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import Iterable
from typing import Any

import msgspec
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from aisle.settings import Settings
from streams.events import Event, encode_event, is_catalog


def topic_for(settings: Settings, event: Event) -> str:
    return settings.topics.catalog if is_catalog(event) else settings.topics.events


async def ensure_topics(settings: Settings) -> None:
    """Create the topics if missing (idempotent; safe to call from every process).

    A topic created here is a new log whose offsets start at 0: the offset watermarks
    any earlier log of that name left in the store are dropped, or its first events
    would be taken for ones already applied (a broker that lost its log, a recreated
    topic)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        t = settings.topics
        names = (t.events, t.catalog, t.deadletter, t.push)
        wanted = [NewTopic(name, t.partitions, 1) for name in names if name not in existing]
        if wanted:
            with contextlib.suppress(TopicAlreadyExistsError):  # a concurrent creator won
                await admin.create_topics(wanted)
            await forget_watermarks(settings, [t.name for t in wanted])
    finally:
        await admin.close()


async def forget_watermarks(settings: Settings, topics: list[str]) -> None:
    if not settings.redis_url or not topics:
        return
    from feature_store.client import open_redis
    from feature_store.keys import Keys

    keys = Keys(settings.features.key_prefix, settings.features.shards)
    fields = [f"{topic}/{p}" for topic in topics for p in range(settings.topics.partitions)]
    client = open_redis(settings)
    try:
        pipe = client.pipeline(transaction=False)
        for shard in range(keys.shards):
            pipe.hdel(keys.watermarks(shard), *fields)
        await pipe.execute()
    finally:
        await client.aclose()


class DeadLetter(msgspec.Struct, frozen=True):
    """What the dead-letter topic holds: the reason and the original bytes, untouched."""

    reason: str
    topic: str
    partition: int
    offset: int
    key: str | None
    value_b64: str
    failed_at: float

    @classmethod
    def of(cls, reason: str, topic: str, partition: int, offset: int,
           key: bytes | None, value: bytes | None) -> DeadLetter:
        return cls(reason=reason, topic=topic, partition=partition, offset=offset,
                   key=key.decode(errors="replace") if key is not None else None,
                   value_b64=base64.b64encode(value or b"").decode(), failed_at=time.time())

    @property
    def original(self) -> bytes:
        return base64.b64decode(self.value_b64)


class EventProducer:
    """aiokafka producer with Aisle's topic/key rules. Use ``async with``."""

    def __init__(self, settings: Settings, **overrides: Any) -> None:
        self.settings = settings
        opts: dict[str, Any] = {"linger_ms": 5, "acks": "all", "max_batch_size": 256 * 1024,
                                "request_timeout_ms": 10_000}
        opts.update(overrides)
        self._producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, **opts)

    async def __aenter__(self) -> EventProducer:
        await self._producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._producer.stop()

    async def send_events(self, events: Iterable[Event]) -> int:
        """Hand every event to Kafka and wait until the broker acknowledged all of them."""
        futures = [await self._producer.send(topic_for(self.settings, e),
                                             key=e.routing_key.encode(), value=encode_event(e))
                   for e in events]
        if futures:
            await asyncio.gather(*futures)
        return len(futures)

    async def send_raw(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        await (await self._producer.send(topic, key=key, value=value))

    async def send_to(self, topic: str, value: bytes, key: bytes, partition: int) -> int:
        """One record to one partition; returns its offset once the broker acked it."""
        meta = await (await self._producer.send(topic, key=key, value=value,
                                                partition=partition))
        return int(meta.offset)

    async def partitions(self, topic: str) -> int:
        return len(await self._producer.partitions_for(topic))

    async def send_deadletters(self, letters: Iterable[DeadLetter]) -> None:
        enc = msgspec.json.encode
        futures = [await self._producer.send(
            self.settings.topics.deadletter,
            key=(dl.key or "").encode() or None, value=enc(dl)) for dl in letters]
        if futures:
            await asyncio.gather(*futures)

    async def flush(self) -> None:
        await self._producer.flush()
