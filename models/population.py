"""Population statistics for customer intelligence, refreshed periodically by the workers.

RFM quintile edges, the BG/NBD rhythm parameters and item/category repurchase cycles are
properties of the whole customer base, not of one event, so they are recomputed from
the stored facts of every customer (of a stable sample past ``SAMPLE_MAX``; on the log's
clock) and published as one document that
the API and workers read. The same sweep records lifecycle transitions as
``lifecycle.changed`` events, with deterministic ids, so the log keeps when each customer
entered each stage and a repeated sweep adds nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec
import numpy as np
import redis.asyncio as aioredis

from feature_store.keys import Keys
from feature_store.multiplexed import pipelined
from feature_store.reader import FeatureReader
from models.customer import (
    SegmentRules,
    customer_rhythm,
    fit_bgnbd,
    lifecycle_transitions,
    population_cycles,
    rfm_thresholds,
)
from models.customer_types import CustomerFacts, PopulationStats
from streams.events import LifecycleChange, LifecycleChanged

log = logging.getLogger(__name__)
KEY = "population"
CHUNK = 50  # concurrent reads; stays under the client pool size


async def all_customers(client: aioredis.Redis, keys: Keys) -> list[str]:
    pipe = client.pipeline(transaction=False)
    for shard in range(keys.shards):
        pipe.smembers(keys.users(shard))
    return sorted(u.decode() for members in await pipe.execute() for u in members)


async def read_all_facts(reader: FeatureReader, users: Sequence[str]) -> list[CustomerFacts]:
    out: list[CustomerFacts] = []
    for start in range(0, len(users), CHUNK):
        out += await asyncio.gather(*(reader.facts(u) for u in users[start:start + CHUNK]))
    return out


def compute_stats(facts: Sequence[CustomerFacts], clock: float, unit_days: float = 7.0,
                  ) -> PopulationStats:
    buyers = [f for f in facts if f.orders > 0 and f.last_order_ts is not None]
    recency = np.array([(clock - (f.last_order_ts or clock)) / 86400 for f in buyers])
    frequency = np.array([f.orders for f in buyers], dtype=float)
    monetary = np.array([f.monetary for f in buyers])
    thresholds = rfm_thresholds(recency, frequency, monetary, as_of=clock)
    churn = None
    if len(buyers) >= 20:
        rhythm = np.array([customer_rhythm(f, clock, unit_days) for f in buyers])
        try:
            churn = fit_bgnbd(rhythm[:, 0], rhythm[:, 1], rhythm[:, 2], time_unit_days=unit_days)
        except (ValueError, FloatingPointError) as exc:  # keep the previous behaviour: no model
            log.warning("BG/NBD fit failed: %s", exc)
    item_cycles, category_cycles = population_cycles([f.purchases for f in buyers])
    return PopulationStats(rfm=thresholds, churn=churn, item_cycle_days=item_cycles,
                           category_cycle_days=category_cycles, as_of=clock)


def lifecycle_events(facts: CustomerFacts, recorded: set[tuple[str, int]], clock: float,
                     rules: SegmentRules) -> list[LifecycleChanged]:
    """Transitions the log does not hold yet, as events with deterministic ids.

    Only transitions after the newest recorded one are added: the purchase history is
    bounded, so stages derived from long-gone orders may shift, and the log already says
    what happened then.
    """
    events = []
    previous: str | None = None
    latest = max((t for _, t in recorded), default=None)
    for stage, ts in lifecycle_transitions(facts, clock, rules.lifecycle):
        if (stage, int(ts)) not in recorded and (latest is None or int(ts) > latest):
            events.append(LifecycleChanged(
                event_id=f"lc-{facts.user_id}-{stage}-{int(ts)}",
                occurred_at=datetime.fromtimestamp(ts, UTC), user_id=facts.user_id,
                source="aisle:lifecycle", payload=LifecycleChange(stage=stage, previous=previous)))
        previous = stage
    return events


async def recorded_transitions(client: aioredis.Redis, keys: Keys, users: Sequence[str],
                               ) -> dict[str, set[tuple[str, int]]]:
    pipe = client.pipeline(transaction=False)
    for uid in users:
        pipe.lrange(keys.user(uid, "life"), 0, -1)
    out = {}
    for uid, rows in zip(users, await pipe.execute(), strict=True):
        out[uid] = {(str(s), int(t)) for s, t in (msgspec.json.decode(r) for r in rows)}
    return out


async def publish_stats(client: aioredis.Redis, keys: Keys, stats: PopulationStats) -> None:
    await client.set(keys.control(KEY), msgspec.json.encode(stats))


async def load_stats(client: aioredis.Redis, keys: Keys) -> PopulationStats | None:
    raw = await client.get(keys.control(KEY))
    return decode_stats(raw) if raw else None


def decode_stats(raw: bytes) -> PopulationStats:
    return msgspec.json.decode(raw, type=PopulationStats)


#: Customers read per step of a refresh: with the stats' sample, what it holds at a time.
SCAN_COUNT = 500
#: The stats are computed from at most about this many customers, chosen by a hash of
#: their id (the same ones refresh after refresh; ``worker.population_sample_max``).
#: Both datasets here are below it, so their stats come from everyone; past it the
#: quintile edges and the churn fit barely move, while an item's repurchase cycle needs
#: ``min_repeaters`` of its rebuyers in the sample (see docs/scaling.md).
SAMPLE_MAX = 200_000

Emit = Callable[[list[LifecycleChanged]], Awaitable[None]]


def in_sample(user_id: str, share: float) -> bool:
    """Whether the customer's facts feed the stats, when ``share`` of all are taken."""
    return share >= 1.0 or zlib.crc32(user_id.encode()) < share * 2**32


