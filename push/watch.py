"""Price drop and back in stock: a catalog change becomes one push trigger per watcher.

A catalog event lives in the item's shard; the customers who viewed, favourited or
carted the item live in theirs (each shard keeps its own watchers index,
``push:watch:<item>``). So the worker that applies a catalog batch compares each upsert
with the stored item *before* applying it and writes one ``push.item_changed`` event per
watcher (keyed by the customer); the fold of that event schedules the trigger in the
customer's shard. The events are produced, and acked, before the batch is applied: a
crash in between redelivers the batch, the comparison finds the same changes and the
same event ids, and the store's dedupe keeps one of each.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis

from aisle.settings import PushSettings
from feature_store.keys import Keys
from streams import events as ev
from streams.topics import EventProducer


@dataclass(slots=True)
class _Item:
    ts: float
    price: float
    stock: int | None
    removed: bool


@dataclass(frozen=True, slots=True)
class Change:
    event: ev.CatalogItemUpserted
    kind: str  # price_drop | back_in_stock
    previous_price: float


def changes(upserts: Sequence[ev.CatalogItemUpserted], stored: dict[str, _Item | None],
            min_drop_pct: float) -> list[Change]:
    """The upserts that cut the price by ``min_drop_pct`` or more, or restock an item that
    was sold out, in log order. Older upserts than the stored state change nothing (the
    store ignores them too). Pure: ``stored`` is what the store held before the batch."""
    state = dict(stored)
    out: list[Change] = []
    for e in upserts:
        p, old = e.payload, state.get(e.payload.item_id)
        if old is not None and e.ts < old.ts:
            continue
        if old is not None and not old.removed:
            if old.price > 0 and p.price <= old.price * (1 - min_drop_pct / 100):
                out.append(Change(e, "price_drop", old.price))
            elif old.stock == 0 and p.stock is not None and p.stock > 0:
                out.append(Change(e, "back_in_stock", old.price))
        state[p.item_id] = _Item(e.ts, p.price, p.stock if p.stock is not None
                                 else (old.stock if old else None), False)
    return out


class ItemWatchers:
    def __init__(self, client: aioredis.Redis, keys: Keys, settings: PushSettings) -> None:
        self.client, self.keys, self.s = client, keys, settings

    async def before_apply(self, upserts: Sequence[ev.CatalogItemUpserted],
                           producer: EventProducer) -> int:
        """Write the push.item_changed events these upserts imply; returns how many."""
        stored = await self._stored(list(dict.fromkeys(e.payload.item_id for e in upserts)))
        found = changes(upserts, stored, self.s.price_drop_min_pct)
        if not found:
            return 0
        out: list[ev.PushItemChanged] = []
        for ch in found:
            for user in await self._watchers(ch.event):
                out.append(_event(ch, user))
        await producer.send_events(out)
        return len(out)

    async def _stored(self, items: list[str]) -> dict[str, _Item | None]:
        """The stored state of ``items``: one script call per shard, not one HMGET per
        item (an HMGET each was a fifth of a worker's CPU on a catalog-heavy log,
        benchmarks/README.md). Items never stored come back as None."""
        by_shard: dict[int, list[str]] = {}
        for item in items:
            by_shard.setdefault(self.keys.shard_of(item), []).append(item)
        pipe = self.client.pipeline(transaction=False)
        for group in by_shard.values():  # all keys of one call share a hash slot
            pipe.eval(_READ_ITEMS, len(group), *(self.keys.item(i) for i in group))
        stored: dict[str, _Item | None] = dict.fromkeys(items)
        for group, flat in zip(by_shard.values(), await pipe.execute(), strict=True):
            for at in range(0, len(flat), 5):
                stored[group[int(flat[at]) - 1]] = _parse(flat[at + 1:at + 5])
        return stored

    async def _watchers(self, e: ev.CatalogItemUpserted) -> list[str]:
        pipe = self.client.pipeline(transaction=False)
        for shard in range(self.keys.shards):
            pipe.zrangebyscore(self.keys.push_watch(shard, e.payload.item_id),
                               repr(e.ts - self.s.watch_window_s), "+inf")
        return sorted({m.decode() if isinstance(m, bytes) else m
                       for part in await pipe.execute() for m in part})


# KEYS: item hashes of one shard → flat [index, ts, price, stock, removed] of the stored
# ones (a missing field is a nil reply; an absent item has no ``ts`` and is left out).
_READ_ITEMS = """
local out = {}
for i, key in ipairs(KEYS) do
  local row = redis.call('HMGET', key, 'ts', 'price', 'stock', 'removed')
  if row[1] then
    out[#out + 1] = i
    for j = 1, 4 do out[#out + 1] = row[j] end
  end
end
return out
"""


def _parse(row: list[bytes | None]) -> _Item | None:
    ts, price, stock, removed = row
    if ts is None:
        return None
    return _Item(float(ts), float(price or 0.0), int(float(stock)) if stock is not None
                 else None, bool(removed) and float(removed) != 0)


def _event(ch: Change, user: str) -> ev.PushItemChanged:
    e, p = ch.event, ch.event.payload
    eid = "pi-" + hashlib.blake2b(f"{e.event_id}|{user}".encode(), digest_size=12).hexdigest()
    return ev.PushItemChanged(
        event_id=eid, user_id=user, occurred_at=e.occurred_at, source="aisle.push",
        payload=ev.ItemChange(item_id=p.item_id, change=ch.kind,  # type: ignore[arg-type]
                              price=p.price, previous_price=ch.previous_price,
                              catalog_event_id=e.event_id))
