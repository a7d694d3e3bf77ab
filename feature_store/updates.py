"""Pure folds: one event → the store operations it implies. No I/O.

An operation is a small list ``[opcode, key, args...]`` that both stores execute with the
same meaning (``store.lua`` on Redis, :mod:`feature_store.memory_store` in tests). Ops
that need to read state (log-add-exp decay, session co-views, first/repeat purchase) are
opcodes of their own, so every read-modify-write happens inside the atomic script.

Opcodes
-------
``zmax k m ts``        keep the larger score (recent views, favourites)
``zmaxn k m ts n``     zmax, then keep the n highest-scored members if m was new (a
                       bounded recent set: an update cannot grow it, so it is not trimmed)
``zlog k m logw``      score := logaddexp(score, logw) (forward-decayed sums)
``zinc k m d``         score += d
``hinc k f d``         field += d (float)
``hmax/hmin k f v``    field := max/min(field, v)
``hspan k f_lo f_hi v`` hmin of f_lo and hmax of f_hi with the same v (an order's first/last)
``seen k_rfm k_src source ts [k_users m]`` a customer's event: hspan of first_seen and
                       last_seen, hinc of the source's count and, for the events that
                       make a customer (interest, orders), sadd of m: one op, not three
``hset k f v``         field := v
``hdel k f``           delete field
``hnewer k ts f v ...`` set the fields only if ``ts`` >= the stored ``ts`` field
``catalog k_item k_changes item ts f v ...`` hnewer on the item; an update of an entry
                       that existed is numbered in the shard's catalog change feed
``lpush k v n``        push and keep n newest (values are text: the script's msgpack has no bytes)
``sadd/srem k m``      set membership
``buy k_bought item k_buyers k_rebuyers`` count the order in the customer's ``bought``;
                       the 1st order adds a buyer, the 2nd a re-buyer (per shard partial)
``session k_sess k_sitems sid item ts n co_prefix`` co-view with this session's items
``basket co_prefix item...`` +1 co-purchase for every ordered pair of the items (the
                       O(n²) pairs are made in the script, not shipped from Python)
``basketk co_prefix seed head k item...`` a big order: the first ``head`` items pair
                       exactly, each later one with k others drawn from ``seed``
                       (``sampled_pairs``), both ways
``cancel k_orders k_rfm order_id amount k_spend month`` subtract a cancellation (whole
                       order if amount<0) from the totals and that month's spend
``hsetnx k f v``       set the field only if absent
``del k...``           delete keys
``xexpose k_xp k_xreq k_xreql k_rfm st_prefix exp variant rid ts day n k_xshown shown``
                       an exposure: the customer's first one fixes their variant and
                       pre-period spend; counts the exposure (per day) and remembers the
                       request (and what it showed, when) for clicks
``xview k_xp k_xreq k_xreql k_xshown st_prefix item ts day window`` a view without a
                       request id: a click for the newest unclicked answer that showed the
                       item within ``window`` seconds before
``xclick k_xp k_xreq st_prefix rid day`` a view carrying an exposed request id: one click
                       per exposure, for every experiment of that answer
``xconvert k_xp st_prefix kind ts day amount window`` a cart (kind "cart") or an order:
                       counted for every experiment whose attribution window covers ``ts``
``zremle k m score``   remove the member if its score is <= score (a push trigger that
                       was not rescheduled since it was decided)
``unwatch k_ia prefix m`` remove m from ``prefix + item`` for every item of zset k_ia
                       (an erased customer leaves every watchers index)
``zremprefix k prefix`` remove every member that starts with prefix (an erased
                       customer's push triggers; O(size of k), erasures are rare)
"""

from __future__ import annotations

import functools
import math
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

import msgspec

from aisle.settings import FeatureSettings, ModelSettings, PushSettings
from feature_store.keys import Keys
from streams import events as ev

Op = list[Any]

LN2 = math.log(2.0)


def logaddexp(a: float, b: float) -> float:
    """log(exp(a) + exp(b)) without overflow: how forward-decayed sums add up.

    >>> round(logaddexp(math.log(2.0), math.log(3.0)), 12) == round(math.log(5.0), 12)
    True
    """
    hi, lo = (a, b) if a > b else (b, a)
    return hi + math.log1p(math.exp(lo - hi))


