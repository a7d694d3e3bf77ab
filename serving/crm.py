"""Customer profile and limited-time offers for the API: reads the customer's facts,
applies customer intelligence (models/customer.py) and the offer policy
(serving/offers.py), and records newly issued offers as events.

An offer is only promised once Kafka has its ``offer.issued`` event; if the broker is
away the customer sees the offers already on record and no new one. That send stays
awaited (unlike experiment exposures, handed to the producer and not awaited): the log
is the record of every coupon a customer holds, and a replay must rebuild it. It costs
only the answers that issue (a customer's first view of a new offer; p99 10.2 ms vs
8.0 ms for the others at 200 req/s, benchmarks/README.md "Serving").
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import msgspec
import redis.asyncio as aioredis

from feature_store.client import cancel_and_wait
from feature_store.keys import Keys
from feature_store.reader import CustomerRead, FeatureReader, ItemInfo, UserState
from models.customer import SegmentRules, build_profile, load_segment_rules
from models.customer_types import (
    CustomerFacts,
    CustomerProfile,
    PopulationStats,
    RFMThresholds,
)
from models.population import KEY as STATS_KEY
from models.population import decode_stats
from serving.offers import (
    Decision,
    Offer,
    OfferCandidates,
    OfferPolicy,
    decide,
    issued_event,
    live_offers,
    load_policy,
    offer_from_doc,
    remaining_budget,
    wanted_sources,
)

log = logging.getLogger(__name__)
PENDING_S = 60.0
DERIVED_MAX_AGE_S = 60.0  # log-clock seconds a derived profile is reused (see _derived)
BUDGET_READ_S = 1.0
EMPTY_STATS = PopulationStats(
    rfm=RFMThresholds((), (), (), as_of=0.0, customers=0), churn=None,
    item_cycle_days={}, category_cycle_days={}, as_of=0.0)


@functools.lru_cache(maxsize=1 << 14)
def iso(ts: float) -> str:
    # Cached: an offers answer formats its clock (which moves once a second) and each
    # offer's fixed issue and expiry times, on every page view.
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


class PopulationHolder:
    """The published population stats, polled like the model."""

    def __init__(self, client: aioredis.Redis, keys: Keys) -> None:
        self.client, self.keys = client, keys
        self.current: PopulationStats | None = None
        self._raw: bytes | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def stats(self) -> PopulationStats:
        return self.current or EMPTY_STATS

    async def refresh(self) -> None:
        """Take newly published stats. The same bytes keep the same object: the
        per-customer caches key on its identity, and a fresh object every poll emptied
        them every second (the derived profile was rebuilt on almost every answer)."""
        raw = await self.client.get(self.keys.control(STATS_KEY))
        if raw is None or raw == self._raw:
            return
        self.current, self._raw = decode_stats(raw), raw

    def start_polling(self, every_s: float) -> None:
        async def loop() -> None:
            while True:
                with contextlib.suppress(Exception):
                    await self.refresh()
                await asyncio.sleep(every_s)

        self._task = asyncio.create_task(loop(), name="population-poll")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)


@dataclass
class CustomerView:
    """One customer as read. Facts and profile are derived from the read on first use
    (:meth:`CustomerService.derive`): an offers answer showing a live offer needs
    neither, and deriving them was most of its cost when the log clock had moved since
    the customer's last view (1.0 of 1.5 ms per answer, benchmarks/README.md)."""

    user_id: str
    state: UserState
    clock: float
    offers: list[Offer]
    terminal: dict[str, str]
    record: CustomerRead | None = None
    derived: tuple[CustomerFacts, CustomerProfile] | None = None

    @property
    def facts(self) -> CustomerFacts:
        assert self.derived is not None, "CustomerService.derive(view) first"
        return self.derived[0]

    @property
    def profile(self) -> CustomerProfile:
        assert self.derived is not None, "CustomerService.derive(view) first"
        return self.derived[1]


