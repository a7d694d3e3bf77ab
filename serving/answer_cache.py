"""Cached answers: related items that expire without a stampede (stale-while-revalidate,
one refresher), and each customer's last recommendations (:class:`PerCustomer`).

The related-items answers of product pages are the same for everyone and cached per item.
Cached with a plain TTL, entries filled together expire together: after the widget's first
busy second, or all at once when a new model is published (the key held the version).
Measured on one API process at 1,000 req/s, that burst of recomputations (~1 ms of CPU and
a store round trip each) held the event loop for ~0.8 s and set the p99 at 120-200 ms
where the other 99% took under 3 ms (``benchmarks/README.md``, "Where the tail waits").

Here an entry is fresh for its TTL (jittered by ±10%, so entries filled in the same second
drift apart); for as long again it is still answered, while ONE background task recomputes
the due entries one at a time, yielding to requests between them. An entry from an older
model counts as due, not as a miss. Past twice its TTL an entry is not served: the request
computes its own answer, as when nothing was cached.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Generic, NamedTuple, TypeVar

from feature_store.client import cancel_and_wait

log = logging.getLogger(__name__)
K = TypeVar("K")
V = TypeVar("V")


class StaleWhileRevalidate(Generic[K, V]):
    """``compute(key)`` makes a value; ``ttl(key, value)`` says how long it is fresh (0: not
    kept, e.g. a degraded answer); ``current(value)`` whether it still matches what it was
    made from (the model in memory)."""

    def __init__(self, compute: Callable[[K], Awaitable[V]], ttl: Callable[[K, V], float],
                 current: Callable[[V], bool] = lambda v: True, max_size: int = 50_000,
                 jitter: float = 0.1, clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None) -> None:
        self._compute, self._ttl, self._current = compute, ttl, current
        self.max_size, self.jitter, self._clock = max_size, jitter, clock
        self._rng = rng or random.Random()
        # key -> (made at, fresh for, value); insertion order is age order (see _keep)
        self._entries: dict[K, tuple[float, float, V]] = {}
        self._due: dict[K, None] = {}  # waiting for the refresher, oldest first
        self._task: asyncio.Task[None] | None = None
        self.stale_answers = self.refreshes = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def queued(self) -> int:
        """Entries waiting for the background refresh."""
        return len(self._due)

    async def get(self, key: K) -> V:
        hit = self._entries.get(key)
        if hit is not None:
            made, fresh_s, value = hit
            age = self._clock() - made
            if age < fresh_s and self._current(value):
                return value
            if age < 2 * fresh_s:
                self.stale_answers += 1
                self._schedule(key)
                return value
        value = await self._compute(key)
        self._keep(key, value)
        return value

    def _keep(self, key: K, value: V) -> None:
        ttl = self._ttl(key, value)
        if ttl <= 0:  # not kept; a stale entry still answers until 2 x its TTL
            return
        self._entries.pop(key, None)
        if len(self._entries) >= self.max_size:
            self._entries.pop(next(iter(self._entries)))  # the oldest
        fresh_s = ttl * self._rng.uniform(1 - self.jitter, 1 + self.jitter)
        self._entries[key] = (self._clock(), fresh_s, value)

    def _schedule(self, key: K) -> None:
        self._due[key] = None
        if self._task is None:
            self._task = asyncio.create_task(self._refresh(), name="answer-refresh")

    async def _refresh(self) -> None:
        try:
            while self._due:
                key = next(iter(self._due))
                try:
                    value = await self._compute(key)
                except Exception:  # the entry stays stale; a request past 2 x TTL computes
                    log.exception("refreshing a cached answer failed")
                else:
                    self._keep(key, value)
                    self.refreshes += 1
                finally:
                    self._due.pop(key, None)
                await asyncio.sleep(0)  # requests waiting on the loop go first
        finally:
            self._task = None

    async def close(self, grace_s: float = 2.0) -> None:
        """Stop the background refresh (the API is stopping): the answer being made is
        let finish (cancelled mid-gather, its store reads would be left unawaited), the
        rest of the queue is dropped."""
        self._due.clear()
        task = self._task
        if task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), grace_s)
        except TimeoutError:
            await cancel_and_wait(task)
        self._task = None


def fingerprint(replies: list[Any]) -> int | None:
    """A digest of a customer's stored state as one read returned it (flat replies:
    bytes, numbers, None, flat lists of them): two reads that returned the same
    replies have the same digest. A 64-bit hash, so two different states of one
    customer share a digest with a chance of 2^-64. None for a shape it does not take
    (nested lists, RESP3's [member, score] pairs): nothing is reused then."""
    try:
        return hash(tuple(tuple(r) if type(r) is list else r for r in replies))
    except TypeError:
        return None


class Kept(NamedTuple, Generic[V]):
    """One per customer and shape. The answer in it should be plain tuples of strings and
    numbers (serving/service.py packs it so), which the garbage collector stops tracking:
    a full pass walks everything allocated since the last freeze (serving/gc_tuning.py).
    This tuple itself, a subclass, stays tracked."""

    state: int                 # fingerprint() of the replies the answer was made from
    model: str | None          # the model version it was made with
    until: float               # clock() past which it is not reused
    answer: V
    entries: tuple[Any, ...]   # the catalog entries of its items, as they were
    # What callers derived from ``answer`` (the route: its JSON, made once; bytes only,
    # so the garbage collector leaves the dict untracked).
    memo: dict[str, bytes]


class PerCustomer(Generic[V]):
    """A customer's last answers (per request shape: limit, context item), reused while a
    fresh read of their stored state returns the same replies, the model is the same and
    the answer is younger than its TTL; the caller also checks the answered items'
    catalog entries (``Kept.entries``). At most ``max_customers`` customers are kept,
    the least recently answered dropped first; 0 keeps nothing.

    Unlike :class:`StaleWhileRevalidate` nothing is refreshed in the background: a
    customer's next event changes the replies, and the request that sees it computes."""

    def __init__(self, max_customers: int, jitter: float = 0.1,
                 clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None) -> None:
        self.max_customers, self.jitter, self._clock = max_customers, jitter, clock
        self._rng = rng or random.Random()
        self._kept: dict[str, dict[Hashable, Kept[V]]] = {}

    def __len__(self) -> int:
        return len(self._kept)

    def get(self, user_id: str, shape: Hashable, state: int | None,
            model: str | None) -> Kept[V] | None:
        """The answer kept for this customer and shape if it was made from ``state`` with
        ``model`` and has not expired; else None."""
        kept = self._kept.get(user_id, {}).get(shape)
        if (kept is None or state is None or kept.state != state or kept.model != model
                or self._clock() >= kept.until):
            return None
        self._kept[user_id] = self._kept.pop(user_id)  # to the end: recently answered
        return kept

    def last(self, user_id: str, shape: Hashable) -> V | None:
        """The answer kept for this customer and shape, unchecked, while younger than its
        TTL (the store is away, and nothing can be checked)."""
        kept = self._kept.get(user_id, {}).get(shape)
        return kept.answer if kept is not None and self._clock() < kept.until else None

    def put(self, user_id: str, shape: Hashable, state: int | None, model: str | None,
            ttl_s: float, answer: V, entries: tuple[Any, ...]) -> None:
        if state is None or ttl_s <= 0 or self.max_customers <= 0:
            return
        mine = self._kept.pop(user_id, None)
        if mine is None:
            mine = {}
            if len(self._kept) >= self.max_customers:
                self._kept.pop(next(iter(self._kept)))  # the least recently answered
        self._kept[user_id] = mine  # to the end: the most recently answered
        until = self._clock() + ttl_s * self._rng.uniform(1 - self.jitter, 1 + self.jitter)
        mine[shape] = Kept(state, model, until, answer, entries, {})

    def forget(self, user_id: str) -> None:
        self._kept.pop(user_id, None)
