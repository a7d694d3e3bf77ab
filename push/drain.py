"""The worker side of push: claim due triggers, decide them, send, record.

Every ``drain_interval_s`` each worker, for every shard:

1. claims due triggers atomically with a lease (``claim.lua``): two workers never decide
   the same trigger at once, and a worker killed after claiming loses only its lease;
2. reads each customer's state once and decides all of the customer's triggers together
   (:func:`push.rules.decide`: priority, consent, dedupe, caps, quiet hours);
3. notes each candidate as in flight (``push:sending``: its partition and that
   partition's end offset before sending), produces it to ``topics.push``, waits for
   Kafka's ack, then marks it sent (``push:sent``, value: the decision);
4. records every decision as a ``push.decided`` event (event id derived from the trigger),
   whose fold moves the schedule and writes the fatigue ledger. State moves only after
   Kafka acked, so a restart loses nothing; a re-claimed trigger whose candidate is
   marked sent is not sent again, only its decision is recorded again (deduped).

A worker killed between sending and the sent mark leaves the candidate in flight: the
worker that claims the trigger next reads the candidate's partition from the noted
offset and sends it again only if it is not there. So none is lost and none is sent
twice, as long as a lease (``lease_s``) outlives a send (the producer's request timeout).
The candidate's ``id`` is stable besides, so a consumer can dedupe too.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from importlib.resources import files
from typing import TYPE_CHECKING, Any

import msgspec
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, TopicPartition

from aisle.settings import Settings
from feature_store.keys import Keys
from feature_store.reader import FeatureReader, ItemInfo
from push.candidate import (
    Candidate,
    CandidateItem,
    CandidateOffer,
    Reason,
    build_candidate,
    candidate_id,
    decode_candidate,
    encode_candidate,
    iso,
)
from push.rules import Draft, Fatigue, Trigger, Verdict, decide
from serving.offers import gap_closers
from streams import events as ev
from streams.topics import EventProducer

if TYPE_CHECKING:
    from serving.crm import CustomerService

log = logging.getLogger(__name__)
CLAIM = files("push").joinpath("claim.lua").read_text()
MAX_ITEMS = 5


@dataclass
class DrainResult:
    claimed: int = 0
    emitted: int = 0
    held: int = 0
    dropped: int = 0


@dataclass(frozen=True, slots=True)
class CustomerPush:
    """What the drafts and the rules need about one customer, read in one round trip."""

    fatigue: Fatigue
    cart: dict[str, float]
    last_order_ts: float | None
    offers: dict[str, dict[str, Any]]
    offer_states: dict[str, str]
    favorites: tuple[str, ...]
    bought: frozenset[str]
    last_bought: dict[str, float]  # item -> time of its newest purchase (bounded history)


class PushDrainer:
    def __init__(self, settings: Settings, client: aioredis.Redis,
                 producer: EventProducer) -> None:
        self.settings, self.s = settings, settings.push
        self.client, self.producer = client, producer
        self.keys = Keys(settings.features.key_prefix, settings.features.shards)
        self.reader = FeatureReader(client, self.keys, ttl=0.0)
        self._claim = client.register_script(CLAIM)
        self._kafka: AIOKafkaConsumer | None = None
        self._customers: CustomerService | None = None

    async def drain(self) -> DrainResult:
        """One pass over every shard."""
        result = DrainResult()
        if await self.client.exists(self.keys.control("rebuild")):
            return result  # the log is being replayed: the schedule is not complete yet
        clock = await self.reader.clock()
        for shard in range(self.keys.shards):
            await self._drain_shard(shard, clock, result)
        return result

    async def _drain_shard(self, shard: int, clock: float, result: DrainResult) -> None:
        raw = await self._claim(keys=[self.keys.push_due(shard), self.keys.push_lease(shard)],
                                args=[repr(clock), repr(time.time()), self.s.lease_s,
                                      self.s.claim_batch])
        if not raw:
            return
        triggers = [Trigger.parse(_s(raw[i]), float(raw[i + 1])) for i in range(0, len(raw), 2)]
        result.claimed += len(triggers)
        by_user: dict[str, list[Trigger]] = {}
        for t in triggers:
            by_user.setdefault(t.user_id, []).append(t)
        marks = await self.client.hgetall(self.keys.push_sent(shard))
        sent = {_s(k): v for k, v in marks.items()}
        sent.update(await self._recover(shard, triggers, sent))
        verdicts: list[tuple[Verdict, str]] = []
        decisions: list[ev.PushDecided] = []
        for user, ts in by_user.items():
            again = [t for t in ts if candidate_id(t.member, t.due_ts) in sent]
            for t in again:  # sent before a crash: record its decision, never send again
                decisions.append(_decision_event(
                    t, msgspec.json.decode(sent[candidate_id(t.member, t.due_ts)],
                                           type=ev.PushDecision), clock))
            fresh = [t for t in ts if t not in again]
            if fresh:
                verdicts += [(v, user) for v in await self._decide_user(user, fresh, clock)]
        candidates = [(self._candidate(v, user, clock), v) for v, user in verdicts
                      if v.outcome == "emitted"]
        await self._send(shard, candidates)
        decisions += [_decision_event(v.draft.trigger, _payload(v), clock) for v, _ in verdicts]
        await self.producer.send_events(decisions)
        for v, _ in verdicts:
            setattr(result, v.outcome, getattr(result, v.outcome) + 1)

    async def _decide_user(self, user: str, triggers: Sequence[Trigger], clock: float,
                           ) -> list[Verdict]:
        state = await self._read(user)
        if any(t.reason == "winback" for t in triggers) and state.fatigue.known \
                and state.fatigue.opted_in and not _live_winback(state, clock):
            issued = await self._issue_winback_offer(user)
            if issued is not None:
                state = replace(state, offers={**state.offers, issued[0]: issued[1]})
        watched = [t.ref for t in triggers if t.reason in ("price_drop", "back_in_stock")]
        watched += [t.ref.split("@")[0] for t in triggers if t.reason == "replenish"]
        if any(t.reason == "tier_nudge" for t in triggers):
            watched += list(state.last_bought)
        infos = await self.reader.items(list({*state.cart, *state.favorites, *watched,
                                              *(i for o in state.offers.values()
                                                for i in o.get("items", []))}))
        # Unknown to the catalog: sent without title and price; removed or sold out: never.
        items: dict[str, CandidateItem | None] = {
            i: CandidateItem(i, info.title, info.price, info.currency) if info.available
            else None for i, info in infos.items()}
        drafts = [self._draft(t, state, items, clock, infos) for t in triggers]
        return decide(drafts, state.fatigue, clock, self.s)

    async def _read(self, user: str) -> CustomerPush:
        k = lambda s: self.keys.user(user, s)  # noqa: E731
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(k("rfm"))
        pipe.hgetall(k("consent"))
        pipe.zrange(k("pushlog"), 0, -1, withscores=True)
        pipe.hgetall(k("pushkeys"))
        pipe.hgetall(k("cart"))
        pipe.hgetall(k("offers"))
        pipe.hgetall(k("ostate"))
        pipe.zrange(k("fav"), 0, 9, desc=True)
        pipe.hkeys(k("bought"))
        pipe.lrange(k("hist"), 0, -1)
        rfm, consent, pushlog, pushkeys, cart, offers, ostate, fav, bought, hist = \
            await pipe.execute()
        last_bought: dict[str, float] = {}
        for line in hist:
            _, item, ts, *_ = msgspec.json.decode(line)
            last_bought[str(item)] = max(last_bought.get(str(item), 0.0), float(ts))
        consent = {_s(a): _s(b) for a, b in consent.items()}
        opted = consent.get("push")
        fatigue = Fatigue(
            known=bool(rfm), opted_in=self.s.default_opt_in if opted is None else opted == "1",
            timezone=consent.get("tz") or self.s.default_timezone,
            pushed=tuple((score, _s(m).rsplit("|", 1)[1]) for m, score in pushlog),
            dedupe={_s(a): float(b) for a, b in pushkeys.items()})
        last = rfm.get(b"last_ts")
        return CustomerPush(
            fatigue=fatigue, cart={_s(a): float(b) for a, b in cart.items()},
            last_order_ts=float(last) if last is not None else None,
            offers={_s(a): msgspec.json.decode(b) for a, b in offers.items()},
            offer_states={_s(a): _s(b) for a, b in ostate.items()},
            favorites=tuple(_s(f) for f in fav), bought=frozenset(_s(b) for b in bought),
            last_bought=last_bought)

    # ------------------------------------------------------------ drafts, by reason
    def _draft(self, t: Trigger, st: CustomerPush, items: dict[str, CandidateItem | None],
               clock: float, infos: dict[str, ItemInfo]) -> Draft:
        try:
            return self._draft_of(t, st, items, clock, infos)
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            # A trigger written by hand (POST /v1/events) that makes no sense: decide it
            # (dropped) rather than stall the shard on it forever.
            log.warning("push: malformed trigger %r: %r", t.member[:200], exc)
            return Draft(t, "winback", expires_ts=clock + 1, drop="malformed_trigger")

    def _draft_of(self, t: Trigger, st: CustomerPush, items: dict[str, CandidateItem | None],
                  clock: float, infos: dict[str, ItemInfo]) -> Draft:
        if t.reason == "cart_abandon":
            return self._cart_draft(t, st, items)
        if t.reason == "offer_expiring":
            return self._offer_draft(t, st, items, clock)
        if t.reason == "winback":
            return self._winback_draft(t, st, items, clock)
        if t.reason in ("price_drop", "back_in_stock"):
            return self._item_draft(t, st, items, infos)
        if t.reason == "replenish":
            return self._replenish_draft(t, st, items, infos, clock)
        if t.reason == "tier_nudge":
            return self._tier_draft(t, st, items, infos)
        return Draft(t, "winback", drop="unknown_reason")

    def _cart_draft(self, t: Trigger, st: CustomerPush, items: dict[str, CandidateItem | None],
                    ) -> Draft:
        added = t.due_ts - self.s.cart_abandon_delay_s
        expires = t.due_ts + self.s.cart_abandon_ttl_s
        if st.last_order_ts is not None and st.last_order_ts >= added:
            return Draft(t, "cart_abandon", expires_ts=expires, drop="purchased")
        carted = _pick(sorted(st.cart, key=lambda i: (-st.cart[i], i)), items)
        if not carted:
            return Draft(t, "cart_abandon", expires_ts=expires, drop="cart_emptied")
        shown = tuple(carted[:MAX_ITEMS])
        total = sum((i.price or 0.0) * st.cart[i.item_id] for i in carted)
        return Draft(t, "cart_abandon", shown, None, expires,
                     dedupe_key=f"cart_abandon:{_digest(sorted(st.cart))}",
                     variables={"count": str(len(carted)), "first_title": shown[0].title or "",
                                "total": f"{total:.2f}"})

    def _offer_draft(self, t: Trigger, st: CustomerPush, items: dict[str, CandidateItem | None],
                     clock: float) -> Draft:
        doc = st.offers.get(t.ref)
        if doc is None:
            return Draft(t, "offer_expiring", expires_ts=clock + 1, drop="offer_unknown")
        expires = float(doc["expires_ts"])
        state = st.offer_states.get(t.ref)
        if state is not None:
            return Draft(t, "offer_expiring", expires_ts=expires,
                         drop="offer_used" if state == "redeemed" else "offer_ended")
        offer = _offer(t.ref, doc)
        shown = tuple(_pick(doc.get("items", []), items))[:MAX_ITEMS]
        return Draft(t, "offer_expiring", shown, offer, expires,
                     dedupe_key=f"offer_expiring:{t.ref}",
                     variables={"discount_pct": f"{offer.discount_pct:g}",
                                "hours_left": f"{max(0.0, (expires - clock) / 3600):.0f}",
                                "reason": str(doc.get("reason", ""))})

    def _winback_draft(self, t: Trigger, st: CustomerPush, items: dict[str, CandidateItem | None],
                       clock: float) -> Draft:
        expires = t.due_ts + self.s.winback_ttl_s
        if st.last_order_ts is not None and st.last_order_ts >= t.due_ts:
            return Draft(t, "winback", expires_ts=expires, drop="purchased")
        # The customer's live win-back offer from the offer policy (issued just now if
        # the policy grants one).
        live = _live_winback(st, clock)
        offer = _offer(*max(live, key=lambda od: od[1]["expires_ts"])) if live else None
        ids = list(live[0][1].get("items", [])) if live else list(st.favorites)
        shown = tuple(_pick(ids, items))[:MAX_ITEMS]
        return Draft(t, "winback", shown, offer, expires,
                     dedupe_key=f"winback:{t.ref}:{int(t.due_ts)}",
                     variables={"stage": t.ref, "count": str(len(shown)),
                                "first_title": shown[0].title or "" if shown else ""})

    def _item_draft(self, t: Trigger, st: CustomerPush, items: dict[str, CandidateItem | None],
                    infos: dict[str, ItemInfo]) -> Draft:
        reason: Reason = "price_drop" if t.reason == "price_drop" else "back_in_stock"
        expires = t.due_ts + self.s.item_change_ttl_s
        item, info = items.get(t.ref), infos.get(t.ref)
        if item is None or info is None:  # removed, sold out again, or never in the catalog
            return Draft(t, reason, expires_ts=expires, drop="unavailable")
        if t.ref in st.bought and (st.last_order_ts or 0.0) >= t.due_ts - self.s.watch_window_s:
            return Draft(t, reason, expires_ts=expires, drop="purchased")
        return Draft(t, reason, (item,), None, expires, dedupe_key=f"{reason}:{t.ref}",
                     variables={"title": info.title, "price": f"{info.price:.2f}",
                                "currency": info.currency})

    def _replenish_draft(self, t: Trigger, st: CustomerPush,
                         items: dict[str, CandidateItem | None], infos: dict[str, ItemInfo],
                         clock: float) -> Draft:
        item, _, last = t.ref.partition("@")
        expires = t.due_ts + self.s.replenish_ttl_s
        if st.last_bought.get(item, 0.0) > float(last or 0):
            return Draft(t, "replenish", expires_ts=expires, drop="purchased")
        if items.get(item, CandidateItem(item, None, None)) is None:
            return Draft(t, "replenish", expires_ts=expires, drop="unavailable")
        runout = t.due_ts + self.s.replenish_lead_s
        shown = tuple(_pick([item], items))
        return Draft(t, "replenish", shown, None, expires, dedupe_key=f"replenish:{t.ref}",
                     variables={"title": shown[0].title or "",
                                "days_left": f"{max(0.0, (runout - clock) / 86400):.0f}"})

    def _tier_draft(self, t: Trigger, st: CustomerPush, items: dict[str, CandidateItem | None],
                    infos: dict[str, ItemInfo]) -> Draft:
        tier, month, gap = t.ref.split("@")
        expires = t.due_ts + self.s.tier_nudge_ttl_s
        if st.last_order_ts is not None and st.last_order_ts >= t.due_ts:
            return Draft(t, "tier_nudge", expires_ts=expires, drop="purchased")
        # Items the customer knows (saved, bought before) that close the gap, as the
        # offer policy picks them.
        known = [*st.favorites, *st.last_bought]
        priced = [(i, infos[i].price) for i in dict.fromkeys(known)
                  if items.get(i) is not None and i in infos]
        picks = gap_closers(priced, float(gap), 2)
        if not picks:
            return Draft(t, "tier_nudge", expires_ts=expires, drop="no_items")
        shown = tuple(_pick(picks, items))
        return Draft(t, "tier_nudge", shown, None, expires,
                     dedupe_key=f"tier_nudge:{tier}@{month}",
                     variables={"next_tier": tier, "gap": gap,
                                "currency": infos[picks[0]].currency})

    async def _issue_winback_offer(self, user: str) -> tuple[str, dict[str, Any]] | None:
        """Ask the offer policy (serving/offers.py, the same one the API applies) for this
        customer's offer now; record it as ``offer.issued`` if it is a win-back coupon.
        Offer ids are deterministic, so the API and the drain issue the same one."""
        from serving.crm import CustomerService, PopulationHolder

        if self._customers is None:
            self._customers = CustomerService(FeatureReader(self.client, self.keys), self.keys,
                                              PopulationHolder(self.client, self.keys))
        await self._customers.population.refresh()
        view = await self._customers.view(user)
        offer = (await self._customers.decide(view)).issue
        if offer is None or offer.kind != "winback_coupon":
            return None
        await self._customers.record_issue(offer, self.producer.send_events)
        return offer.offer_id, {"kind": offer.kind, "discount_pct": offer.discount_pct,
                                "items": list(offer.items), "expires_ts": offer.expires_at,
                                "reason": offer.reason}

    # ------------------------------------------------------------ sending
    def _candidate(self, v: Verdict, user: str, clock: float) -> Candidate:
        d = v.draft
        return build_candidate(
            candidate_id=candidate_id(d.trigger.member, d.trigger.due_ts), user_id=user,
            source=self.s.source, clock=clock, reason=d.reason, priority=d.priority,
            items=list(d.items), offer=d.offer, expires_ts=d.expires_ts,
            dedupe_key=d.dedupe_key, variables=d.variables)

    async def _send(self, shard: int, candidates: list[tuple[Candidate, Verdict]]) -> None:
        if not candidates:
            return
        topic = self.settings.topics.push
        n = await self.producer.partitions(topic)
        # Our partitioner, not Kafka's: the recovery must know where to look.
        where = {c.id: zlib.crc32(c.subject.encode()) % n for c, _ in candidates}
        ends = await self._end_offsets(topic, set(where.values()))
        await self.client.hset(self.keys.push_sending(shard), mapping={
            c.id: msgspec.json.encode([where[c.id], ends.get(where[c.id], 0), _payload(v)])
            for c, v in candidates})
        await asyncio.gather(*[self.producer.send_to(topic, encode_candidate(c),
                                                     c.subject.encode(), where[c.id])
                               for c, _ in candidates])
        await self.client.hset(self.keys.push_sent(shard), mapping={
            c.id: msgspec.json.encode(_payload(v)) for c, v in candidates})

    async def _recover(self, shard: int, triggers: Sequence[Trigger], sent: dict[str, bytes],
                       ) -> dict[str, bytes]:
        """Candidates a dead worker was sending: those Kafka has count as sent."""
        ids = {candidate_id(t.member, t.due_ts) for t in triggers} - set(sent)
        if not ids:
            return {}
        flight = {_s(k): msgspec.json.decode(v)
                  for k, v in (await self.client.hgetall(self.keys.push_sending(shard))).items()
                  if _s(k) in ids}
        if not flight:
            return {}
        found = await self._find_on_topic({cid: (p, off) for cid, (p, off, _) in flight.items()})
        delivered = {cid: msgspec.json.encode(flight[cid][2]) for cid in found}
        if delivered:
            await self.client.hset(self.keys.push_sent(shard), mapping=delivered)
        log.info("push: %d candidates were in flight when a worker stopped; %d had reached "
                 "Kafka", len(flight), len(delivered))
        return delivered

    async def _consumer(self) -> AIOKafkaConsumer:
        if self._kafka is None:
            self._kafka = AIOKafkaConsumer(bootstrap_servers=self.settings.bootstrap_servers,
                                           enable_auto_commit=False)
            await self._kafka.start()
        return self._kafka

    async def _end_offsets(self, topic: str, partitions: set[int]) -> dict[int, int]:
        consumer = await self._consumer()
        got = await consumer.end_offsets([TopicPartition(topic, p) for p in partitions])
        return {tp.partition: int(off) for tp, off in got.items()}

    async def _find_on_topic(self, flight: dict[str, tuple[int, int]]) -> set[str]:
        """Which of these candidate ids the push topic holds, reading each partition from
        the offset noted before sending to its end."""
        topic = self.settings.topics.push
        starts: dict[TopicPartition, int] = {}
        for p, off in flight.values():
            tp = TopicPartition(topic, p)
            starts[tp] = min(starts.get(tp, off), off)
        consumer = AIOKafkaConsumer(bootstrap_servers=self.settings.bootstrap_servers,
                                    enable_auto_commit=False)
        await consumer.start()
        found: set[str] = set()
        try:
            consumer.assign(list(starts))
            for tp, off in starts.items():
                consumer.seek(tp, off)
            left = set(starts)
            deadline = time.monotonic() + 30
            while left and time.monotonic() < deadline:
                for msgs in (await consumer.getmany(*left, timeout_ms=500)).values():
                    found |= {c for m in msgs if (c := decode_candidate(m.value or b"").id)
                              in flight}
                # Done with a partition once read to the high watermark a fetch reported
                # (ListOffsets may answer short of the end on Tansu).
                for tp in list(left):
                    hw = consumer.highwater(tp)
                    if hw is not None and await consumer.position(tp) >= hw:
                        left.discard(tp)
            if left:
                raise TimeoutError("push topic not read to its end; the next pass retries")
        finally:
            await consumer.stop()
        return found

    async def close(self) -> None:
        if self._kafka is not None:
            await self._kafka.stop()


def _live_winback(st: CustomerPush, clock: float) -> list[tuple[str, dict[str, Any]]]:
    return [(oid, d) for oid, d in st.offers.items()
            if d.get("kind") == "winback_coupon" and oid not in st.offer_states
            and float(d["expires_ts"]) > clock]


def _payload(v: Verdict) -> ev.PushDecision:
    t = v.draft.trigger
    emitted = v.outcome == "emitted"
    return ev.PushDecision(
        trigger=t.key, due_ts=t.due_ts, outcome=v.outcome, rule=v.rule,
        candidate_id=candidate_id(t.member, t.due_ts) if emitted else None,
        dedupe_key=v.draft.dedupe_key if emitted else None,
        items=[i.item_id for i in v.draft.items] if emitted else [],
        hold_until_ts=v.hold_until)


def _decision_event(t: Trigger, payload: ev.PushDecision, clock: float) -> ev.PushDecided:
    # One event id per (trigger, due time): the first decision recorded wins.
    eid = "pd-" + _digest([t.member, repr(t.due_ts)])
    return ev.PushDecided(event_id=eid, user_id=t.user_id, source="aisle.push",
                          occurred_at=datetime.fromtimestamp(clock, UTC), payload=payload)


def _pick(ids: Sequence[str], items: dict[str, CandidateItem | None]) -> list[CandidateItem]:
    return [items.get(i) or CandidateItem(i, None, None) for i in ids
            if i not in items or items[i] is not None]


def _offer(offer_id: str, doc: dict[str, Any]) -> CandidateOffer:
    return CandidateOffer(offer_id=offer_id, kind=str(doc.get("kind", "")),
                          discount_pct=float(doc.get("discount_pct", 0.0)),
                          expires_at=iso(float(doc["expires_ts"])))


def _digest(parts: Sequence[str]) -> str:
    return hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).hexdigest()


def _s(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v
