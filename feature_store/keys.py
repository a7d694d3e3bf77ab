"""The key layout, as a spec. See ``docs/keys.md`` for the table; tests pin exact bytes.

State is split into *shards*. A shard is one Redis Cluster hash slot: every key of shard
``s`` starts with the hash tag ``{<prefix>:<s>}``. An event is folded into exactly one
shard — the shard of its routing key (the customer; for guest orders the order; for
catalog events the item) — so one Lua script per (batch, shard) updates everything the
event touches *and* its dedupe marks atomically, on a single Redis or on a Cluster.

The price: item aggregates (trending, co-view, co-purchase, buyer counts) are kept as
per-shard partial sums and merged on read (``shards`` small reads, pipelined).

>>> k = Keys("a", 8)
>>> k.shard_of("17850")
1
>>> k.user("17850", "views")
'{a:1}:u:17850:views'
>>> k.co("buy", 3, "85123A")
'{a:3}:co:buy:85123A'
"""

from __future__ import annotations

import functools
import zlib
from dataclasses import dataclass
from typing import Final

# Every per-user key suffix. Erasure deletes exactly these; adding one here is all it takes.
USER_SUFFIXES: Final = (
    "views",     # zset item -> last view ts (bounded recent views)
    "cart",      # hash item -> quantity
    "hist",      # list of JSON [order, item, ts, qty, amount, category], newest first (bounded)
    "bought",    # hash item -> number of orders that contained it
    "orders",    # hash order_id -> amount (for whole-order cancellations)
    "rfm",       # hash first_ts, last_ts, orders, monetary, cancels
    "cat",       # zset category -> forward-decayed log affinity
    "ia",        # zset item -> forward-decayed log interaction weight (ALS input)
    "fav",       # zset item -> ts favourited
    "dislikes",  # hash attribute:value -> json reason
    "neg",       # hash item -> json reason (complaint, low rating)
    "sess",      # hash id -> current session id
    "sitems",    # zset item -> ts, items of the current session (co-view)
    "spend",     # hash YYYY-MM -> spend that month (member tiers)
    "src",       # hash source/channel -> events
    "offers",    # hash offer_id -> JSON of the issued offer
    "ostate",    # hash offer_id -> redeemed | expired (first terminal state wins)
    "life",      # list of JSON [stage, ts], newest first (lifecycle transitions)
    "vec",       # string: model version + float32 fold-in vector (derived, not dumped)
)
DERIVED_USER_SUFFIXES: Final = frozenset({"vec"})


@functools.lru_cache(maxsize=1 << 16)
def _shard(routing_key: str, shards: int) -> int:
    # Cached: one event names the same customer a dozen times while it is folded.
    return zlib.crc32(routing_key.encode()) % shards


@functools.lru_cache(maxsize=1 << 16)
def _user_base(prefix: str, shards: int, user_id: str) -> str:
    # Cached for the same reason: a fold builds six or more keys of one customer.
    return f"{{{prefix}:{_shard(user_id, shards)}}}:u:{user_id}:"


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str = "a"
    shards: int = 8

    def shard_of(self, routing_key: str) -> int:
        # crc32, not Kafka's partitioner: state placement must not depend on which
        # client produced the event.
        return _shard(routing_key, self.shards)

    def tag(self, shard: int) -> str:
        return f"{{{self.prefix}:{shard}}}"

    # -- shard bookkeeping
    def watermarks(self, shard: int) -> str:
        return f"{self.tag(shard)}:wm"

    def seen(self, shard: int) -> str:
        return f"{self.tag(shard)}:seen"

    def meta(self, shard: int) -> str:
        return f"{self.tag(shard)}:meta"

    def users(self, shard: int) -> str:
        return f"{self.tag(shard)}:users"

    def items(self, shard: int) -> str:
        return f"{self.tag(shard)}:items"

    # -- per customer
    def user(self, user_id: str, suffix: str) -> str:
        return _user_base(self.prefix, self.shards, user_id) + suffix

    def user_keys(self, user_id: str) -> list[str]:
        return [self.user(user_id, s) for s in USER_SUFFIXES]

    # -- per item (catalog lives in the item's own shard)
    def item(self, item_id: str) -> str:
        return f"{self.tag(self.shard_of(item_id))}:i:{item_id}"

    # -- item aggregates, partial per shard
    def trending(self, shard: int) -> str:
        return f"{self.tag(shard)}:trend"

    def buyers(self, shard: int) -> str:
        return f"{self.tag(shard)}:buyers"

    def rebuyers(self, shard: int) -> str:
        return f"{self.tag(shard)}:rebuyers"

    def co(self, kind: str, shard: int, item_id: str) -> str:
        return f"{self.tag(shard)}:co:{kind}:{item_id}"

    def co_prefix(self, kind: str, shard: int) -> str:
        return f"{self.tag(shard)}:co:{kind}:"

    # -- outside the shards
    def model_tag(self) -> str:
        return f"{{{self.prefix}:m}}"

    def control(self, name: str) -> str:
        """Cluster-wide control keys (rebuild lock, train lock)."""
        return f"{{{self.prefix}:ctl}}:{name}"

    def all_patterns(self) -> list[str]:
        return [f"{{{self.prefix}:*"]
