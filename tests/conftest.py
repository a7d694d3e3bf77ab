"""Session fixtures: the real embedded broker and Valkey, started once per test session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from aisle.runtime import EmbeddedRuntime, start_broker, start_store

# Beside the repository; a git worktree (wt/<name>) sits one level deeper.
SHARED = next((base / "shared" / "data" for base in Path(__file__).resolve().parents[2:4]
               if (base / "shared" / "data").is_dir()),
              Path(__file__).resolve().parents[2] / "shared" / "data")
ONLINE_RETAIL = SHARED / "online_retail" / "online_retail.csv.gz"
TAOBAO = SHARED / "taobao_userbehavior" / "userbehavior_sample.csv.gz"


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Broker + store URLs: the embedded servers, or the ones in AISLE_TEST_* if set."""
    given = {"kafka_url": os.environ.get("AISLE_TEST_KAFKA_URL", ""),
             "redis_url": os.environ.get("AISLE_TEST_REDIS_URL", "")}
    runtime = EmbeddedRuntime()
    log_dir = tmp_path_factory.mktemp("servers")
    try:
        if not given["kafka_url"]:
            broker, given["kafka_url"] = start_broker(log_dir)
            runtime.processes.append(broker)
        if not given["redis_url"]:
            store, given["redis_url"] = start_store(log_dir)
            runtime.processes.append(store)
        yield given
    finally:
        runtime.stop()


@pytest.fixture(scope="session")
def redis_url(servers: dict[str, str]) -> str:
    return servers["redis_url"]


@pytest.fixture(scope="session")
def kafka_url(servers: dict[str, str]) -> str:
    return servers["kafka_url"]
