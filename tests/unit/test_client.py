"""The Redis client factory: one Valkey or a Redis Cluster, chosen by the settings, and a
cluster `aisle up` recorded is what later commands connect to."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from aisle.runtime import resolve, write_runtime
from aisle.settings import Settings
from feature_store.client import is_cluster, open_redis


def settings(tmp_path: Path, **fields: object) -> Settings:
    return Settings(data_dir=tmp_path, kafka_url="kafka://127.0.0.1:1", **fields)


def test_a_plain_url_opens_one_server(tmp_path: Path) -> None:
    client = open_redis(settings(tmp_path, redis_url="redis://127.0.0.1:6390/0"))
    assert type(client) is aioredis.Redis and not is_cluster(client)
    asyncio.run(client.aclose())


def test_redis_cluster_opens_a_cluster_client_seeded_by_the_url(tmp_path: Path) -> None:
    # The async cluster client connects on first use, so nothing needs to listen here.
    client = open_redis(settings(tmp_path, redis_url="redis://127.0.0.1:6390/0",
                                 redis_cluster=True))
    assert isinstance(client, aioredis.RedisCluster) and is_cluster(client)
    seeds = client.nodes_manager.startup_nodes.values()
    assert [(n.host, n.port) for n in seeds] == [("127.0.0.1", 6390)]
    asyncio.run(client.aclose())


def test_the_environment_switches_to_a_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AISLE_REDIS_CLUSTER", "true")
    assert Settings().redis_cluster
    monkeypatch.delenv("AISLE_REDIS_CLUSTER")
    assert not Settings().redis_cluster


def test_no_url_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="redis_url is not resolved"):
        open_redis(settings(tmp_path, redis_cluster=True))


def test_a_running_cluster_stack_is_found_with_its_kind(tmp_path: Path) -> None:
    up = settings(tmp_path, redis_url="redis://127.0.0.1:7001/0", redis_cluster=True)
    write_runtime(up, "http://127.0.0.1:8000", {"up": os.getpid()})
    found = resolve(Settings(data_dir=tmp_path))
    assert found.redis_url == "redis://127.0.0.1:7001/0" and found.redis_cluster
    # A URL given explicitly keeps the kind given with it.
    mine = resolve(Settings(data_dir=tmp_path, redis_url="redis://127.0.0.1:6379/0"))
    assert mine.redis_url == "redis://127.0.0.1:6379/0" and not mine.redis_cluster