Claim = Callable[[int], Awaitable[bool]]


async def refresh(client: aioredis.Redis, keys: Keys, rules: SegmentRules,
                  emit: Emit | None = None, sample_max: int = SAMPLE_MAX,
                  claim: Claim | None = None) -> tuple[PopulationStats, int]:
    """Recompute and publish the population stats, and hand ``emit`` the lifecycle
    transitions the log does not hold yet, ``SCAN_COUNT`` customers at a time; returns
    the stats and how many transitions this call found.

    One pass, shard by shard (SSCAN): each step reads its customers' facts, finds their
    transitions and keeps only the facts of the stats' sample, so a refresh holds the
    sample and one step, not the population. With ``claim``, a shard it refuses is
    another worker's to find transitions in (:func:`sweep_lifecycle`): of that shard,
    this refresh reads only the sample's customers."""
    started = time.perf_counter()
    pass_ = await _Pass.start(client, keys, rules, emit)
    customers = 0
    sample: list[CustomerFacts] = []
    try:
        pipe = client.pipeline(transaction=False)
        for shard in range(keys.shards):
            pipe.scard(keys.users(shard))
        share = sample_max / max(1, sum(int(n) for n in await pipe.execute()))
        for shard in range(keys.shards):
            mine = claim is None or await claim(shard)
            async for users in scan_customers(client, keys, shard):
                if not mine:  # its transitions are another worker's: the sample only
                    users = [u for u in users if in_sample(u, share)]
                facts = await read_all_facts(pass_.reader, users)
                sample += [f for f in facts if in_sample(f.user_id, share)]
                if mine:
                    await pass_.transitions(facts)
                    customers += len(users)
    finally:
        await pass_.close()
    # The sample in one order whatever the scan's: the stats do not depend on it.
    sample.sort(key=lambda f: f.user_id)
    stats = await asyncio.to_thread(compute_stats, sample, pass_.clock)
    await publish_stats(client, keys, stats)
    found = pass_.found
    log.info("population: stats from %d customers; %d customers' lifecycle, %d "
             "transitions; %.1fs", len(sample), customers, found,
             time.perf_counter() - started)
    return stats, found


async def sweep_lifecycle(client: aioredis.Redis, keys: Keys, rules: SegmentRules,
                          emit: Emit | None, claim: Claim) -> int:
    """Lifecycle transitions of the shards this worker claims while another one holds
    the refresh: the workers split that part of a refresh between them. Returns how
    many transitions it found."""
    pass_ = await _Pass.start(client, keys, rules, emit)
    try:
        for shard in range(keys.shards):
            if await claim(shard):
                async for users in scan_customers(client, keys, shard):
                    await pass_.transitions(await read_all_facts(pass_.reader, users))
    finally:
        await pass_.close()
    return pass_.found


async def scan_customers(client: aioredis.Redis, keys: Keys, shard: int,
                         ) -> AsyncIterator[list[str]]:
    """A shard's customers, ``SCAN_COUNT`` at a time (SSCAN), each step sorted."""
    cursor: int | bytes = 0
    while True:
        cursor, members = await client.sscan(keys.users(shard), cursor, count=SCAN_COUNT)
        yield sorted(m.decode() if isinstance(m, bytes) else m for m in members)
        if not int(cursor):
            return


class _Pass:
    """What a refresh and a helper share: the reader on the pipelined connection, the
    log's clock, and the transitions found and handed to ``emit``."""

    def __init__(self, client: aioredis.Redis, keys: Keys, rules: SegmentRules,
                 emit: Emit | None, fast: Any, reader: FeatureReader) -> None:
        self.client, self.keys, self.rules, self.emit = client, keys, rules, emit
        self.fast, self.reader = fast, reader
        self.clock = 0.0
        self.found = 0

    @classmethod
    async def start(cls, client: aioredis.Redis, keys: Keys, rules: SegmentRules,
                    emit: Emit | None) -> _Pass:
        # Every customer's facts over the pipelined connection: redis-py's pipeline
        # machinery was most of the sweep's CPU (benchmarks/README.md, session 14).
        fast = pipelined(client)
        self = cls(client, keys, rules, emit, fast,
                   FeatureReader(client, keys, ttl=600.0, fast=fast))
        try:
            self.clock = await self.reader.clock()
        except BaseException:
            await self.close()
            raise
        return self

    async def transitions(self, facts: list[CustomerFacts]) -> None:
        recorded = await recorded_transitions(self.client, self.keys,
                                              [f.user_id for f in facts])
        events = [e for f in facts
                  for e in lifecycle_events(f, recorded[f.user_id], self.clock, self.rules)]
        if self.emit is not None and events:
            await self.emit(events)
        self.found += len(events)

    async def close(self) -> None:
        if self.fast is not None:
            await self.fast.close()
