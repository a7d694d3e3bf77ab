"""When the workers recompute population stats: at once on a new store, after a replay
moved the log's clock, and otherwise every ``population_interval_s``."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import msgspec
import pytest

from aisle.replay import replay_file
from aisle.settings import Settings
from aisle.stack import Stack
from feature_store.client import open_redis
from feature_store.keys import Keys
from models.population import KEY as STATS_KEY
from models.population import decode_stats
from models.train import read_ref_ts
from streams.lag import wait_caught_up
from streams.timers import POPULATION_AT, population_due, refresh_population
from tests.conftest import ONLINE_RETAIL
from tests.integration.conftest import isolated_settings
from tests.integration.util import eventually

pytestmark = pytest.mark.integration
DAY = 86400.0


def test_due_when_missing_old_or_a_day_behind_the_log(servers: dict[str, str],
                                                      tmp_path: Path) -> None:
    settings = isolated_settings(servers, tmp_path, population_interval_s=300)
    keys = Keys(settings.features.key_prefix, settings.features.shards)

    async def check() -> list[bool]:
        client = open_redis(settings)
        at = keys.control(POPULATION_AT)

        async def published(age_s: float, as_of: float, took_s: float = 0.5,
                            behind: int = 0) -> bool:
            await client.set(at, msgspec.json.encode(
                {"at": time.time() - age_s, "as_of": as_of, "took_s": took_s}))
            return await population_due(settings, client, lambda: _records(behind))

        try:
            seen = [await population_due(settings, client)]       # nothing published
            seen.append(await population_due(settings, client, lambda: _records(50_000)))
            await refresh_population(settings, client, None)      # an empty store
            seen.append(await population_due(settings, client))   # just swept
            await client.hset(keys.meta(0), "maxts", 10 * DAY)
            seen += [await published(301, 10 * DAY),               # the interval passed
                     await published(301, 10 * DAY, behind=50_000),  # ... mid-replay too
                     await published(60, 10 * DAY - 3600),          # an hour behind: fresh
                     await published(60, 9 * DAY),                  # a day behind
                     await published(60, 9 * DAY, behind=50_000),   # ... mid-replay: wait
                     await published(1, 9 * DAY, took_s=0.5)]       # ... but just swept
            return seen
        finally:
            await client.delete(at, keys.meta(0), keys.control(STATS_KEY))
            await client.aclose()

    # Nothing published: due, but not while the workers are 50,000 records behind.
    assert asyncio.run(check()) == [True, False, False, True, True, False, True, False,
                                    False]


async def _records(n: int) -> int:
    return n


def test_a_new_worker_publishes_stats_for_the_replayed_log(servers: dict[str, str],
                                                           tmp_path: Path) -> None:
    """Before, the first sweep came one whole interval (5 minutes) after a worker
    started: until then a new stack served every customer unsegmented, and offers
    matched no segment rule."""
    settings = isolated_settings(servers, tmp_path, population_interval_s=300,
                                 population_check_s=0.5)
    stack = Stack.start(settings, workers=1, api=False)
    try:
        asyncio.run(replay_file(settings, ONLINE_RETAIL, limit_rows=20_000))
        asyncio.run(wait_caught_up(settings, timeout=120))
        clock = asyncio.run(_clock(settings))
        stats = eventually(lambda: _stats_as_of(settings, clock), timeout=30)
        assert stats.rfm.customers > 100
        assert stats.as_of == clock
    finally:
        stack.stop()


async def _clock(settings: Settings) -> float:
    client = open_redis(settings)
    try:
        return await read_ref_ts(client, Keys(settings.features.key_prefix,
                                              settings.features.shards))
    finally:
        await client.aclose()


def _stats_as_of(settings: Settings, clock: float):  # type: ignore[no-untyped-def]
    async def read():  # type: ignore[no-untyped-def]
        client = open_redis(settings)
        try:
            keys = Keys(settings.features.key_prefix, settings.features.shards)
            raw = await client.get(keys.control(STATS_KEY))
        finally:
            await client.aclose()
        stats = decode_stats(raw) if raw else None
        return stats if stats is not None and stats.as_of >= clock else None

    return asyncio.run(read())
