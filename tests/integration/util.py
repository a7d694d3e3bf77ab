"""Helpers for tests that wait on a real pipeline."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from feature_store.client import open_redis
from feature_store.keys import Keys
from models.artifacts import ModelArtifact, load_current

if TYPE_CHECKING:
    import httpx
    import redis

    from aisle.settings import Settings
    from aisle.stack import Stack

T = TypeVar("T")
BASE = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)


def eventually(check: Callable[[], T], timeout: float = 30.0, every: float = 0.1) -> T:
    """Poll until ``check()`` is truthy; fail with its last value after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"condition not met in {timeout}s; last value: {last!r}")


async def eventually_async(check: Callable[[], Awaitable[T]], timeout: float = 10.0,
                           every: float = 0.1) -> T:
    """:func:`eventually` for a check that awaits (a request to an in-process app)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(every)
    raise AssertionError(f"condition not met in {timeout}s; last value: {last!r}")


def uid(prefix: str = "u") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def event(type_: str, payload: dict[str, Any], user_id: str | None, minutes: float = 0,
          **extra: Any) -> dict[str, Any]:
    """An event document as a shop would POST it."""
    doc = {"type": type_, "event_id": uuid.uuid4().hex, "user_id": user_id,
           "occurred_at": (BASE + timedelta(minutes=minutes)).isoformat(),
           "source": "test", "payload": payload, **extra}
    return {k: v for k, v in doc.items() if v is not None}


def catalog(item_id: str, title: str, minutes: float = -60, **fields: Any) -> dict[str, Any]:
    return event("catalog.item_upserted", {"item_id": item_id, "title": title, **fields},
                 None, minutes)


def keys_of(stack: Stack) -> Keys:
    return Keys(stack.settings.features.key_prefix, stack.settings.features.shards)


def loaded(api: httpx.Client, version: str) -> bool:
    """Whether the API serves model ``version`` yet."""
    return api.get("/readyz").json().get("model_version") == version


def customers(stack: Stack, store: redis.Redis | redis.RedisCluster,
              min_orders: int = 3) -> list[str]:
    """The stack's customers with at least ``min_orders`` orders, read from the store."""
    k = keys_of(stack)
    out = []
    for shard in range(k.shards):
        for raw in sorted(store.smembers(k.users(shard))):
            n = store.hget(k.user(raw.decode(), "rfm"), "orders")
            if n and float(n) >= min_orders:
                out.append(raw.decode())
    return sorted(out)


def current_model(stack: Stack) -> ModelArtifact | None:
    """The model the store serves now, read as the API and workers read it."""
    async def load() -> ModelArtifact | None:
        client = open_redis(stack.settings)
        try:
            return await load_current(client, stack.settings.features.key_prefix)
        finally:
            await client.aclose()

    return asyncio.run(load())


@contextlib.contextmanager
def stack_over_slice(settings: Settings, rows: int = 3_000, api: bool = True,
                     data: Path | None = None) -> Iterator[Stack]:
    """One worker (and the API) over the first ``rows`` rows of Online Retail, caught up;
    stopped on the way out. What most module fixtures start."""
    from aisle.replay import replay_file
    from aisle.stack import Stack
    from streams.lag import wait_caught_up
    from tests.conftest import ONLINE_RETAIL

    stack = Stack.start(settings, workers=1, api=api)
    try:
        asyncio.run(replay_file(settings, data or ONLINE_RETAIL, limit_rows=rows))
        asyncio.run(wait_caught_up(settings, timeout=120))
        yield stack
    finally:
        stack.stop()


class FoldedStore:
    """A fresh key prefix on the session's Valkey: events folded and applied as a worker
    applies them (``apply``), for a test that reads what they left."""

    def __init__(self, redis_url: str, tag: str, shards: int = 4) -> None:
        import redis.asyncio as aioredis

        from aisle.settings import Settings
        from feature_store.redis_store import RedisStore
        from feature_store.updates import Folder

        settings = Settings()
        self.keys = Keys(f"{tag}{uuid.uuid4().hex[:6]}", shards)
        self.folder = Folder(self.keys, settings.features, settings.model)
        self.client = aioredis.Redis.from_url(redis_url)
        self.store = RedisStore(self.client, self.keys, 86400.0)
        self.offset = 0

    async def apply(self, *events: Any) -> None:
        batches: dict[int, list[Any]] = {}
        for e in events:
            batches.setdefault(self.folder.shard(e), []).append(
                (e.event_id, self.offset, e.ts, self.folder.fold(e)))
            self.offset += 1
        await self.store.apply_many([(shard, "t/0", b) for shard, b in batches.items()])


@contextlib.asynccontextmanager
async def started_apps(*settings: Settings) -> AsyncIterator[list[tuple[Any, httpx.AsyncClient]]]:
    """An API app made in this process for each of ``settings``, started, each with a
    client that calls it directly: (app, client) pairs."""
    import httpx

    from serving.app import create_app

    async with contextlib.AsyncExitStack() as stack:
        out = []
        for s in settings:
            app = create_app(s)
            await stack.enter_async_context(app.router.lifespan_context(app))
            client = await stack.enter_async_context(
                httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t"))
            out.append((app, client))
        yield out
