"""The model as the live processes see it: hot-reloaded artifact + per-event fold-in.

``ModelHolder`` polls the published-version pointer and swaps the in-memory artifact
when it changes (API and workers both use it). ``UserVectorUpdater`` re-solves the
vectors of the customers a batch touched, against the current item factors, and
stores them next to the customer's other keys.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Iterable
from typing import Any

import msgspec
import numpy as np
import redis.asyncio as aioredis

from feature_store.client import cancel_and_wait
from feature_store.keys import Keys
from feature_store.multiplexed import ClusterMultiplexed, Multiplexed, Rerouted, pipelined
from models.als import FoldIn
from models.artifacts import ModelArtifact, load_current
from models.matrix import Interactions, decayed_weight
from models.pool import NormOrder
from models.population import all_customers

log = logging.getLogger(__name__)


class ModelHolder:
    def __init__(self, client: aioredis.Redis, prefix: str, order_min_items: int = 0,
                 ) -> None:
        self.client = client
        self.prefix = prefix
        self.current: ModelArtifact | None = None
        self._task: asyncio.Task[None] | None = None
        # The API's: the items by norm for the ALS pool of a large catalog (models/pool.py);
        # 0 = never (workers, which fold in and never rank).
        self.order_min_items = order_min_items
        self._building: asyncio.Task[None] | None = None

    @property
    def version(self) -> str | None:
        return self.current.version if self.current else None

    async def refresh(self) -> bool:
        """Load the published model if it is newer than ours. True if it changed."""
        art = await load_current(self.client, self.prefix, have_version=self.version)
        if art is None:
            return False
        art.fold_in()  # build the cached Gram matrix before the first request needs it
        self.current = art
        log.info("model %s loaded: %d items", art.version, len(art.item_ids))
        self._order_later(art)
        return True

    def _order_later(self, art: ModelArtifact) -> None:
        """Sort the items by norm in a thread (numpy's sort and copy run without the
        GIL); answers score every item until it is ready, with the same result. A newer
        model cancels the build of the older one (its thread finishes on its own, and
        its order is dropped)."""
        least = self.order_min_items
        if least <= 0 or len(art.item_ids) < least:
            return
        if self._building is not None:
            self._building.cancel()

        async def build() -> None:
            order = await asyncio.to_thread(NormOrder, art.item_factors)
            art.norm_order = order
            log.info("model %s: %d items ordered by norm for the ALS pool in %.0f ms",
                     art.version, order.n_items, order.build_s * 1e3)

        self._building = asyncio.create_task(build(), name="model-norm-order")
        self._building.add_done_callback(_log_failure)

    async def order_ready(self) -> None:
        """Wait for the current model's norm order, if one is being built."""
        if self._building is not None:
            await asyncio.wait({self._building})

    def start_polling(self, every_s: float) -> None:
        async def loop() -> None:
            while True:
                try:
                    await self.refresh()
                except Exception as exc:  # keep serving the model we have
                    log.warning("model refresh failed: %s", exc)
                await asyncio.sleep(every_s)

        self._task = asyncio.create_task(loop(), name="model-poll")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
        if self._building is not None:
            await cancel_and_wait(self._building)


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.warning("items not ordered by norm (answers score every item): %r", exc)


def user_vector(art: ModelArtifact, items_logw: list[tuple[bytes | str, float]],
                ref_ts: float, half_life_s: float) -> np.ndarray:
    """Fold a customer's stored interactions into a vector against ``art``'s items."""
    idx: list[int] = []
    logw: list[float] = []
    _known_items(art.item_index, items_logw, idx, logw)
    if not idx:
        return np.zeros(art.item_factors.shape[1], dtype=np.float32)
    weights = decayed_weight(np.asarray(logw, dtype=np.float64), ref_ts, half_life_s)
    return art.fold_in().solve(np.asarray(idx, dtype=np.int64), weights)


# How long the fold-in's pipelined reads and writes wait for the store before the
# connection is dropped and the batch retried (streams/app.py ``retried``).
FOLD_IN_STORE_WAIT_S = 30.0


def _known_items(index: dict[str, int], items_logw: Iterable[tuple[bytes | str, Any]],
                 idx: list[int], logw: list[float]) -> None:
    """Append the model row and log weight of each stored interaction the model knows
    (members as the store gives them; scores as floats or their text)."""
    for member, score in items_logw:
        j = index.get(member.decode() if isinstance(member, bytes) else member)
        if j is not None:
            idx.append(j)
            logw.append(float(score))


_vec_enc = msgspec.msgpack.Encoder()
_vec_dec = msgspec.msgpack.Decoder(tuple[str, bytes])


def encode_vector(version: str, vec: np.ndarray) -> bytes:
    return _vec_enc.encode((version, vec.astype(np.float32).tobytes()))


