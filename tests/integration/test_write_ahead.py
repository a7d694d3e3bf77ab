"""A worker sends each batch without waiting for the previous one's replies
(streams/ahead.py). On the real Valkey: the store script refuses a call whose previous
batch is not in; a batch that did not get in is written again before the next one, so
the state is what writing them one by one gives; and the push watchers' read waits
for an in-flight batch that changes the same item."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis.asyncio as aioredis

from aisle.settings import PushSettings, Settings
from feature_store.keys import Keys
from feature_store.multiplexed import Multiplexed
from feature_store.redis_store import SCRIPT, RedisStore
from feature_store.updates import Folder
from push.watch import ItemWatchers
from streams import events as ev
from streams.ahead import AheadWriter
from streams.pipeline import BatchProcessor, PreparedBatch, Record

pytestmark = pytest.mark.integration
T0 = datetime(2024, 5, 1, tzinfo=UTC)
SHARDS = 4


def _views(first: int, n: int) -> list[Record]:
    """Views of a few customers on one partition, offsets ``first``..``first + n - 1``."""
    out = []
    for i in range(first, first + n):
        e = ev.ProductViewed(event_id=f"v{i}", occurred_at=T0 + timedelta(seconds=i),
                             user_id=f"u{i % 5}", session_id=f"s{i % 2}",
                             payload=ev.ItemRef(item_id=f"i{i % 7}", category="mugs"))
        out.append(Record("events", 0, i, None, ev.encode_event(e)))
    return out


def _upsert(offset: int, item: str, price: float) -> Record:
    e = ev.CatalogItemUpserted(event_id=f"c{offset}", occurred_at=T0 + timedelta(seconds=offset),
                               payload=ev.CatalogItem(item_id=item, title="mug",
                                                      category="mugs", price=price))
    return Record("catalog", 0, offset, None, ev.encode_event(e))


def _processor(client: aioredis.Redis, prefix: str, **kw: Any) -> BatchProcessor:
    s = Settings()
    keys = Keys(prefix, SHARDS)
    return BatchProcessor(RedisStore(client, keys, 86400.0),
                          Folder(keys, s.features, s.model, s.push), None,
                          respect_rebuild=False, **kw)


async def _state(store: RedisStore, prefix: str) -> dict[str, Any]:
    """The prefix's state, with the prefix taken out of the keys."""
    return {k.replace(f"{{{prefix}:", "{P:"): v for k, v in (await store.dump()).items()}


@contextlib.asynccontextmanager
async def _connected(redis_url: str) -> AsyncIterator[tuple[aioredis.Redis, Multiplexed]]:
    """redis-py's client and the ordered connection a worker writes ahead on."""
    client = aioredis.Redis.from_url(redis_url)
    mux = Multiplexed.of(client)
    assert mux is not None
    try:
        yield client, mux
    finally:
        await mux.close()
        await client.aclose()


async def _as_one_by_one(client: aioredis.Redis, store: RedisStore, prefix: str,
                         chunks: list[list[Record]]) -> None:
    """The state under ``prefix`` is what applying ``chunks`` one by one leaves."""
    ref = f"wr{uuid.uuid4().hex[:6]}"
    one_by_one = _processor(client, ref)
    for records in chunks:
        await one_by_one.apply(one_by_one.prepare(records))
    assert await _state(store, prefix) == await _state(one_by_one.store, ref)


class GatedStore(RedisStore):
    """The store, with writes through redis-py (the writer's retry path) held at a gate."""

    gate: asyncio.Event

    async def apply_many(self, batches: Any) -> tuple[int, int, int]:
        await self.gate.wait()
        return await super().apply_many(batches)


def test_the_script_refuses_a_call_whose_previous_batch_is_not_in(redis_url: str) -> None:
    async def go() -> None:
        client = aioredis.Redis.from_url(redis_url)
        prefix = f"wa{uuid.uuid4().hex[:6]}"
        p = _processor(client, prefix)
        try:
            prepared = p.prepare(_views(10, 20))
            sha = await p.store.script_sha()
            calls = list(prepared.batches.items())
            (shard, source), batch = calls[0]
            refused = await client.execute_command(
                *p.store.command(sha, shard, source, batch, after=9))
            assert [int(x) for x in refused] == [0, 0, 0, 1]
            assert await client.hget(p.keys.watermarks(shard), source) is None
            assert await _state(p.store, prefix) == {}
            # The previous batch (offsets up to 9) in: the same call applies.
            await client.hset(p.keys.watermarks(shard), source, 9)
            done = await client.execute_command(
                *p.store.command(sha, shard, source, batch, after=9))
            assert [int(x) for x in done] == [len(batch), 0, 0, 0]
        finally:
            await client.aclose()

    asyncio.run(go())


