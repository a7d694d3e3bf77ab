"""Periodic work inside the workers: the scheduled full retrain.

Every worker runs the timer; the training lock in Redis lets one of them train at a time,
and a retrain only happens when enough new events were applied since the model in use
(the count is kept in Redis by every worker, so it spans the whole consumer group).
"""

from __future__ import annotations

import logging

import redis.asyncio as aioredis

from aisle.settings import Settings
from feature_store.keys import Keys
from feature_store.redis_store import applied_total
from models.artifacts import load_current
from models.customer import load_segment_rules
from models.population import refresh
from models.train import TrainingBusy, refresh_items_once, train_once
from streams.topics import EventProducer

log = logging.getLogger(__name__)


async def refresh_population(settings: Settings, client: aioredis.Redis,
                             producer: EventProducer | None) -> int:
    """Recompute population stats; record new lifecycle transitions as events."""
    keys = Keys(settings.features.key_prefix, settings.features.shards)
    lock = keys.control("population-lock")
    if not await client.set(lock, b"1", nx=True, ex=600):
        return 0
    try:
        _, events = await refresh(client, keys, load_segment_rules())
        if producer is not None and events:
            for start in range(0, len(events), 1000):
                await producer.send_events(events[start:start + 1000])
        return len(events)
    finally:
        await client.delete(lock)


async def applied_events(client: aioredis.Redis, keys: Keys) -> int:
    return await applied_total(client, keys)


async def retrain_if_due(settings: Settings, client: aioredis.Redis) -> bool:
    keys = Keys(settings.features.key_prefix, settings.features.shards)
    applied = await applied_events(client, keys)
    current = await load_current(client, settings.features.key_prefix)
    since = applied - int(current.stats.get("events_applied", 0)) if current else applied
    if since < 0:  # a model counted by an older scheme (the counter before store.lua kept it)
        since = applied
    if since < settings.worker.retrain_min_new_events:
        return False
    try:
        art = await train_once(settings, client, events_applied=applied)
    except TrainingBusy:
        return False
    log.info("scheduled retrain published %s (%d new events)", art.version, since)
    return True


async def refresh_items_if_due(settings: Settings, client: aioredis.Redis) -> bool:
    """Refresh the current model's touched items once ``item_refresh_min_new_events``
    arrived since the last retrain or refresh. False when not due, when a training run
    holds the lock, or when nothing was touched."""
    keys = Keys(settings.features.key_prefix, settings.features.shards)
    applied = await applied_events(client, keys)
    current = await load_current(client, settings.features.key_prefix)
    if current is None:
        return False
    last = max(int(current.stats.get("events_applied", 0)),
               int(current.stats.get("refreshed_at_events", 0)))
    if applied - last < settings.worker.item_refresh_min_new_events:
        return False
    try:
        art = await refresh_items_once(settings, client, events_applied=applied)
    except TrainingBusy:
        return False
    if art is None:
        return False
    log.info("item refresh published %s (%d items)", art.version, art.stats["refreshed_items"])
    return True