class CustomerService:
    def __init__(self, reader: FeatureReader, keys: Keys, population: PopulationHolder,
                 rules: SegmentRules | None = None, policy: OfferPolicy | None = None,
                 cache_size: int = 0) -> None:
        self.reader, self.keys, self.population = reader, keys, population
        self.cache_size = cache_size  # serving.customer_cache_size (see _derived)
        self._derived_cache: dict[str, tuple[Any, ...]] = {}
        self.rules = rules or load_segment_rules()
        self.policy = policy or load_policy()
        # Offers this process issued whose events the workers may not have folded yet;
        # without it a quick second page view would issue (the same) offer again.
        self._issued: dict[str, tuple[float, Offer]] = {}
        self._budget_read: dict[str, tuple[float, dict[str, int]]] = {}

    async def view(self, user_id: str, state: UserState | None = None,
                   record: CustomerRead | None = None, derive: bool = True,
                   offers_only: bool = False) -> CustomerView:
        """Facts, profile and offers of one customer; pass ``state`` or the whole
        ``record`` if already read. Without either, all of it is one round trip. With
        ``derive=False`` and a record, facts and profile wait for :meth:`derive`.
        ``offers_only``: the state holds only what offers use (no views, cart,
        interactions or vector: ``FeatureReader.customer``)."""
        if state is None and record is None:
            record = await self.reader.customer(user_id, offers_only=offers_only)
        derived = None
        if record is not None:
            state = record.state
            clock = self.reader.clock_now()
            if clock is None:
                clock = await self.reader.clock()  # cached for a second: rarely a round trip
            stored, terminal = self._stored_offers(user_id, record)
        else:
            assert state is not None
            facts, clock, (docs, terminal) = await asyncio.gather(
                self.reader.facts(user_id), self.reader.clock(), self.reader.offers(user_id))
            derived = facts, self._profile(facts, state, clock)
            stored = [offer_from_doc(user_id, d) for d in docs]
        pending = self._issued.get(user_id)
        if pending and time.monotonic() - pending[0] < PENDING_S and \
                pending[1].offer_id not in {o.offer_id for o in stored}:
            stored = [*stored, pending[1]]  # not appended: stored may be shared
        offers = sorted(stored, key=lambda o: o.issued_at)
        view = CustomerView(user_id, state, clock, offers, terminal, record, derived)
        if derive:
            await self.derive(view)
        return view

    def _stored_offers(self, user_id: str, record: CustomerRead,
                       ) -> tuple[list[Offer], dict[str, str]]:
        """The record's issued offers and their end states, parsed once while the record
        is the customer's kept read (feature_store/tracking.py: the same object until
        their keys change), so a returning customer's offers are not decoded again."""
        memo = self.reader.kept_memo(user_id, record)
        parsed = memo.get("offers_parsed") if memo is not None else None
        if parsed is None:
            docs, terminal = record.offers
            parsed = ([offer_from_doc(user_id, d) for d in docs], terminal)
            if memo is not None:
                memo["offers_parsed"] = parsed
        return parsed  # shared while kept: not to be changed

    async def derive(self, view: CustomerView) -> CustomerView:
        """Fill in the view's facts and profile, if not yet."""
        if view.derived is None:
            assert view.record is not None
            view.derived = await self._derived(view.user_id, view.record, view.clock)
        return view

    def _profile(self, facts: CustomerFacts, state: UserState, clock: float,
                 ) -> CustomerProfile:
        repeat = {i for i, n in state.bought.items() if n >= 2}
        return build_profile(facts, self.population.stats, clock, self.rules, repeat)

    async def _derived(self, user_id: str, record: CustomerRead, clock: float,
                       ) -> tuple[CustomerFacts, CustomerProfile]:
        """Facts and profile, reused while they would come out the same: the same stored
        facts and bought counts (compared as read, so the customer's next event
        invalidates them) and the same population stats, derived at most
        ``DERIVED_MAX_AGE_S`` earlier on the log clock. Only time passing can age them,
        and a minute moves no recency or run-out date that is counted in days; keyed on
        the exact clock, they lasted one second while events flowed."""
        stats, bought = self.population.stats, record.state.bought
        hit = self._derived_cache.get(user_id)
        if (hit is not None and hit[0] is stats and 0.0 <= clock - hit[1] < DERIVED_MAX_AGE_S
                and hit[2] == bought and hit[3] == record.facts_raw):
            return hit[4], hit[5]
        facts = await self.reader.facts_from(user_id, record.facts_raw)
        profile = self._profile(facts, record.state, clock)
        if self.cache_size > 0:
            if len(self._derived_cache) >= self.cache_size:
                self._derived_cache.pop(next(iter(self._derived_cache)))  # the oldest
            self._derived_cache[user_id] = (stats, clock, bought, record.facts_raw,
                                            facts, profile)
        return facts, profile

    def forget(self, user_id: str) -> None:
        self._derived_cache.pop(user_id, None)
        self._issued.pop(user_id, None)

    def active(self, view: CustomerView) -> list[Offer]:
        return [o for o in view.offers
                if o.offer_id not in view.terminal and o.expires_at > view.clock]

    def _recent(self, view: CustomerView) -> tuple[list[Offer], list[Offer]]:
        """The offers issued within the longest cap, and those of them still open."""
        longest_cap = max((r.cap_days for r in self.policy.rules), default=0) * 86400
        recent = [o for o in view.offers if o.issued_at >= view.clock - longest_cap]
        return recent, [o for o in recent if o.offer_id not in view.terminal]

    def decide_now(self, view: CustomerView) -> Decision | None:
        """:meth:`decide`'s answer when the customer has a live offer (most page views):
        it is shown again, and nothing is read or issued. None: ask :meth:`decide`."""
        live = live_offers(view.user_id, view.clock, self._recent(view)[1])
        return Decision(live, None) if live else None

    async def decide(self, view: CustomerView) -> Decision:
        clock = view.clock
        recent, active = self._recent(view)
        # Most page views end here: the live offer is shown again, or no rule is for
        # this customer. Only what a matching rule could take is gathered (decide()
        # answers the same: it reads nothing else).
        live = live_offers(view.user_id, clock, active)
        if live:
            return Decision(live, None)
        await self.derive(view)
        wanted = wanted_sources(self.policy, view.profile)
        if not wanted:
            return Decision([], None)
        candidates = await self._candidates(view, wanted)
        used = await self._budget_used(clock)
        return decide(view.profile, clock, self.policy, active, recent, candidates,
                      remaining_budget(self.policy, used))

    async def record_issue(self, offer: Offer, send: object) -> None:
        """Count the offer against today's budget once Kafka has its event."""
        await send([issued_event(offer)])  # type: ignore[operator]
        self._issued[offer.user_id] = (time.monotonic(), offer)
        if len(self._issued) > 100_000:
            self._issued.clear()
        day = datetime.fromtimestamp(offer.issued_at, UTC).strftime("%Y-%m-%d")
        key = self.keys.control(f"budget:{offer.kind}:{day}")
        await self.reader.execute_many([("INCR", key), ("EXPIRE", key, 3 * 86400)])
        if (hit := self._budget_read.get(day)) is not None:
            hit[1][offer.kind] = hit[1].get(offer.kind, 0) + 1

    async def _budget_used(self, clock: float) -> dict[str, int]:
        """Today's issued offers by kind. Read at most once per ``BUDGET_READ_S`` (this
        process's own issues are counted in meanwhile): every page view asks, and budgets
        are soft by a few offers anyway (serving/offers.py)."""
        day = datetime.fromtimestamp(clock, UTC).strftime("%Y-%m-%d")
        now = time.monotonic()
        hit = self._budget_read.get(day)
        if hit is not None and now - hit[0] < BUDGET_READ_S:
            return hit[1]
        kinds = sorted(self.policy.budgets)
        values = await self.reader.client.mget(
            [self.keys.control(f"budget:{k}:{day}") for k in kinds]) if kinds else []
        used = {k: int(v or 0) for k, v in zip(kinds, values, strict=True)}
        self._budget_read = {day: (now, used)}
        return used

    async def _candidates(self, view: CustomerView, wanted: Mapping[str, int],
                          ) -> OfferCandidates:
        """The item lists of the ``wanted`` strategies (:func:`wanted_sources`), fit for
        this customer: in stock, none of their dislikes or complaints. A list a rule
        takes its first n from is filtered only until n distinct items passed (an Online
        Retail customer's bought list runs to hundreds of items)."""
        facts = view.facts
        favorites: Sequence[str] = ()
        bought: Sequence[str] = ()
        due: Sequence[str] = ()
        trending: Sequence[str] = ()
        if "favorites_or_bought" in wanted:
            favorites = facts.favorites
            bought = list(dict.fromkeys(p.item_id for p in facts.purchases))
        if "replenishment" in wanted:
            due = [r.item_id for r in view.profile.replenishments_due]
        if "bestsellers" in wanted or "gap_closers" in wanted:
            trending = [i for i, _ in await self.reader.trending(100)]
        infos = await self.reader.items([*favorites, *bought, *due, *trending])
        return fit_candidates(wanted, self.rules.tiers.currency, infos, _fit_for(view.state),
                              favorites=favorites, bought=bought, due=due, trending=trending)