def encode_vectors(version: str, vectors: np.ndarray) -> list[bytes]:
    """:func:`encode_vector` of each row of ``vectors``, byte for byte: every row's
    encoding is the same header (the version, the length) before the row's bytes."""
    rows = np.ascontiguousarray(vectors, dtype=np.float32)
    width = rows.shape[1] * 4
    head = encode_vector(version, np.zeros(rows.shape[1], dtype=np.float32))[:-width]
    out = np.empty((len(rows), len(head) + width), dtype=np.uint8)
    out[:, :len(head)] = np.frombuffer(head, dtype=np.uint8)
    out[:, len(head):] = rows.view(np.uint8)
    blob, size = out.tobytes(), out.shape[1]
    return [blob[at:at + size] for at in range(0, len(blob), size)]


def decode_vector(raw: bytes, version: str) -> np.ndarray | None:
    """The stored vector if it was solved against ``version``, else None."""
    try:
        ver, data = _vec_dec.decode(raw)
    except msgspec.DecodeError:
        return None
    return np.frombuffer(data, dtype=np.float32) if ver == version else None


class UserVectorUpdater:
    """Re-solves the vectors of the customers a worker's batch touched.

    Per batch: one pipelined read of every customer's interactions and newest event
    time, one stacked solve of every history laid end to end (``FoldIn.solve_flat``),
    one pipelined write of the vectors.
    Both pipelines go over the pipelined connection (``feature_store/multiplexed.py``)
    where there is one: through redis-py's pipeline the three commands per customer cost
    more of the worker's CPU than the solve (``benchmarks/README.md``, session 15). A
    Cluster slot that moved is read and written through redis-py instead."""

    def __init__(self, client: aioredis.Redis, keys: Keys, holder: ModelHolder | None,
                 half_life_s: float) -> None:
        self.client = client
        self.keys = keys
        self.holder = holder
        self.half_life_s = half_life_s
        self._fast: Multiplexed | ClusterMultiplexed | None = None
        self._opened = False

    async def update(self, users: dict[str, float], art: ModelArtifact | None = None,
                     guarded: bool = False) -> int:
        """Re-solve each customer's vector; ``users`` maps id → newest event time.
        Returns how many customers were asked for (guarded: how many vectors written).

        Against ``art`` if given, else the holder's current model. ``guarded`` (the
        re-fold after a model is published, :func:`refold_all`): a vector already solved
        against ``art`` is left alone, and a vector is written only if the stored one is
        still the one read, so a worker's fold-in of a newer event in between wins."""
        art = art or (self.holder.current if self.holder is not None else None)
        if art is None or not users:
            return 0
        ids = list(users)
        bases = [self.keys.user_prefix(uid) for uid in ids]
        reads: list[tuple[Any, ...]] = []
        for base in bases:
            reads.append(("ZRANGE", base + "ia", 0, -1, "WITHSCORES"))
            reads.append(("HGET", base + "rfm", "last_seen"))
            if guarded:
                reads.append(("GET", base + "vec"))
        replies = await self._many(reads)
        per = 3 if guarded else 2
        flats, lasts = replies[0::per], replies[1::per]
        solved = [n for n, flat in enumerate(flats) if flat]  # none: erased in this batch
        stored: list[bytes] = []
        if guarded:
            held = replies[2::per]
            solved = [n for n in solved if held[n] is None
                      or decode_vector(held[n], art.version) is None]  # else folded already
            stored = [held[n] or b"" for n in solved]
        if not solved:
            return 0 if guarded else len(ids)
        # Every history end to end, in one run: [member, score, member, score, ...].
        run = list(itertools.chain.from_iterable([flats[n] for n in solved]))
        get = art.item_rows.get
        cols = np.array([get(m, -1) for m in run[0::2]], dtype=np.int64)
        owner = np.repeat(np.arange(len(solved)), [len(flats[n]) >> 1 for n in solved])
        known = cols >= 0
        owner = owner[known]
        # Decayed to the customer's newest event (the API's request-time fold-in does
        # the same): an old event arriving late must not weigh newer ones up by
        # e^(years / tau), which overflows the solve.
        refs = np.maximum(np.array([max(users[ids[n]], float(lasts[n] or 0.0))
                                    for n in solved]), art.ref_ts)
        logw = np.array(list(map(float, run[1::2])), dtype=np.float64)[known]
        weights = decayed_weight(logw, refs[owner], self.half_life_s)
        vectors = art.fold_in().solve_flat(cols[known], weights,
                                           np.bincount(owner, minlength=len(solved)))
        shard_of, blobs = self.keys.shard_of, encode_vectors(art.version, vectors)
        if guarded:  # one compare-and-set script per shard (its keys share a slot)
            by_shard: dict[int, tuple[list[str], list[bytes]]] = {}
            for n, was, blob in zip(solved, stored, blobs, strict=True):
                keys, args = by_shard.setdefault(shard_of(ids[n]), ([], []))
                keys.append(bases[n] + "vec")
                args += [was, blob]
            done = await self._many([("EVAL", _SET_IF_UNCHANGED, len(keys), *keys, *args)
                                     for keys, args in by_shard.values()], keyed=False)
            return sum(int(d) for d in done)
        # One MSET per shard: a shard's keys share its hash tag, so one slot on a Cluster,
        # and one command to pack and answer instead of one per customer.
        writes: dict[int, list[Any]] = {}
        for n, blob in zip(solved, blobs, strict=True):
            writes.setdefault(shard_of(ids[n]), ["MSET"]).extend((bases[n] + "vec", blob))
        await self._many([tuple(w) for w in writes.values()])
        return len(ids)

    async def _many(self, commands: list[tuple[Any, ...]], keyed: bool = True) -> list[Any]:
        """The replies of ``commands`` (flat, as RESP2 gives them), pipelined. ``keyed``:
        each command's key is its second element (a Cluster routes by it; an ``EVAL``'s
        is not, so on a Cluster those go through redis-py, which finds the key)."""
        if not self._opened:
            self._fast, self._opened = pipelined(self.client), True
            if self._fast is not None:
                # The worker's redis-py client waits on the store without a limit; the
                # pipelined connection must have one (its watchdog), so a long one: a
                # store busy with other workers' scripts must not fail the batch.
                self._fast.timeout = max(self._fast.timeout, FOLD_IN_STORE_WAIT_S)
        if self._fast is not None and (keyed or isinstance(self._fast, Multiplexed)):
            try:
                return await self._fast.execute_many(commands)
            except Rerouted:
                pass
        pipe = self.client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command, NEVER_DECODE=True)
        replies = await pipe.execute()
        # Over RESP3 redis-py gives ZRANGE ... WITHSCORES as pairs: flat, as RESP2's.
        return [[x for pair in r for x in pair]
                if c[0] == "ZRANGE" and r and isinstance(r[0], list | tuple) else r
                for c, r in zip(commands, replies, strict=True)]

    async def close(self) -> None:
        if self._fast is not None:
            await self._fast.close()
        self._fast, self._opened = None, False


