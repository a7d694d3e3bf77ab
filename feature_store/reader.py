"""The read side of the feature store, for serving. One pipelined round trip per call.

Per-customer state is in one shard; item aggregates are partial sums per shard and are
merged here. Catalog entries are cached in process for ``ttl`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from typing import Any

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from feature_store.client import cancel_and_wait
from feature_store.keys import Keys
from feature_store.multiplexed import ClusterMultiplexed, Multiplexed, Rerouted
from feature_store.tracking import STORE, LocalCopies
from feature_store.updates import logaddexp
from models.customer_types import CustomerFacts, Purchase

log = logging.getLogger(__name__)
UNKNOWN_CATEGORY = "unknown"  # what an item without a category reads as (the event's default)
CATALOG_CHECK_S = 1.0  # how often the API looks at the catalog change feed
CUSTOMER_SCRIPT = files("feature_store").joinpath("customer.lua").read_text()
CUSTOMER_KEYS = ("views", "cart", "bought", "dislikes", "neg", "ia", "vec", "rfm", "hist",
                 "spend", "src", "fav", "cat", "offers", "ostate", "pushitems")
# The customer read's commands that read the facts (FeatureReader.facts, facts_from).
FACTS_AT = tuple(CUSTOMER_KEYS.index(k) for k in ("rfm", "hist", "spend", "src", "fav", "cat"))
# Recent views an answer reads; only reads of this many are kept (feature_store/tracking.py).
VIEWS = 20
# The customer read's replies an offers answer never looks at, by position in
# CUSTOMER_KEYS, with the empty reply each stands in with (FeatureReader.customer).
OFFERS_SKIP: dict[int, Any] = {CUSTOMER_KEYS.index(k): empty for k, empty in (
    ("views", []), ("cart", []), ("ia", []), ("vec", None), ("pushitems", []))}


@dataclass(frozen=True, slots=True)
class ItemInfo:
    item_id: str
    title: str
    category: str = UNKNOWN_CATEGORY
    brand: str | None = None
    price: float = 0.0
    currency: str = "GBP"
    stock: int | None = None
    consumable: bool | None = None
    removed: bool = False
    attributes: dict[str, str] = field(default_factory=dict)

    @property
    def available(self) -> bool:
        return not self.removed and (self.stock is None or self.stock > 0)

    @property
    def tags(self) -> set[str]:
        """attribute:value tags a dislike can match (category and brand included)."""
        tags = {f"{k.lower()}:{v.lower()}" for k, v in self.attributes.items()}
        tags.add(f"category:{self.category.lower()}")
        if self.brand:
            tags.add(f"brand:{self.brand.lower()}")
        return tags


@dataclass(slots=True)
class UserState:
    user_id: str
    views: list[tuple[str, float]]          # newest first
    cart: dict[str, float]
    bought: dict[str, int]
    dislikes: dict[str, dict[str, Any]]
    negatives: dict[str, dict[str, Any]]
    interactions: list[tuple[bytes, float]]  # (item, forward-decayed log weight)
    vector: bytes | None
    rfm: dict[str, float]
    _weights: dict[str, float] | None = field(default=None, repr=False, compare=False)

    @property
    def known(self) -> bool:
        return bool(self.views or self.interactions or self.bought)

    @property
    def weights(self) -> dict[str, float]:
        """``interactions`` as {item id: weight}, made once per state: the own-items and
        the recent-anchor sources both read it (each made its own: ~40 µs apiece)."""
        if self._weights is None:
            self._weights = {_s(m): w for m, w in self.interactions}
        return self._weights


def _s(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


def _parse_item(item_id: str, h: dict[bytes, bytes]) -> ItemInfo | None:
    if not h or b"title" not in h:
        return None
    get = lambda name: _s(h[name]) if name in h else None  # noqa: E731
    stock = get(b"stock")
    consumable = get(b"consumable")
    return ItemInfo(
        item_id=item_id, title=get(b"title") or item_id,
        category=get(b"category") or UNKNOWN_CATEGORY,
        brand=get(b"brand"), price=float(get(b"price") or 0.0), currency=get(b"currency") or "GBP",
        stock=int(float(stock)) if stock is not None else None,
        consumable=bool(int(float(consumable))) if consumable is not None else None,
        removed=get(b"removed") in ("1", "1.0"),
        attributes=msgspec.json.decode(h.get(b"attrs", b"{}")) if h.get(b"attrs") else {},
    )


class FeatureReader:
    def __init__(self, client: aioredis.Redis, keys: Keys, ttl: float = 2.0,
                 revalidate_s: float = 0.0, catalog_max_age_s: float | None = None,
                 fast: Multiplexed | ClusterMultiplexed | None = None,
                 local: LocalCopies | None = None) -> None:
        self.client = client
        # Customer reads kept in memory while the store tracks them (feature_store/
        # tracking.py); ``fast`` must have been opened with ``local`` as its tracker.
        self.local = local
        # The customer read, co-counts and trending go over ``fast`` where given
        # (feature_store/multiplexed.py); everything else over ``client``.
        self.fast = fast
        self.keys = keys
        self.ttl = ttl
        # With catalog_max_age_s, a catalog entry is kept until the catalog's change feed
        # (Keys.catalog_changes, checked at most once a second) says the item changed, or
        # for catalog_max_age_s at most; without it, for ttl (then revalidated).
        self.catalog_max_age_s = catalog_max_age_s
        self._catalog_seq: list[int] | None = None  # per shard, as of the last check
        self._catalog_checked = -math.inf
        self._catalog_epoch = 0  # +1 whenever a check dropped entries
        self._catalog_rebuilding = False  # the last check saw aisle rebuild's lock
        self.catalog_invalidated = 0
        self.item_reads = 0  # catalog entries read from the store
        # Catalog entries between ttl and ttl + revalidate_s old are answered from memory
        # and re-read in the background (one pipeline for all of them), so an answer does
        # not wait for a round trip because some of its 40 items just expired.
        self.revalidate_s = revalidate_s
        self._stale: set[str] = set()
        self._refreshing: dict[tuple[Any, ...], asyncio.Task[Any]] = {}
        self._revalidating: asyncio.Task[None] | None = None
        self._items: dict[str, tuple[float, ItemInfo | None]] = {}
        self._customer_script = client.register_script(CUSTOMER_SCRIPT)
        self._trending: tuple[float, int, list[tuple[str, float]]] | None = None
        self._co: dict[tuple[str, str, int], tuple[float, dict[str, float]]] = {}
        self._clock: tuple[float, float] | None = None
        self.hits = self.misses = 0  # aggregate-cache hit rate (exposed as a metric)

    async def ping(self) -> bool:
        return bool(await self.client.ping())

    # ------------------------------------------------------------ catalog
    async def items(self, item_ids: list[str]) -> dict[str, ItemInfo]:
        """Catalog entries of ``item_ids`` (those in the catalog): from memory alone when
        every one is fresh (:meth:`fresh_items`), else via :meth:`_lookup`."""
        known = self.fresh_items(item_ids)
        if known is not None:
            return known
        return await self._lookup(item_ids)

    async def _lookup(self, item_ids: list[str]) -> dict[str, ItemInfo]:
        """:meth:`items` the long way: the change-feed check when due, stale entries
        queued for revalidation, missing ones read."""
        now = time.monotonic()
        fresh = self.ttl
        if self.catalog_max_age_s is not None:
            fresh = self.catalog_max_age_s
            if self._catalog_seq is None:  # first: the feed's position before any read
                with contextlib.suppress(RedisError, OSError):
                    await self._check_catalog()
            elif now - self._catalog_checked >= CATALOG_CHECK_S:
                self._catalog_checked = now
                self._in_background(("catalog",), self._check_catalog)
        out: dict[str, ItemInfo] = {}
        missing = []
        stale = fresh + self.revalidate_s
        for iid in dict.fromkeys(item_ids):
            hit = self._items.get(iid)
            if hit is None:
                missing.append(iid)
            elif hit[1] is None:  # not in the catalog when last asked
                if now - hit[0] >= self.ttl:
                    missing.append(iid)  # asked again: it may have just been added
            elif now - hit[0] < stale:
                out[iid] = hit[1]
                if now - hit[0] >= fresh:
                    self._stale.add(iid)
            else:
                missing.append(iid)
        if missing:
            await self._read_items(missing, out)
        if self._stale and self._revalidating is None:
            self._revalidating = asyncio.create_task(self._revalidate(),
                                                     name="catalog-revalidate")
        return out

    def _fresh_for(self, now: float) -> float | None:
        """How long a known item's entry answers from memory alone, or None while a
        check of the catalog's change feed is due (then only a lookup may answer)."""
        if self.catalog_max_age_s is None:
            return self.ttl
        if self._catalog_seq is None or now - self._catalog_checked >= CATALOG_CHECK_S:
            return None
        return self.catalog_max_age_s

    def fresh_items(self, item_ids: list[str]) -> dict[str, ItemInfo] | None:
        """What :meth:`_lookup` would answer, when it can be answered from memory alone
        (every entry fresh, no check of the change feed due); else None. Most answers'
        catalog lookups: no coroutine, no timeout, no read."""
        now = time.monotonic()
        fresh = self._fresh_for(now)
        if fresh is None:
            return None
        out: dict[str, ItemInfo] = {}
        get = self._items.get
        for iid in item_ids:
            hit = get(iid)
            if hit is None:
                return None
            if hit[1] is None:
                if now - hit[0] >= self.ttl:
                    return None
            elif now - hit[0] < fresh:
                out[iid] = hit[1]
            else:
                return None
        return out

    def same_items(self, item_ids: list[str], entries: Sequence[ItemInfo | None]) -> bool:
        """Whether each item's catalog entry in memory is still the very entry in
        ``entries`` and fresh as :meth:`fresh_items` counts it: then a kept answer made
        from those entries is still listed, told without building a lookup. False says
        only that memory alone cannot tell (an entry missing, stale or replaced, even by
        an equal one, or the change feed due): the caller looks the items up."""
        now = time.monotonic()
        fresh = self._fresh_for(now)
        if fresh is None:
            return False
        get, ttl = self._items.get, self.ttl
        for iid, then in zip(item_ids, entries, strict=True):
            hit = get(iid)
            if hit is None or hit[1] is not then or \
                    now - hit[0] >= (ttl if then is None else fresh):
                return False
        return True

    async def _read_items(self, ids: list[str], out: dict[str, ItemInfo]) -> None:
        now, epoch = time.monotonic(), self._catalog_epoch
        pipe = self.client.pipeline(transaction=False)
        for iid in ids:
            pipe.hgetall(self.keys.item(iid))
        replies = await pipe.execute()
        self.item_reads += len(ids)
        if epoch != self._catalog_epoch and self.catalog_max_age_s is not None:
            # A change came in while this read was on its way: what it read may be from
            # before it. Kept as if read catalog_max_age_s - ttl ago: re-read within ttl.
            now -= self.catalog_max_age_s - self.ttl
        for iid, h in zip(ids, replies, strict=True):
            info = _parse_item(iid, h)
            if info is not None:
                self._items[iid] = (now, info)
                out[iid] = info
            elif self.revalidate_s > 0:  # serving: "not in the catalog" keeps for ttl too
                self._items[iid] = (now, None)
            else:
                self._items.pop(iid, None)
        if len(self._items) > 200_000:
            self._items.clear()

    async def _revalidate(self) -> None:
        try:
            # Gather what expires over a tenth of the window, then read it in one go:
            # one background pipeline per ~0.2 s however busy the API is.
            await asyncio.sleep(self.revalidate_s / 10)
            while self._stale:
                # 100 items a pipeline: parsing 1,000 hashes at once held the event loop
                # for tens of ms, and every request in flight waited (p99).
                ids, self._stale = list(self._stale)[:100], set(list(self._stale)[100:])
                await self._read_items(ids, {})
                await asyncio.sleep(0)
        except Exception as exc:  # the store is away: entries expire, answers degrade
            self._stale.clear()
            log.debug("catalog revalidation failed: %r", exc)
        finally:
            self._revalidating = None

    async def _check_catalog(self) -> None:
        """Drop the cached entries of the items whose catalog entry changed since the
        last check: one HGET per shard, and a ZRANGEBYSCORE for a shard that moved. A
        shard whose counter went back (the store was emptied and rebuilt) drops all, and
        so does a check that sees ``aisle rebuild``'s lock, or saw it last time: a
        rebuild empties the store and numbers the changes anew, and its counters may
        climb past the last check's within a second."""
        self._catalog_checked = time.monotonic()
        pipe = self.client.pipeline(transaction=False)
        for shard in range(self.keys.shards):
            pipe.hget(self.keys.meta(shard), "catalog")
        pipe.exists(self.keys.control("rebuild"))
        *replies, rebuilding = await pipe.execute()
        seqs = [int(v or 0) for v in replies]
        last, rebuilt = self._catalog_seq, self._catalog_rebuilding or bool(rebuilding)
        self._catalog_rebuilding = bool(rebuilding)
        if last is None:
            self._catalog_seq = seqs
            return
        if rebuilt or any(new < old for new, old in zip(seqs, last, strict=True)):
            dropped = list(self._items)
        else:
            moved = [(shard, old) for shard, (new, old) in enumerate(zip(seqs, last,
                                                                         strict=True))
                     if new > old]
            if not moved:
                return
            pipe = self.client.pipeline(transaction=False)
            for shard, old in moved:
                pipe.zrangebyscore(self.keys.catalog_changes(shard), f"({old}", "+inf")
            dropped = [_s(m) for members in await pipe.execute() for m in members]
        # Only now: had the read above failed, the next check asks again from `last`.
        self._catalog_seq = seqs
        self._catalog_epoch += 1
        for iid in dropped:
            if self._items.pop(iid, None) is not None:
                self.catalog_invalidated += 1
            self._stale.discard(iid)

    async def close(self) -> None:
        """Stop background reads still pending (the API is stopping)."""
        tasks = [*self._refreshing.values(),
                 *([self._revalidating] if self._revalidating else [])]
        await cancel_and_wait(*tasks)
        if self.fast is not None:
            await self.fast.close()

    @property
    def cached_items(self) -> int:
        return len(self._items)

    def cached_item(self, item_id: str) -> ItemInfo | None:
        hit = self._items.get(item_id)
        return hit[1] if hit else None

    # ------------------------------------------------------------ aggregates
    async def co_counts(self, kind: str, item_id: str, n: int = 50) -> dict[str, float]:
        """Co-view / co-purchase counts of ``item_id``, summed over the shard partials.

        Cached for ``ttl`` seconds: counts move slowly, and product pages repeat."""
        return (await self.co_counts_many([(kind, item_id)], n))[(kind, item_id)]

    async def co_counts_many(self, wanted: list[tuple[str, str]], n: int = 50,
                             ) -> dict[tuple[str, str], dict[str, float]]:
        """:meth:`co_counts` of several (kind, item) at once, with what the cache lacks
        read in ONE pipeline (8 shards each) instead of one per item and kind: a
        recommendation asks for both kinds of each of the customer's recent views."""
        now = time.monotonic()
        out: dict[tuple[str, str], dict[str, float]] = {}
        missing: list[tuple[str, str]] = []
        for kind, item_id in dict.fromkeys(wanted):
            hit = self._co.get((kind, item_id, n))
            if hit is not None and (now - hit[0] < self.ttl or self._revalidating_in(
                    now - hit[0], self.ttl, ("co", kind, item_id, n),
                    lambda k=kind, i=item_id: self._read_co_counts(k, i, n))):
                self.hits += 1
                out[(kind, item_id)] = hit[1]
            else:
                self.misses += 1
                missing.append((kind, item_id))
        if missing:
            keys = [self.keys.co(kind, shard, item_id) for kind, item_id in missing
                    for shard in range(self.keys.shards)]
            replies = await self._top_scored_many(keys, n)
            shards = self.keys.shards
            for j, key in enumerate(missing):
                merged = _merge_scored(replies[j * shards:(j + 1) * shards], n)
                self._remember_co(key[0], key[1], n, now, merged)
                out[key] = merged
        return out

    async def _top_scored_many(self, keys: list[str], n: int) -> list[Any]:
        """:func:`_top_scored_command` of each key, in one pipeline (a recommendation's
        co-counts are 5 items x 2 kinds x 8 shards = 80 commands)."""
        return await self.execute_many([_top_scored_command(k, n) for k in keys])

    async def execute_many(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Raw commands in one pipeline, replies in order: over the pipelined connection
        where there is one (hiredis packs and parses: an offer's budget count, ``INCR``
        and ``EXPIRE``, costs 19-20 µs of this process's CPU there against 88-94 µs as a
        redis-py pipeline, one call at a time), else one redis-py pipeline (also when a
        Cluster slot moved: redis-py follows)."""
        if self.fast is not None:
            with contextlib.suppress(Rerouted):
                return await self.fast.execute_many(commands)
        pipe = self.client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        return list(await pipe.execute())

    def _remember_co(self, kind: str, item_id: str, n: int, now: float,
                     merged: dict[str, float]) -> None:
        if len(self._co) > 100_000:
            self._co.clear()
        self._co[(kind, item_id, n)] = (now, merged)

    async def _read_co_counts(self, kind: str, item_id: str, n: int) -> dict[str, float]:
        now = time.monotonic()
        merged = await self._co_counts(kind, item_id, n)
        self._remember_co(kind, item_id, n, now, merged)
        return merged

    async def _co_counts(self, kind: str, item_id: str, n: int) -> dict[str, float]:
        keys = [self.keys.co(kind, shard, item_id) for shard in range(self.keys.shards)]
        return _merge_scored(await self._top_scored_many(keys, n), n)

    async def trending(self, n: int = 100) -> list[tuple[str, float]]:
        """Items by time-decayed popularity (log scores merged with log-add-exp)."""
        now = time.monotonic()
        held = self._trending
        if held and held[1] >= n:
            if now - held[0] < self.ttl:
                return held[2][:n]
            if self._revalidating_in(now - held[0], self.ttl, ("trending",),
                                     lambda: self._read_trending(n)):
                return held[2][:n]
        return await self._read_trending(n)

    def _revalidating_in(self, age: float, fresh_s: float, name: tuple[Any, ...],
                         read: Callable[[], Awaitable[Any]]) -> bool:
        """Whether a value this old, fresh for ``fresh_s``, may still be served
        (``revalidate_s`` more); if so, one background read of it is under way. Only one
        per value: when a cached value expires under load, one read refreshes it, not
        every request in flight."""
        if age >= fresh_s + self.revalidate_s:
            return False
        self._in_background(name, read)
        return True

    def _in_background(self, name: tuple[Any, ...], read: Callable[[], Awaitable[Any]],
                       ) -> None:
        """Start ``read`` unless one by this name is under way; its failure is dropped
        (the value stays as it was, and is asked for again)."""
        if name not in self._refreshing:
            task = asyncio.create_task(read(), name=f"revalidate-{name[0]}")
            self._refreshing[name] = task
            task.add_done_callback(lambda t: (self._refreshing.pop(name, None),
                                              t.cancelled() or t.exception()))

    async def _read_trending(self, n: int) -> list[tuple[str, float]]:
        now = time.monotonic()
        keys = [self.keys.trending(shard) for shard in range(self.keys.shards)]
        merged: dict[str, float] = {}
        for flat in await self._top_scored_many(keys, 2 * n):
            for member, score in _scored(flat):
                key = _s(member)
                old = merged.get(key)
                merged[key] = score if old is None else logaddexp(old, score)
        ranked = sorted(merged.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
        self._trending = (now, n, ranked)
        return ranked

    def cached_trending(self) -> list[tuple[str, float]]:
        return self._trending[2] if self._trending else []

    # ------------------------------------------------------------ customers
    async def facts(self, user_id: str) -> CustomerFacts:
        """Everything customer intelligence needs about one customer, one round trip
        (a transaction on the pipelined connection if there is one: the population
        sweep reads every customer this way)."""
        if self.fast is not None:
            keys = [self.keys.user(user_id, s) for s in CUSTOMER_KEYS]
            commands = customer_commands(keys, 0)
            with contextlib.suppress(Rerouted):  # a Cluster slot moved: redis-py follows
                r = await self.fast.transaction([commands[n] for n in FACTS_AT])
                return await self.facts_from(user_id, (_pairs(r[0]), r[1], _pairs(r[2]),
                                                       _pairs(r[3]), r[4], _scored(r[5])))
        pipe = self.client.pipeline(transaction=False)
        self._queue_facts(pipe, user_id)
        return await self.facts_from(user_id, tuple(await pipe.execute()))

    def _queue_facts(self, pipe: Any, user_id: str) -> None:
        k = lambda s: self.keys.user(user_id, s)  # noqa: E731
        pipe.hgetall(k("rfm"))
        pipe.lrange(k("hist"), 0, -1)
        pipe.hgetall(k("spend"))
        pipe.hgetall(k("src"))
        pipe.zrange(k("fav"), 0, 49, desc=True)
        pipe.zrange(k("cat"), 0, 9, desc=True, withscores=True)

    async def facts_from(self, user_id: str, raw: tuple[Any, ...]) -> CustomerFacts:
        """:meth:`facts` from the six replies :meth:`_queue_facts` asked for."""
        rfm, hist, spend, src, fav, cat = raw
        r = _floats(rfm)
        # One decode for the whole list, straight into Purchase structs.
        purchases = _PURCHASES.decode(b"[" + b",".join(hist) + b"]") if hist else []
        # Only lines whose event named no category need the catalog.
        unknown = list({p.item_id for p in purchases if not p.category})
        if unknown:
            infos = await self.items(unknown)
            purchases = _with_categories(purchases, {i: info.category
                                                     for i, info in infos.items()})
        affinity = {_s(c): s for c, s in cat}
        if not affinity:  # no category hints in the events: derive from what they bought
            for p in purchases:
                if p.category and p.category != UNKNOWN_CATEGORY:
                    affinity[p.category] = affinity.get(p.category, 0.0) + p.amount
        return CustomerFacts(
            user_id=user_id, first_seen_ts=r.get("first_seen"), last_seen_ts=r.get("last_seen"),
            first_order_ts=r.get("first_ts"), last_order_ts=r.get("last_ts"),
            orders=int(r.get("orders", 0)), monetary=r.get("monetary", 0.0),
            purchases=tuple(purchases), promo_orders=int(r.get("promo_orders", 0)),
            sources={_s(a): int(float(b)) for a, b in src.items()},
            spend_by_month=_floats(spend), favorites=tuple(_s(f) for f in fav),
            categories=affinity,
        )

    async def offers(self, user_id: str) -> tuple[list[dict[str, Any]], dict[str, str]]:
        """The customer's issued offers (JSON documents) and their terminal states."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(self.keys.user(user_id, "offers"))
        pipe.hgetall(self.keys.user(user_id, "ostate"))
        return _offers(*await pipe.execute())

    def clock_now(self) -> float | None:
        """:meth:`clock` while its cached value is under a second old (no coroutine);
        else None."""
        known = self._clock
        return known[1] if known is not None and time.monotonic() - known[0] < 1.0 else None

    async def clock(self) -> float:
        """Now, on the log's clock: the newest event time any shard applied (cached 1 s)."""
        now = time.monotonic()
        if self._clock is not None:
            if now - self._clock[0] < 1.0:
                return self._clock[1]
            if self._revalidating_in(now - self._clock[0], 1.0, ("clock",),
                                     self._read_clock):
                return self._clock[1]
        return await self._read_clock()

    async def _read_clock(self) -> float:
        now = time.monotonic()
        pipe = self.client.pipeline(transaction=False)
        for shard in range(self.keys.shards):
            pipe.hget(self.keys.meta(shard), "maxts")
        value = max([float(v) for v in await pipe.execute() if v] or [0.0])
        self._clock = (now, value)
        return value

    async def user(self, user_id: str, views: int = VIEWS) -> UserState:
        """The customer's state alone (a personalised related answer, the fallback): the
        first eight of :meth:`customer`'s reads, as one transaction on the pipelined
        connection, else one redis-py pipeline; from the customer's kept read where
        there is one (feature_store/tracking.py), without a round trip."""
        kept = self.kept_replies(user_id) if views == VIEWS else None
        if kept is not None:
            return self.read_of(user_id, kept).state
        if self.fast is not None:
            keys = [self.keys.user(user_id, s) for s in CUSTOMER_KEYS[:8]]
            with contextlib.suppress(Rerouted):  # a Cluster slot moved: redis-py follows
                r = await self.fast.transaction(customer_commands(keys, views))
                return _flat_state(user_id, r, _pairs(r[7]))
        pipe = self.client.pipeline(transaction=False)
        self._queue_user(pipe, user_id, views)
        return _user_state(user_id, await pipe.execute())

    def _queue_user(self, pipe: Any, user_id: str, views: int) -> None:
        k = lambda s: self.keys.user(user_id, s)  # noqa: E731
        pipe.zrange(k("views"), 0, views - 1, desc=True, withscores=True)
        pipe.hgetall(k("cart"))
        pipe.hgetall(k("bought"))
        pipe.hgetall(k("dislikes"))
        pipe.hgetall(k("neg"))
        pipe.zrange(k("ia"), 0, -1, withscores=True)
        pipe.get(k("vec"))
        pipe.hgetall(k("rfm"))

    async def customer(self, user_id: str, views: int = VIEWS,
                       offers_only: bool = False) -> CustomerRead:
        """Everything a recommendation or an offer reads about one customer, in one
        round trip (one transaction on the pipelined connection, else one call of
        ``customer.lua``): state, the facts' raw replies, issued offers and the push
        fatigue ledger. Every key has the customer's hash tag: one slot on a Cluster
        too. Replies come back in the shapes :meth:`user` and :meth:`facts` read.

        ``offers_only``: leave out what an offers answer never looks at (recent views,
        cart, interactions, the factor vector, the push ledger: ``OFFERS_SKIP``); their
        fields come back empty. On the pipelined connection only: the script reads all."""
        return self.read_of(user_id, await self.customer_replies(user_id, views, offers_only))

    def read_of(self, user_id: str, replies: list[Any]) -> CustomerRead:
        """:meth:`customer_from`, parsed once per kept copy (feature_store/tracking.py):
        callers must not change what it returns."""
        memo = self.memo(user_id, replies)
        if memo is None:
            return self.customer_from(user_id, replies)
        read = memo.get("read")
        if read is None:
            copy = self.local.peek(user_id) if self.local is not None else None
            if copy is not None and memo is not copy.memo:  # the offers view of a full copy
                read = _offers_read(self.read_of(user_id, copy.replies))  # shares its parts
            else:
                read = self.customer_from(user_id, replies)
            memo["read"] = read
        return read  # type: ignore[no-any-return]

    def memo(self, user_id: str, replies: list[Any]) -> dict[str, Any] | None:
        """Where to keep what is derived from ``replies`` while they are this customer's
        kept copy (or its offers view); None when they are not kept."""
        copy = self.local.peek(user_id) if self.local is not None else None
        if copy is None:
            return None
        if copy.replies is replies:
            return copy.memo
        offers = copy.memo.get("offers")
        return offers[1] if offers is not None and offers[0] is replies else None

    def kept_memo(self, user_id: str, read: CustomerRead) -> dict[str, Any] | None:
        """The memo of the kept copy ``read`` was parsed from by :meth:`read_of` (or of
        its offers view), for what a caller derives from it in turn; None when ``read``
        is not a kept copy's. It goes when the copy goes."""
        copy = self.local.peek(user_id) if self.local is not None else None
        if copy is None:
            return None
        if copy.memo.get("read") is read:
            return copy.memo
        offers = copy.memo.get("offers")
        return offers[1] if offers is not None and offers[1].get("read") is read else None

    def kept_replies(self, user_id: str, offers_only: bool = False) -> list[Any] | None:
        """:meth:`customer_replies` when a kept copy answers it (no round trip, so no
        coroutine and no timeout needed: a returning customer's answer starts here);
        None when the store must be read."""
        local = self.local
        if local is None or self.fast is None:
            return None
        copy = local.get(user_id, not offers_only)
        if copy is None:
            return None
        if not offers_only or not copy.full:
            return copy.replies
        offers = copy.memo.get("offers")  # the offers view of a full copy: once
        if offers is None:
            offers = copy.memo["offers"] = (_for_offers(copy.replies), {})
        return offers[0]  # type: ignore[no-any-return]

    async def customer_replies(self, user_id: str, views: int = VIEWS,
                               offers_only: bool = False) -> list[Any]:
        """:meth:`customer`'s replies as they came, not parsed: a caller that answered
        the same replies before may reuse that answer (``serving/service.py``) and
        skip the parse; :meth:`customer_from` parses them. A kept copy's replies are
        shared: callers must not change them."""
        local = self.local if views == VIEWS and self.fast is not None else None
        if local is not None:
            kept = self.kept_replies(user_id, offers_only)
            if kept is not None:
                return kept
        keys = [self.keys.user(user_id, s) for s in CUSTOMER_KEYS]
        r = None
        if self.fast is not None:
            # The script's reads as one transaction on the pipelined connection: the
            # same replies, at less than half of Valkey's CPU (no Lua in between).
            commands = customer_commands(keys, views)
            if offers_only:
                commands = [c for n, c in enumerate(commands) if n not in OFFERS_SKIP]
            with contextlib.suppress(Rerouted):  # a Cluster slot moved: redis-py follows
                if local is not None:  # tracked: kept until the store says it changed
                    STORE.inc()
                    token = local.token()
                    r, tracked = await self.fast.tracked_transaction(commands)
                else:
                    r, tracked = await self.fast.transaction(commands), False
                if offers_only:
                    r = _for_offers(r, skipped=True)
                if tracked:
                    local.put(user_id, not offers_only, r, token)  # type: ignore[union-attr]
        if r is None:  # redis-py: one script call (a transaction costs more Python here)
            r = await self._customer_script(keys=keys, args=[views])
        return r  # type: ignore[no-any-return]

    @staticmethod
    def customer_from(user_id: str, r: list[Any]) -> CustomerRead:
        """:meth:`customer_replies` parsed, as :meth:`customer` returns them."""
        rfm = _pairs(r[7])
        state = _flat_state(user_id, r, rfm)
        facts_raw = (rfm, r[8], _pairs(r[9]), _pairs(r[10]), r[11], _scored(r[12]))
        return CustomerRead(state, facts_raw, (_pairs(r[13]), _pairs(r[14])),
                            {_s(i): float(ts) for i, ts in _pairs(r[15]).items()})


def _offers_read(full: CustomerRead) -> CustomerRead:
    """``customer_from(_for_offers(replies))`` from the full read of the same replies,
    sharing what the two have in common."""
    st = full.state
    state = UserState(st.user_id, [], {}, st.bought, st.dislikes, st.negatives, [], None,
                      st.rfm, {})
    return CustomerRead(state, full.facts_raw, full.offers_raw, {})


def _for_offers(r: list[Any], skipped: bool = False) -> list[Any]:
    """The customer read as an offers answer reads it: ``OFFERS_SKIP``'s replies empty.
    ``skipped``: ``r`` is the read without them, else the whole read."""
    got = iter(r)
    if skipped:
        return [OFFERS_SKIP[n] if n in OFFERS_SKIP else next(got)
                for n in range(len(CUSTOMER_KEYS))]
    return [OFFERS_SKIP.get(n, reply) for n, reply in enumerate(r)]


def _flat_state(user_id: str, r: list[Any], rfm: dict[bytes, bytes]) -> UserState:
    """The state from the first eight flat replies of the customer read (``rfm``: the
    eighth, already paired), as the transaction and the script return them."""
    ia, weights = _scored_and_weights(r[5])
    return _user_state(user_id, [_scored(r[0]), _pairs(r[1]), _pairs(r[2]), _pairs(r[3]),
                                 _pairs(r[4]), ia, r[6], rfm], weights)


def customer_commands(keys: list[str], views: int) -> list[tuple[Any, ...]]:
    """``customer.lua``'s reads, in its order, as commands for the keys given (the first
    ``len(keys)`` of ``CUSTOMER_KEYS``: :meth:`FeatureReader.user` reads the first eight).
    :meth:`FeatureReader.customer` sends them as one transaction on the pipelined
    connection."""
    k = dict(zip(CUSTOMER_KEYS, keys, strict=False))
    commands = [("ZREVRANGE", k["views"], 0, views - 1, "WITHSCORES"), ("HGETALL", k["cart"]),
                ("HGETALL", k["bought"]), ("HGETALL", k["dislikes"]), ("HGETALL", k["neg"]),
                ("ZRANGE", k["ia"], 0, -1, "WITHSCORES"), ("GET", k["vec"]),
                ("HGETALL", k["rfm"])]
    if len(keys) > 8:
        commands += [("LRANGE", k["hist"], 0, -1), ("HGETALL", k["spend"]),
                     ("HGETALL", k["src"]), ("ZREVRANGE", k["fav"], 0, 49),
                     ("ZREVRANGE", k["cat"], 0, 9, "WITHSCORES"), ("HGETALL", k["offers"]),
                     ("HGETALL", k["ostate"]), ("HGETALL", k["pushitems"])]
    return commands


@dataclass(slots=True)
class CustomerRead:
    """One customer's keys, read together (:meth:`FeatureReader.customer`)."""

    state: UserState
    facts_raw: tuple[Any, ...]            # the replies FeatureReader.facts_from takes
    offers_raw: tuple[dict[bytes, bytes], dict[bytes, bytes]]
    pushed: dict[str, float]              # item -> log time it was last pushed

    @property
    def offers(self) -> tuple[list[dict[str, Any]], dict[str, str]]:
        return _offers(*self.offers_raw)


def _offers(offers: dict[bytes, bytes], states: dict[bytes, bytes],
            ) -> tuple[list[dict[str, Any]], dict[str, str]]:
    return ([msgspec.json.decode(v) for v in offers.values()],
            {_s(a): _s(b) for a, b in states.items()})


def _user_state(user_id: str, replies: list[Any],
                weights: dict[str, float] | None = None) -> UserState:
    v, cart, bought, dislikes, neg, ia, vec, rfm = replies
    dec = msgspec.json.decode
    return UserState(
        user_id=user_id,
        views=[(_s(m), s) for m, s in v],
        cart=dict(zip(_texts(cart), _floats_of(list(cart.values())), strict=True)),
        bought=dict(zip(_texts(bought), _ints_of(list(bought.values())), strict=True)),
        dislikes={_s(a): dec(b) for a, b in dislikes.items()},
        negatives={_s(a): dec(b) for a, b in neg.items()},
        interactions=ia, vector=vec,
        rfm=_floats(rfm), _weights=weights,
    )


_PURCHASES = msgspec.json.Decoder(list[Purchase])


def _with_categories(purchases: list[Purchase], categories: dict[str, str]) -> list[Purchase]:
    """Lines whose event named no category take the catalog's."""
    return [p if p.category else msgspec.structs.replace(p, category=categories.get(p.item_id))
            for p in purchases]


def _top_scored_command(key: str, n: int) -> tuple[Any, ...]:
    """The ``n`` highest (member, score) of a zset, as a flat reply for :func:`_scored`.
    Sent raw: redis-py's own WITHSCORES parsing costs a Python call per score, and the
    trending read is 8 shards x 400 of them."""
    return ("ZREVRANGE", key, 0, n - 1, "WITHSCORES")


def _merge_scored(replies: list[Any], n: int) -> dict[str, float]:
    """Shard partials of one co-count zset, summed: the ``n`` best, ties by id."""
    merged: dict[str, float] = {}
    for flat in replies:
        for member, score in _scored(flat):
            key = _s(member)
            merged[key] = merged.get(key, 0.0) + score
    return dict(sorted(merged.items(), key=lambda kv: (-kv[1], kv[0]))[:n])


# The replies of the customer read are parsed by iterating in C (zip, map, slices):
# a recommendation parses ~400 of their elements, and a Python loop cost ~0.1 µs each.
# Numbers come as text; Python's float() takes ~0.37 µs for one of Redis's 17-digit
# scores (23 µs for a median customer's 61), msgspec's JSON parser 0.07 µs (4 µs with
# the join), correctly rounded like float(): the same doubles (670k strings compared).
# What is not a JSON number (inf, a str) takes float()/int() one by one, as before.
_JSON_FLOATS = msgspec.json.Decoder(list[float])
_JSON_INTS = msgspec.json.Decoder(list[int])


def _numbers(raw: list[Any], decoder: msgspec.json.Decoder[Any], one: Any) -> Any:
    try:
        return decoder.decode(b"[" + b",".join(raw) + b"]")
    except (msgspec.DecodeError, TypeError):
        return list(map(one, raw))


def _floats_of(raw: list[Any]) -> list[float]:
    return _numbers(raw, _JSON_FLOATS, float)  # type: ignore[no-any-return]


def _ints_of(raw: list[Any]) -> list[int]:
    return _numbers(raw, _JSON_INTS, int)  # type: ignore[no-any-return]


def _texts(raw: Any) -> list[str]:
    """Members or hash fields (bytes) as str; also when some came as str already."""
    try:
        return list(map(bytes.decode, raw))
    except TypeError:
        return [_s(m) for m in raw]


def _halves(flat: list[Any]) -> tuple[list[Any], list[Any]]:
    if len(flat) % 2:
        raise ValueError(f"a flat reply of pairs has an odd length ({len(flat)})")
    return flat[0::2], flat[1::2]


def _pairs(flat: list[bytes]) -> dict[bytes, bytes]:
    """A flat HGETALL reply from a script, as the dict redis-py makes of one."""
    return dict(zip(*_halves(flat), strict=True))


def _scored(flat: list[Any]) -> list[tuple[bytes, float]]:
    """A raw ``WITHSCORES`` reply as redis-py's (member, score) pairs: flat on RESP2
    and from scripts, [member, score] pairs on RESP3."""
    if flat and isinstance(flat[0], list):
        return [(m, float(v)) for m, v in flat]
    members, scores = _halves(flat)
    return list(zip(members, _floats_of(scores), strict=True))


def _scored_and_weights(flat: list[Any]) -> tuple[list[tuple[bytes, float]],
                                                  dict[str, float] | None]:
    """:func:`_scored`, and the same pairs as {str member: score} (``UserState.weights``)."""
    if flat and isinstance(flat[0], list):
        return _scored(flat), None
    members, raw = _halves(flat)
    scores = _floats_of(raw)
    return (list(zip(members, scores, strict=True)),
            dict(zip(_texts(members), scores, strict=True)))


def _floats(h: dict[bytes, bytes]) -> dict[str, float]:
    return dict(zip(_texts(h), _floats_of(list(h.values())), strict=True))

