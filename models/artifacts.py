"""A trained model as one versioned, immutable blob, and its publication through Redis.

The blob is an ``.npz`` (``np.load(allow_pickle=False)`` safe: strings are numpy unicode
arrays, dicts are a JSON string). Publication is "write everything, then move a pointer",
so a reader never sees half a model.

Key layout (all in one Redis Cluster hash slot thanks to the ``{<prefix>:m}`` tag, so
the pointer swap can be one MULTI/EXEC and a version's chunks one MGET):

==================================  ===========================================
``{<prefix>:m}:model:current``      string: the published version
``{<prefix>:m}:model:versions``     zset: version → created_at (kept versions)
``{<prefix>:m}:model:<ver>:n``      string: number of chunks of ``<ver>``
``{<prefix>:m}:model:<ver>:<i>``    string: chunk ``i`` of ``<ver>``'s npz bytes
==================================  ===========================================

A version's keys carry a TTL until the swap makes them permanent, so a publisher that
dies half-way leaves nothing behind for long.
"""

from __future__ import annotations

import io
import json
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import redis.asyncio as aioredis

from models.als import FoldIn
from models.pool import NormOrder, exact_pool

FORMAT = 1
# Longer than any upload can take; only matters for a publisher that died half-way.
STAGING_TTL_S = 86400
_VERSION_RE = re.compile(r"[A-Za-z0-9._-]+")


class ModelUnavailable(RuntimeError):
    """The pointer names a version whose chunks are gone (twice in a row)."""


