"""The related answers' cache: fresh, stale-while-revalidate, one refresher, no stampede."""

from __future__ import annotations

import asyncio
import functools
import random
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field

from serving.answer_cache import PerCustomer, StaleWhileRevalidate, fingerprint


@dataclass
class Source:
    """Counts computations; ``version`` plays the model, ``ttl`` 0 a degraded answer."""

    version: int = 1
    ttl: float = 10.0
    fail: bool = False
    calls: list[str] = field(default_factory=list)
    running: int = 0
    most_at_once: int = 0
    now: float = 0.0

    async def compute(self, key: str) -> tuple[str, int, int]:
        self.calls.append(key)
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        try:
            await asyncio.sleep(0.001)
            if self.fail:
                raise RuntimeError("boom")
            return key, self.version, len(self.calls)
        finally:
            self.running -= 1

    def cache(self, jitter: float = 0.0) -> StaleWhileRevalidate[str, tuple[str, int, int]]:
        return StaleWhileRevalidate(self.compute, lambda k, v: self.ttl,
                                    current=lambda v: v[1] == self.version, jitter=jitter,
                                    clock=lambda: self.now, rng=random.Random(1))


def run(test: Callable[[], Coroutine[None, None, None]]) -> Callable[[], None]:
    @functools.wraps(test)
    def sync() -> None:
        asyncio.run(test())
    return sync


async def settle(cache: StaleWhileRevalidate) -> None:
    for _ in range(200):
        if cache._task is None:
            return
        await asyncio.sleep(0.002)
    raise AssertionError("the refresher did not finish")


@run
async def test_fresh_entries_answer_without_computing() -> None:
    src = Source()
    cache = src.cache()
    first = await cache.get("a")
    src.now = 9.9
    assert await cache.get("a") == first
    assert src.calls == ["a"]


@run
async def test_stale_entry_answers_at_once_and_is_refreshed_once_in_the_background() -> None:
    src = Source()
    cache = src.cache()
    old = await cache.get("a")
    src.now = 12.0  # past its TTL, within twice it
    answers = await asyncio.gather(*(cache.get("a") for _ in range(50)))
    assert answers == [old] * 50  # nobody waited for a recomputation
    await settle(cache)
    assert src.calls == ["a", "a"]  # fifty stale answers, one refresh
    assert (await cache.get("a"))[2] == 2
    assert cache.stale_answers == 50 and cache.refreshes == 1


@run
async def test_past_twice_the_ttl_the_request_computes() -> None:
    src = Source()
    cache = src.cache()
    await cache.get("a")
    src.now = 20.5
    assert (await cache.get("a"))[2] == 2
    assert cache.stale_answers == 0


@run
async def test_a_new_model_refreshes_every_entry_one_at_a_time() -> None:
    src = Source()
    cache = src.cache()
    keys = [f"item-{n}" for n in range(40)]
    for k in keys:
        await cache.get(k)
    src.calls.clear()
    src.version = 2  # published: every entry is from the old model
    old = await asyncio.gather(*(cache.get(k) for k in keys))
    assert {v[1] for v in old} == {1}
    await settle(cache)
    assert sorted(src.calls) == sorted(keys)
    assert src.most_at_once == 1  # the stampede is a queue
    assert {(await cache.get(k))[1] for k in keys} == {2}


@run
async def test_a_failed_or_degraded_refresh_keeps_the_stale_answer() -> None:
    src = Source()
    cache = src.cache()
    old = await cache.get("a")
    src.now, src.fail = 11.0, True
    assert await cache.get("a") == old
    await settle(cache)
    src.fail, src.ttl = False, 0.0  # the store is away: the answer came out degraded
    assert await cache.get("a") == old
    await settle(cache)
    assert await cache.get("a") == old
    src.now = 25.0  # past twice the TTL: computed, and not kept (ttl 0)
    assert (await cache.get("a"))[2] > old[2]
    assert (await cache.get("a"))[2] > old[2] + 1


@run
async def test_jitter_spreads_expiry_and_size_is_bounded() -> None:
    src = Source()
    cache = src.cache(jitter=0.1)
    cache.max_size = 100
    for n in range(150):
        await cache.get(f"k{n}")
    assert len(cache) == 100
    fresh = sorted(entry[1] for entry in cache._entries.values())
    assert 9.0 <= fresh[0] < fresh[-1] <= 11.0 and fresh[-1] - fresh[0] > 1.0
    src.now = 9.5  # the ones drawn short are stale already, the others not
    for n in range(50, 150):
        await cache.get(f"k{n}")
    assert 0 < cache.stale_answers < 100