def forward_log_weight(weight: float, ts: float, half_life_s: float) -> float:
    """log(w) + ts/tau: adding these with log-add-exp gives a decayed sum at any time.

    >>> a = forward_log_weight(1.0, 0.0, 3600.0)
    >>> b = forward_log_weight(1.0, 3600.0, 3600.0)
    >>> round(math.exp(a - b), 6)  # one half-life older weighs half
    0.5
    """
    if half_life_s <= 0 or math.isinf(half_life_s):
        return math.log(weight)
    return math.log(weight) + ts * LN2 / half_life_s


class _ShardKeys(NamedTuple):
    users: str
    trend: str
    watch: str  # + item id
    co_view: str
    xstats: str


@dataclass(frozen=True, slots=True)
class Folder:
    """Turns events into ops for their shard. Built once per process from settings."""

    keys: Keys
    features: FeatureSettings
    model: ModelSettings
    push: PushSettings = field(default_factory=PushSettings)

    # Per shard, the keys every interest event names (built once: a view's fold built
    # five of them from the shard's hash tag each time), and each interest type's weight.
    _hot: list[_ShardKeys] = field(init=False, repr=False, compare=False)
    _weights: dict[type, float] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        k, m = self.keys, self.model
        object.__setattr__(self, "_hot", [
            _ShardKeys(k.users(s), k.trending(s), k.push_watch_prefix(s),
                       k.co_prefix("view", s), k.experiment_stats_prefix(s))
            for s in range(k.shards)])
        object.__setattr__(self, "_weights", {
            ev.ProductViewed: m.weight_view, ev.ProductFavorited: m.weight_favorite,
            ev.CartItemAdded: m.weight_cart})

    def shard(self, event: ev.Event) -> int:
        return self.keys.shard_of(event.routing_key)

    def fold(self, event: ev.AnyEvent) -> list[Op]:
        """Ops for ``event``, all in ``self.shard(event)``. Reads nothing: the fold of an
        event depends on the event alone, so replaying the log rebuilds the same state
        whatever order the two topics interleave in."""
        return self.fold_sharded(event)[1]

    def fold_sharded(self, event: ev.AnyEvent) -> tuple[int, list[Op]]:
        """``(self.shard(event), self.fold(event))``, the shard worked out once: a worker
        needs both for every event, and the most frequent events' ops need it too."""
        shard = self.shard(event)
        uid = event.user_id
        kind = type(event)
        if uid is None or kind in _ITEM_EVENTS:  # an item's, whoever sent it
            if kind is ev.CatalogItemUpserted:
                return shard, self._catalog(event, shard)  # type: ignore[arg-type]
            return shard, self._fold(event)
        # A customer's event is in the customer's shard: the key base shares its tag.
        base = self.keys.user_prefix(uid)
        ops = (self._interest(event, shard, base)  # type: ignore[arg-type]
               if kind in self._weights else self._fold(event))
        if kind in _ATTRIBUTED:
            ops += self._attribution(event, shard, base)
        if kind not in _NOT_SEEN:  # first/last seen, the source counted (store.lua)
            seen: Op = ["seen", base + "rfm", base + "src", event.source, event.ts]
            if kind in _MAKE_CUSTOMERS:  # and one of the shard's customers from now on
                seen += [self._hot[shard].users, uid]
            ops.append(seen)
        return shard, ops

    def _fold(self, event: ev.AnyEvent) -> list[Op]:
        """The ops of the events ``fold_sharded`` does not fold itself (interest events and
        catalog upserts, the bulk of a log, go straight to ``_interest`` and ``_catalog``)."""
        match event:
            case ev.CartItemRemoved():
                return [["hdel", self._u(event, "cart"), event.payload.item_id]]
            case ev.OrderPlaced():
                return self._order(event)
            case ev.OrderCancelled():
                return self._cancel(event)
            case ev.ReviewSubmitted():
                return self._review(event)
            case ev.ComplaintFiled():
                return self._complaint(event)
            case ev.PreferenceStated():
                return self._preference(event)
            case ev.CatalogItemRemoved():
                return [self._catalog_op(event, event.payload.item_id, ["removed", 1])]
            case ev.UserErased():
                uid = _uid(event)
                watch = self.keys.push_watch_prefix(self.shard(event))
                return [["unwatch", self._u(event, "ia"), watch, uid],
                        ["zremprefix", self.keys.push_due(self.shard(event)), f"{uid}|"],
                        ["del", *self.keys.user_keys(uid)],
                        ["srem", self.keys.users(self.shard(event)), uid]]
            case ev.OfferIssued():
                p = event.payload
                doc = {**msgspec.to_builtins(p), "issued_at": event.ts,
                       "expires_ts": p.expires_at.timestamp()}
                due = doc["expires_ts"] - self.push.offer_expiry_lead_s
                return [["hset", self._u(event, "offers"), p.offer_id, _json(doc)],
                        self._schedule(event, f"offer_expiring|{p.offer_id}", due)]
            case ev.OfferRedeemed():
                return [["hsetnx", self._u(event, "ostate"), event.payload.offer_id, "redeemed"]]
            case ev.OfferExpired():
                return [["hsetnx", self._u(event, "ostate"), event.payload.offer_id, "expired"]]
            case ev.LifecycleChanged():
                stage = event.payload.stage
                ops = [["lpush", self._u(event, "life"), _json([stage, event.ts]), 50]]
                if stage in self.push.winback_stages:
                    ops.append(self._schedule(event, f"winback|{stage}", event.ts))
                return ops
            case (ev.ExperimentCreated() | ev.ExperimentUpdated() | ev.ExperimentStopped()
                  | ev.ExperimentExposed()):
                return self._experiment(event)
            case ev.ConsentUpdated():
                return self._consent(event)
            case ev.PushDecided():
                return self._push_decided(event)
            case ev.PushScheduled():
                p = event.payload
                return [self._schedule(event, f"{p.reason}|{p.ref}", p.due_ts)]
            case ev.PushItemChanged():
                p = event.payload
                return [self._schedule(event, f"{p.change}|{p.item_id}", event.ts)]
        raise TypeError(f"no fold for {type(event).__name__}")  # pragma: no cover

    # ------------------------------------------------------------ helpers
    def _u(self, event: ev.Event, suffix: str) -> str:
        return self.keys.user(_uid(event), suffix)

    def _trend(self, shard: int, item: str, weight: float, ts: float) -> Op:
        lw = forward_log_weight(weight, ts, self.features.trending_half_life_h * 3600)
        return ["zlog", self._hot[shard].trend, item, lw]

    def _ia(self, base: str, ts: float, item: str, weight: float) -> Op:
        lw = forward_log_weight(weight, ts, self.model.half_life_d * 86400)
        return ["zlog", base + "ia", item, lw]

    def _affinity(self, base: str, ts: float, category: str | None, weight: float,
                  ) -> list[Op]:
        if not category or category == "unknown":
            return []
        lw = forward_log_weight(weight, ts, self.features.affinity_half_life_d * 86400)
        return [["zlog", base + "cat", category, lw]]

    def _interest(self, event: ev.ProductViewed | ev.ProductFavorited | ev.CartItemAdded,
                  shard: int, base: str) -> list[Op]:
        # The most frequent events of a log: the customer's key base and the shard come
        # worked out once (benchmarks/README.md, sessions 18 and 20).
        item, ts, uid = event.payload.item_id, event.ts, _uid(event)
        hot = self._hot[shard]
        weight = self._weights[type(event)]
        ops: list[Op] = [self._ia(base, ts, item, weight), self._trend(shard, item, weight, ts)]
        ops += self._affinity(base, ts, event.payload.category, weight)
        # Price drop / back in stock: who watches the item.
        ops.append(["zmaxn", hot.watch + item, uid, ts, self.push.watchers_max])
        if isinstance(event, ev.ProductViewed):
            ops.append(["zmaxn", base + "views", item, ts, self.features.recent_views_max])
        elif isinstance(event, ev.ProductFavorited):
            ops.append(["zmax", base + "fav", item, ts])
        else:
            ops += [["hinc", base + "cart", item, event.payload.quantity],
                    # The latest add wins: the check runs a delay after the last one.
                    self._schedule(event, "cart_abandon|", ts + self.push.cart_abandon_delay_s)]
        if event.session_id:
            ops.append(["session", base + "sess", base + "sitems", event.session_id, item, ts,
                        self.features.session_items_max, hot.co_view])
        return ops

    def _basket_pairs(self, shard: int, basket: list[str], event_id: str) -> list[Op]:
        """Co-purchase counts of one order. Up to ``basket_items_max`` items every pair
        counts once. Past that (wholesale invoices run to 1,000 lines) the first
        ``basket_items_max`` items still pair exactly; with ``basket_sample_k`` > 0 (off
        by default: it did not raise the related hit rate), every later item pairs, both
        ways, with ``basket_sample_k`` others sampled uniformly from the whole order:
        n² pairs become at most ``basket_items_max``² + 2·k·n. The pairs are made in the
        script (``basketk``) from a seed taken from the event id, so a replay writes
        the same pairs and the call ships n items, not n·k."""
        f = self.features
        n, k = len(basket), f.basket_sample_k
        co = self.keys.co_prefix("buy", shard)
        if n < 2:
            return []
        if n <= f.basket_items_max or n - 1 <= k or k == 0:
            head = basket[: f.basket_items_max] if k == 0 else basket
            return [["basket", co, *head]] if len(head) > 1 else []
        seed = zlib.crc32(event_id.encode()) % (PM_MODULUS - 1) + 1
        return [["basketk", co, seed, f.basket_items_max, k, *basket]]

    def _order(self, event: ev.OrderPlaced) -> list[Op]:
        shard, ts = self.shard(event), event.ts
        amounts: dict[str, float] = {}
        quantities: dict[str, int] = {}
        categories: dict[str, str | None] = {}
        for line in event.payload.lines:
            amounts[line.item_id] = amounts.get(line.item_id, 0.0) + line.quantity * line.unit_price
            quantities[line.item_id] = quantities.get(line.item_id, 0) + line.quantity
            categories.setdefault(line.item_id, line.category)
        ops: list[Op] = [self._trend(shard, item, self.model.weight_purchase, ts)
                         for item in amounts]
        ops += self._basket_pairs(shard, list(amounts), event.event_id)
        if event.user_id is None:  # guest: popularity and baskets only
            return ops
        total = round(sum(amounts.values()), 2)
        rfm, order_id = self._u(event, "rfm"), event.payload.order_id
        ops += [["hspan", rfm, "first_ts", "last_ts", ts],
                ["hinc", rfm, "orders", 1], ["hinc", rfm, "monetary", total],
                ["hset", self._u(event, "orders"), order_id, total],
                ["hinc", self._u(event, "spend"), month_of(ts), total]]
        if event.payload.offer_id:
            ops += [["hinc", rfm, "promo_orders", 1],
                    ["hsetnx", self._u(event, "ostate"), event.payload.offer_id, "redeemed"]]
        base = self.keys.user_prefix(event.user_id)
        hist, bought, cart = base + "hist", base + "bought", base + "cart"
        buyers, rebuyers = self.keys.buyers(shard), self.keys.rebuyers(shard)
        weight = self.model.weight_purchase
        for item, amount in amounts.items():
            line = _json([order_id, item, ts, quantities[item], round(amount, 2),
                          categories[item]])
            ops += [["lpush", hist, line, self.features.history_max],
                    ["buy", bought, item, buyers, rebuyers],
                    self._ia(base, ts, item, weight),
                    ["hdel", cart, item],
                    *self._affinity(base, ts, categories[item], weight)]
        return ops

    def _cancel(self, event: ev.OrderCancelled) -> list[Op]:
        if event.user_id is None:
            return []
        lines = event.payload.lines
        amount = round(sum(li.quantity * li.unit_price for li in lines), 2) if lines else -1.0
        return [["cancel", self._u(event, "orders"), self._u(event, "rfm"),
                 event.payload.order_id, amount, self._u(event, "spend"), month_of(event.ts)]]

    def _review(self, event: ev.ReviewSubmitted) -> list[Op]:
        p = event.payload
        if p.rating >= 4:
            return [self._ia(self.keys.user_prefix(_uid(event)), event.ts, p.item_id,
                             self.model.weight_review_good)]
        if p.rating <= 2:
            reason = {"why": f"rated {p.rating}/5", "ts": event.ts, "event_id": event.event_id}
            return [["hset", self._u(event, "neg"), p.item_id, _json(reason)]]
        return []

    def _complaint(self, event: ev.ComplaintFiled) -> list[Op]:
        p = event.payload
        reason = _json({"why": f"complaint: {p.reason[:200]}", "ts": event.ts,
                        "event_id": event.event_id})
        ops: list[Op] = [["hset", self._u(event, "dislikes"), tag, reason] for tag in p.tags]
        if p.item_id:
            ops.append(["hset", self._u(event, "neg"), p.item_id, reason])
        return ops

    def _preference(self, event: ev.PreferenceStated) -> list[Op]:
        p = event.payload
        why = f"stated: {p.note[:200]}" if p.note else "stated by the customer"
        reason = _json({"why": why, "ts": event.ts, "event_id": event.event_id})
        key = self._u(event, "dislikes")
        return ([["hset", key, tag, reason] for tag in p.dislikes]
                + [["hdel", key, tag] for tag in p.retracts])

    def _catalog(self, event: ev.CatalogItemUpserted, shard: int) -> list[Op]:
        p = event.payload
        fields: list[Any] = ["title", p.title, "category", p.category, "price", p.price,
                             "currency", p.currency, "removed", 0,
                             "attrs", _json(p.attributes)]
        if p.brand is not None:
            fields += ["brand", p.brand]
        if p.stock is not None:
            fields += ["stock", p.stock]
        if p.consumable is not None:
            fields += ["consumable", int(p.consumable)]
        return [self._catalog_op(event, p.item_id, fields, shard),
                ["sadd", self.keys.items(shard), p.item_id]]

    def _catalog_op(self, event: ev.Event, item: str, fields: list[Any],
                    shard: int | None = None) -> Op:
        """The newer write wins (``hnewer``); an update of an entry that existed is also
        numbered in the shard's catalog change feed, which the API's item cache follows.
        A catalog event's shard is its item's (``shard``: already worked out)."""
        shard = self.shard(event) if shard is None else shard
        return ["catalog", self.keys.item(item), self.keys.catalog_changes(shard),
                item, event.ts, *fields]


    # ------------------------------------------------------------ experiments (A/B)
    def _experiment(self, event: ev.ExperimentCreated | ev.ExperimentUpdated
                    | ev.ExperimentStopped | ev.ExperimentExposed) -> list[Op]:
        defs = self.keys.experiment_defs(ev.EXPERIMENTS_KEY)
        times = self.keys.experiment_times(ev.EXPERIMENTS_KEY)
        match event:
            case ev.ExperimentCreated() | ev.ExperimentUpdated():
                xid = event.payload.id
                when = "created" if isinstance(event, ev.ExperimentCreated) else "updated"
                return [["hset", defs, xid, _json(msgspec.to_builtins(event.payload))],
                        ["hmin" if when == "created" else "hmax", times, f"{xid}|{when}",
                         event.ts]]
            case ev.ExperimentStopped():
                return [["hmin", times, f"{event.payload.experiment_id}|stopped", event.ts]]
        p = event.payload
        return [["xexpose", self._u(event, "xp"), self._u(event, "xreq"),
                 self._u(event, "xreql"), self._u(event, "rfm"),
                 self.keys.experiment_stats_prefix(self.shard(event)), p.experiment, p.variant,
                 p.request_id, event.ts, day_of(event.ts),
                 self.features.exposure_requests_max, self._u(event, "xshown"),
                 f"{event.ts:.17g} ,{','.join(p.items)},"]]

    def _attribution(self, event: ev.AnyEvent, shard: int, base: str) -> list[Op]:
        """Clicks, carts and orders (``_ATTRIBUTED``), credited inside the script to the
        variants the customer was exposed to (reads their exposures; a no-op for customers
        without). Customer events only (``fold_sharded`` checks)."""
        prefix = self._hot[shard].xstats
        window = self.features.attribution_window_h * 3600
        match event:
            case ev.ProductViewed() if event.payload.request_id:
                return [["xclick", base + "xp", base + "xreq", prefix,
                         event.payload.request_id, day_of(event.ts)]]
            case ev.ProductViewed() if self.features.click_window_s > 0:
                return [["xview", base + "xp", base + "xreq", base + "xreql", base + "xshown",
                         prefix, event.payload.item_id, event.ts, day_of(event.ts),
                         self.features.click_window_s]]
            case ev.CartItemAdded():
                return [["xconvert", base + "xp", prefix, "cart", event.ts,
                         day_of(event.ts), 0.0, window]]
            case ev.OrderPlaced():
                amount = round(sum(li.quantity * li.unit_price
                                   for li in event.payload.lines), 2)
                return [["xconvert", base + "xp", prefix, "order", event.ts,
                         day_of(event.ts), amount, window]]
        return []

    # ------------------------------------------------------------ push notifications
    def _schedule(self, event: ev.Event, trigger: str, due: float) -> Op:
        """A push trigger for this customer, due at ``due`` on the log's clock."""
        return ["zmax", self.keys.push_due(self.shard(event)), f"{_uid(event)}|{trigger}", due]

    def _consent(self, event: ev.ConsentUpdated) -> list[Op]:
        p = event.payload
        fields: list[Any] = []
        if p.push is not None:
            fields += ["push", int(p.push)]
        if p.timezone is not None:
            fields += ["tz", p.timezone]
        return [["hnewer", self._u(event, "consent"), event.ts, *fields]] if fields else []

    def _push_decided(self, event: ev.PushDecided) -> list[Op]:
        p, shard = event.payload, self.shard(event)
        trigger = f"{_uid(event)}|{p.trigger}"
        ops: list[Op] = [["zremle", self.keys.push_due(shard), trigger, p.due_ts],
                         ["zremle", self.keys.push_lease(shard), trigger, 1e300],
                         ["hinc", self.keys.push_stats(shard), f"{p.outcome}:{p.rule}", 1]]
        if p.candidate_id:
            ops += [["hdel", self.keys.push_sent(shard), p.candidate_id],
                    ["hdel", self.keys.push_sending(shard), p.candidate_id]]
        if p.outcome == "held" and p.hold_until_ts is not None:
            ops.append(["zmax", self.keys.push_due(shard), trigger, p.hold_until_ts])
        elif p.outcome == "emitted":
            log = self._u(event, "pushlog")
            ops.append(["zmaxn", log, f"{p.candidate_id}|{p.rule}", event.ts, 100])
            if p.dedupe_key:
                ops.append(["hmax", self._u(event, "pushkeys"), p.dedupe_key, event.ts])
            ops += [["hmax", self._u(event, "pushitems"), item, event.ts] for item in p.items]
        return ops


