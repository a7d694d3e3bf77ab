"""A whole stack per test module: real worker process(es) and API over the session's
broker and Valkey, with topics, consumer group and key prefix of its own."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from aisle.settings import Settings
from aisle.stack import Stack
from feature_store.client import open_redis_sync

pytestmark = pytest.mark.integration
ADMIN_KEY = "test-admin-key-0123456789"


def isolated_settings(servers: dict[str, str], data_dir: Path, **worker: object) -> Settings:
    tag = uuid.uuid4().hex[:8]
    return Settings(
        kafka_url=servers["kafka_url"], redis_url=servers["redis_url"], data_dir=data_dir,
        topics={"events": f"t{tag}.events", "catalog": f"t{tag}.catalog",
                "deadletter": f"t{tag}.dlq", "push": f"t{tag}.push", "partitions": 4},
        # The population sweep is off unless a test turns it on (test_population_schedule.py)
        # or runs it itself: a worker's sweep holding the lock would turn a test's own
        # refresh into a no-op, and its lifecycle events race the "caught up" checks.
        worker={"app_id": f"aisle-{tag}", "batch_within_s": 0.02, "model_poll_s": 0.3,
                "population_interval_s": 0, **worker},
        features={"key_prefix": f"k{tag}", "shards": 4},
        model={"factors": 16, "iterations": 8},
        serving={"port": 0, "admin_api_key": ADMIN_KEY, "cors_origins": ["https://shop.example"]},
        # Off unless a test turns it on (test_push.py): a drain writes push.decided events
        # on its own schedule, which would race the "caught up, now compare" checks.
        push={"drain_interval_s": 0},
    )


@pytest.fixture(scope="module")
def stack(servers: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    settings = isolated_settings(servers, tmp_path_factory.mktemp("stack"))
    s = Stack.start(settings, workers=1, api=True)
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def api(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.api_url or "", timeout=10) as client:
        yield client


@pytest.fixture(scope="module")
def store(stack: Stack) -> Iterator[redis.Redis]:
    client = open_redis_sync(stack.settings)
    yield client
    client.close()


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)
