"""Leases on the real Valkey: one holder at a time; renewed and released only by the
holder whose token the key still holds; kept alive while a job outlasts its TTL."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis.asyncio as aioredis

from feature_store.lease import Lease

pytestmark = pytest.mark.integration


def _key() -> str:
    return f"{{t{uuid.uuid4().hex[:8]}:ctl}}:lease"


def test_one_holder_and_only_the_holder_renews_or_releases(redis_url: str) -> None:
    async def go() -> None:
        client = aioredis.Redis.from_url(redis_url)
        try:
            key = _key()
            first, second = Lease(client, key, 30), Lease(client, key, 30)
            assert await first.acquire()
            assert not await second.acquire()
            assert not await second.renew(300) and not await second.release()
            assert 0 < await client.ttl(key) <= 30 and await client.get(key) == first.token
            assert await first.renew(300) and 30 < await client.ttl(key) <= 300
            # First stalled past its TTL; second took the key over since.
            await client.delete(key)
            assert await second.acquire()
            assert not await first.release() and await client.get(key) == second.token
            assert await second.release() and await client.exists(key) == 0
        finally:
            await client.aclose()

    asyncio.run(go())


def test_a_kept_lease_outlives_its_ttl_while_the_job_runs(redis_url: str) -> None:
    async def go() -> None:
        client = aioredis.Redis.from_url(redis_url)
        try:
            kept, left = Lease(client, _key(), 2), Lease(client, _key(), 2)
            assert await kept.acquire() and await left.acquire()
            async with kept.kept():
                await asyncio.sleep(3.5)  # the job: past the TTL of both
                assert await client.get(kept.key) == kept.token
            assert await client.exists(left.key) == 0  # not kept: expired
            await kept.release()
        finally:
            await client.aclose()

    asyncio.run(go())
