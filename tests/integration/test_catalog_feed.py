"""The API's catalog cache follows the catalog's change feed: a changed item is re-read
within a check (~1 s), an unchanged one is not re-read, a store emptied behind the
API's back drops everything it held."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from feature_store.reader import CATALOG_CHECK_S, FeatureReader
from streams import events as ev
from tests.integration.util import FoldedStore

pytestmark = pytest.mark.integration
T0 = datetime(2011, 1, 1, tzinfo=UTC)


def upsert(n: int, item: str, title: str, stock: int = 5) -> ev.CatalogItemUpserted:
    return ev.CatalogItemUpserted(event_id=f"c{n}-{uuid.uuid4().hex[:6]}",
                                  occurred_at=T0 + timedelta(minutes=n),
                                  payload=ev.CatalogItem(item_id=item, title=title,
                                                         price=1.0, stock=stock))


async def _scenario(redis_url: str) -> dict[str, object]:
    folded = FoldedStore(redis_url, "cf")
    client, keys, apply = folded.client, folded.keys, folded.apply

    items = [f"i{n}" for n in range(12)]
    await apply(*(upsert(1, i, f"old {i}") for i in items))
    reader = FeatureReader(client, keys, ttl=0.2, revalidate_s=0.2, catalog_max_age_s=60.0)
    out: dict[str, object] = {}
    try:
        first = await reader.items(items)
        await asyncio.sleep(0.5)  # past the plain TTL: without the feed all would re-read
        reads_before = reader.item_reads
        await apply(upsert(2, "i3", "new i3", stock=0), upsert(2, "i7", "new i7"))
        served_at_once = (await reader.items(items))["i3"].title
        await asyncio.sleep(CATALOG_CHECK_S + 0.1)
        await reader.items(items)  # starts the check in the background
        await asyncio.sleep(0.2)
        after = await reader.items(items)
        out.update(first={i: first[i].title for i in items},
                   served_at_once=served_at_once,
                   after={i: after[i].title for i in items}, stock_i3=after["i3"].stock,
                   invalidated=reader.catalog_invalidated,
                   reread=reader.item_reads - reads_before)
        # The store emptied and rebuilt with fewer catalog changes: the counter went back.
        await client.delete(*[k for k in await client.keys(f"{{{keys.prefix}:*")])
        await apply(upsert(3, "i1", "rebuilt i1"))
        await asyncio.sleep(CATALOG_CHECK_S + 0.1)
        await reader.items(items)
        await asyncio.sleep(0.2)
        out["after_rebuild"] = {i: info.title for i, info in (await reader.items(items)).items()}

        # `aisle rebuild` holds its lock while it refills the store, whose counters may
        # climb past the API's within a check: a check that sees the lock, or saw it last
        # time, drops everything. The item is rewritten here without a numbered change,
        # which only the dropping can show.
        async def title_after_a_check(title: str) -> str:
            await client.hset(keys.item("i1"), "title", title)
            await asyncio.sleep(CATALOG_CHECK_S + 0.1)
            await reader.items(["i1"])  # starts the check
            await asyncio.sleep(0.2)
            return (await reader.items(["i1"]))["i1"].title

        await client.set(keys.control("rebuild"), b"1")
        out["rebuilding"] = await title_after_a_check("during the rebuild")
        await client.delete(keys.control("rebuild"))
        out["rebuilt"] = await title_after_a_check("after the rebuild")
        out["unnumbered"] = await title_after_a_check("not in the feed")  # kept: no lock
    finally:
        await reader.close()
        await client.aclose()
    return out


def test_the_item_cache_drops_what_changed_and_keeps_the_rest(redis_url: str) -> None:
    got = asyncio.run(_scenario(redis_url))
    assert got["first"] == {f"i{n}": f"old i{n}" for n in range(12)}
    assert got["served_at_once"] == "old i3"  # within a check, the cached entry answers
    want = {f"i{n}": f"old i{n}" for n in range(12)} | {"i3": "new i3", "i7": "new i7"}
    assert got["after"] == want
    assert got["stock_i3"] == 0
    assert got["invalidated"] == 2
    assert got["reread"] == 2  # the ten unchanged items were not read again
    assert got["after_rebuild"] == {"i1": "rebuilt i1"}  # the others are gone from the store
    assert got["rebuilding"] == "during the rebuild"
    assert got["rebuilt"] == "after the rebuild"
    assert got["unnumbered"] == "after the rebuild"  # what the max age is a backstop for
