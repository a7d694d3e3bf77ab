"""The worker's fold-in (models/online.py ``UserVectorUpdater``) against the real store:
every touched customer's stored vector is the API's request-time fold-in of the same
history, whichever connection carried the reads and writes; and the re-fold of every
customer after a model is published (``refold_all``)."""

from __future__ import annotations

import asyncio
import uuid

import numpy as np
import pytest
import redis.asyncio as aioredis

from feature_store.keys import Keys
from feature_store.updates import forward_log_weight
from models.als import STACKED_MAX_ITEMS
from models.artifacts import ModelArtifact
from models.online import (
    ModelHolder,
    UserVectorUpdater,
    decode_vector,
    encode_vector,
    refold_all,
    user_vector,
)

pytestmark = pytest.mark.integration

HALF_LIFE_S = 7 * 86400.0
T0 = 1.7e9


def model(n_items: int = 60, k: int = 8) -> ModelArtifact:
    rng = np.random.default_rng(5)
    factors = (rng.standard_normal((n_items, k)) * rng.exponential(0.4, (n_items, 1)))
    return ModelArtifact(version="v-upd", created_at=0.0, ref_ts=T0,
                         params={"regularization": 0.05, "alpha": 4.0},
                         item_ids=[f"i{j}" for j in range(n_items)],
                         item_factors=factors.astype(np.float32),
                         similar_ids=np.zeros((n_items, 1), dtype=np.int32),
                         similar_scores=np.zeros((n_items, 1), dtype=np.float32),
                         consumable=np.zeros(n_items, dtype=bool))


@pytest.mark.parametrize("how", ["pipelined", "redis-py RESP2", "redis-py RESP3"])
def test_stored_vectors_are_the_request_time_fold_in(redis_url: str, how: str) -> None:
    art = model()
    rng = np.random.default_rng(9)
    keys = Keys(f"upd{uuid.uuid4().hex[:6]}", 4)
    # Histories of 1 to past the stacked limit (so both solve paths), one item the
    # model does not know, newest events an hour to a month after the model's time.
    lengths = [*range(1, STACKED_MAX_ITEMS + 6), 59]
    touched = {f"u{n}": T0 + float(rng.uniform(3600, 30 * 86400)) for n in range(len(lengths))}

    async def go() -> None:
        client = aioredis.Redis.from_url(redis_url, protocol=3 if "RESP3" in how else 2)
        try:
            for (user, newest), n in zip(touched.items(), lengths, strict=True):
                items = [f"i{j}" for j in rng.choice(len(art.item_ids), n, replace=False)]
                if n == 3:
                    items.append("not-in-the-model")
                ia = {item: forward_log_weight(float(rng.uniform(0.5, 4)),
                                               newest - float(rng.uniform(0, 9e5)), HALF_LIFE_S)
                      for item in items}
                await client.zadd(keys.user(user, "ia"), ia)
                if n % 2:  # the profile's last_seen, later than the batch's event
                    await client.hset(keys.user(user, "rfm"), "last_seen", newest + 3600.0)
            holder = ModelHolder(client, keys.prefix)
            holder.current = art
            updater = UserVectorUpdater(client, keys, holder, HALF_LIFE_S)
            if how != "pipelined":
                updater._opened = True  # no pipelined connection: redis-py carries it
            erased = {"gone": T0 + 10.0}  # erased in the batch: no history, no vector
            assert await updater.update({**touched, **erased}) == len(touched) + 1
            assert (updater._fast is not None) == (how == "pipelined")
            if updater._fast is not None:  # never quicker to give up than the worker's client
                assert updater._fast.timeout >= 30.0
            assert await client.exists(keys.user("gone", "vec")) == 0
            for user, newest in touched.items():
                history = await client.zrange(keys.user(user, "ia"), 0, -1, withscores=True)
                last = await client.hget(keys.user(user, "rfm"), "last_seen")
                ref = max(art.ref_ts, newest, float(last or 0.0))
                want = user_vector(art, history, ref, HALF_LIFE_S)
                got = decode_vector(await client.get(keys.user(user, "vec")), art.version)
                assert got is not None and want.any()
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
            await updater.close()
        finally:
            await client.aclose()

    asyncio.run(go())


def test_refold_after_a_model_lands_solves_everyone_and_never_overwrites_newer(
        redis_url: str) -> None:
    art = model()
    rng = np.random.default_rng(4)
    keys = Keys(f"rfd{uuid.uuid4().hex[:6]}", 4)
    users = [f"c{n}" for n in range(25)]

    async def go() -> None:
        client = aioredis.Redis.from_url(redis_url)
        try:
            for n, user in enumerate(users):
                items = [f"i{j}" for j in rng.choice(len(art.item_ids), 1 + n % 9, replace=False)]
                await client.zadd(keys.user(user, "ia"), {
                    i: forward_log_weight(float(rng.uniform(0.5, 3)), T0 - 3600.0 * n,
                                          HALF_LIFE_S) for i in items})
                await client.sadd(keys.users(keys.shard_of(user)), user)
            # c0: a vector of the previous model (re-solved); c1: one a worker already
            # solved against this model (kept as it is); c2: a worker writes a newer one
            # while the re-fold is between its read and its write (kept).
            old = encode_vector("v-old", np.ones(8, dtype=np.float32))
            mine = encode_vector(art.version, np.full(8, 7.0, dtype=np.float32))
            newer = encode_vector(art.version, np.full(8, 9.0, dtype=np.float32))
            await client.set(keys.user("c0", "vec"), old)
            await client.set(keys.user("c1", "vec"), mine)
            await client.set(keys.user("c2", "vec"), old)
            real_many = UserVectorUpdater._many

            async def racing(self, commands, keyed=True):  # type: ignore[no-untyped-def]
                c2 = keys.user("c2", "vec")
                if commands[0][0] == "EVAL" and any(c2 in c for c in commands):
                    await client.set(c2, newer)  # the worker's fold-in lands first
                return await real_many(self, commands, keyed)

            UserVectorUpdater._many = racing  # type: ignore[method-assign]
            try:
                written = await refold_all(client, keys, art, HALF_LIFE_S, chunk=10)
            finally:
                UserVectorUpdater._many = real_many  # type: ignore[method-assign]
            assert written == len(users) - 2  # all but c1 (current already) and c2 (raced)
            assert await client.get(keys.user("c1", "vec")) == mine
            assert await client.get(keys.user("c2", "vec")) == newer
            for user in [u for u in users if u not in ("c1", "c2")]:
                history = await client.zrange(keys.user(user, "ia"), 0, -1, withscores=True)
                want = user_vector(art, history, art.ref_ts, HALF_LIFE_S)
                got = decode_vector(await client.get(keys.user(user, "vec")), art.version)
                assert got is not None
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
        finally:
            await client.aclose()

    asyncio.run(go())
