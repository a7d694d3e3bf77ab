"""The batch consumer's acks land in Faust's own commit bookkeeping: the offset Faust
would commit after ``ack_batch`` is the one after the batch's last record."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

from faust.types import TP

from streams.batching import BatchConsumer, FetchedBatch

A = TP("events", 0)
B = TP("events", 1)


def consumer(assigned: set[TP], committed: dict[TP, int | None]) -> Any:
    """A BatchConsumer with only the state ``ack_batch`` and Faust's ``_new_offset``
    touch (building a real one needs a broker)."""
    c: Any = object.__new__(BatchConsumer)
    c._committed_offset = defaultdict(lambda: None, committed)
    c._acked = defaultdict(list)
    c._acked_index = defaultdict(set)
    c._gap = defaultdict(list)
    c._n_acked = 0
    c._inflight = 0
    c._idle = asyncio.Event()
    c._waiting_for_ack = None
    c.assignment = lambda: assigned
    return c


def handed_out(c: Any, batch: FetchedBatch) -> FetchedBatch:
    c._inflight += 1
    c._idle.clear()
    return batch


def test_an_acked_batch_moves_the_commit_to_after_its_last_record() -> None:
    c = consumer({A, B}, {A: 10, B: None})
    c.ack_batch(handed_out(c, FetchedBatch([], {A: (10, 19), B: (0, 4)})))
    assert c._new_offset(A) == 20
    assert c._new_offset(B) == 5
    assert c._n_acked == 15
    assert c._idle.is_set()


def test_batches_acked_out_of_order_commit_only_up_to_the_gap() -> None:
    c = consumer({A}, {A: 0})
    first = handed_out(c, FetchedBatch([], {A: (0, 9)}))
    second = handed_out(c, FetchedBatch([], {A: (10, 19)}))
    c.ack_batch(second)
    assert c._new_offset(A) is None  # offsets 0-9 are not applied yet: nothing to commit
    assert not c._idle.is_set()
    c.ack_batch(first)
    assert c._new_offset(A) == 20
    assert c._idle.is_set()


def test_a_released_batch_is_never_committed_nor_what_follows_it() -> None:
    c = consumer({A}, {A: 0})
    c.release_batch(handed_out(c, FetchedBatch([], {A: (0, 9)})))
    assert c._new_offset(A) is None
    assert c._idle.is_set()  # nothing left in flight: stopping need not wait for it
    c.ack_batch(handed_out(c, FetchedBatch([], {A: (10, 19)})))
    assert c._new_offset(A) is None  # 0-9 were never applied: they must be read again


def test_a_hole_of_one_offset_holds_the_commit_back() -> None:
    c = consumer({A}, {A: 10})
    c.ack_batch(handed_out(c, FetchedBatch([], {A: (11, 19)})))
    assert c._new_offset(A) is None


def test_a_partition_revoked_meanwhile_is_left_to_its_new_owner() -> None:
    c = consumer({B}, {A: 0, B: 0})
    c.ack_batch(handed_out(c, FetchedBatch([], {A: (0, 9), B: (0, 9)})))
    assert A not in c._acked
    assert c._new_offset(B) == 10


def test_offsets_before_the_committed_one_are_not_acked_again() -> None:
    c = consumer({A}, {A: 15})
    c.ack_batch(handed_out(c, FetchedBatch([], {A: (10, 19)})))
    assert c._acked[A] == list(range(15, 20))
    assert c._new_offset(A) == 20