def test_a_batch_that_did_not_get_in_is_written_again_before_the_next(redis_url: str) -> None:
    """Batch N's calls fail (the server lost its scripts) while N+1, sent right behind
    them after the script is back, would succeed: N+1 must be refused, not applied
    ahead of N (its watermarks would then skip N's events for good), and both end up
    in, as writing them one by one leaves the store."""
    async def go() -> None:
        async with _connected(redis_url) as (client, mux):
            prefix = f"wa{uuid.uuid4().hex[:6]}"
            p = _processor(client, prefix)
            gated = GatedStore(client, p.keys, 86400.0)
            gated.gate = asyncio.Event()
            p.store = gated
            writer = AheadWriter(p, mux)
            first, second = _views(0, 40), _views(40, 40)
            sha = await p.store.script_sha()
            await client.script_flush()
            done_n = await writer.write(p.prepare(first))
            await asyncio.sleep(0.2)  # N's calls answered NOSCRIPT; its retry waits at the gate
            assert await client.script_load(SCRIPT) == sha
            done_next = await writer.write(p.prepare(second))
            await asyncio.sleep(0.2)
            assert await _state(p.store, prefix) == {}  # N+1 refused, nothing applied
            gated.gate.set()
            results = await asyncio.gather(done_n, done_next)
            assert [r.applied for r in results] == [40, 40]
            assert writer.redone == len(p.prepare(first).batches) + len(
                p.prepare(second).batches)
            await _as_one_by_one(client, p.store, prefix, [first, second])

    asyncio.run(go())


def test_batches_sent_ahead_leave_what_one_by_one_leaves(redis_url: str) -> None:
    async def go() -> None:
        async with _connected(redis_url) as (client, mux):
            prefix = f"wa{uuid.uuid4().hex[:6]}"
            p = _processor(client, prefix)
            writer = AheadWriter(p, mux)
            chunks = [_views(n * 50, 50) for n in range(6)]
            dones = [await writer.write(p.prepare(c)) for c in chunks]
            await writer.drain()
            assert [d.result().applied for d in dones] == [50] * 6
            assert writer.redone == 0
            await _as_one_by_one(client, p.store, prefix, chunks)

    asyncio.run(go())


class Recording(BatchProcessor):
    """Notes, at each before_write, whether every batch sent before is applied."""

    seen: list[bool]
    writer: AheadWriter

    async def before_write(self, prepared: PreparedBatch) -> None:
        self.seen.append(all(sent.applied.done() for sent in self.writer._sent))
        await super().before_write(prepared)


def test_the_watchers_read_waits_for_a_batch_that_changes_the_same_item(
        redis_url: str) -> None:
    """A price change of an item the batch in flight also changes is compared with the
    item as that batch leaves it; one of another item is compared at once."""
    async def go() -> None:
        async with _connected(redis_url) as (client, mux):
            s = Settings()
            keys = Keys(f"wa{uuid.uuid4().hex[:6]}", SHARDS)
            p = Recording(RedisStore(client, keys, 86400.0),
                          Folder(keys, s.features, s.model, s.push), None,
                          respect_rebuild=False,
                          watchers=ItemWatchers(client, keys, PushSettings()))
            p.seen = []
            writer = p.writer = AheadWriter(p, mux)
            for batch in ([*_views(0, 300), _upsert(300, "x", 10.0)],
                          [*_views(301, 300), _upsert(601, "y", 9.0)],  # another item: at once
                          [*_views(602, 300), _upsert(902, "y", 5.0)]):  # y again: waits
                await writer.write(p.prepare(batch))
            await writer.drain()
            assert p.seen == [True, False, True]

    asyncio.run(go())
