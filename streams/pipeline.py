"""One batch of Kafka records → decoded events → folded ops → one Lua call per shard.

Used by the Faust agents, by ``aisle rebuild`` and by the ingest benchmark, so all three
apply events the same way. Poison records go to the dead-letter topic with the reason.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from feature_store.keys import Keys
from feature_store.memory_store import BatchEvent
from feature_store.multiplexed import ClusterMultiplexed, Multiplexed
from feature_store.redis_store import RedisStore
from feature_store.updates import Folder
from models.online import UserVectorUpdater
from push.watch import ItemWatchers
from streams.events import CatalogItemRemoved, CatalogItemUpserted, DecodeError, decode_event
from streams.topics import DeadLetter, EventProducer

log = logging.getLogger(__name__)
WORKER_ID = f"{socket.gethostname()}:{os.getpid()}"
#: Records folded between two yields to the event loop (see ``prepare_yielding``). Each
#: yield moves the write of the previous batch one step (connection, send, each reply),
#: so the store waits for its next pipeline at most one chunk's fold (~0.4 ms at 20).
#: One worker on the Taobao slice, one round each, same session: 250 → 21–23k events/s
#: with the worker blocked 43% of the time; 50 → 27.5k; 20 → 31.0k (34%); 10 → 30.2k.
PREPARE_CHUNK = 20


# Not frozen: a frozen dataclass's __init__ sets each field through object.__setattr__,
# 0.65 us a record against 0.16, and a worker builds one for every record it consumes.
@dataclass(slots=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass
class BatchResult:
    records: int = 0
    applied: int = 0
    duplicates: int = 0
    already_applied: int = 0
    deadletters: int = 0
    folded_users: int = 0
    seconds: float = 0.0


@dataclass
class Counters:
    """Running totals a worker exposes (and logs)."""

    total: BatchResult = field(default_factory=BatchResult)

    def add(self, r: BatchResult) -> None:
        t = self.total
        t.records += r.records
        t.applied += r.applied
        t.duplicates += r.duplicates
        t.already_applied += r.already_applied
        t.deadletters += r.deadletters
        t.folded_users += r.folded_users
        t.seconds += r.seconds


@dataclass(slots=True)
class PreparedBatch:
    """A batch decoded and folded, not yet written."""

    records: int
    batches: dict[tuple[int, str], list[BatchEvent]]
    letters: list[DeadLetter]
    users: dict[str, float]
    # Catalog upserts: push watchers compare them with the items as stored (push/watch.py).
    upserts: list[CatalogItemUpserted] = field(default_factory=list)
    removed: set[str] = field(default_factory=set)  # items of catalog removals

    def catalog_items(self) -> set[str]:
        """The items whose stored catalog entry this batch may change."""
        return {e.payload.item_id for e in self.upserts} | self.removed


class BatchProcessor:
    def __init__(self, store: RedisStore, folder: Folder, producer: EventProducer | None,
                 vectors: UserVectorUpdater | None = None, respect_rebuild: bool = True,
                 watchers: ItemWatchers | None = None,
                 ordered: Multiplexed | ClusterMultiplexed | None = None) -> None:
        self.store = store
        self.folder = folder
        self.keys: Keys = folder.keys
        self.producer = producer
        self.vectors = vectors
        self.respect_rebuild = respect_rebuild
        self.watchers = watchers
        # The ordered connection a worker writes ahead on (streams/ahead.py), if any.
        self.ordered = ordered
        self.counters = Counters()

    async def close(self) -> None:
        """Close the fold-in's pipelined connection and the ordered write connection.
        The store's client is the caller's."""
        if self.vectors is not None:
            await self.vectors.close()
        if self.ordered is not None:
            await self.ordered.close()

    async def wait_while_rebuilding(self) -> None:
        """``aisle rebuild`` holds this lock while it replays the log into a wiped store."""
        lock = self.keys.control("rebuild")
        while await self.store.client.exists(lock):
            await asyncio.sleep(0.2)

    async def forget_replaced_logs(self, ends: Mapping[tuple[str, int], int]) -> dict[str, int]:
        """Before the first batch of a partition this worker was just given: drop the
        watermarks an earlier log of that name left (``RedisStore.drop_replaced_logs``).
        ``ends`` maps (topic, partition) to the log end its fetch reported."""
        dropped = await self.store.drop_replaced_logs(
            {f"{topic}/{partition}": end for (topic, partition), end in ends.items()})
        for source, old in dropped.items():
            log.warning("%s: the log ends below the watermark %d kept for it, so it is a new "
                        "log (a broker that lost its log, a topic made again): watermark "
                        "dropped, its events are applied from offset 0", source, old)
        return dropped

    async def process(self, records: Sequence[Record]) -> BatchResult:
        started = time.perf_counter()
        if self.respect_rebuild:
            await self.wait_while_rebuilding()
        return await self.apply(self.prepare(records), started)

    async def prepare_yielding(self, records: Sequence[Record],
                               chunk: int = PREPARE_CHUNK) -> PreparedBatch:
        """:meth:`prepare`, handing the event loop back every ``chunk`` records.

        A worker folds batch N+1 while the store applies batch N, but the write of N is
        a task on the same event loop: its sends, replies and counters only move when
        the loop runs. One synchronous fold of a whole batch held the loop for tens of
        milliseconds, so the store sat idle waiting for the rest of N's pipeline while
        the worker folded, and the two alternated instead of overlapping."""
        prepared = PreparedBatch(0, {}, [], {}, [])
        for start in range(0, len(records), chunk):
            await asyncio.sleep(0)  # first of all: the write just started gets to send
            self.prepare(records[start:start + chunk], prepared)
        return prepared

    def prepare(self, records: Sequence[Record], into: PreparedBatch | None = None,
                ) -> PreparedBatch:
        """Decode and fold: pure CPU, no I/O, so a worker can run it for the next batch
        while the store applies this one (see ``streams/app.py``). With ``into``, the
        records are added to that batch (they must follow its records in log order)."""
        if into is None:
            into = PreparedBatch(0, {}, [], {}, [])
        into.records += len(records)
        batches, letters, users, upserts = into.batches, into.letters, into.users, into.upserts
        fold = self.folder.fold_sharded
        sources: dict[tuple[str, int], str] = {}
        for rec in records:
            try:
                event = decode_event(rec.value or b"")
            except DecodeError as exc:
                letters.append(DeadLetter.of(exc.reason, rec.topic, rec.partition, rec.offset,
                                             rec.key, rec.value))
                continue
            shard, ops = fold(event)
            if isinstance(event, CatalogItemUpserted):
                upserts.append(event)
            elif isinstance(event, CatalogItemRemoved):
                into.removed.add(event.payload.item_id)
            source = sources.get((rec.topic, rec.partition))
            if source is None:
                source = sources[rec.topic, rec.partition] = f"{rec.topic}/{rec.partition}"
            ts = event.ts
            batches.setdefault((shard, source), []).append(
                (event.event_id, rec.offset, ts, ops))
            uid = event.user_id
            if uid is not None and ts > users.get(uid, 0.0):
                for op in ops:  # a plain loop: any() over a generator cost ~1 µs/event
                    if op[0] == "zlog" and op[1].endswith(":ia"):
                        users[uid] = ts
                        break
        return into

    async def apply(self, prepared: PreparedBatch, started: float | None = None,
                    ) -> BatchResult:
        """Write a prepared batch: dead letters, one Lua call per (shard, source), the
        applied counters, then the fold-in of the customers it touched."""
        started = time.perf_counter() if started is None else started
        await self.before_write(prepared)
        result = BatchResult(records=prepared.records, deadletters=len(prepared.letters))
        result.applied, result.duplicates, result.already_applied = await self._apply(
            prepared.batches)
        return await self.after_write(prepared, result, started)

    async def before_write(self, prepared: PreparedBatch) -> None:
        """What must happen before a batch is applied: its dead letters, and the push
        watchers' comparison, which needs the items as they were (push/watch.py)."""
        if prepared.letters:
            await self._deadletter(prepared.letters)
        if self.watchers is not None and self.producer is not None and prepared.upserts:
            await self.watchers.before_apply(prepared.upserts, self.producer)

    async def after_write(self, prepared: PreparedBatch, result: BatchResult,
                          started: float) -> BatchResult:
        """After a batch is applied: the worker's share and the customers' fold-in."""
        if result.applied:
            # Each worker's share, for operators to see who does the work. Approximate by
            # design: a crash between the apply and this call loses it. The group-wide
            # count the retrain schedule reads is kept exactly by the store script itself
            # (feature_store/redis_store.py applied_total).
            await self.store.client.hincrby(self.keys.control("workers"), WORKER_ID,
                                            result.applied)
        if self.vectors is not None and prepared.users:
            result.folded_users = await self.vectors.update(prepared.users)
        result.seconds = time.perf_counter() - started
        self.counters.add(result)
        return result

    async def _apply(self, batches: dict[tuple[int, str], list[BatchEvent]],
                     ) -> tuple[int, int, int]:
        return await self.store.apply_many(
            [(shard, source, batch) for (shard, source), batch in batches.items()])

    async def _deadletter(self, letters: list[DeadLetter]) -> None:
        for dl in letters:
            log.warning("dead-letter %s/%d@%d: %s", dl.topic, dl.partition, dl.offset,
                        dl.reason[:200])
        if self.producer is not None:  # None when rebuilding: they were dead-lettered live
            await self.producer.send_deadletters(letters)