def fit_candidates(wanted: Mapping[str, int], currency: str, infos: Mapping[str, ItemInfo],
                   ok: Callable[[ItemInfo], bool], *, favorites: Sequence[str] = (),
                   bought: Sequence[str] = (), due: Sequence[str] = (),
                   trending: Sequence[str] = ()) -> OfferCandidates:
    """The offer candidates of the ``wanted`` strategies from the customer's lists: items
    the catalog knows and ``ok`` lets through, each list in its order. One a rule takes
    its first n from stops at n distinct items: :func:`serving.offers.decide` answers as
    it would with every item filtered (``tests/unit/test_offer_candidates.py``)."""
    def keep(ids: Sequence[str], limit: int | None = None) -> list[str]:
        out: dict[str, None] = {}
        for i in ids:
            if i not in out and (info := infos.get(i)) is not None and ok(info):
                out[i] = None
                if len(out) == limit:
                    break
        return list(out)

    sellers = keep(trending)
    priced = sorted(((i, infos[i].price) for i in sellers if infos[i].price > 0),
                    key=lambda kv: kv[1]) if "gap_closers" in wanted else []
    n = wanted.get("favorites_or_bought")
    return OfferCandidates(
        currency=currency, favorites=keep(favorites, n), bought=keep(bought, n),
        replenishment=keep(due, wanted.get("replenishment")), priced_items=priced,
        bestsellers=sellers[:20])


def _fit_for(state: UserState):  # type: ignore[no-untyped-def]
    disliked = {t.lower() for t in state.dislikes}

    def ok(info: ItemInfo) -> bool:
        return (info.available and info.item_id not in state.negatives
                and not (disliked and info.tags & disliked))

    return ok


def still_fit(offers: list[Offer], infos: dict[str, ItemInfo], state: UserState) -> list[Offer]:
    """Offers as they may be shown now: items that went out of stock, left the catalog or
    became disliked since the offer was issued are dropped, and an offer left with no
    item is not shown."""
    ok = _fit_for(state)
    out = []
    for offer in offers:
        items = tuple(i for i in offer.items if i in infos and ok(infos[i]))
        if items:  # as issued (most page views) without a copy
            out.append(offer if len(items) == len(offer.items) else replace(offer, items=items))
    return out


def offer_seconds_left(offer: Offer, clock: float) -> int:
    return max(0, int(offer.expires_at - clock))


def lifecycle_history(raw: list[bytes]) -> list[tuple[str, str]]:
    rows = [msgspec.json.decode(r) for r in raw]
    return [(str(stage), iso(float(ts))) for stage, ts in sorted(rows, key=lambda r: r[1])]
