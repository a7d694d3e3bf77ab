"""The bulk snapshot read (snapshot.lua) against plain per-customer ZRANGEs, on Valkey."""

from __future__ import annotations

import asyncio
import uuid

import numpy as np
import pytest
import redis.asyncio as aioredis

from feature_store.keys import Keys
from feature_store.snapshot import read_interactions
from models.matrix import build_interactions, decayed_weight
from models.train import read_matrix, read_snapshot

pytestmark = pytest.mark.integration
HALF_LIFE_S = 30 * 86400.0


async def fill(r: aioredis.Redis, keys: Keys, users: int) -> None:
    rng = np.random.default_rng(7)
    pipe = r.pipeline(transaction=False)
    for u in range(users):
        uid = f"c{u}"
        pipe.sadd(keys.users(keys.shard_of(uid)), uid)
        n = int(rng.integers(0, 6))  # some customers have an empty (absent) zset
        if n:
            # Scores as the store writes them: log weights carrying ts / tau (~455 at
            # maxts below with a 30-day half-life), so the weights come out near 1.
            pipe.zadd(keys.user(uid, "ia"),
                      {f"i{j}": float(s) for j, s in
                       zip(rng.choice(50, n, replace=False), 455.0 + rng.standard_normal(n),
                           strict=True)})
    pipe.hset(keys.meta(0), "maxts", "1700000000.5")
    await pipe.execute()


async def per_key(r: aioredis.Redis, keys: Keys) -> dict[str, tuple[list[str], list[float]]]:
    out = {}
    for shard in range(keys.shards):
        for uid in sorted(m.decode() for m in await r.smembers(keys.users(shard))):
            hist = await r.zrange(keys.user(uid, "ia"), 0, -1, withscores=True)
            if hist:
                out[uid] = ([m.decode() for m, _ in hist], [s for _, s in hist])
    return out


def test_bulk_read_equals_per_key_reads(redis_url: str) -> None:
    async def main() -> None:
        r = aioredis.Redis.from_url(redis_url, decode_responses=False)
        keys = Keys(f"snap{uuid.uuid4().hex[:8]}", 4)
        try:
            await fill(r, keys, 700)
            want = await per_key(r, keys)
            assert 400 < len(want) < 700
            # A small page: every shard takes several script calls.
            got = await read_interactions(r, keys, page=25)
            assert set(got) == set(want)
            for uid, (items, scores) in want.items():
                assert got[uid][0] == items
                assert got[uid][1].tolist() == scores  # bit-exact doubles
            rows, ref_ts = await read_snapshot(r, keys, HALF_LIFE_S)
            assert ref_ts == 1700000000.5
            expect = [(uid, item, float(decayed_weight(s, ref_ts, HALF_LIFE_S)))
                      for uid in sorted(want) for item, s in zip(*want[uid], strict=True)]
            assert rows == expect
            # What train_once fits on: the same matrix as the rows make.
            inter, _ = await read_matrix(r, keys, HALF_LIFE_S)
            want_m = build_interactions(rows)
            assert (inter.user_ids, inter.item_ids) == (want_m.user_ids, want_m.item_ids)
            assert (inter.matrix != want_m.matrix).nnz == 0
        finally:
            await r.aclose()
    asyncio.run(main())


def test_empty_store_reads_nothing(redis_url: str) -> None:
    async def main() -> None:
        r = aioredis.Redis.from_url(redis_url, decode_responses=False)
        try:
            assert await read_interactions(r, Keys(f"snap{uuid.uuid4().hex[:8]}", 3)) == {}
        finally:
            await r.aclose()
    asyncio.run(main())
