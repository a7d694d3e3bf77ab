"""Publishing models through the real Valkey: pointer swap, pruning, torn-read retry."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest
import redis.asyncio as aioredis

from models import artifacts
from models.artifacts import (
    ModelArtifact,
    ModelKeys,
    ModelUnavailable,
    current_version,
    load_current,
    publish_model,
)

pytestmark = pytest.mark.integration


def make_artifact(version: str, created_at: float, n: int = 300, k: int = 8) -> ModelArtifact:
    rng = np.random.default_rng(int(created_at))
    return ModelArtifact(
        version=version, created_at=created_at, ref_ts=created_at - 1.0,
        params={"regularization": 0.05, "alpha": 4.0}, item_ids=[f"i{j}" for j in range(n)],
        item_factors=rng.standard_normal((n, k)).astype(np.float32),
        similar_ids=rng.integers(0, n, (n, 5)).astype(np.int32),
        similar_scores=rng.random((n, 5)).astype(np.float32),
        consumable=np.zeros(n, dtype=bool), stats={"users": 1})


def with_client(redis_url: str, body: Callable[[aioredis.Redis, str], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        client = aioredis.Redis.from_url(redis_url, decode_responses=False)
        try:
            return await body(client, f"t{uuid.uuid4().hex[:8]}")
        finally:
            await client.aclose()
    return asyncio.run(main())


def test_publish_then_load(redis_url: str) -> None:
    async def body(r: aioredis.Redis, prefix: str) -> None:
        assert await load_current(r, prefix) is None
        art = make_artifact("v1", 1000.0)
        await publish_model(r, prefix, art, chunk_bytes=1000)  # many chunks
        assert await current_version(r, prefix) == "v1"
        got = await load_current(r, prefix)
        assert got is not None and got.version == "v1"
        np.testing.assert_array_equal(got.item_factors, art.item_factors)
        assert got.item_ids == art.item_ids
        assert await load_current(r, prefix, have_version="v1") is None
        keys = ModelKeys(prefix)
        assert int(await r.get(keys.count("v1"))) > 1
        assert await r.ttl(keys.chunk("v1", 0)) == -1  # made permanent by the swap
    with_client(redis_url, body)


def test_keeps_only_the_newest_versions(redis_url: str) -> None:
    async def body(r: aioredis.Redis, prefix: str) -> None:
        for i in range(4):
            await publish_model(r, prefix, make_artifact(f"v{i}", 1000.0 + i), keep=2,
                                chunk_bytes=4000)
        keys = ModelKeys(prefix)
        assert await r.zrange(keys.versions, 0, -1) == [b"v2", b"v3"]
        assert await current_version(r, prefix) == "v3"
        left = sorted([k async for k in r.scan_iter(match=f"{{{prefix}:m}}:model:*")])
        assert not [k for k in left if k.startswith(keys.base.encode() + b":v0")]
        assert not [k for k in left if k.startswith(keys.base.encode() + b":v1")]
        assert any(k.startswith(keys.base.encode() + b":v2:") for k in left)
    with_client(redis_url, body)


def test_failed_publish_leaves_the_pointer_alone(redis_url: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken_swap(*_: object) -> None:
        raise ConnectionError("lost the server mid-publish")

    async def body(r: aioredis.Redis, prefix: str) -> None:
        await publish_model(r, prefix, make_artifact("good", 1000.0))
        monkeypatch.setattr(artifacts, "_swap_pointer", broken_swap)
        with pytest.raises(ConnectionError):
            await publish_model(r, prefix, make_artifact("half", 2000.0))
        assert await current_version(r, prefix) == "good"
        got = await load_current(r, prefix)
        assert got is not None and got.version == "good"
        keys = ModelKeys(prefix)
        assert 0 < await r.ttl(keys.chunk("half", 0)) <= artifacts.STAGING_TTL_S  # will expire
    with_client(redis_url, body)


def test_reader_retries_when_its_version_is_pruned_under_it(redis_url: str) -> None:
    async def body(r: aioredis.Redis, prefix: str) -> None:
        for i in range(3):
            await publish_model(r, prefix, make_artifact(f"v{i}", 1000.0 + i), keep=1)
        keys = ModelKeys(prefix)
        real_get = r.get
        stale = [b"v0"]  # the pointer as a reader saw it before two publishes pruned v0

        async def get_once_stale(key: Any) -> Any:
            if key == keys.current and stale:
                return stale.pop()
            return await real_get(key)

        r.get = get_once_stale  # type: ignore[method-assign]
        got = await load_current(r, prefix)
        assert got is not None and got.version == "v2"
    with_client(redis_url, body)


def test_pointer_to_missing_chunks_raises(redis_url: str) -> None:
    async def body(r: aioredis.Redis, prefix: str) -> None:
        await r.set(ModelKeys(prefix).current, b"ghost")
        with pytest.raises(ModelUnavailable):
            await load_current(r, prefix)
    with_client(redis_url, body)