@dataclass(eq=False)
class ModelArtifact:
    version: str
    created_at: float
    ref_ts: float  # event time the training weights were decayed to
    params: dict[str, Any]  # ALSParams as a dict; fold-in reads regularization and alpha
    item_ids: list[str]
    item_factors: np.ndarray  # float32 [n, k]
    similar_ids: np.ndarray  # int32 [n, K], indices into item_ids
    similar_scores: np.ndarray  # float32 [n, K], cosine
    consumable: np.ndarray  # bool [n]: bought again by most buyers
    stats: dict[str, Any] = field(default_factory=dict)
    # Item-kNN on the training matrix (co-occurrence cosine; ``models/train.py``), for
    # "similar to what you just viewed". int32 / float32 [n, K], -1 / 0 padded. Optional:
    # blobs written before it load with None, and the source then stays silent.
    knn_ids: np.ndarray | None = None
    knn_scores: np.ndarray | None = None
    _index: dict[str, int] | None = field(default=None, init=False, repr=False)
    _rows: dict[bytes, int] | None = field(default=None, init=False, repr=False)
    _fold_in: FoldIn | None = field(default=None, init=False, repr=False)
    # Set by the API's ModelHolder once built (models/pool.py); None: every item scored.
    norm_order: NormOrder | None = field(default=None, init=False, repr=False)

    @property
    def item_index(self) -> dict[str, int]:
        """item id → row, built on first use (tens of ms at 100k items; writers never pay)."""
        if self._index is None:
            self._index = {item: j for j, item in enumerate(self.item_ids)}
        return self._index

    @property
    def item_rows(self) -> dict[bytes, int]:
        """:attr:`item_index` keyed by the ids' UTF-8 bytes, as the store's replies hold
        them: the worker's fold-in looks up every member of its customers' histories."""
        if self._rows is None:
            self._rows = {item.encode(): j for item, j in self.item_index.items()}
        return self._rows

    def fold_in(self) -> FoldIn:
        """The cached solver for this model's items (its Gram matrix is built once)."""
        if self._fold_in is None:
            self._fold_in = FoldIn(self.item_factors, self.params["regularization"],
                                   self.params["alpha"])
        return self._fold_in

    def pool(self, vec: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows (ascending) and scores of the ``k`` items ``vec`` scores highest (positive
        scores only). The same answer either way: scoring the items by norm, largest
        first, only while they could still enter it, once that order is built."""
        if self.norm_order is not None:
            return self.norm_order.pool(vec, k)
        return exact_pool(self.item_factors, vec, k)

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, meta=np.array(json.dumps(self._meta())),
                 item_ids=np.array(self.item_ids, dtype=np.str_),
                 item_factors=np.asarray(self.item_factors, dtype=np.float32),
                 similar_ids=np.asarray(self.similar_ids, dtype=np.int32),
                 similar_scores=np.asarray(self.similar_scores, dtype=np.float32),
                 consumable=np.asarray(self.consumable, dtype=bool),
                 **self._knn_arrays())
        return buf.getvalue()

    def _knn_arrays(self) -> dict[str, np.ndarray]:
        if self.knn_ids is None or self.knn_scores is None:
            return {}
        return {"knn_ids": np.asarray(self.knn_ids, dtype=np.int32),
                "knn_scores": np.asarray(self.knn_scores, dtype=np.float32)}

    @classmethod
    def from_bytes(cls, data: bytes) -> ModelArtifact:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            meta = json.loads(str(npz["meta"]))
            if meta.get("format") != FORMAT:
                raise ValueError(f"unknown model format {meta.get('format')!r}")
            art = cls(version=meta["version"], created_at=meta["created_at"],
                      ref_ts=meta["ref_ts"], params=meta["params"],
                      item_ids=npz["item_ids"].tolist(), item_factors=npz["item_factors"],
                      similar_ids=npz["similar_ids"], similar_scores=npz["similar_scores"],
                      consumable=npz["consumable"], stats=meta["stats"],
                      knn_ids=npz["knn_ids"] if "knn_ids" in npz.files else None,
                      knn_scores=npz["knn_scores"] if "knn_scores" in npz.files else None)
        art.check()
        return art

    def check(self) -> None:
        """Raise ValueError unless every per-item array has one row per item."""
        n = len(self.item_ids)
        rows = {"item_factors": len(self.item_factors), "similar_ids": len(self.similar_ids),
                "similar_scores": len(self.similar_scores), "consumable": len(self.consumable)}
        rows |= {name: len(arr) for name, arr in (("knn_ids", self.knn_ids),
                                                  ("knn_scores", self.knn_scores))
                 if arr is not None}
        bad = {name: got for name, got in rows.items() if got != n}
        if bad:
            raise ValueError(f"model {self.version}: {n} items but rows {bad}")

    def _meta(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": self.version, "created_at": self.created_at,
                "ref_ts": self.ref_ts, "params": self.params, "stats": self.stats}


def new_version(now: float | None = None) -> str:
    """UTC time to the second plus 24 random bits: sorts by time, unique in practice.

    >>> new_version(0.0)[:17]
    '19700101T000000Z-'
    """
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    return f"{stamp}-{secrets.token_hex(3)}"


class ModelKeys:
    """The key layout above, for one prefix.

    >>> ModelKeys("a").chunk("v1", 0)
    b'{a:m}:model:v1:0'
    """

    def __init__(self, prefix: str) -> None:
        self.base = f"{{{prefix}:m}}:model"
        self.current = f"{self.base}:current".encode()
        self.versions = f"{self.base}:versions".encode()

    def count(self, version: str) -> bytes:
        return f"{self.base}:{version}:n".encode()

    def chunk(self, version: str, i: int) -> bytes:
        return f"{self.base}:{version}:{i}".encode()

    def of_version(self, version: str, chunks: int) -> list[bytes]:
        return [self.count(version)] + [self.chunk(version, i) for i in range(chunks)]


async def publish_model(r: aioredis.Redis, prefix: str, art: ModelArtifact, keep: int = 2,
                        chunk_bytes: int = 4 << 20) -> None:
    """Upload ``art``, point ``current`` at it, then drop all but the newest ``keep``.

    Chunked because one multi-hundred-MB string blocks the server (and hits
    ``proto-max-bulk-len``); the pointer only moves once every chunk is stored.
    """
    if not _VERSION_RE.fullmatch(art.version):
        raise ValueError(f"version {art.version!r} is not a plain token")
    if keep < 1:
        raise ValueError("keep must be >= 1: the current version is always kept")
    keys = ModelKeys(prefix)
    data = memoryview(art.to_bytes())
    chunks = [data[i:i + chunk_bytes] for i in range(0, len(data), chunk_bytes)]
    # One chunk per round trip: a pipeline of all of them is one write of the whole blob,
    # which on a busy machine outlasted the client's socket timeout once the item-kNN
    # neighbours made Taobao's model ~50% larger. A few ms per chunk; nothing else waits.
    for i, chunk in enumerate(chunks):
        await r.set(keys.chunk(art.version, i), chunk, ex=STAGING_TTL_S)
    await r.set(keys.count(art.version), len(chunks), ex=STAGING_TTL_S)
    await _swap_pointer(r, keys, art, len(chunks))
    await _prune(r, keys, keep)


async def _swap_pointer(r: aioredis.Redis, keys: ModelKeys, art: ModelArtifact,
                        chunks: int) -> None:
    # One transaction: readers see either the old pointer or the new one with all its
    # chunks already permanent, never a pointer to keys that could still expire.
    tx = r.pipeline(transaction=True)
    for key in keys.of_version(art.version, chunks):
        tx.persist(key)
    tx.set(keys.current, art.version)
    tx.zadd(keys.versions, {art.version: art.created_at})
    await tx.execute()


async def _prune(r: aioredis.Redis, keys: ModelKeys, keep: int) -> None:
    current = await r.get(keys.current)
    old = [v for v in await r.zrange(keys.versions, 0, -keep - 1) if v != current]
    if not old:
        return
    counts = await r.mget([keys.count(v.decode()) for v in old])
    tx = r.pipeline(transaction=True)
    for raw, n in zip(old, counts, strict=True):
        version = raw.decode()
        tx.delete(*keys.of_version(version, int(n or 0)))
        tx.zrem(keys.versions, raw)
    await tx.execute()


async def current_version(r: aioredis.Redis, prefix: str) -> str | None:
    raw = await r.get(ModelKeys(prefix).current)
    return raw.decode() if raw is not None else None


async def load_current(r: aioredis.Redis, prefix: str,
                       have_version: str | None = None) -> ModelArtifact | None:
    """The published model, or None if there is none or it is ``have_version``.

    Costs one GET when nothing changed, so callers can poll. A version pruned between
    reading the pointer and its chunks is retried once with the new pointer.
    """
    keys = ModelKeys(prefix)
    for _ in range(2):
        version = await current_version(r, prefix)
        if version is None or version == have_version:
            return None
        data = await _read_chunks(r, keys, version)
        if data is not None:
            art = ModelArtifact.from_bytes(data)
            if art.version != version:
                raise ValueError(f"chunks of {version} hold model {art.version}")
            return art
    raise ModelUnavailable(f"model {version} vanished while being read, twice")


async def _read_chunks(r: aioredis.Redis, keys: ModelKeys, version: str) -> bytes | None:
    n = await r.get(keys.count(version))
    if n is None:
        return None
    # One MGET: a prune deletes a version's keys in one DEL, so we get all or none.
    parts = await r.mget([keys.chunk(version, i) for i in range(int(n))])
    if any(part is None for part in parts):
        return None
    return b"".join(parts)
