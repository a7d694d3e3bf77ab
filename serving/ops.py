"""The operator's view of the pipeline, gathered for ``GET /v1/ops/summary`` (no HTTP types).

Everything is read from where it already lives: the group-wide applied counter in the
store (sampled over time for events/s), consumer lag from :mod:`streams.lag`, the tail of
the dead-letter topic, the model the API holds, and this API process's Prometheus
registry (cache hit rate, latency histograms). Broker reads cost a few hundred
milliseconds, so one summary is computed at a time and reused for ``ttl_s``.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer
from prometheus_client import REGISTRY

from aisle.settings import Settings
from feature_store.keys import Keys
from feature_store.redis_store import queue_applied, sum_applied
from models.online import ModelHolder
from streams.lag import end_offsets, group_lag
from streams.topics import DeadLetter

LATENCY_METRIC = "aisle_request_seconds"
QUANTILES = (0.5, 0.95, 0.99)
RATE_WINDOW_S = 60.0
BROKER_TIMEOUT_S = 5.0


def histogram_quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """The ``q`` quantile of a cumulative Prometheus histogram, interpolated linearly
    inside the bucket that holds it (what PromQL's ``histogram_quantile`` does).

    ``buckets`` are ``(upper_bound, cumulative_count)`` sorted by bound, ending with +Inf.
    A quantile that falls in the +Inf bucket is reported as the largest finite bound.

    >>> histogram_quantile([(0.1, 50), (0.2, 100), (math.inf, 100)], 0.5)
    0.1
    >>> round(histogram_quantile([(0.1, 0), (0.2, 100), (math.inf, 100)], 0.5), 6)
    0.15
    >>> histogram_quantile([(0.1, 10), (math.inf, 20)], 0.99)
    0.1
    >>> histogram_quantile([(0.1, 0), (math.inf, 0)], 0.5) is None
    True
    """
    total = buckets[-1][1] if buckets else 0
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for bound, cumulative in buckets:
        if cumulative >= rank:
            if math.isinf(bound):
                return lower
            inside = cumulative - below
            share = (rank - below) / inside if inside else 1.0
            return lower + (bound - lower) * share
        lower, below = bound, cumulative
    return lower


def latency_percentiles(families: Iterable[Any] | None = None) -> dict[str, dict[str, Any]]:
    """Per route: request count and p50/p95/p99 in milliseconds, from this process's
    ``aisle_request_seconds`` histogram (since the process started)."""
    buckets: dict[str, list[tuple[float, float]]] = {}
    for family in families if families is not None else REGISTRY.collect():
        if family.name != LATENCY_METRIC:
            continue
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                route = sample.labels["route"]
                buckets.setdefault(route, []).append((float(sample.labels["le"]),
                                                      sample.value))
    out: dict[str, dict[str, Any]] = {}
    for route, rows in sorted(buckets.items()):
        rows.sort()
        count = int(rows[-1][1]) if rows else 0
        if count == 0:
            continue
        out[route] = {"count": count, **{
            f"p{round(q * 100)}_ms": _ms(histogram_quantile(rows, q)) for q in QUANTILES}}
    return out


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


@dataclass
class RateSampler:
    """Events/s from a monotonically growing counter, over the last ``window_s``."""

    window_s: float = RATE_WINDOW_S
    samples: deque[tuple[float, int]] = field(default_factory=deque)

    def add(self, at: float, value: int) -> float | None:
        """Record a reading; the rate since the oldest reading still in the window.

        >>> s = RateSampler(window_s=10)
        >>> s.add(0.0, 100) is None
        True
        >>> s.add(2.0, 300)
        100.0
        >>> s.add(20.0, 300)  # the old readings left the window; one left is no rate
        0.0
        """
        if self.samples and value < self.samples[-1][1]:
            self.samples.clear()  # the counter was reset (a rebuild): start again
        self.samples.append((at, value))
        while len(self.samples) > 2 and at - self.samples[1][0] >= self.window_s:
            self.samples.popleft()
        first_at, first = self.samples[0]
        if at - first_at <= 0:
            return None
        return round((value - first) / (at - first_at), 3)


async def deadletter_tail(settings: Settings, n: int = 5) -> tuple[int, list[DeadLetter]]:
    """How many records the dead-letter topic holds and the newest ``n`` of them."""
    topic = settings.topics.deadletter
    ends = await end_offsets(settings, [topic])
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        tps = list(ends)
        begins = await consumer.beginning_offsets(tps) if tps else {}
        count = sum(max(0, ends[tp] - begins.get(tp, 0)) for tp in tps)
        todo = {tp: ends[tp] for tp in tps if ends[tp] > begins.get(tp, 0)}
        if not todo:
            return count, []
        consumer.assign(list(todo))
        for tp, end in todo.items():
            consumer.seek(tp, max(begins.get(tp, 0), end - n))
        letters: list[DeadLetter] = []
        for _ in range(30):
            batch = await consumer.getmany(*todo, timeout_ms=100)
            for tp, records in batch.items():
                for record in records:
                    if record.offset >= todo.get(tp, 0):
                        continue
                    try:
                        letters.append(msgspec.json.decode(record.value or b"",
                                                           type=DeadLetter))
                    except msgspec.DecodeError:
                        continue  # not ours: a foreign producer; skip, do not fail the page
                    if record.offset >= todo[tp] - 1:
                        todo.pop(tp)
            if not todo:
                break
        letters.sort(key=lambda dl: dl.failed_at, reverse=True)
        return count, letters[:n]
    finally:
        await consumer.stop()


class OpsSummary:
    """Builds the summary; one at a time, reused for ``ttl_s`` (pages poll every few s)."""

    def __init__(self, settings: Settings, client: aioredis.Redis, keys: Keys,
                 holder: ModelHolder, ttl_s: float = 2.0) -> None:
        self.settings = settings
        self.client = client
        self.keys = keys
        self.holder = holder
        self.ttl_s = ttl_s
        self.rate = RateSampler()
        self._lock = asyncio.Lock()
        self._last: tuple[float, dict[str, Any]] | None = None

    async def get(self, cache: dict[str, int]) -> dict[str, Any]:
        async with self._lock:
            now = time.monotonic()
            if self._last is None or now - self._last[0] >= self.ttl_s:
                self._last = (now, await self._build())
            body = dict(self._last[1])
        hits, misses = cache.get("hits", 0), cache.get("misses", 0)
        body["cache"] = {"hits": hits, "misses": misses,
                         "hit_rate": round(hits / (hits + misses), 4) if hits + misses else None}
        body["latency"] = latency_percentiles()
        return body

    async def _build(self) -> dict[str, Any]:
        events, lag, dead = await asyncio.gather(self._events(), self._lag(), self._dead())
        return {"at": time.time(), "events": events, "lag": lag, "deadletters": dead,
                "model": self._model()}

    async def _events(self) -> dict[str, Any]:
        try:
            pipe = self.client.pipeline(transaction=False)
            shards = queue_applied(pipe, self.keys)
            pipe.hgetall(self.keys.control("workers"))
            got = await pipe.execute()
        except Exception as exc:  # the page shows what failed instead of failing itself
            return {"error": f"store unavailable: {type(exc).__name__}"}
        applied, workers_raw = sum_applied(got[:shards]), got[shards]
        per_s = self.rate.add(time.monotonic(), applied)
        workers = {k.decode(): int(v) for k, v in workers_raw.items()}
        return {"applied_total": applied, "per_s": per_s, "window_s": self.rate.window_s,
                "workers": workers}

    async def _lag(self) -> dict[str, Any]:
        try:
            async with asyncio.timeout(BROKER_TIMEOUT_S):
                lag = await group_lag(self.settings)
        except Exception as exc:
            return {"error": f"broker unavailable: {type(exc).__name__}"}
        rows = [{"topic": tp.topic, "partition": tp.partition, "lag": n}
                for tp, n in sorted(lag.items(), key=lambda kv: (kv[0].topic, kv[0].partition))]
        return {"total": sum(lag.values()), "partitions": rows}

    async def _dead(self) -> dict[str, Any]:
        try:
            async with asyncio.timeout(BROKER_TIMEOUT_S):
                count, letters = await deadletter_tail(self.settings)
        except Exception as exc:
            return {"error": f"broker unavailable: {type(exc).__name__}"}
        return {"count": count, "latest": [
            {"reason": dl.reason, "topic": dl.topic, "partition": dl.partition,
             "offset": dl.offset, "failed_at": dl.failed_at} for dl in letters]}

    def _model(self) -> dict[str, Any]:
        art = self.holder.current
        if art is None:
            return {"version": None}
        return {"version": art.version, "created_at": art.created_at,
                "age_s": round(time.time() - art.created_at, 1), "items": len(art.item_ids)}

