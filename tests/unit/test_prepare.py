"""Folding a batch in chunks that yield to the event loop gives the batch that one
synchronous fold gives: same shard batches in log order, dead letters, customers to fold
in and catalog upserts (the worker relies on it, streams/app.py)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from aisle.settings import Settings
from feature_store.keys import Keys
from feature_store.redis_store import RedisStore
from feature_store.updates import Folder, day_of, month_of
from streams import events as ev
from streams.pipeline import BatchProcessor, Record

T0 = datetime(2017, 11, 25, 23, 59, tzinfo=UTC)


def records() -> list[Record]:
    out: list[Record] = []
    for i in range(60):
        t = T0 + timedelta(seconds=7 * i)
        if i % 13 == 5:
            value = b'{"type": "product.viewed", "nope": 1}'
        elif i % 4 == 0:
            value = ev.encode_event(ev.CatalogItemUpserted(
                event_id=f"c{i}", occurred_at=t, payload=ev.CatalogItem(
                    item_id=f"i{i % 7}", title="mug", category="kitchen", price=3.0 + i)))
        else:
            value = ev.encode_event(ev.ProductViewed(
                event_id=f"e{i}", occurred_at=t, user_id=f"u{i % 5}", session_id="s",
                payload=ev.ItemRef(item_id=f"i{i % 7}", category="kitchen")))
        out.append(Record("events", i % 3, i, None, value))
    return out


def processor() -> BatchProcessor:
    s = Settings()
    folder = Folder(Keys("t", 4), s.features, s.model, s.push)
    return BatchProcessor(RedisStore.__new__(RedisStore), folder, None)


def test_chunked_fold_equals_one_fold() -> None:
    recs = records()
    whole = processor().prepare(recs)
    for chunk in (1, 7, 250):
        parts = asyncio.run(processor().prepare_yielding(recs, chunk=chunk))
        assert parts.records == whole.records == len(recs)
        assert parts.batches == whole.batches
        assert [d.offset for d in parts.letters] == [d.offset for d in whole.letters]
        assert parts.users == whole.users and len(parts.users) == 5
        assert parts.upserts == whole.upserts and len(parts.upserts) == 14


def test_cached_event_time_and_days_match_the_datetime() -> None:
    for minutes in (0, 1, 59 * 24 * 60 + 1):
        t = T0 + timedelta(minutes=minutes)
        e = ev.decode_event(ev.encode_event(ev.ProductViewed(
            event_id="e", occurred_at=t, user_id="u", payload=ev.ItemRef(item_id="i"))))
        assert e.ts == t.timestamp()
        assert e == ev.ProductViewed(event_id="e", occurred_at=t, user_id="u",
                                     payload=ev.ItemRef(item_id="i"))
        assert day_of(e.ts) == t.strftime("%Y-%m-%d")
        assert month_of(e.ts) == t.strftime("%Y-%m")
