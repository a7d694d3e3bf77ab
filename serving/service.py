"""Related items and recommendations: candidates from several sources, blended, filtered,
explained. No HTTP types here.

Every source's scores are scaled to [0, 1] by its own maximum and added with the blend
weight of its source (settings.serving.blend_*), so "bought together 40 times" and an ALS
cosine of 0.8 can be compared. An item keeps the reason of the source that gave it the
largest share of its score. When the store does not answer in time the service answers
from what it holds in memory (the model, the last trending list) and says ``degraded``.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from operator import itemgetter
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from prometheus_client import Counter
from redis.exceptions import RedisError

from aisle.settings import Settings
from feature_store.reader import (
    UNKNOWN_CATEGORY,
    CustomerRead,
    FeatureReader,
    ItemInfo,
    UserState,
)
from models.artifacts import ModelArtifact
from models.online import ModelHolder, decode_vector, user_vector
from serving.again import own_items, rebuy_reason, resume_reason
from serving.answer_cache import Kept, PerCustomer, StaleWhileRevalidate, fingerprint
from serving.pools import PoolBatch
from serving.viewed import (
    SimilarToViewed,
    published_neighbours,
    recent_anchors,
    similar_reason,
    similar_to_viewed,
)

if TYPE_CHECKING:
    from serving.crm import CustomerService

log = logging.getLogger(__name__)
FALLBACKS = Counter("aisle_fallback_answers_total",
                    "answers that fell back to popular items after an unexpected error",
                    ["route"])
ANSWERED = Counter("aisle_recommendations_total",
                   "recommendations answered, by how: derived, or reused (the customer's "
                   "last answer, same stored state), or last (the store away)", ["how"])
_ANSWERED = {how: ANSWERED.labels(how) for how in ("derived", "reused", "last")}
T = TypeVar("T")


def answered_counts() -> dict[str, Any]:
    """This process's recommendations by how they were answered, and the share reused
    (the operator's page)."""
    got = {how: int(child._value.get()) for how, child in _ANSWERED.items()}
    total = sum(got.values())
    return {**got, "reused_share": round(got["reused"] / total, 4) if total else None}


WINBACK_SEGMENTS = frozenset({"dormant", "lost", "at_risk"})
RESTOCK_SLOTS = 3
Reason = Callable[[str], str]
ALS_POOL = 200


@dataclass(slots=True)
class Scored:
    item_id: str
    score: float
    reason: str
    title: str | None = None
    price: float | None = None
    category: str | None = None


@dataclass(slots=True)
class Answer:
    items: list[Scored]
    model_version: str | None
    strategy: str
    degraded: bool = False
    # A reused answer's ``Kept.memo``: where the route keeps its encoding, made once.
    memo: dict[str, bytes] | None = field(default=None, compare=False)


@dataclass
class Candidates:
    scores: dict[str, float] = field(default_factory=dict)
    # item -> the largest specificity-weighted share a source gave it, and (``why``) that
    # source's reason; an item ``why`` lacks has ``default``'s, the reason of the first
    # source, which came in bulk (the ALS pool: 200 reasons not stored one by one). A
    # reason's text is made only for the items an answer shows.
    share: dict[str, float] = field(default_factory=dict)
    why: dict[str, Reason] = field(default_factory=dict)
    default: Reason | None = None

    @property
    def best(self) -> dict[str, tuple[float, Reason | None]]:
        """item -> (share, reason), as one dict (tests, diagnostics)."""
        return {i: (p, self.why.get(i, self.default)) for i, p in self.share.items()}

    def add(self, source: dict[str, float], weight: float, reason: Reason,
            specificity: float = 1.0) -> None:
        """Add a source; ``specificity`` favours its reason when sources tie (a concrete
        "bought together in 12 orders" explains more than "similar shoppers")."""
        if not source or weight <= 0:
            return
        top = max(source.values())
        if not 0.0 < top < math.inf:  # a NaN or an infinity came in: keep the sound ones
            source = {i: v for i, v in source.items() if 0.0 < v < math.inf}
            if not source:
                return
            top = max(source.values())
        scores, share, why, get = self.scores, self.share, self.why, self.scores.get
        if not scores:  # the first source (the ALS pool): nothing to merge with
            parts = {item: weight * raw / top for item, raw in source.items() if raw > 0}
            scores.update(parts)
            share.update({item: p * specificity for item, p in parts.items()
                          if p * specificity > 0.0})
            self.default = reason
            return
        for item, raw in source.items():
            if not raw > 0:  # a popularity that decayed to 0.0, a NaN: nothing to add
                continue
            part = weight * raw / top
            scores[item] = get(item, 0.0) + part
            if part * specificity > share.get(item, 0.0):
                share[item] = part * specificity
                why[item] = reason

    def add_pool(self, items: list[str], raw: np.ndarray, weight: float, reason: Reason,
                 specificity: float = 1.0) -> None:
        """:meth:`add` of a first source given as arrays (the ALS pool, ~200 items): the
        same arithmetic element for element, by numpy instead of two comprehensions
        (pool and add: 141-152 -> 107-121 us in isolation for 3,656 items; the whole
        answer's CPU did not move beyond the noise). Anything unusual goes through
        :meth:`add`."""
        if self.scores or not items or weight <= 0 or not np.isfinite(raw).all():
            self.add(dict(zip(items, raw.tolist(), strict=True)), weight, reason, specificity)
            return
        keep = raw > 0
        top = raw.max()
        if not top > 0:
            return
        if not keep.all():
            items = [i for i, k in zip(items, keep.tolist(), strict=True) if k]
            raw = raw[keep]
        parts = weight * raw / top
        self.scores.update(zip(items, parts.tolist(), strict=True))
        shares = parts * specificity
        if not (shares > 0.0).all():  # underflow: as add(), no reason for a zero share
            items = [i for i, k in zip(items, (shares > 0.0).tolist(), strict=True) if k]
            shares = shares[shares > 0.0]
        self.share.update(zip(items, shares.tolist(), strict=True))
        self.default = reason

    def order(self) -> list[tuple[str, float]]:
        """(item, score), best first; ties by item id (two C sorts: the second is
        stable, also with reverse=True, so equal scores stay in item order)."""
        return sorted(sorted(self.scores.items()), key=itemgetter(1), reverse=True)

    def head(self, k: int) -> list[tuple[str, float]]:
        """``order()[:k]`` without ordering the rest: the k-th best score comes from one
        C sort of plain floats, and only what scores at least that (ties included) is
        ordered by the double sort, whose first pass compares (item, score) tuples.
        600 candidates with ties, k = 50: 126-139 us -> 44-51 us in isolation."""
        scores = self.scores
        if len(scores) <= 2 * k:
            return self.order()[:k]
        cut = sorted(scores.values(), reverse=True)[k - 1]
        top = [pair for pair in scores.items() if pair[1] >= cut]
        return sorted(sorted(top), key=itemgetter(1), reverse=True)[:k]

    def reason(self, item: str) -> str:
        return self.why.get(item, self.default)(item)  # type: ignore[misc]

    def ranked(self) -> list[tuple[str, float, str]]:
        return [(item, score, self.reason(item)) for item, score in self.order()]


class RecommendationService:
    def __init__(self, settings: Settings, reader: FeatureReader, holder: ModelHolder,
                 customers: CustomerService | None = None, store_timeout_s: float = 0.25,
                 pools: PoolBatch | None = None) -> None:
        self.settings = settings
        self.pools = pools or PoolBatch()  # ALS pools of concurrent requests (serving/pools.py)
        self.customers = customers
        self.reader = reader
        self.holder = holder
        self.timeout = store_timeout_s
        self.half_life_s = settings.model.half_life_d * 86400
        # Anonymous related answers per (item, limit): see serving/answer_cache.py.
        self._related: StaleWhileRevalidate[tuple[str, int], Answer] = StaleWhileRevalidate(
            lambda key: self._related_answer(key[0], key[1], None), self._related_ttl,
            current=lambda answer: answer.model_version == self.holder.version)
        # customer -> ((model version, decay reference), interactions, vector)
        self._vectors: dict[str, tuple[tuple[str, float], Any, np.ndarray]] = {}
        self._histories: dict[str, tuple[str, list[tuple[bytes, float]], Any]] = {}
        # customer -> their last answers, while their stored state is the same
        self._answers: PerCustomer[Packed] = PerCustomer(settings.serving.customer_cache_size)

    async def _safe(self, call: Awaitable[T], default: T, flags: list[str]) -> T:
        try:
            async with asyncio.timeout(self.timeout):
                return await call
        except (RedisError, OSError, TimeoutError) as exc:
            flags.append(type(exc).__name__)
            return default

    # ------------------------------------------------------------ related
    async def related(self, item_id: str, limit: int, user_id: str | None = None) -> Answer:
        """Related items; with ``user_id``, that customer's dislikes and complaints apply.

        Answers without a customer are the same for everyone: they are cached per (item,
        limit) for ``related_cache_ttl_s``, as product pages repeat, and refreshed in the
        background once stale or made with an older model (serving/answer_cache.py).
        An unexpected error answers popular items, as :meth:`recommendations` does."""
        try:
            return await self._related_cached(item_id, limit, user_id)
        except Exception:
            log.exception("related items of %s failed; answering popular items", item_id)
            FALLBACKS.labels("related").inc()
            return await self._fallback(user_id, limit, {item_id})

    async def _related_cached(self, item_id: str, limit: int, user_id: str | None,
                              ) -> Answer:
        if user_id is None:
            return await self._related.get((item_id, limit))
        return await self._related_answer(item_id, limit, user_id)

    def _related_ttl(self, key: tuple[str, int], answer: Answer) -> float:
        """A full list from the item's own neighbours keeps for ``related_cache_ttl_s``;
        a cold item's answer (filled from popular items) only for ``cache_ttl_s``, so its
        first co-purchases show within seconds; a degraded one is not kept. Nor, for
        long, one about an item the catalog does not know yet (its first orders came
        before its listing): its reasons name it by id until the listing comes."""
        s = self.settings.serving
        if answer.degraded:
            return 0.0
        full = (answer.strategy == "related" and len(answer.items) >= key[1]
                and self.reader.cached_item(key[0]) is not None)
        return s.related_cache_ttl_s if full else s.cache_ttl_s

    async def _related_answer(self, item_id: str, limit: int, user_id: str | None) -> Answer:
        flags: list[str] = []
        art = self.holder.current
        keep, state = await self._customer_filter(user_id, flags)
        exclude = {item_id, *(state.negatives if state else ())}
        await self._infos([item_id], flags)  # the anchor's title, for the reasons
        cands = await self._related_candidates(item_id, art, flags, weight=1.0,
                                               als=self.settings.serving.related_blend_als)
        infos = await self._infos([item_id, *list(cands.scores)[: 4 * ALS_POOL]], flags)
        items = self._select(cands, infos, limit, exclude=exclude, keep=keep,
                             degraded=bool(flags))
        strategy = "related"
        if len(items) < limit:
            anchor = infos.get(item_id)
            fill = await self._popular(flags, anchor.category if anchor else None)
            more = self._select(fill, await self._infos(list(fill.scores), flags), limit,
                                exclude=exclude | {s.item_id for s in items},
                                keep=keep, degraded=bool(flags))
            items += more[: limit - len(items)]
            strategy = "related+popular" if cands.scores else "popular"
        return Answer(items, art.version if art else None, strategy, bool(flags))

    async def _related_candidates(self, item_id: str, art: ModelArtifact | None,
                                  flags: list[str], weight: float,
                                  reason: Reason | None = None, als: float | None = None,
                                  co: dict[tuple[str, str], dict[str, float]] | None = None,
                                  ) -> Candidates:
        """An item's co-purchases, co-views and ALS neighbours; ``als`` overrides
        ``blend_als`` (the related endpoint's own weight, ``related_blend_als``); ``co``:
        co-counts already read (:meth:`_co_counts_of`), else they are read here."""
        s = self.settings.serving
        cands = Candidates()
        if co is None:
            co = await self._co_counts_of([item_id], flags)
        buy, view = co.get(("buy", item_id), {}), co.get(("view", item_id), {})
        anchor = self._title(item_id)
        cands.add(buy, weight * s.blend_copurchase,
                  reason or (lambda i: f"bought together with {anchor} in "
                             f"{int(buy[i])} order{'s' if buy[i] != 1 else ''}"),
                  specificity=2.0)
        cands.add(view, weight * s.blend_coview,
                  reason or (lambda i: f"viewed together with {anchor}"), specificity=1.5)
        if art is not None and (j := art.item_index.get(item_id)) is not None:
            sims = {art.item_ids[int(k)]: float(v)
                    for k, v in zip(art.similar_ids[j], art.similar_scores[j], strict=True)
                    if v > 0}
            cands.add(sims, weight * (s.blend_als if als is None else als),
                      reason or (lambda i: f"customers who like {anchor} also like this"))
        cands.scores.pop(item_id, None)
        return cands

    # ------------------------------------------------------------ recommendations
    async def recommendations(self, user_id: str, limit: int, context_item: str | None,
                              ) -> Answer:
        """The customer's list. An unexpected error on the way (a bug, a model that came
        out wrong: see aa9e822) answers popular items instead, flagged degraded, logged
        with its traceback and counted: the widget on the page still gets an answer."""
        self.pools.busy += 1
        try:
            return await self._recommendations(user_id, limit, context_item)
        except Exception:
            log.exception("recommendations for %s failed; answering popular items", user_id)
            FALLBACKS.labels("recommendations").inc()
            return await self._fallback(user_id, limit, {context_item or ""})
        finally:
            self.pools.busy -= 1

    def reused(self, user_id: str, limit: int, context_item: str | None,
               ) -> Kept[Packed] | None:
        """The customer's kept answer, when :meth:`recommendations` would give it and
        that can be told without waiting: their kept read (no round trip), the state and
        model it was made from, its items listed as they were, told from memory. None
        says only "ask :meth:`recommendations`" (which may still reuse it). The route
        answers a returning customer from here, without the coroutines, timeouts and
        answer objects of the full path (the answer is its kept encoding)."""
        if self.settings.serving.recommendations_cache_ttl_s <= 0:
            return None
        try:
            replies = self.reader.kept_replies(user_id)
            if replies is None:
                return None
            art = self.holder.current
            kept = self._answers.get(user_id, (limit, context_item),
                                     self._mark(user_id, replies), art.version if art else None)
            if kept is None or not self.reader.same_items([x[0] for x in kept.answer[0]],
                                                          kept.entries):
                return None
        except Exception:  # a bug: the full path answers (and falls back if it must)
            log.exception("checking %s's kept answer failed", user_id)
            return None
        _ANSWERED["reused"].inc()
        return kept

    async def _customer_filter(self, user_id: str | None, flags: list[str],
                               ) -> tuple[Callable[[ItemInfo], bool], UserState | None]:
        """The customer's dislikes and bought non-consumables as a filter, and their
        state; keep-all and None without a customer (an unreadable state reads empty)."""
        if user_id is None:
            return (lambda info: True), None
        empty = UserState(user_id, [], {}, {}, {}, {}, [], None, {})
        state = await self._safe(self.reader.user(user_id), empty, flags)
        return self._keeper(state, None, allow=set(state.bought)), state

    async def _fallback(self, user_id: str | None, limit: int, exclude: set[str]) -> Answer:
        """Popular items, with the customer's dislikes, complaints and cart left out when
        their state can be read; what the store answers when the personal path failed."""
        flags = ["fallback"]
        keep, state = await self._customer_filter(user_id, flags)
        if state is not None:
            exclude = exclude | set(state.negatives) | set(state.cart)
        fill = await self._popular(flags, None)
        items = self._select(fill, await self._infos(list(fill.scores), flags), limit,
                             exclude, keep, degraded=True)
        return Answer(items, None, "popular", True)

    async def _recommendations(self, user_id: str, limit: int, context_item: str | None,
                               ) -> Answer:
        flags: list[str] = []
        s = self.settings.serving
        art = self.holder.current
        model, shape = (art.version if art else None), (limit, context_item)
        # State, facts, offers and the push ledger: one round trip (one hash slot).
        replies = self.reader.kept_replies(user_id)
        if replies is None:
            replies = await self._safe(self.reader.customer_replies(user_id), None, flags)
        mark, record = None, None
        if replies is None:  # the store is away: their last list beats popular items
            last = self._answers.last(user_id, shape)
            if last is not None:
                _ANSWERED["last"].inc()
                return unpack(last, degraded=True)
        else:
            mark = self._mark(user_id, replies) if s.recommendations_cache_ttl_s > 0 else None
            kept = self._answers.get(user_id, shape, mark, model)
            if kept is not None and await self._still_listed(kept.answer, kept.entries):
                _ANSWERED["reused"].inc()
                return unpack(kept.answer, memo=kept.memo)
            record = self.reader.read_of(user_id, replies)
        _ANSWERED["derived"].inc()
        state = record.state if record else UserState(user_id, [], {}, {}, {}, {}, [], None, {})
        cands = Candidates()
        vec = self._vector(art, state)
        if art is not None and vec is not None:
            # Scoring the items by norm for a large catalog (models/pool.py).
            top, raw = await self.pools.pool(art, vec, ALS_POOL)
            ids = art.item_ids
            cands.add_pool(list(map(ids.__getitem__, top.tolist())), raw.astype(np.float64),
                           s.blend_als, lambda i: "picked for you")
        # Filtered below like the rest. Low specificity: the customer-intelligence
        # reasons for the same items ("you saved this", "time to restock") say more.
        own = own_items(state, s.resume_half_life_h * 3600)
        cands.add(own.resume, s.blend_resume, lambda i: resume_reason(i, state),
                  specificity=1.2)
        cands.add(own.rebuy, s.blend_rebuy, lambda i: rebuy_reason(own.orders[i]),
                  specificity=2.0)
        similar = self._similar_to_viewed(art, state)
        cands.add(similar.scores, s.blend_viewed_similar,
                  lambda i: similar_reason(similar.because[i], state,
                                           self._title(similar.because[i])),
                  specificity=1.5)
        await self._await_titles([v for v, _ in state.views[:5]] + [context_item or ""]
                                 + list(set(similar.because.values())), flags)
        # The co-counts of every recent view and the context item: one read.
        co = await self._co_counts_of([v for v, _ in state.views[:5]]
                                      + ([context_item] if context_item else []), flags)
        for rank, (viewed, _) in enumerate(state.views[:5]):
            title = self._title(viewed)
            more = await self._related_candidates(
                viewed, art, flags, weight=s.blend_session * (0.8 ** rank),
                reason=lambda i, t=title: f"because you viewed {t}", co=co)
            _merge(cands, more)
        if context_item:
            title = self._title(context_item)
            _merge(cands, await self._related_candidates(
                context_item, art, flags, weight=s.blend_session,
                reason=lambda i: f"goes with {title}", co=co))
        allow = await self._crm_candidates(user_id, state, cands, flags, record)
        exclude = {context_item or "", *state.cart, *state.negatives}
        keep = self._keeper(state, art, allow)
        items = await self._select_staged(cands, limit, exclude, keep, flags)
        strategy = "personal" if cands.scores else "popular"
        if len(items) < limit:
            fill = await self._popular(flags, None)
            more = self._select(fill, await self._infos(list(fill.scores), flags), limit,
                                exclude | {x.item_id for x in items}, keep, bool(flags))
            items += more[: limit - len(items)]
        items = await self._not_just_pushed(user_id, items, flags,
                                            record.pushed if record else None)
        if art is not None and vec is not None:
            await self._explain_picks(items, art, state, flags)
        answer = Answer(items, model, strategy, bool(flags))
        if not flags and s.recommendations_cache_ttl_s > 0:
            ttl = s.recommendations_cache_ttl_s if strategy == "personal" else s.cache_ttl_s
            self._answers.put(user_id, shape, mark, model, ttl, _pack(answer),
                              tuple(self.reader.cached_item(x.item_id) for x in items))
        return answer

    def _mark(self, user_id: str, replies: list[Any]) -> int | None:
        """The replies' fingerprint, computed once per kept copy of them."""
        memo = self.reader.memo(user_id, replies)
        if memo is None:
            return fingerprint(replies)
        if "mark" not in memo:
            memo["mark"] = fingerprint(replies)
        return memo["mark"]  # type: ignore[no-any-return]

    async def _still_listed(self, answer: Packed, entries: tuple[Any, ...]) -> bool:
        """Whether the items of a kept answer are listed as they were when it was made
        (title, price, stock, tags: what its filters and its text used). Read like any
        answer's catalog entries (from memory, the change feed checked when due); a
        read that fails says no, and the answer is derived again."""
        ids = [x[0] for x in answer[0]]
        if self.reader.same_items(ids, entries):  # the common case: nothing to look up
            return True
        flags: list[str] = []
        now = await self._infos(ids, flags)
        return not flags and all((n := now.get(i)) is then or (n is not None and n == then)
                                 for i, then in zip(ids, entries, strict=True))

    async def _co_counts_of(self, items: list[str], flags: list[str],
                            ) -> dict[tuple[str, str], dict[str, float]]:
        """Co-purchase and co-view counts of ``items``, what the cache lacks in one
        pipeline; empty (flagged) if the store does not answer in time."""
        if not items:
            return {}
        wanted = [(kind, item) for item in items for kind in ("buy", "view")]
        return await self._safe(self.reader.co_counts_many(wanted), {}, flags)

    def _similar_to_viewed(self, art: ModelArtifact | None, state: UserState,
                           ) -> SimilarToViewed:
        """Neighbours of the customer's recent items from the model in memory: no read."""
        s = self.settings.serving
        if art is None or s.blend_viewed_similar <= 0:
            return SimilarToViewed({}, {})
        anchors = recent_anchors(state, s.viewed_similar_half_life_h * 3600,
                                 s.viewed_similar_anchors)
        return similar_to_viewed(anchors, published_neighbours(art, s.viewed_similar_source),
                                 s.viewed_similar_neighbours, s.viewed_similar_norm)

    async def _not_just_pushed(self, user_id: str, items: list[Scored], flags: list[str],
                               pushed: dict[str, float] | None = None) -> list[Scored]:
        """The push fatigue ledger, shared with the website: an item pushed to this
        customer within ``push.web_repeat_window_s`` is not the top recommendation too
        (it stays in the list, one place down or more)."""
        window = self.settings.push.web_repeat_window_s
        if window <= 0 or len(items) < 2:
            return items
        if pushed is None:  # not read with the customer's other keys
            key = self.reader.keys.user(user_id, "pushitems")
            raw = await self._safe(self.reader.client.hgetall(key), {}, flags)
            pushed = {k.decode() if isinstance(k, bytes) else k: float(ts)
                      for k, ts in raw.items()}
        if not pushed:
            return items
        clock = await self._safe(self.reader.clock(), 0.0, flags)
        recent = {k for k, ts in pushed.items() if clock - ts < window}
        fresh = next((i for i, x in enumerate(items) if x.item_id not in recent), None)
        if not recent or fresh in (None, 0):
            return items
        return [items[fresh], *items[:fresh], *items[fresh + 1:]]

    def _vector(self, art: ModelArtifact | None, state: UserState) -> np.ndarray | None:
        if art is None:
            return None
        if state.vector is not None:
            vec = decode_vector(state.vector, art.version)
            if vec is not None:
                return vec
        if not state.interactions:
            self._vectors.pop(state.user_id, None)  # e.g. erased: nothing kept of them
            self._histories.pop(state.user_id, None)
            return None
        # Stored vector missing or from an older model (after a retrain, until the
        # customer's next event): fold in now, and keep it while the model and the
        # customer's interactions are the ones it was solved from.
        # Decayed to the customer's newest event, as the worker's fold-in does. Decayed
        # to the model's training time, events years later weighed e^100 and more and
        # the solve failed: a 500 (the demo's 2011 model and today's events).
        ref = max(art.ref_ts, state.rfm.get("last_seen", 0.0))
        hit = self._vectors.get(state.user_id)
        if hit is not None and hit[0] == (art.version, ref) and hit[1] == state.interactions:
            return hit[2]
        try:
            vec = user_vector(art, state.interactions, ref, self.half_life_s)
        except ValueError:  # not expected any more; the other sources still answer
            log.exception("fold-in failed for a customer; answering without the model")
            return None
        size = self.settings.serving.customer_cache_size
        if size > 0:
            if len(self._vectors) >= size:
                self._vectors.pop(next(iter(self._vectors)))  # the oldest
            self._vectors[state.user_id] = ((art.version, ref), state.interactions, vec)
        return vec

    @property
    def related_cache(self) -> StaleWhileRevalidate[tuple[str, int], Answer]:
        return self._related

    async def close(self) -> None:
        """Stop background work (the API is stopping)."""
        await self._related.close()

    def forget(self, user_id: str) -> None:
        """Drop what this process derived for a customer (erasure). Never needed for
        correctness (entries are used only while the stored state matches them); it
        keeps nothing of an erased customer in memory."""
        self._vectors.pop(user_id, None)
        self._histories.pop(user_id, None)
        self._answers.forget(user_id)
        if self.reader.local is not None:
            self.reader.local.forget(user_id)
        if self.customers is not None:
            self.customers.forget(user_id)

    async def _crm_candidates(self, user_id: str, state: UserState, cands: Candidates,
                              flags: list[str], record: CustomerRead | None = None,
                              ) -> set[str]:
        """Customer intelligence in the ranking: items due for replenishment ("buy it
        again"), and for customers going quiet the items they saved or kept buying.
        Returns the bought items that may be shown again."""
        if self.customers is None or not state.bought:  # only buyers get restocks/win-back
            return set()
        view = await self._safe(self.customers.view(user_id, state, record), None, flags)
        if view is None:
            return set()
        s = self.settings.serving
        # The few soonest to run out: "buy it again" joins the list, it does not take it over.
        due = {r.item_id: r.interval_days
               for r in view.profile.replenishments_due[:RESTOCK_SLOTS]}
        cands.add({i: 1.0 for i in due}, s.blend_als * 0.8,
                  lambda i: f"time to restock: you buy this about every {due[i]:.0f} days",
                  specificity=3.0)
        allow = set(due)
        if view.profile.segment in WINBACK_SEGMENTS:
            saved = {i: 1.0 for i in view.facts.favorites[:10]}
            again = {i: float(n) for i, n in state.bought.items() if n >= 2}
            cands.add(saved, s.blend_winback, lambda i: "you saved this", specificity=2.5)
            cands.add(again, s.blend_winback, lambda i: "you used to buy this",
                      specificity=2.5)
            allow |= set(again)
        return allow

    def _keeper(self, state: UserState, art: ModelArtifact | None,
                allow: set[str] | None = None) -> Callable[[ItemInfo], bool]:
        disliked = {tag.lower() for tag in state.dislikes}
        allow = allow or set()

        def keep(info: ItemInfo) -> bool:
            if disliked and info.tags & disliked:
                return False
            return (info.item_id not in state.bought or info.item_id in allow
                    or self._consumable(info, art))

        return keep

    @staticmethod
    def _consumable(info: ItemInfo, art: ModelArtifact | None) -> bool:
        if info.consumable is not None:
            return info.consumable
        if art is not None and (j := art.item_index.get(info.item_id)) is not None:
            return bool(art.consumable[j])
        return False

    async def _explain_picks(self, items: list[Scored], art: ModelArtifact, state: UserState,
                             flags: list[str]) -> None:
        """Name the customer's own item closest to each ALS pick ("because you bought …")."""
        index = art.item_index
        hist, hist_f, norms = self._history_factors(art, state)
        if not hist:
            return
        closest: dict[int, str] = {}
        # One product per pick: a matrix product for all picks rounds differently and
        # named another item on near-ties (3 of 990 Taobao customers; serving_ab).
        for n, scored in enumerate(items):
            j = index.get(scored.item_id)
            if scored.reason == "picked for you" and j is not None:
                sims = hist_f @ art.item_factors[j] / norms
                closest[n] = hist[int(np.argmax(sims))][0]
        await self._infos(list(closest.values()), flags)
        for n, best in closest.items():
            verb = "bought" if best in state.bought else "viewed"
            items[n].reason = f"because you {verb} {self._title(best)}"

    def _history_factors(self, art: ModelArtifact, state: UserState,
                         ) -> tuple[list[tuple[str, int]], np.ndarray, np.ndarray]:
        """The customer's 50 strongest items with their factors and norms, for the
        explanations; kept, like the fold-in, while model and interactions are the same."""
        hit = self._histories.get(state.user_id)
        if hit is not None and hit[0] == art.version and hit[1] == state.interactions:
            return hit[2]
        index = art.item_index
        history = [(m.decode() if isinstance(m, bytes) else m, w) for m, w in state.interactions]
        hist = [(i, j) for i, _ in sorted(history, key=lambda x: -x[1])[:50]
                if (j := index.get(i)) is not None]
        hist_f = art.item_factors[[j for _, j in hist]]
        value = (hist, hist_f, np.linalg.norm(hist_f, axis=1) + 1e-9)
        size = self.settings.serving.customer_cache_size
        if size > 0:
            if len(self._histories) >= size:
                self._histories.pop(next(iter(self._histories)))  # the oldest
            self._histories[state.user_id] = (art.version, state.interactions, value)
        return value

    # ------------------------------------------------------------ shared
    async def _popular(self, flags: list[str], category: str | None) -> Candidates:
        ranked = await self._safe(self.reader.trending(200), self.reader.cached_trending(),
                                  flags)
        cands = Candidates()
        if not ranked:
            return cands
        top = ranked[0][1]
        scores = {item: math.exp(score - top) for item, score in ranked}
        if category and category != UNKNOWN_CATEGORY:  # never "popular in unknown"
            infos = await self._infos(list(scores), flags)
            same = {i: v for i, v in scores.items()
                    if i in infos and infos[i].category == category}
            cands.add(same, 1.0, lambda i: f"popular in {category}")
        cands.add(scores, 0.5, lambda i: "popular now")
        return cands

    async def _infos(self, ids: list[str], flags: list[str]) -> dict[str, ItemInfo]:
        if not ids:
            return {}
        known = self.reader.fresh_items(ids)  # as items() does, but before _safe's timeout
        if known is not None:
            return known
        cached = {i: info for i in ids if (info := self.reader.cached_item(i)) is not None}
        return await self._safe(self.reader.items(ids), cached, flags)

    async def _await_titles(self, ids: list[str], flags: list[str]) -> None:
        await self._infos([i for i in ids if i], flags)

    def _title(self, item_id: str) -> str:
        info = self.reader.cached_item(item_id)
        return info.title if info else item_id

    async def _select_staged(self, cands: Candidates, limit: int, exclude: set[str],
                             keep: Callable[[ItemInfo], bool], flags: list[str],
                             ) -> list[Scored]:
        """:meth:`_select` reading the catalog for the head of the ranking first: most
        answers fill from it, so ~40 item lookups instead of up to 800. The whole list is
        read only when filters emptied the head. Same answer as reading everything."""
        # As always: only the first 4 * ALS_POOL candidates (in insertion order) are
        # looked up; the others have no catalog entry here.
        eligible = (set(list(cands.scores)[: 4 * ALS_POOL])
                    if len(cands.scores) > 4 * ALS_POOL else None)

        def wanted(part: list[tuple[str, float]]) -> list[str]:
            return [i for i, _ in part
                    if i not in exclude and (eligible is None or i in eligible)]

        head = cands.head(3 * limit + 20)
        infos = await self._infos(wanted(head), flags)
        items = self._select(cands, infos, limit, exclude, keep, bool(flags), head)
        if len(items) < limit and len(cands.scores) > len(head):
            ranked = cands.order()
            infos |= await self._infos(wanted(ranked[len(head):]), flags)
            items = self._select(cands, infos, limit, exclude, keep, bool(flags), ranked)
        return items

    @staticmethod
    def _select(cands: Candidates, infos: dict[str, ItemInfo], limit: int, exclude: set[str],
                keep: Callable[[ItemInfo], bool], degraded: bool,
                order: list[tuple[str, float]] | None = None) -> list[Scored]:
        out: list[Scored] = []
        for item, score in (cands.order() if order is None else order):
            if item in exclude:
                continue
            info = infos.get(item)
            if info is None:
                if not degraded:  # unknown to the catalog: we can't vouch for it
                    continue
            elif not info.available or not keep(info):
                continue
            out.append(Scored(item, round(score, 6), cands.reason(item),
                              info.title if info else None, info.price if info else None,
                              info.category if info else None))
            if len(out) >= limit:
                break
        return out


# A kept answer as plain tuples, (items, model version, strategy), an item as Scored's
# fields: tuples of strings and numbers the garbage collector stops tracking.
Packed = tuple[tuple[tuple[Any, ...], ...], str | None, str]


def _pack(answer: Answer) -> Packed:
    return (tuple((x.item_id, x.score, x.reason, x.title, x.price, x.category)
                  for x in answer.items), answer.model_version, answer.strategy)


def unpack(packed: Packed, degraded: bool = False,
            memo: dict[str, bytes] | None = None) -> Answer:
    """A new Answer from a kept one. With ``memo``, what is derived from the answer may
    be kept in it: its items must be answered as they are."""
    return Answer([Scored(*x) for x in packed[0]], packed[1], packed[2], degraded, memo)


def _merge(into: Candidates, other: Candidates) -> None:
    scores, share, why = into.scores, into.share, into.why
    for item, score in other.scores.items():
        scores[item] = scores.get(item, 0.0) + score
        part = other.share.get(item, 0.0)
        if part > share.get(item, 0.0):
            share[item] = part
            why[item] = other.why.get(item, other.default)  # type: ignore[assignment]
