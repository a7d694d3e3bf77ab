"""The Redis client factory: one Valkey or a Redis Cluster, chosen by the settings, and a
cluster `aisle up` recorded is what later commands connect to."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.asyncio.connection import SSLConnection
from redis.exceptions import DataError

from aisle.runtime import resolve, write_runtime
from aisle.settings import Settings
from feature_store.client import PackedInC, is_cluster, open_redis


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


PACKED = [("PING",), ("SET", "k", 1.5), ("SET", "k", 0.1 + 0.2), ("SET", "k", -3),
          ("SET", "k", float("inf")), ("SET", "k", 10**20), ("SET", "k", "héllo ☃"),
          ("EVALSHA", "abc", 2, "{u:1}:a", b"{u:1}:\xff", 3.14159265358979, b""),
          ("HSET", "h", "f", memoryview(b"view"))]


@pytest.mark.parametrize("args", PACKED)
def test_commands_packed_in_c_are_the_bytes_redis_py_packs(args: tuple[object, ...]) -> None:
    ours, theirs = PackedInC(), aioredis.Connection()
    assert b"".join(ours.pack_command(*args)) == b"".join(
        bytes(c) for c in theirs.pack_command(*args))


def test_what_hiredis_refuses_gets_redis_py_s_packing_and_errors() -> None:
    ours, theirs = PackedInC(), aioredis.Connection()
    # redis-py splits a command name with a space; hiredis would send it as one word.
    assert ours.pack_command("CONFIG GET", "maxmemory") == \
        theirs.pack_command("CONFIG GET", "maxmemory")
    with pytest.raises(DataError):
        ours.pack_command("SET", "k", True)
    latin = PackedInC(encoding="latin-1")
    assert b"".join(latin.pack_command("SET", "k", "é")) == \
        b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\n\xe9\r\n"


def test_plain_urls_pack_in_c_and_tls_keeps_its_own_connection(tmp_path: Path) -> None:
    plain = open_redis(settings(tmp_path, redis_url="redis://127.0.0.1:6390/0"))
    tls = open_redis(settings(tmp_path, redis_url="rediss://127.0.0.1:6390/0"))
    assert plain.connection_pool.connection_class is PackedInC
    assert tls.connection_pool.connection_class is SSLConnection
    sock = open_redis(settings(tmp_path, redis_url=f"unix://{tmp_path}/valkey.sock"))
    assert sock.connection_pool.connection_class is aioredis.UnixDomainSocketConnection
    for client in (plain, tls, sock):
        asyncio.run(client.aclose())
