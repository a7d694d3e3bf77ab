"""Periodic work inside the workers: the scheduled full retrain and population stats.

Every worker runs the timers; locks in Redis let one of them train (or sweep the
population) at a time. A retrain only happens when enough new events were applied since
the model in use (the count is kept in Redis by every worker, so it spans the whole
consumer group). Population stats are due when none are published, when the last were
published ``population_interval_s`` ago, or when the log's clock moved a day past them
(:func:`population_due`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import msgspec
import redis.asyncio as aioredis

from aisle.settings import Settings
from feature_store.client import open_redis
from feature_store.keys import Keys
from feature_store.lease import Lease
from feature_store.redis_store import applied_total
from models.artifacts import load_current
from models.customer import load_segment_rules
from models.population import refresh, sweep_lifecycle
from models.train import TrainingBusy, read_ref_ts, refresh_items_once, train_once
from streams.events import LifecycleChanged
from streams.lag import group_lag
from streams.topics import EventProducer

log = logging.getLogger(__name__)
# When the population stats and the sweep's lifecycle events were published: {"at": Unix
# wall seconds, "as_of": the log clock they were computed at, "took_s": the sweep's
# seconds}. Small, so every worker may read it every few seconds (the stats document
# runs to megabytes with a large catalog's repurchase cycles).
POPULATION_AT = "population-at"
# The refresh in progress (its lease's token): helpers claim its shards' lifecycle part.
POPULATION_RUN = "population-run"
# Recency and run-out dates are counted in days: stats a day of log time behind the
# store are stale. In real time that is a day, and the wall-clock interval rules; while
# a replay or a backfill moves the clock by months a minute, it brings the stats along,
# and the sweep after the workers catch up computes them on the whole population.
POPULATION_MAX_LAG_S = 86400.0
# ...but a sweep reads every customer (minutes at tens of millions): clock-driven sweeps
# keep to this share of the wall time, so a long backfill is not swept back to back.
POPULATION_MAX_DUTY = 0.2
# Records the worker group may still have to apply for a sweep that is not on the
# interval (stats missing, or the clock a day ahead): under a batch.
POPULATION_CAUGHT_UP = 1000


#: How long a refresh's claim on a shard's lifecycle transitions lasts: the run is over
#: long before; a shard whose worker died mid-way waits for the next refresh.
LIFECYCLE_CLAIM_S = 86400


async def refresh_population(settings: Settings, client: aioredis.Redis,
                             producer: EventProducer | None) -> int:
    """Recompute population stats and record new lifecycle transitions as events; while
    another worker holds the refresh, find the transitions of the shards nobody has
    claimed yet instead (the workers split that part). Returns transitions found."""
    keys = Keys(settings.features.key_prefix, settings.features.shards)
    rules = load_segment_rules()

    async def emit(events: list[LifecycleChanged]) -> None:
        if producer is not None:
            await producer.send_events(events)

    # A lease renewed while the refresh runs: at 50M customers it takes hours.
    lease = Lease(client, keys.control("population-lock"), 600)
    if not await lease.acquire():
        run = await client.get(keys.control(POPULATION_RUN))
        if run is None or not await client.exists(lease.key):
            return 0
        return await sweep_lifecycle(client, keys, rules, emit,
                                     lambda shard: _claim(client, keys, run, shard))
    try:
        started = time.time()
        run = lease.token
        await client.set(keys.control(POPULATION_RUN), run, ex=LIFECYCLE_CLAIM_S)
        async with lease.kept():
            stats, found = await refresh(client, keys, rules, emit,
                                         settings.worker.population_sample_max,
                                         lambda shard: _claim(client, keys, run, shard))
        await client.set(keys.control(POPULATION_AT), msgspec.json.encode(
            {"at": time.time(), "as_of": stats.as_of, "took_s": time.time() - started}))
        return found
    finally:
        await lease.release()


async def _claim(client: aioredis.Redis, keys: Keys, run: bytes, shard: int) -> bool:
    """This worker finds the transitions of ``shard`` in refresh ``run``, if nobody has."""
    name = keys.control(f"lifecycle:{run.decode() if isinstance(run, bytes) else run}:{shard}")
    return bool(await client.set(name, b"1", nx=True, ex=LIFECYCLE_CLAIM_S))


async def population_due(settings: Settings, client: aioredis.Redis,
                         behind: Callable[[], Awaitable[int]] | None = None) -> bool:
    """Whether the population stats should be recomputed now: the last are
    ``population_interval_s`` old; or, once the workers are caught up (``behind()``
    records at most ``POPULATION_CAUGHT_UP``; default: the group's Kafka lag), none were
    published (a new store: without them every customer is unsegmented, and offers,
    churn warnings and segment rules wait) or the log's clock is ``POPULATION_MAX_LAG_S``
    past the clock they were computed at (at most ``POPULATION_MAX_DUTY`` of the time
    sweeping). Not mid-replay: partitions apply at their own pace, and a customer whose
    orders were not applied yet would look lapsed; the sweep would record that as a
    lifecycle change, which the log keeps and win-back pushes act on."""
    keys = Keys(settings.features.key_prefix, settings.features.shards)
    raw = await client.get(keys.control(POPULATION_AT))
    if raw is not None:
        published = msgspec.json.decode(raw)
        age = time.time() - float(published["at"])
        if age >= settings.worker.population_interval_s:
            return True
        if age * POPULATION_MAX_DUTY < float(published["took_s"]):
            return False
        if await read_ref_ts(client, keys) - float(published["as_of"]) < POPULATION_MAX_LAG_S:
            return False
    behind = behind or (lambda: _records_behind(settings))
    return await behind() <= POPULATION_CAUGHT_UP


async def _records_behind(settings: Settings) -> int:
    return sum((await group_lag(settings)).values())


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


async def wait_population(settings: Settings, timeout: float = 120.0) -> float:
    """Wait until the workers published population stats computed at the store's
    current log clock (after a replay: on the whole replayed population); the seconds
    waited. For tools that load data and then measure (benchmarks, the demo)."""
    keys = Keys(settings.features.key_prefix, settings.features.shards)
    client = open_redis(settings)
    started = time.monotonic()
    try:
        clock = await read_ref_ts(client, keys)
        while True:
            raw = await client.get(keys.control(POPULATION_AT))
            if raw is not None and float(msgspec.json.decode(raw)["as_of"]) >= clock:
                return time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"no population stats at log clock {clock} in {timeout}s")
            await asyncio.sleep(0.2)
    finally:
        await client.aclose()
