"""Customers' stored state copied into the API's memory, kept coherent by the store.

A recommendation or an offers answer starts with one read of the customer (sixteen keys,
``FeatureReader.customer_replies``). Most page views come from customers whose state has
not changed since their last one, and the read is most of what their answer costs once
the answer itself is kept (``serving/service.py``). Here the read's replies are kept per
customer, and the store says when they go stale: Redis 6+ and Valkey's server-assisted
client-side caching (``CLIENT TRACKING``). The pipelined connection turns tracking on in
``OPTIN`` mode with its invalidation messages redirected to a second connection
subscribed to ``__redis__:invalidate``; a customer read goes out as ``CLIENT CACHING yes``
+ ``MULTI``/``EXEC``, so the store remembers those keys for this process, and when any of
them is written, deleted or expires (a worker's batch, an erasure, a TTL), from any
client, it sends the key's name once. The copy of that customer is dropped.

The copy of a read is kept only if nothing could have changed in between. Invalidations
come on the other connection, so one may be read before or after the reply it races;
each invalidation is numbered (:attr:`LocalCopies.seq`), a read notes the number before
it is sent, and its replies are kept only if no invalidation of that customer came since
(the customers invalidated lately are remembered, :data:`RECENT_MAX` of them; past that,
reads sent before the oldest one forgotten are not kept). Losing either connection loses
the store's promise to tell: every copy is dropped, and reads are kept again once the
tracking is set up anew.

A copy is at most as stale as an invalidation's trip from the store (well under a
millisecond on one machine; the freshness benchmark measures produce → effect). The store
spends memory on its tracking table (``tracking-table-max-keys``; when full it evicts
keys by sending their invalidation, which costs a re-read, never a stale answer).
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable
from typing import Any, Protocol

import hiredis
from prometheus_client import Counter
from redis.exceptions import ResponseError

log = logging.getLogger(__name__)

CHANNEL = b"__redis__:invalidate"
# Customers invalidated lately, remembered to tell whether a read in flight raced one.
RECENT_MAX = 8192
# A copy is charged this many times its replies' size, for what is derived from it
# (Copy.memo: the parsed read, its offers view, the digest): tracemalloc counted the
# memo at 1.05x the replies over Online Retail's customers.
DERIVED_SHARE = 2.1
READS = Counter("aisle_customer_reads_total", "Customer reads of the API's answers: "
                "kept (a local copy the store tracks) or store (a round trip)", ["how"])
KEPT, STORE = READS.labels("kept"), READS.labels("store")


def read_counts() -> dict[str, Any]:
    """This process's customer reads by where they came from, and the share kept."""
    got = {"kept": int(KEPT._value.get()), "store": int(STORE._value.get())}
    total = got["kept"] + got["store"]
    return {**got, "kept_share": round(got["kept"] / total, 4) if total else None}


class Tracker(Protocol):
    """What :class:`~feature_store.multiplexed.Multiplexed` tells about invalidations."""

    def invalidated(self, keys: list[bytes] | None) -> None:
        """These keys changed (None: everything, a ``FLUSHALL``)."""

    def reset(self) -> None:
        """The store's promise is lost (a connection dropped): trust no copy."""


def reply_bytes(replies: list[Any]) -> int:
    """About what a read's replies take in memory (CPython 3.11, 64-bit): a bytes object
    is 33 bytes and its length, a list 56 and 8 per element, a number 32. An upper
    bound: 21.1 kB per Online Retail customer where tracemalloc counted 19.0 kB."""
    size = 56 + 8 * len(replies)
    for reply in replies:
        if type(reply) is list:
            size += 56 + 41 * len(reply) + sum(map(len, filter(_is_bytes, reply)))
        elif type(reply) is bytes:
            size += 33 + len(reply)
        else:
            size += 32
    return size


def _is_bytes(value: Any) -> bool:
    return type(value) is bytes


class Copy:
    """One customer's kept read. ``memo`` holds what callers derived from exactly these
    replies (their digest, their parse), so a kept read is parsed once, not per answer;
    it lives and dies with the copy."""

    __slots__ = ("full", "size", "replies", "memo")

    def __init__(self, full: bool, size: int, replies: list[Any]) -> None:
        self.full, self.size, self.replies = full, size, replies
        self.memo: dict[str, Any] = {}


