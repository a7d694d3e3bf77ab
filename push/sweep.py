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
from datetime import UTC, datetime

import redis.asyncio as aioredis

from aisle.settings import Settings
from feature_store.keys import Keys
from feature_store.reader import FeatureReader
from models.customer import SegmentRules, build_profile, load_segment_rules
from models.customer_types import CustomerFacts, PopulationStats, RFMThresholds
from models.population import all_customers, load_stats, read_all_facts
from streams import events as ev
from streams.topics import EventProducer

log = logging.getLogger(__name__)
EMPTY = PopulationStats(rfm=RFMThresholds((), (), (), as_of=0.0, customers=0), churn=None,
                        item_cycle_days={}, category_cycle_days={}, as_of=0.0)


def sweep_events(facts: CustomerFacts, stats: PopulationStats, clock: float,
                 settings: Settings, rules: SegmentRules) -> list[ev.PushScheduled]:
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
    when = datetime.fromtimestamp(clock, UTC)
    return [ev.PushScheduled(
        event_id="ps-" + hashlib.blake2b(f"{facts.user_id}|{reason}|{ref}".encode(),
                                         digest_size=12).hexdigest(),
        user_id=facts.user_id, occurred_at=when, source="aisle.push",
        payload=ev.PushSchedule(reason=reason, ref=ref, due_ts=due))  # type: ignore[arg-type]
        for reason, ref, due in found]


async def sweep(settings: Settings, client: aioredis.Redis, producer: EventProducer) -> int:
    """One sweep over every customer (one worker at a time); returns events written."""
    keys = Keys(settings.features.key_prefix, settings.features.shards)
    lock = keys.control("push-sweep-lock")
    if not await client.set(lock, b"1", nx=True, ex=600):
        return 0
    try:
        reader = FeatureReader(client, keys, ttl=600.0)
        clock = await reader.clock()
        stats = await load_stats(client, keys) or EMPTY
        facts = await read_all_facts(reader, await all_customers(client, keys))
        rules = load_segment_rules()
        events = [e for f in facts for e in sweep_events(f, stats, clock, settings, rules)]
        for start in range(0, len(events), 1000):
            await producer.send_events(events[start:start + 1000])
        log.info("push sweep: %d customers, %d triggers", len(facts), len(events))
        return len(events)
    finally:
        await client.delete(lock)
