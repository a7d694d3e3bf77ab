"""ASGI app factory. Clients open in the lifespan and live on ``app.state``; nothing at
module level talks to Redis or Kafka."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import redis.asyncio as aioredis
from aiokafka.errors import KafkaError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from threadpoolctl import threadpool_limits

from aisle.runtime import resolve
from aisle.settings import Settings
from feature_store.client import cancel_and_wait, open_redis
from feature_store.keys import Keys
from feature_store.multiplexed import pipelined
from feature_store.reader import FeatureReader
from feature_store.tracking import LocalCopies
from models.online import ModelHolder
from serving import routes, web
from serving.crm import CustomerService, PopulationHolder
from serving.errors import AisleError, BrokerUnavailable
from serving.experiments import ExperimentRegistry
from serving.gc_tuning import freeze_survivors, set_gen0_threshold
from serving.schemas import ErrorBody
from serving.service import RecommendationService
from streams.topics import EventProducer

log = logging.getLogger(__name__)


class Producer:
    """The Kafka producer, (re)started lazily so the API comes up without a broker."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._producer: EventProducer | None = None
        self._lock = asyncio.Lock()
        self.last_send_ok = True  # readiness reports the last send, not just "started once"

    async def get(self) -> EventProducer:
        if self._producer is not None:
            return self._producer
        async with self._lock:
            if self._producer is None:
                # linger_ms=0: a newly issued offer is shown only once Kafka acked its
                # event, and that answer should not wait 5 ms for other sends to join.
                producer = EventProducer(self.settings, request_timeout_ms=3000,
                                         metadata_max_age_ms=30_000, linger_ms=0)
                try:
                    async with asyncio.timeout(3):
                        await producer.__aenter__()
                except BaseException as exc:  # a caller cancelled mid-bootstrap too
                    with contextlib.suppress(Exception):
                        await producer.__aexit__(None, None, None)
                    if isinstance(exc, KafkaError | OSError | TimeoutError):
                        raise BrokerUnavailable(f"event broker unavailable: {exc!r}") from None
                    raise
                self._producer = producer
        return self._producer

    async def warm(self) -> None:
        """Connect now, in the background: the bootstrap is then off the first offer's or
        event's path, and ``/readyz`` knows the broker from the start. (Against the
        embedded broker the lazy start cost well under a second, and the first-visit
        burst of ``benchmarks/offers_timeline.py`` did not measurably change: it waits
        for CPU.) Without a broker the API still comes up; the next send tries again."""
        try:
            await self.get()
        except Exception as exc:  # BrokerUnavailable, or anything unexpected: never fatal
            log.warning("event broker not reachable at startup (%s); retried on first send",
                        exc)

    @property
    def started(self) -> bool:
        return self._producer is not None

    async def close(self) -> None:
        if self._producer is not None:
            await self._producer.__aexit__(None, None, None)


@dataclass
class AppState:
    settings: Settings
    redis: aioredis.Redis
    reader: FeatureReader
    holder: ModelHolder
    service: RecommendationService
    producer: Producer
    population: PopulationHolder
    customers: CustomerService
    experiments: ExperimentRegistry | None = None


def create_app(settings: Settings | None = None) -> Starlette:
    settings = resolve(settings or Settings())
    timeline = None
    if settings.serving.timeline_path is not None:
        from serving.timeline import Timeline

        timeline = Timeline(settings.serving.timeline_path)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # One BLAS thread: per-request math is tiny, and handing it to a second thread
        # costs more CPU than it saves (measured: 7 ms -> 2.5 ms per recommendation).
        # Scale with one API process per core instead.
        threadpool_limits(1, "blas")
        client = open_redis(settings, socket_timeout=1.0, socket_connect_timeout=1.0,
                            max_connections=64)
        keys = Keys(settings.features.key_prefix, settings.features.shards)
        local = (LocalCopies(keys.user_of, settings.serving.tracked_customers,
                             settings.serving.tracked_customers_mib << 20)
                 if settings.serving.tracked_customers > 0 else None)
        fast = pipelined(client, local)
        reader = FeatureReader(client, keys, settings.serving.cache_ttl_s,
                               revalidate_s=settings.serving.cache_ttl_s,
                               catalog_max_age_s=settings.serving.catalog_max_age_s,
                               fast=fast, local=local if fast is not None else None)
        holder = ModelHolder(client, settings.features.key_prefix,
                             settings.serving.als_pool_order_min_items)
        with contextlib.suppress(Exception):
            await holder.refresh()
        holder.start_polling(settings.worker.model_poll_s)
        population = PopulationHolder(client, keys)
        with contextlib.suppress(Exception):
            await population.refresh()
        population.start_polling(max(settings.worker.model_poll_s, 1.0))
        customers = CustomerService(reader, keys, population,
                                    cache_size=settings.serving.customer_cache_size)
        state = AppState(settings, client, reader, holder,
                         RecommendationService(settings, reader, holder, customers),
                         Producer(settings), population, customers)
        state.experiments = ExperimentRegistry(client, keys, settings.serving.cache_ttl_s)
        app.state.aisle = state
        if timeline is not None:
            timeline.start()
        warm_task = asyncio.create_task(state.producer.warm())
        gc_task = None
        set_gen0_threshold(settings.serving.gc_gen0_threshold)
        if settings.serving.gc_freeze_s > 0:
            gc_task = asyncio.create_task(freeze_survivors(settings.serving.gc_freeze_s))
        try:
            yield
        finally:
            if timeline is not None:  # first: its dump counts what is still frozen
                await timeline.stop()
            if gc_task is not None:
                await cancel_and_wait(gc_task)
            # Awaited, not cancelled: a cancelled bootstrap left aiokafka's connections
            # open (ResourceWarnings in the tests). It ends within get()'s 3 s.
            await warm_task
            await holder.stop()
            await population.stop()
            await routes.drain_exposures()
            await state.service.close()
            await state.experiments.close()
            await reader.close()
            await state.producer.close()
            await client.aclose()

    middleware = []
    if timeline is not None:
        from serving.timeline import TimelineMiddleware

        middleware.append(Middleware(TimelineMiddleware, timeline=timeline))
    if settings.serving.cors_origins:
        middleware.append(Middleware(CORSMiddleware, allow_origins=settings.serving.cors_origins,
                                     allow_methods=["GET", "POST"], allow_headers=["*"],
                                     expose_headers=["X-Request-ID"], max_age=600))
    app = Starlette(routes=[*routes.ROUTES, *web.ROUTES], lifespan=lifespan, middleware=middleware,
                    exception_handlers={AisleError: _aisle_error})  # type: ignore[dict-item]
    return app


async def _aisle_error(request: Request, exc: AisleError) -> Response:
    body = ErrorBody(routes.request_id(request), exc.error, exc.detail)
    return routes.json(body, exc.status, exc.headers)
