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
    "xp",        # hash <experiment>|v|f|l|x|e|c|o|r -> variant, first/last exposure ts,
                 # pre-period spend, exposures, clicks, orders, revenue (A/B attribution)
    "xreq",      # hash request_id -> "exp=variant;..." exposures not clicked yet
    "xreql",     # list of request ids, newest first (bounds xreq)
    "xshown",    # hash request_id -> "<ts> ,item,item," what the answer showed, and when
    "consent",   # hash ts, push (1/0), tz: what the customer agreed to (consent.updated)
    "pushlog",   # zset "<candidate_id>|<reason>" -> ts pushed (frequency caps), newest 100
    "pushkeys",  # hash dedupe key -> ts last pushed
    "pushitems",  # hash item -> ts last pushed (the fatigue ledger the website reads)
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

    def user_prefix(self, user_id: str) -> str:
        """What every key of the customer starts with: ``user(id, s) == user_prefix(id) + s``
        (a fold builds several keys of one customer from it)."""
        return _user_base(self.prefix, self.shards, user_id)

    def user_of(self, key: bytes) -> str | None:
        """The customer a key belongs to, None for any other key (the store's
        invalidation messages name keys; feature_store/tracking.py).

        >>> Keys("a", 8).user_of(b"{a:1}:u:17850:views"), Keys("a", 8).user_of(b"{a:1}:i:9")
        ('17850', None)
        """
        head = f"{{{self.prefix}:".encode()
        at = key.find(b"}:u:")
        if not key.startswith(head) or at < 0:
            return None
        user, colon, _ = key[at + 4:].rpartition(b":")
        return user.decode(errors="replace") if colon else None

    def user_keys(self, user_id: str) -> list[str]:
        return [self.user(user_id, s) for s in USER_SUFFIXES]

    # -- per item (catalog lives in the item's own shard)
    def item(self, item_id: str) -> str:
        return f"{self.tag(self.shard_of(item_id))}:i:{item_id}"

    # -- item aggregates, partial per shard
    def catalog_changes(self, shard: int) -> str:
        """zset: item -> the shard's catalog sequence number when it last changed (the
        counter is the ``catalog`` field of :meth:`meta`); the API's item cache reads it."""
        return f"{self.tag(shard)}:catalog:changes"

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

    # -- experiments (A/B): definitions in the shard of EXPERIMENTS_KEY; statistics as
    # per-shard partials, written by the customer's events, merged on read
    def experiment_defs(self, experiments_key: str) -> str:
        return f"{self.tag(self.shard_of(experiments_key))}:x:defs"

    def experiment_times(self, experiments_key: str) -> str:
        return f"{self.tag(self.shard_of(experiments_key))}:x:times"

    def experiment_stats_prefix(self, shard: int) -> str:
        return f"{self.tag(shard)}:x:st:"

    def experiment_stats(self, shard: int, experiment_id: str) -> str:
        return f"{self.experiment_stats_prefix(shard)}{experiment_id}"
    # -- push notifications, per shard (docs/push.md)
    def push_due(self, shard: int) -> str:
        """zset "<user>|<reason>|<ref>" -> due time (log clock): triggers waiting to fire."""
        return f"{self.tag(shard)}:push:due"

    def push_lease(self, shard: int) -> str:
        """zset trigger -> wall-clock lease expiry of the worker that claimed it."""
        return f"{self.tag(shard)}:push:lease"

    def push_sent(self, shard: int) -> str:
        """hash candidate id -> wall time Kafka acked it, until its decision is folded."""
        return f"{self.tag(shard)}:push:sent"

    def push_sending(self, shard: int) -> str:
        """hash candidate id -> [partition, offset before sending, decision]: in flight."""
        return f"{self.tag(shard)}:push:sending"

    def push_stats(self, shard: int) -> str:
        """hash "<outcome>:<rule>" -> count of decisions (emitted by reason, dropped by rule)."""
        return f"{self.tag(shard)}:push:stats"

    def push_watch(self, shard: int, item_id: str) -> str:
        """zset customer -> last interest time: who in this shard watches the item."""
        return f"{self.tag(shard)}:push:watch:{item_id}"

    def push_watch_prefix(self, shard: int) -> str:
        return f"{self.tag(shard)}:push:watch:"

    # -- outside the shards
    def model_tag(self) -> str:
        return f"{{{self.prefix}:m}}"

    def control(self, name: str) -> str:
        """Cluster-wide control keys (rebuild lock, train lock)."""
        return f"{{{self.prefix}:ctl}}:{name}"

    def all_patterns(self) -> list[str]:
        return [f"{{{self.prefix}:*"]
