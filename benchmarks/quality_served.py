"""Recommendations as served: the training log through the worker's code into a real
Valkey, the model trained and published by ``train_once``, answers from the API's
``RecommendationService`` (in process, no HTTP).

``StoreSession`` owns one key prefix in a Valkey; ``replay`` applies events exactly as
a worker does (``BatchProcessor``: fold → Lua per shard → fold-in of the customers a
batch touched, once a model is published).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis

from aisle.settings import Settings
from feature_store.keys import Keys
from feature_store.reader import FeatureReader
from feature_store.redis_store import RedisStore
from feature_store.updates import Folder
from models.artifacts import ModelArtifact
from models.customer import load_segment_rules
from models.online import ModelHolder, UserVectorUpdater
from models.population import refresh as refresh_population
from models.train import train_once
from serving.crm import CustomerService, PopulationHolder
from serving.service import RecommendationService
from streams.events import AnyEvent, encode_event
from streams.pipeline import BatchProcessor, Record

BATCH = 2000


@dataclass
class StoreSession:
    settings: Settings
    client: aioredis.Redis
    keys: Keys
    holder: ModelHolder
    processor: BatchProcessor
    offset: int = 0

    @classmethod
    def open(cls, settings: Settings) -> StoreSession:
        client = aioredis.Redis.from_url(settings.redis_url or "", decode_responses=False)
        keys = Keys(settings.features.key_prefix, settings.features.shards)
        # The ALS pool as the API serves it (by norm above the size threshold).
        holder = ModelHolder(client, settings.features.key_prefix,
                             settings.serving.als_pool_order_min_items)
        vectors = UserVectorUpdater(client, keys, holder, settings.model.half_life_d * 86400)
        processor = BatchProcessor(
            RedisStore(client, keys, settings.features.dedupe_window_s),
            Folder(keys, settings.features, settings.model), None, vectors,
            respect_rebuild=False)
        return cls(settings, client, keys, holder, processor)

    async def replay(self, events: Sequence[AnyEvent]) -> float:
        """Apply ``events`` in batches as a worker would; seconds taken."""
        started = time.perf_counter()
        for start in range(0, len(events), BATCH):
            records = [Record("eval", 0, self.offset + n, None, encode_event(ev))
                       for n, ev in enumerate(events[start:start + BATCH])]
            self.offset += len(records)
            await self.processor.process(records)
        return time.perf_counter() - started

    async def train(self) -> ModelArtifact:
        art = await train_once(self.settings, self.client)
        await self.holder.refresh()
        await self.holder.order_ready()  # answers as a settled API gives them
        return art

    async def service(self) -> RecommendationService:
        """A fresh service (empty caches) over the store, with customer intelligence as
        the API builds it (population stats refreshed first)."""
        await refresh_population(self.client, self.keys, load_segment_rules())
        population = PopulationHolder(self.client, self.keys)
        await population.refresh()
        reader = FeatureReader(self.client, self.keys, self.settings.serving.cache_ttl_s)
        customers = CustomerService(reader, self.keys, population)
        # A generous store timeout: the eval shares 2 cores, and a timed-out read would
        # be scored as a degraded answer rather than the answer the store gives.
        return RecommendationService(self.settings, reader, self.holder, customers,
                                     store_timeout_s=10.0)

    async def wipe(self) -> None:
        """Delete every key of this prefix (features, control, model: all carry the tag)."""
        cursor = 0
        while True:
            cursor, names = await self.client.scan(
                cursor, match=f"{{{self.keys.prefix}:*", count=2000)
            if names:
                await self.client.unlink(*names)
            if cursor == 0:
                break

    async def close(self) -> None:
        await self.processor.close()
        await self.client.aclose()


async def recommend(service: RecommendationService, users: Sequence[str], k: int,
                    history: dict[str, set[str]] | None = None) -> dict[str, list[str]]:
    """Top-``k`` served lists; with ``history``, items the customer already touched are
    dropped from a longer answer (for the "new items only" truth)."""
    out = {}
    for user in users:
        seen = history.get(user, set()) if history is not None else set()
        answer = await service.recommendations(user, k + len(seen), None)
        out[user] = [s.item_id for s in answer.items if s.item_id not in seen][:k]
    return out


async def related(service: RecommendationService, anchors: Sequence[str], k: int,
                  ) -> dict[str, list[str]]:
    return {a: [s.item_id for s in (await service.related(a, k)).items] for a in anchors}
