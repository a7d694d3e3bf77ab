"""Model artifact: byte round trip, version ids, key layout (Redis itself: integration)."""

from __future__ import annotations

import doctest
import io
import json
import time

import numpy as np
import pytest

from models import artifacts
from models.als import FoldIn
from models.artifacts import ModelArtifact, ModelKeys, new_version
from models.online import decode_vector, encode_vector, encode_vectors


def make_artifact(n: int = 6, k: int = 4, top: int = 3, version: str = "v1",
                  ) -> ModelArtifact:
    rng = np.random.default_rng(n)
    return ModelArtifact(
        version=version, created_at=1763892900.123456, ref_ts=1763800000.5,
        params={"factors": k, "regularization": 0.05, "alpha": 4.0, "iterations": 3, "seed": 1},
        item_ids=[f"SKU-{i}" for i in range(n - 1)] + ["ünïcode ☃"] * (n > 0),
        item_factors=rng.standard_normal((n, k)).astype(np.float32),
        similar_ids=rng.integers(0, max(n, 1), (n, top)).astype(np.int32),
        similar_scores=rng.random((n, top)).astype(np.float32),
        consumable=rng.random(n) > 0.5,
        stats={"users": 10, "nnz": 30, "fit_s": 0.25})


def assert_same(a: ModelArtifact, b: ModelArtifact) -> None:
    for name in ("version", "created_at", "ref_ts", "params", "item_ids", "stats"):
        assert getattr(a, name) == getattr(b, name), name
    for name in ("item_factors", "similar_ids", "similar_scores", "consumable"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and x.shape == y.shape, name
        np.testing.assert_array_equal(x, y)


def test_doctests() -> None:
    assert doctest.testmod(artifacts).failed == 0


def test_bytes_round_trip_is_exact() -> None:
    art = make_artifact()
    back = ModelArtifact.from_bytes(art.to_bytes())
    assert_same(art, back)
    assert back.item_factors.dtype == np.float32 and back.similar_ids.dtype == np.int32
    assert back.consumable.dtype == bool


def test_round_trip_of_an_empty_model() -> None:
    art = make_artifact(n=0, top=0)
    assert_same(art, ModelArtifact.from_bytes(art.to_bytes()))


def test_loads_without_pickle() -> None:
    # np.load(allow_pickle=False) refuses object arrays: every member must be plain.
    with np.load(io.BytesIO(make_artifact().to_bytes()), allow_pickle=False) as npz:
        assert all(npz[name].dtype != object for name in npz.files)
        assert json.loads(str(npz["meta"]))["format"] == artifacts.FORMAT


def test_unknown_format_and_ragged_arrays_are_rejected() -> None:
    art = make_artifact()
    bad = io.BytesIO()
    np.savez(bad, meta=np.array(json.dumps({"format": 99})))
    with pytest.raises(ValueError, match="format"):
        ModelArtifact.from_bytes(bad.getvalue())
    art.consumable = art.consumable[:-1]
    with pytest.raises(ValueError, match="consumable"):
        ModelArtifact.from_bytes(art.to_bytes())


def test_item_index_and_cached_fold_in() -> None:
    art = make_artifact()
    assert art.item_index["ünïcode ☃"] == 5
    assert art.item_rows["ünïcode ☃".encode()] == 5  # as the store's replies hold ids
    assert len(art.item_rows) == len(art.item_ids)
    fold = art.fold_in()
    assert isinstance(fold, FoldIn) and art.fold_in() is fold
    assert fold.regularization == 0.05 and fold.alpha == 4.0
    vec = fold.solve(np.array([0, 2]), np.array([1.0, 2.0]))
    assert vec.shape == (4,) and vec.dtype == np.float32


@pytest.mark.parametrize("k", [1, 63, 64, 16384, 16385])  # msgpack bin8 / bin16 / bin32
def test_vectors_encoded_together_are_each_encoded_alone(k: int) -> None:
    rows = np.random.default_rng(k).standard_normal((5, k)).astype(np.float32)
    for version in ("v1", "2026-12-04T05:00:00.123456Z-ünï" * 9):
        together = encode_vectors(version, rows)
        assert together == [encode_vector(version, row) for row in rows]
        assert all(np.array_equal(decode_vector(blob, version), row)
                   for blob, row in zip(together, rows, strict=True))
    assert encode_vectors("v1", rows[:0]) == []


def test_versions_sort_by_time_and_are_unique() -> None:
    now = time.time()
    a, b = new_version(now), new_version(now + 1)
    assert a < b
    assert len({new_version(now) for _ in range(200)}) == 200
    assert new_version(1763892900.0).startswith("20251123T101500Z-")


def test_key_layout_is_byte_exact() -> None:
    keys = ModelKeys("aisle")
    assert keys.current == b"{aisle:m}:model:current"
    assert keys.versions == b"{aisle:m}:model:versions"
    assert keys.count("20251123T101500Z-abc123") == b"{aisle:m}:model:20251123T101500Z-abc123:n"
    assert keys.chunk("v", 3) == b"{aisle:m}:model:v:3"
    assert keys.of_version("v", 2) == [b"{aisle:m}:model:v:n", b"{aisle:m}:model:v:0",
                                       b"{aisle:m}:model:v:1"]
