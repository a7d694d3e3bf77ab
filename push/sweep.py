"""The customer sweep: triggers that follow from time passing rather than from an event.

Replenishment due (a rebuy predicted to run out within ``replenish_lead_s``) and tier
nudges (the customer is at most ``tier_gap_max`` from the next member tier) change
because the clock moves, so a periodic sweep over every customer finds them, with the
customer intelligence the profile uses (``models/customer.py``), and records each as a
``push.scheduled`` event whose id is derived from the trigger: a repeated sweep adds
nothing, and the schedule stays derived from the log.
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
from datetime import UTC, datetime
from typing import NamedTuple

import redis.asyncio as aioredis

from aisle.settings import Settings
from feature_store.keys import Keys
from feature_store.lease import Lease
from feature_store.multiplexed import pipelined
from feature_store.reader import FeatureReader
from models.customer import SegmentRules, build_profile, load_segment_rules
from models.customer_types import CustomerFacts, PopulationStats, RFMThresholds
from models.population import load_stats, read_all_facts, scan_customers
from streams import events as ev
from streams.topics import EventProducer

log = logging.getLogger(__name__)
EMPTY = PopulationStats(rfm=RFMThresholds((), (), (), as_of=0.0, customers=0), churn=None,
                        item_cycle_days={}, category_cycle_days={}, as_of=0.0)


class Trigger(NamedTuple):
    event_id: str  # derived from the trigger: the same trigger, the same id
    user_id: str
    reason: str
    ref: str
    due: float


def sweep_triggers(facts: CustomerFacts, stats: PopulationStats, clock: float,
                   settings: Settings, rules: SegmentRules) -> list[Trigger]:
    """The push triggers one customer's profile implies at ``clock``."""
    if facts.orders == 0:
        return []
    s = settings.push
    profile = build_profile(facts, stats, clock, rules)
    found: list[tuple[str, str, float]] = []
    for r in profile.replenishments_due:
        if r.runout_ts - s.replenish_lead_s <= clock:
            found.append(("replenish", f"{r.item_id}@{int(r.last_purchase_ts)}",
                          r.runout_ts - s.replenish_lead_s))
    t = profile.tier
    if t.next_tier and t.gap is not None and 0 < t.gap <= s.tier_gap_max:
        month = datetime.fromtimestamp(clock, UTC).strftime("%Y-%m")
        found.append(("tier_nudge", f"{t.next_tier}@{month}@{t.gap:.2f}", clock))
    user = facts.user_id
    return [Trigger("ps-" + hashlib.blake2b(f"{user}|{reason}|{ref}".encode(),
                                            digest_size=12).hexdigest(), user, reason, ref, due)
            for reason, ref, due in found]


def trigger_events(triggers: list[Trigger], clock: float) -> list[ev.PushScheduled]:
    when = datetime.fromtimestamp(clock, UTC)
    return [ev.PushScheduled(
        event_id=t.event_id, user_id=t.user_id, occurred_at=when, source="aisle.push",
        payload=ev.PushSchedule(reason=t.reason, ref=t.ref, due_ts=t.due))  # type: ignore[arg-type]
        for t in triggers]


def sweep_events(facts: CustomerFacts, stats: PopulationStats, clock: float,
                 settings: Settings, rules: SegmentRules) -> list[ev.PushScheduled]:
    """:func:`sweep_triggers` as the events a sweep writes."""
    return trigger_events(sweep_triggers(facts, stats, clock, settings, rules), clock)


#: A shard's claim while it is swept (renewed every third of it, as long as that takes).
CLAIM_S = 600


class SweepResult(NamedTuple):
    customers: int  # swept by this call (shards another worker held are not counted)
    found: int      # triggers their profiles imply
    written: int    # of those, the ones the store had not applied yet: produced


async def sweep(settings: Settings, client: aioredis.Redis, producer: EventProducer,
                interval_s: float = 0.0) -> SweepResult:
    """One pass over every customer, shard by shard.

    Each state shard is claimed (``push-sweep:<shard>``, SET NX) before it is swept, so
    the workers of a group split a pass between them: a worker skips a shard another
    holds. With ``interval_s`` (the workers' timer) a claim is kept until 90% of the
    interval after this pass began, so across all workers each shard is swept once per
    interval, not once per worker; a direct call (``interval_s`` 0) frees each claim
    when its shard is done. A shard is read 500 customers at a time (``scan_customers``),
    so a sweep holds that many customers' facts, not the population's.

    A trigger keeps being found pass after pass until it no longer holds; its event id
    is derived from it, so the store's event-id dedupe (the shard's ``seen`` window)
    already knows the ones applied. Those are not produced again: on Online Retail a
    pass found 99,874 triggers for 4,334 customers, all of them re-sent every
    ``sweep_interval_s`` before, for the worker to drop as duplicates.
    """
    keys = Keys(settings.features.key_prefix, settings.features.shards)
    # The facts over the pipelined connection, as the population sweep reads them.
    fast = pipelined(client)
    try:
        return await _sweep(settings, client, producer, interval_s, keys,
                            FeatureReader(client, keys, ttl=600.0, fast=fast))
    finally:
        if fast is not None:
            await fast.close()


async def _sweep(settings: Settings, client: aioredis.Redis, producer: EventProducer,
                 interval_s: float, keys: Keys, reader: FeatureReader) -> SweepResult:
    clock = await reader.clock()
    stats = await load_stats(client, keys) or EMPTY
    rules = load_segment_rules()
    keep_s = interval_s * 0.9
    began = time.monotonic()
    start = random.randrange(keys.shards)  # workers ticking together start apart
    total = SweepResult(0, 0, 0)
    for n in range(keys.shards):
        shard = (start + n) % keys.shards
        claim = Lease(client, keys.control(f"push-sweep:{shard}"), CLAIM_S)
        if not await claim.acquire():
            continue
        swept = False
        try:
            async with claim.kept():
                done = await _sweep_shard(settings, client, producer, reader, keys, shard,
                                          stats, clock, rules)
            total = SweepResult(*(a + b for a, b in zip(total, done, strict=True)))
            swept = True
        finally:
            left = keep_s - (time.monotonic() - began)
            if swept and left >= 1:
                await claim.renew(left)
            else:  # a direct call, a pass that outlasted its interval, a failed shard
                await claim.release()
    if total.customers:
        log.info("push sweep: %d customers, %d triggers, %d new", *total)
    return total


async def _sweep_shard(settings: Settings, client: aioredis.Redis, producer: EventProducer,
                       reader: FeatureReader, keys: Keys, shard: int, stats: PopulationStats,
                       clock: float, rules: SegmentRules) -> SweepResult:
    customers = found = written = 0
    async for users in scan_customers(client, keys, shard):
        facts = await read_all_facts(reader, users)
        triggers = [t for f in facts for t in sweep_triggers(f, stats, clock, settings, rules)]
        found += len(triggers)
        if triggers:  # every customer here is of this shard, and so are their events
            applied = await client.zmscore(keys.seen(shard), [t.event_id for t in triggers])
            triggers = [t for t, score in zip(triggers, applied, strict=True) if score is None]
        events = trigger_events(triggers, clock)
        for first in range(0, len(events), 1000):
            await producer.send_events(events[first:first + 1000])
        customers, written = customers + len(users), written + len(events)
    return SweepResult(customers, found, written)