# Set each KEYS[i] to ARGV[2i] only if it still holds ARGV[2i-1] ("" for no value): the
# re-fold never overwrites a vector a worker wrote after the re-fold read it. Returns
# how many were set.
_SET_IF_UNCHANGED = """
local n = 0
for i, key in ipairs(KEYS) do
  if (redis.call('GET', key) or '') == ARGV[2 * i - 1] then
    redis.call('SET', key, ARGV[2 * i])
    n = n + 1
  end
end
return n
"""
REFOLD_CHUNK = 2000


async def refold_all(client: aioredis.Redis, keys: Keys, art: ModelArtifact,
                     half_life_s: float, chunk: int = REFOLD_CHUNK) -> int:
    """Every customer's vector re-solved against ``art``, just published; returns how
    many were written.

    Without it, a new model left every stored vector on the old version until the
    customer's next event, and the API folded each customer in at request time meanwhile
    (~0.25 ms of its CPU per answer with the customer cache off, once per process with
    it on). The inputs are the worker's (the stored interactions and ``last_seen``), so
    the vectors are the ones a worker or the API would solve. Guarded: a worker that
    folded a customer in against ``art`` first, or wrote a newer vector in between, wins.
    A worker still on the previous model for its poll interval may overwrite a few with
    that model's vectors; the API folds those in at request time, as before."""
    updater = UserVectorUpdater(client, keys, None, half_life_s)
    written = 0
    try:
        users = await all_customers(client, keys)
        for start in range(0, len(users), chunk):
            part = users[start:start + chunk]
            written += await updater.update(dict.fromkeys(part, 0.0), art=art, guarded=True)
    finally:
        await updater.close()
    return written


def refresh_item_factors(art: ModelArtifact, inter: Interactions, items: set[str],
                         ) -> tuple[np.ndarray, int]:
    """``art``'s item factors with those of ``items`` re-solved against the current
    interactions: every customer folded in against ``art`` (as the worker's fold-in
    does), then each item's least-squares solve given those user factors — the user
    fold-in with the roles swapped, the same numbers as ``implicit``'s
    ``partial_fit_items``. Items ``art`` does not know keep no factors (brand-new items
    hold ~0.5% of the new-items truth on Online Retail). Returns the new factors and
    how many items were re-solved. Pure: reads and writes nothing.

    The worker's ``item_refresh_interval_s`` timer runs it between retrains
    (``models.train.refresh_items_once``); ``benchmarks/stream_staleness.py`` measures it."""
    index = art.item_index
    cols = np.array([index.get(i, -1) for i in inter.item_ids], dtype=np.int64)
    x = inter.matrix.tocsr()
    histories = []
    for u in range(x.shape[0]):
        lo, hi = x.indptr[u], x.indptr[u + 1]
        idx = cols[x.indices[lo:hi]]
        keep = idx >= 0
        histories.append((idx[keep], x.data[lo:hi][keep]))
    users = art.fold_in().solve_many(histories)
    solver = FoldIn(users, art.params["regularization"], art.params["alpha"])
    xt = x.T.tocsr()  # items × users
    factors = art.item_factors.copy()
    picked = [c for c, item in enumerate(inter.item_ids) if item in items and cols[c] >= 0]
    for c in picked:
        lo, hi = xt.indptr[c], xt.indptr[c + 1]
        factors[cols[c]] = solver.solve(xt.indices[lo:hi], xt.data[lo:hi])
    return factors, len(picked)