class LocalCopies:
    """The last read of each customer, while the store has not said it changed.

    ``user_of(key)`` names the customer a key belongs to (None: not a customer's key).
    At most ``max_customers`` are kept, taking at most ``max_bytes`` together
    (:func:`reply_bytes` × :data:`DERIVED_SHARE`; a buyer's 200-line history alone is
    ~25 kB), the least recently used dropped first."""

    def __init__(self, user_of: Callable[[bytes], str | None], max_customers: int,
                 max_bytes: int = 128 << 20) -> None:
        self.user_of, self.max_customers, self.max_bytes = user_of, max_customers, max_bytes
        self.seq = 0        # invalidations so far (and resets)
        self.floor = 0      # reads noted before this are not kept
        self._recent: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._copies: dict[str, Copy] = {}
        self.bytes = 0
        self.hits = self.reads = self.dropped = self.resets = 0

    def __len__(self) -> int:
        return len(self._copies)

    def token(self) -> int:
        """Noted before a read is sent; :meth:`put` takes it back."""
        return self.seq

    def get(self, user_id: str, full: bool) -> Copy | None:
        """The kept copy of a read like this one (a full read serves both kinds)."""
        copy = self._copies.get(user_id)
        if copy is None or (full and not copy.full):
            return None
        self._copies[user_id] = self._copies.pop(user_id)  # recently used: kept longer
        self.hits += 1
        KEPT.inc()
        return copy

    def peek(self, user_id: str) -> Copy | None:
        """The kept copy, if any, as it is (no use counted)."""
        return self._copies.get(user_id)

    def put(self, user_id: str, full: bool, replies: list[Any], token: int) -> bool:
        """Keep the replies of a tracked read noted at ``token``, unless this customer
        (or everything) was invalidated since. Callers must not change ``replies``."""
        self.reads += 1
        if (self.max_customers <= 0 or token < self.floor
                or self._recent.get(user_id, -1) > token):
            return False
        size = int(reply_bytes(replies) * DERIVED_SHARE)
        if size > self.max_bytes:
            return False
        self._drop(user_id)
        copies = self._copies
        while copies and (len(copies) >= self.max_customers
                          or self.bytes + size > self.max_bytes):
            self._drop(next(iter(copies)))  # the least recently used
        copies[user_id] = Copy(full, size, replies)
        self.bytes += size
        return True

    def _drop(self, user_id: str) -> bool:
        copy = self._copies.pop(user_id, None)
        if copy is None:
            return False
        self.bytes -= copy.size
        return True

    def invalidated(self, keys: list[bytes] | None) -> None:
        if keys is None:
            self.reset()
            return
        for key in keys:
            user = self.user_of(key)
            if user is None:
                continue
            self.seq += 1
            if self._drop(user):
                self.dropped += 1
            recent = self._recent
            recent.pop(user, None)
            recent[user] = self.seq
            if len(recent) > RECENT_MAX:
                self.floor = max(self.floor, recent.popitem(last=False)[1])

    def reset(self) -> None:
        self.seq += 1
        self.floor = self.seq
        self.resets += 1
        self._copies.clear()
        self.bytes = 0
        self._recent.clear()

    def forget(self, user_id: str) -> None:
        self._drop(user_id)


class _Subscriber(asyncio.Protocol):
    """The connection the store redirects its invalidation messages to."""

    def __init__(self, tracker: Tracker, lost: Callable[[_Subscriber], None]) -> None:
        self.reader = hiredis.Reader()
        self.tracker, self._lost = tracker, lost
        self.answers: collections.deque[asyncio.Future[Any]] = collections.deque()
        self.transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def ask(self, *commands: tuple[Any, ...]) -> list[asyncio.Future[Any]]:
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in commands]
        self.answers.extend(futures)
        self.transport.write(b"".join(hiredis.pack_command(c) for c in commands))
        return futures

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        try:
            while (reply := self.reader.gets()) is not False:
                if (type(reply) is list and len(reply) == 3 and reply[0] == b"message"
                        and reply[1] == CHANNEL):
                    self.tracker.invalidated(reply[2])
                elif self.answers:
                    future = self.answers.popleft()
                    if not future.done():
                        future.set_result(reply)
        except hiredis.ProtocolError:
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.transport is not None:
            self.transport.abort()
        while self.answers:
            future = self.answers.popleft()
            if not future.done():
                future.set_exception(ConnectionError("invalidation connection lost"))
        self._lost(self)


class Invalidations:
    """The subscriber connection of one store (one Cluster node): opened on demand,
    its client id is what the pipelined connection redirects to. ``generation``
    counts the connections made, so a redirection to a lost one is told apart."""

    def __init__(self, tracker: Tracker, connect: Callable[[Callable[[], _Subscriber]],
                                                           Any],
                 handshake: list[tuple[Any, ...]]) -> None:
        self.tracker, self._connect, self._handshake = tracker, connect, handshake
        self._live: _Subscriber | None = None
        self.client_id: int | None = None
        self.generation = 0

    @property
    def live(self) -> bool:
        return self._live is not None and self.client_id is not None

    async def open(self) -> tuple[int, int]:
        """(client id, generation) of a live subscriber connection, made if needed."""
        if self.live:
            assert self.client_id is not None
            return self.client_id, self.generation
        sub: _Subscriber = (await self._connect(
            lambda: _Subscriber(self.tracker, self._dropped)))[1]
        self._live, self.client_id = sub, None
        try:
            answers = await asyncio.gather(*sub.ask(
                *self._handshake, ("CLIENT", "ID"), ("SUBSCRIBE", CHANNEL)))
            refused = [a for a in answers if isinstance(a, hiredis.ReplyError)]
            if refused:  # an ACL without CLIENT or SUBSCRIBE, a wrong password
                raise ResponseError(str(refused[0]))
            *_, got_id, subscribed = answers
            if not isinstance(got_id, int) or not isinstance(subscribed, list):
                raise ConnectionError(f"unexpected handshake: {got_id!r} {subscribed!r}")
        except BaseException:
            sub.close()
            raise
        self.client_id = got_id
        self.generation += 1
        return got_id, self.generation

    def _dropped(self, sub: _Subscriber) -> None:
        if sub is self._live:
            self._live, self.client_id = None, None
            log.warning("the store's invalidation connection dropped; local copies cleared")
            self.tracker.reset()

    def close(self) -> None:
        sub, self._live = self._live, None
        if sub is not None:
            sub.close()
