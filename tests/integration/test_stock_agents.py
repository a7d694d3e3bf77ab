"""``worker.batch_consumer=false`` keeps the stock Faust agents (per-message events through
``take_events``) as a fallback and as the ingest benchmark's "before": they must still
build the state a rebuild builds. The batch consumer, the default, is what every other
integration module runs (kill -9, stops mid-batch, join/leave in test_faults.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from aisle.replay import replay_file
from aisle.stack import Stack
from feature_store.dump import dump_state
from streams.lag import wait_caught_up
from streams.rebuild import rebuild_from_log
from tests.conftest import ONLINE_RETAIL, TAOBAO
from tests.integration.conftest import isolated_settings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stock(servers: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    settings = isolated_settings(servers, tmp_path_factory.mktemp("stock"),
                                 batch_consumer=False, retrain_interval_s=0,
                                 population_interval_s=0)
    s = Stack.start(settings, workers=1, api=False)
    try:
        yield s
    finally:
        s.stop()


def test_stock_faust_agents_build_the_state_a_rebuild_builds(stock: Stack) -> None:
    asyncio.run(replay_file(stock.settings, ONLINE_RETAIL, limit_rows=3_000))
    asyncio.run(replay_file(stock.settings, TAOBAO, limit_rows=2_000))
    asyncio.run(wait_caught_up(stock.settings, timeout=120))
    assert stock.workers[0].proc.poll() is None
    live = asyncio.run(dump_state(stock.settings))
    assert len(live) > 1_000
    asyncio.run(rebuild_from_log(stock.settings))
    assert asyncio.run(dump_state(stock.settings)) == live
    log = stock.workers[0].log_path.read_text()
    assert "run_batches]" in log  # it really ran the stock agents, not the batch one
    assert "run_fetched_batches" not in log
