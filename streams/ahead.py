"""A worker's writes, each batch sent as soon as it is folded: the store never waits.

Without it a worker folds batch N+1 while the store applies batch N, then waits for N's
replies, runs N's follow-ups (the worker's count, the fold-in) and N+1's preliminaries
(the rebuild-lock check, the push watchers' read, each a round trip on a busy event
loop), and only then sends N+1. Meanwhile the store sits idle: on the Taobao slice
Valkey was blocked a quarter of the time and the worker a third (``benchmarks/README.md``,
"session 17").

:class:`AheadWriter` sends N+1's scripts on one ordered connection right behind N's,
without waiting for N's replies. Redis runs one connection's commands in order, so N's
events are in before N+1's, as the offset watermarks need. What keeps that safe when N
did *not* get in (a script cache flushed, a Cluster slot moved, the connection lost):

- every call of N+1 carries ``after``, the offset of N's last event of the same (shard,
  source); ``store.lua`` refuses the call whole unless that source's watermark has
  reached it, so N+1 can never move a watermark past N's missing events;
- batches finish in order: N's failed or refused calls are written again (through
  redis-py, retried as before) before N+1's are looked at; N+1's refused ones follow.

At most one batch is being applied when the next is sent (and at most two are not
followed up), so a worker holds about as many unapplied records as before, and a
rebuild's grace period still covers what passed its lock check. A batch's follow-ups
(its count, the fold-in of its customers) run after the previous batch's, while the
store applies the next one. Each batch is acked when it and every batch before it are
applied and followed up. The push watchers compare a batch's upserts with
the items as stored: when an item is also upserted or removed by the batch in flight,
the comparison waits for that batch (the read must see its write); otherwise it runs
while the store applies the previous batch (no batch in flight touches that item).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from redis.exceptions import RedisError

from aisle.settings import Settings
from feature_store.memory_store import BatchEvent
from feature_store.multiplexed import ClusterMultiplexed, Multiplexed, Rerouted, pipelined
from streams.pipeline import BatchProcessor, BatchResult, PreparedBatch

log = logging.getLogger(__name__)
T = TypeVar("T")
Retry = Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]]
Call = tuple[int, str, list[BatchEvent], int | None]

#: The ordered connection's watchdog: two batches' scripts can be queued on it, which
#: takes seconds on a loaded machine; longer than this, the store is taken for gone.
WRITE_TIMEOUT_S = 60.0


def ordered_connection(client: Any, settings: Settings,
                       ) -> Multiplexed | ClusterMultiplexed | None:
    """The connection a worker (or a rebuild) writes ahead on: None when
    ``worker.write_ahead`` is off or redis-py must speak for the store (TLS,
    credential providers), and the batches then go one at a time."""
    ordered = pipelined(client) if settings.worker.write_ahead else None
    if ordered is not None:
        ordered.timeout = WRITE_TIMEOUT_S
    return ordered


async def once(step: Callable[[], Awaitable[T]]) -> T:
    """No retries: for tests and one-shot tools."""
    return await step()


@dataclass(slots=True)
class _Sent:
    applied: asyncio.Future[BatchResult]  # its events are in the store
    done: asyncio.Future[BatchResult]  # and followed up (count, fold-in): it may be acked
    last: dict[tuple[int, str], int]  # (shard, source) -> offset of the batch's last event
    catalog: set[str]  # items whose catalog entry the batch may change (watchers only)


class AheadWriter:
    """Writes a worker's prepared batches in order, each sent without waiting for the
    previous one's replies (module docstring)."""

    def __init__(self, processor: BatchProcessor, mux: Multiplexed | ClusterMultiplexed,
                 retried: Retry = once) -> None:
        self.processor = processor
        self.mux = mux
        self.retried = retried
        self._sent: collections.deque[_Sent] = collections.deque()
        self.redone = 0  # calls written again through redis-py (tests, diagnosis)

    async def write(self, prepared: PreparedBatch) -> asyncio.Future[BatchResult]:
        """Send ``prepared`` and return the future of its result, done once it and every
        batch written before it are applied and followed up. Raises what a batch before
        it failed with (a worker then stops, as before: nothing later may be applied).

        Sent once at most one earlier batch is still being applied and at most two are
        not followed up yet: the follow-ups (the fold-in reads what the batch wrote) run
        one batch at a time, in order, while the store applies the next."""
        started = time.perf_counter()
        p = self.processor
        await self._settle(applying=1, following=2)
        watched = p.watchers is not None and bool(prepared.upserts)
        catalog = prepared.catalog_items() if p.watchers is not None else set()
        if watched and any(catalog & sent.catalog for sent in self._sent):
            # The watchers must read the write of the batch in flight.
            await self._settle(applying=0, following=2)
        if p.respect_rebuild:
            await self.retried(p.wait_while_rebuilding)
        await self.retried(lambda: p.before_write(prepared))
        after: dict[tuple[int, str], int] = {}
        for sent in self._sent:
            after.update(sent.last)  # in order: a later batch's offset is the larger
        calls: list[Call] = [(shard, source, batch, after.get((shard, source)))
                             for (shard, source), batch in prepared.batches.items()]
        sha = await self.retried(p.store.script_sha)
        replies: asyncio.Future[list[Any]] | None
        try:
            replies = self.mux.submit_many([p.store.command(sha, *call) for call in calls])
            replies.add_done_callback(_retrieve)
        except Rerouted:  # a Cluster slot not known here: every call goes through redis-py
            replies = None
        previous = self._sent[-1] if self._sent else None
        applied = asyncio.ensure_future(self._applied(
            previous.applied if previous else None, prepared, calls, replies))
        applied.add_done_callback(_retrieve)
        done = asyncio.ensure_future(self._follow_up(
            previous.done if previous else None, applied, prepared, started))
        self._sent.append(_Sent(applied, done, {key: batch[-1][1] for key, batch
                                                in prepared.batches.items()}, catalog))
        return done

    async def drain(self) -> None:
        """Wait until every batch sent is applied and followed up."""
        await self._settle(applying=0, following=0)

    async def _settle(self, applying: int, following: int) -> None:
        """Wait until at most ``applying`` batches sent are not applied yet and at most
        ``following`` are not done; raise a batch's failure."""
        while True:
            while self._sent and self._sent[0].done.done():
                self._sent.popleft().done.result()  # raises what it failed with
            unapplied = [sent.applied for sent in self._sent if not sent.applied.done()]
            if len(unapplied) > applying:
                await asyncio.shield(unapplied[0])
            elif len(self._sent) > following:
                await asyncio.shield(self._sent[0].done)
            else:
                return

    async def _applied(self, previous: asyncio.Future[BatchResult] | None,
                       prepared: PreparedBatch, calls: list[Call],
                       replies: asyncio.Future[list[Any]] | None) -> BatchResult:
        """The batch's replies; its failed or refused calls written again once the
        batch before it is in."""
        p = self.processor
        if previous is not None:
            await asyncio.shield(previous)  # in order; its failure is this batch's too
        got: list[Any]
        try:
            got = await replies if replies is not None else [None] * len(calls)
        except (RedisError, OSError) as exc:  # the connection failed: all of them again
            got = [exc] * len(calls)
        result = BatchResult(records=prepared.records, deadletters=len(prepared.letters))
        redo: list[tuple[int, str, list[BatchEvent]]] = []
        for (shard, source, batch, _), reply in zip(calls, got, strict=True):
            if isinstance(reply, list) and len(reply) >= 3 and not (
                    len(reply) > 3 and int(reply[3])):
                result.applied += int(reply[0])
                result.duplicates += int(reply[1])
                result.already_applied += int(reply[2])
            else:  # an error (NOSCRIPT, MOVED, a lost connection) or refused: again,
                # through redis-py, which loads the script and follows a moved slot
                redo.append((shard, source, batch))
        if redo:
            self.redone += len(redo)
            log.info("writing %d of %d calls of a batch again (%r)", len(redo), len(calls),
                     next((r for r in got if not isinstance(r, list)), "refused"))
            applied, dups, old = await self.retried(lambda: p.store.apply_many(redo))
            result.applied += applied
            result.duplicates += dups
            result.already_applied += old
        return result

    async def _follow_up(self, previous: asyncio.Future[BatchResult] | None,
                         applied: asyncio.Future[BatchResult], prepared: PreparedBatch,
                         started: float) -> BatchResult:
        """The batch's count and fold-in, after the previous batch's (in order: a fold-in
        reads what its batch wrote and must not overwrite a later batch's vectors)."""
        if previous is not None:
            await asyncio.shield(previous)
        result = await asyncio.shield(applied)
        p = self.processor
        return await self.retried(  # type: ignore[no-any-return]
            lambda: p.after_write(prepared, result, started))


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark a failure as seen: a batch whose predecessor failed never awaits its replies."""
    if not future.cancelled():
        future.exception()