@run
async def test_close_stops_the_refresher() -> None:
    src = Source()
    cache = src.cache()
    for n in range(20):
        await cache.get(f"k{n}")
    src.now = 12.0
    for n in range(20):
        await cache.get(f"k{n}")
    assert cache._task is not None
    await cache.close()
    assert cache._task is None
    assert len(src.calls) < 40


# ------------------------------------------------------------ PerCustomer


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def kept_for(max_customers: int = 10) -> tuple[PerCustomer[str], Clock]:
    clock = Clock()
    return PerCustomer(max_customers, jitter=0.0, clock=clock), clock


def test_a_kept_answer_is_reused_only_for_the_same_state_model_and_shape() -> None:
    kept, clock = kept_for()
    kept.put("u1", (10, None), 7, "m1", 30.0, "answer", ("entry",))
    got = kept.get("u1", (10, None), 7, "m1")
    assert got is not None and got.answer == "answer" and got.entries == ("entry",)
    assert kept.get("u1", (10, None), 8, "m1") is None        # their state changed
    assert kept.get("u1", (10, None), 7, "m2") is None        # a new model
    assert kept.get("u1", (5, None), 7, "m1") is None         # another limit
    assert kept.get("u1", (10, "i9"), 7, "m1") is None        # another context item
    assert kept.get("u2", (10, None), 7, "m1") is None        # another customer
    assert kept.get("u1", (10, None), None, "m1") is None     # a state it can't digest
    clock.now += 29.9
    assert kept.get("u1", (10, None), 7, "m1") is not None
    clock.now += 0.1
    assert kept.get("u1", (10, None), 7, "m1") is None        # expired


def test_nothing_is_kept_with_no_ttl_no_room_or_no_digest() -> None:
    for kept, args in ((kept_for()[0], (7, "m", 0.0)), (kept_for(0)[0], (7, "m", 30.0)),
                       (kept_for()[0], (None, "m", 30.0))):
        state, model, ttl = args
        kept.put("u", 1, state, model, ttl, "a", ())
        assert kept.get("u", 1, state, model) is None and kept.last("u", 1) is None
        assert len(kept) == 0


def test_the_last_answer_is_given_unchecked_until_it_expires() -> None:
    kept, clock = kept_for()
    kept.put("u", 1, 7, "m", 30.0, "a", ())
    assert kept.last("u", 1) == "a" and kept.last("u", 2) is None
    clock.now += 30.0
    assert kept.last("u", 1) is None


def test_the_least_recently_answered_customer_goes_first_and_forget_drops_all() -> None:
    kept, _ = kept_for(max_customers=2)
    kept.put("a", 1, 1, "m", 30.0, "a1", ())
    kept.put("a", 2, 1, "m", 30.0, "a2", ())  # a second shape: still one customer
    kept.put("b", 1, 1, "m", 30.0, "b1", ())
    assert kept.get("a", 1, 1, "m") is not None  # a answered again: b is now the oldest
    kept.put("c", 1, 1, "m", 30.0, "c1", ())
    assert kept.last("b", 1) is None and kept.last("a", 2) == "a2" and len(kept) == 2
    kept.forget("a")
    assert kept.last("a", 1) is None and kept.last("a", 2) is None and len(kept) == 1


def test_the_fingerprint_follows_every_reply() -> None:
    replies = [[b"i1", b"3.5"], b"vec", None, 3, []]
    assert fingerprint(replies) == fingerprint([list(r) if isinstance(r, list) else r
                                                for r in replies])
    for changed in ([[b"i1", b"3.6"], b"vec", None, 3, []],
                    [[b"i1", b"3.5"], b"vek", None, 3, []],
                    [[b"i1", b"3.5"], b"vec", b"", 3, []],
                    [[b"i1", b"3.5"], b"vec", None, 3, [b"x"]],
                    [[b"3.5", b"i1"], b"vec", None, 3, []]):
        assert fingerprint(changed) != fingerprint(replies), changed
    assert fingerprint([[[b"member", 1.0]]]) is None  # RESP3 pairs: not digested
