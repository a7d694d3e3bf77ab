"""Whole fetched batches from Faust's own consumer to one agent: no per-message machinery.

A stock Faust agent pays for every record: a ``ConsumerMessage``, the conductor's
callback (awaited through ``wait_first``), an ``Event``, a channel queue, sensors, the
stream's ``take_events`` buffer and one ``ack`` per event. On these machines that is
~60% of a worker's CPU per event (``benchmarks/ingest_profile.py``), while the worker
only ever wants a batch of raw bytes.

:class:`BatchConsumer` is Faust's aiokafka consumer with one method replaced: the fetch
loop (``_drain_messages``). Everything else stays Faust's: group membership and
rebalances, pausing and flow control, the commit timer and the offsets it commits
(``_acked``), ``wait_empty`` on stop and on revocation. The fetch loop turns each
``getmany`` result into one :class:`FetchedBatch` of raw records and puts it on a small
bounded queue; the agent takes batches in order, applies them and calls
:meth:`BatchConsumer.ack_batch`, which marks every offset of the batch acked in the same
bookkeeping ``Consumer.ack`` uses. So offsets are still committed only after their batch
is applied (at-least-once), and the queue bound is the back-pressure.

One agent drains the queue: batches of one partition must be applied in offset order,
because the store skips offsets at or below a source's watermark.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from dataclasses import dataclass, field
from typing import Any, cast

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from faust.types.tuples import ack_lock
from mode.utils.futures import notify

from streams.pipeline import Record

log = logging.getLogger(__name__)

#: Batches fetched but not yet applied. Two: the agent applies one while the fetch loop
#: already holds the next; more would only add records to re-apply after a crash.
QUEUE_BATCHES = 2
#: How long stopping or a rebalance waits for in-flight batches before giving up on
#: them (they are then not committed, so they are applied again: at-least-once).
WAIT_INFLIGHT_S = 30.0


@dataclass(slots=True)
class FetchedBatch:
    """Raw records of one ``getmany``, and per partition the offsets they span."""

    records: list[Record]
    spans: dict[TP, tuple[int, int]] = field(default_factory=dict)
    #: Partitions this batch is the first of since they were assigned, with the log end
    #: the fetch reported: the agent checks their watermarks against it before applying
    #: (``BatchProcessor.forget_replaced_logs``).
    ends: dict[TP, int] = field(default_factory=dict)


class ShortWaitConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's consumer thread with the fetch wait from the settings, not a fixed 1.5 s.

    A fetch asks the broker to hold it up to ``fetch_max_wait_ms`` for data; the
    embedded broker (Tansu) holds it about that long even when records arrive meanwhile
    (one record took 702 ms to reach an aiokafka consumer at 1,500 ms, 26 ms at 100 ms,
    5 ms at 20 ms). That is an event's freshness."""

    fetch_max_wait_ms = 1500

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # aiokafka builds its fetcher from this in start(), which Faust calls after.
        consumer._fetch_max_wait_ms = self.fetch_max_wait_ms
        return consumer


class BatchConsumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer, delivering whole fetched batches to :meth:`next_batch`."""

    def _new_consumer_thread(self) -> Any:
        thread = ShortWaitConsumerThread(self, loop=self.loop, beacon=self.beacon)
        thread.fetch_max_wait_ms = getattr(self.app, "aisle_fetch_max_wait_ms", 1500)
        return thread

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._batch_queue: asyncio.Queue[FetchedBatch] = asyncio.Queue(QUEUE_BATCHES)
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._log_checked: set[TP] = set()

    async def on_partitions_assigned(self, assigned: set[TP], generation_id: int = 0) -> None:
        # A partition given (again) may be a new log under the old name: its first batch
        # carries the log end, checked against the store's watermarks (FetchedBatch.ends).
        self._log_checked.difference_update(assigned)
        await super().on_partitions_assigned(assigned, generation_id)

    async def next_batch(self) -> FetchedBatch:
        return await self._batch_queue.get()

    def ack_batch(self, batch: FetchedBatch) -> None:
        """Mark every offset of ``batch`` acked, as ``Consumer.ack`` does one by one."""
        assigned = self.assignment()
        with ack_lock:
            for tp, (first, last) in batch.spans.items():
                if tp not in assigned:  # revoked meanwhile: its new owner commits it
                    continue
                committed = self._committed_offset[tp]
                if committed is not None:
                    first = max(first, committed)
                if first > last:
                    continue
                offsets = range(first, last + 1)
                index = self._acked_index[tp]
                fresh = [o for o in offsets if o not in index] if index else list(offsets)
                index.update(fresh)
                self._acked[tp].extend(fresh)
                self._n_acked += len(fresh)
            self._inflight -= 1
            if not self._inflight:
                self._idle.set()
            notify(self._waiting_for_ack)

    def release_batch(self, batch: FetchedBatch) -> None:
        """Forget a batch that will not be applied: it stays unacked, so uncommitted."""
        with ack_lock:
            self._inflight -= 1
            if not self._inflight:
                self._idle.set()
            notify(self._waiting_for_ack)

    def settle_batch(self, batch: FetchedBatch, write: asyncio.Future[Any]) -> None:
        """Done-callback of a batch's write: ack it if the write succeeded."""
        if write.cancelled() or write.exception() is not None:
            if not write.cancelled():
                log.error("batch not applied, left uncommitted: %r", write.exception())
            self.release_batch(batch)
        else:
            self.ack_batch(batch)

    def _new_offset(self, tp: TP) -> int | None:
        # Faust checks for a hole at the head of the acked offsets only when it is more
        # than one offset wide and the committed offset is not 0: fine for messages
        # acked one by one in order, not for a batch that was released unapplied while
        # later ones were acked. The committed offset is the next one to apply.
        acked, committed = self._acked[tp], self._committed_offset[tp]
        if acked and committed is not None and min(acked) > committed:
            return None
        return cast(int | None, super()._new_offset(tp))

    async def wait_empty(self) -> None:
        """Faust's ``wait_empty``, after the batches handed to the agent are applied."""
        if self._inflight:
            log.info("waiting for %d in-flight batch(es)", self._inflight)
            try:
                await asyncio.wait_for(self._idle.wait(), WAIT_INFLIGHT_S)
            except TimeoutError:
                log.warning("%d batch(es) not applied in %.0fs; their offsets stay "
                            "uncommitted and will be applied again", self._inflight,
                            WAIT_INFLIGHT_S)
        await super().wait_empty()

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - Faust's loop
        # Faust's loop, minus the per-message work: read offsets, gaps and the commit
        # counter are kept per partition and batch instead of per message.
        stopped = self._stopped.is_set
        fetcher_stopped = fetcher._stopped.is_set
        commit_every = self._commit_every
        try:
            while not (stopped() or fetcher_stopped()):
                records, active = await self._wait_next_records(1.0)
                generation = self.app.consumer_generation_id
                await self.sleep(0)
                if not records or self.should_stop:
                    continue
                if not self.flow_active:  # a rebalance began: Faust seeks back later
                    continue
                batch = self._to_batch(records, active)
                if batch is None or generation != self.app.consumer_generation_id:
                    continue
                if commit_every is not None and self._n_acked >= commit_every:
                    self._n_acked = 0
                    await self.commit()
                self._inflight += 1
                self._idle.clear()
                try:
                    await self._batch_queue.put(batch)
                except BaseException:
                    self._inflight -= 1
                    if not self._inflight:
                        self._idle.set()
                    raise
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                return
            raise

    def _to_batch(self, records: Any, active: set[TP] | None) -> FetchedBatch | None:
        out: list[Record] = []
        spans: dict[TP, tuple[int, int]] = {}
        ends: dict[TP, int] = {}
        read_offset = self._read_offset
        for tp, recs in records.items():
            if not recs or not (active is None or tp in active
                                or tp in self._buffered_partitions):
                continue
            # Faust's rule: ``_read_offset`` is the next offset after a seek, the last
            # one read after a fetch, and a record at it is taken (applying it twice is
            # harmless: watermarks).
            last_read = read_offset[tp]
            if last_read is not None and recs[0].offset < last_read:
                recs = [r for r in recs if r.offset >= last_read]
                if not recs:
                    continue
            out.extend(Record(r.topic, r.partition, r.offset, r.key, r.value) for r in recs)
            first, last = recs[0].offset, recs[-1].offset
            # Offsets the log skipped (compaction, transaction markers) count as acked
            # too, so the commit can move past them: the span reaches back to the read
            # offset (after a seek, the committed one; else the last one read, acked
            # again harmlessly: acks are a set).
            spans[tp] = (first if last_read is None else min(first, last_read), last)
            read_offset[tp] = last
            highwater = self.highwater(tp)
            self.app.monitor.track_tp_end_offset(tp, highwater)
            if highwater is not None and tp not in self._log_checked:
                ends[tp] = highwater
                self._log_checked.add(tp)
        return FetchedBatch(out, spans, ends) if out else None


class BatchTransport(faust_aiokafka.Transport):
    Consumer = BatchConsumer


class BatchApp(faust.App):
    """A Faust app whose consumer delivers whole batches (see :class:`BatchConsumer`)."""

    def _new_transport(self) -> Any:
        return BatchTransport(self.conf.broker_consumer, self)


def batch_consumer(app: faust.App) -> BatchConsumer:
    return cast(BatchConsumer, app.consumer)


def quiet_gc(gen0_threshold: int) -> None:
    """Fewer, cheaper garbage collections in a worker.

    A batch of 2,000 events allocates ~40,000 small lists and strings (ops and keys)
    that die with it; at Python's default threshold (700) that is dozens of collections
    per batch, some of them full passes over every object Faust, aiokafka and numpy
    hold. Freezing what exists at start-up takes those out of every pass, and a larger
    first-generation threshold runs a pass per few thousand events. Folding Taobao views
    costs half as much CPU (``benchmarks/README.md``)."""
    if gen0_threshold <= 0:
        return
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(gen0_threshold, gen1, gen2)

