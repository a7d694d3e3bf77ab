"""The worker side of push: claim due triggers, decide them, send, record.

Every ``drain_interval_s`` each worker, for every shard:

1. claims due triggers atomically with a lease (``claim.lua``): two workers never decide
   the same trigger at once, and a worker killed after claiming loses only its lease;
2. reads each customer's state once and decides all of the customer's triggers together
   (:func:`push.rules.decide`: priority, consent, dedupe, caps, quiet hours);
3. produces the candidates to ``topics.push`` and waits for Kafka's ack, then marks them
   sent in the shard (``push:sent``, value: the decision);
4. records every decision as a ``push.decided`` event (event id derived from the trigger),
   whose fold moves the schedule and writes the fatigue ledger. State moves only after
   Kafka acked, so a restart loses nothing; a re-claimed trigger whose candidate is
   marked sent is not sent again, only its decision is recorded again (deduped).

The one window left is a kill between Kafka's ack and the sent mark: the candidate then
goes out again with the same CloudEvents ``id`` (at-least-once with a stable id).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.resources import files
from typing import Any

import msgspec
import redis.asyncio as aioredis

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
    encode_candidate,
    iso,
)
from push.rules import Draft, Fatigue, Trigger, Verdict, decide
from streams import events as ev
from streams.topics import EventProducer

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


class PushDrainer:
    def __init__(self, settings: Settings, client: aioredis.Redis,
                 producer: EventProducer) -> None:
        self.settings, self.s = settings, settings.push
        self.client, self.producer = client, producer
        self.keys = Keys(settings.features.key_prefix, settings.features.shards)
        self.reader = FeatureReader(client, self.keys, ttl=0.0)
        self._claim = client.register_script(CLAIM)

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
        watched = [t.ref for t in triggers if t.reason in ("price_drop", "back_in_stock")]
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
        rfm, consent, pushlog, pushkeys, cart, offers, ostate, fav, bought = await pipe.execute()
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
            favorites=tuple(_s(f) for f in fav), bought=frozenset(_s(b) for b in bought))

    # ------------------------------------------------------------ drafts, by reason
    def _draft(self, t: Trigger, st: CustomerPush, items: dict[str, CandidateItem | None],
               clock: float, infos: dict[str, ItemInfo]) -> Draft:
        if t.reason == "cart_abandon":
            return self._cart_draft(t, st, items)
        if t.reason == "offer_expiring":
            return self._offer_draft(t, st, items, clock)
        if t.reason == "winback":
            return self._winback_draft(t, st, items, clock)
        if t.reason in ("price_drop", "back_in_stock"):
            return self._item_draft(t, st, items, infos)
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
        # The customer's live win-back offer from the offer policy, if one was issued.
        live = [(oid, d) for oid, d in st.offers.items()
                if d.get("kind") == "winback_coupon" and oid not in st.offer_states
                and float(d["expires_ts"]) > clock]
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
        await asyncio.gather(*[self.producer.send_raw(topic, encode_candidate(c),
                                                      c.subject.encode())
                               for c, _ in candidates])
        await self.client.hset(self.keys.push_sent(shard), mapping={
            c.id: msgspec.json.encode(_payload(v)) for c, v in candidates})


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
