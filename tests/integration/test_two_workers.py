"""Two Faust workers in one consumer group share the partitions; the state they build
together equals a rebuild from the log, and the worker schedule retrains by itself."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from aisle.replay import replay_file
from aisle.stack import Stack
from feature_store.client import open_redis, open_redis_sync
from feature_store.dump import dump_state
from models.artifacts import load_current
from streams.lag import wait_caught_up
from streams.rebuild import rebuild_from_log
from tests.conftest import ONLINE_RETAIL, TAOBAO
from tests.integration.conftest import isolated_settings
from tests.integration.util import eventually

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(servers: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    settings = isolated_settings(servers, tmp_path_factory.mktemp("two"),
                                 retrain_interval_s=1.0, retrain_min_new_events=500)
    s = Stack.start(settings, workers=2, api=False)
    try:
        yield s
    finally:
        s.stop()


async def _model_stats(stack: Stack) -> dict | None:
    client = open_redis(stack.settings)
    try:
        art = await load_current(client, stack.settings.features.key_prefix)
        return art.stats if art else None
    finally:
        await client.aclose()


def test_two_workers_build_the_state_a_rebuild_builds(stack: Stack) -> None:
    asyncio.run(replay_file(stack.settings, ONLINE_RETAIL, limit_rows=15_000))
    asyncio.run(replay_file(stack.settings, TAOBAO, limit_rows=3_000))
    asyncio.run(wait_caught_up(stack.settings, timeout=120))
    assert all(w.proc.poll() is None for w in stack.workers)
    stats = eventually(lambda: asyncio.run(_model_stats(stack)), timeout=60, every=0.5)
    assert stats["events_applied"] >= 500  # trained by the workers' own schedule
    live = asyncio.run(dump_state(stack.settings))
    asyncio.run(rebuild_from_log(stack.settings))
    assert asyncio.run(dump_state(stack.settings)) == live


def test_both_workers_did_part_of_the_work(stack: Stack) -> None:

    from feature_store.keys import Keys

    client = open_redis_sync(stack.settings)
    keys = Keys(stack.settings.features.key_prefix, stack.settings.features.shards)
    shares = {k.decode(): int(v) for k, v in client.hgetall(keys.control("workers")).items()}
    client.close()
    by_pid = {who.rsplit(":", 1)[1]: n for who, n in shares.items()}
    for worker in stack.workers:  # (the rebuild in the test above counts under its own pid)
        assert by_pid.get(str(worker.proc.pid), 0) > 0
