"""Stopping background pollers against a real Valkey.

redis-py (8.1) swallows a cancellation that lands while a command is in flight; a
poller cancelled once then polled on and the API's shutdown, which awaited it, hung
(found when a failing test's ``async with`` over the app's lifespan never returned).
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest
import redis.asyncio as aioredis

from feature_store.client import cancel_and_wait
from feature_store.keys import Keys
from models.population import KEY as STATS_KEY
from serving.crm import PopulationHolder

pytestmark = pytest.mark.integration
ROUNDS = 40


@pytest.mark.timeout(60)  # before the fix: stop() never returned
def test_a_poller_stops_even_when_a_cancel_is_swallowed(redis_url: str) -> None:
    async def check() -> tuple[int, int]:
        client = aioredis.Redis.from_url(redis_url)
        keys = Keys("shutdown-test", 2)
        # A large value keeps each GET in flight long enough for cancels to land in it.
        await client.set(keys.control(STATS_KEY), b"x" * 200_000)
        swallowed = stopped = 0
        try:
            for n in range(ROUNDS):
                holder = PopulationHolder(client, keys)  # the bytes do not decode: polled on
                holder.start_polling(0.0005)
                await asyncio.sleep(0.001 * (n % 5))
                assert holder._task is not None
                holder._task.cancel()  # once, as a plain cancel() would
                with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                    await asyncio.wait_for(asyncio.shield(holder._task), 0.2)
                swallowed += not holder._task.done()
                await holder.stop()
                stopped += holder._task.done()
        finally:
            await client.delete(keys.control(STATS_KEY))
            await client.aclose()
        return swallowed, stopped

    swallowed, stopped = asyncio.run(check())
    assert stopped == ROUNDS
    print(f"cancels swallowed by redis-py: {swallowed} of {ROUNDS}")


def test_cancel_and_wait_returns_for_finished_failed_and_running_tasks() -> None:
    async def check() -> None:
        async def fail() -> None:
            raise RuntimeError("gone")

        done = asyncio.ensure_future(asyncio.sleep(0))
        failed = asyncio.ensure_future(fail())
        running = asyncio.ensure_future(asyncio.sleep(60))
        await asyncio.sleep(0.01)
        await asyncio.wait_for(cancel_and_wait(done, failed, running), 2)
        assert done.done() and failed.done() and running.cancelled()

    asyncio.run(check())