#: The events whose fold credits experiments (``Folder._attribution``).
_ATTRIBUTED = frozenset({ev.ProductViewed, ev.CartItemAdded, ev.OrderPlaced})
#: Catalog events: the item's state, in the item's shard, even when they name a customer
#: (who made the change); they say nothing of that customer.
_ITEM_EVENTS = frozenset({ev.CatalogItemUpserted, ev.CatalogItemRemoved})
#: Customer events that make the customer one of the shard's (``Keys.users``): the
#: population the sweeps and the demo read. Their ``seen`` op adds them.
_MAKE_CUSTOMERS = frozenset({ev.ProductViewed, ev.ProductFavorited, ev.CartItemAdded,
                             ev.OrderPlaced})
#: Customer events that do not move the customer's first/last seen: engine bookkeeping.
_NOT_SEEN = frozenset({ev.UserErased, ev.PushDecided, ev.PushItemChanged, ev.PushScheduled})


def day_of(ts: float) -> str:
    """The UTC day of an event time: experiment statistics are kept per day.

    >>> day_of(1322733600.0)
    '2011-12-01'
    """
    return _day_text(int(ts // 86400))


def month_of(ts: float) -> str:
    """The UTC calendar month of an event time, the granularity of member-tier windows.

    >>> month_of(1322733600.0)
    '2011-12'
    """
    return _day_text(int(ts // 86400))[:7]


@functools.lru_cache(maxsize=4096)
def _day_text(day: int) -> str:
    # Cached per UTC day: formatting a datetime costs ~1 µs and every view, cart and
    # order asks for its day (experiment statistics) or month (spend).
    return datetime.fromtimestamp(day * 86400, UTC).strftime("%Y-%m-%d")


def _uid(event: ev.Event) -> str:
    if event.user_id is None:  # guarded by Event.__post_init__ for these types
        raise ValueError(f"{type(event).__name__} without user_id")
    return event.user_id


_enc = msgspec.json.Encoder(order="sorted")


def _json(value: object) -> str:
    return _enc.encode(value).decode()



PM_MODULUS = 2_147_483_647  # Park-Miller "minimal standard" generator, as in store.lua


def sampled_pairs(seed: int, n: int, head: int, k: int) -> list[tuple[int, int]]:
    """The (position, position) pairs ``basketk`` adds beyond the exact head: for each
    position from ``head`` on, ``k`` distinct others (Floyd's algorithm; positions skip
    the item itself). The Python twin of the script's loop, draw for draw.

    >>> sampled_pairs(42, 5, 3, 2)
    [(3, 0), (3, 4), (4, 2), (4, 3)]
    """
    x, out = seed, []
    for i in range(head, n):
        chosen: set[int] = set()
        for j in range(n - 1 - k, n - 1):
            x = (48271 * x) % PM_MODULUS
            t = x % (j + 1)
            if t in chosen:
                t = j
            chosen.add(t)
            out.append((i, t + (t >= i)))
    return out
