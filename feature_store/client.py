"""Every Redis connection Aisle opens comes from here: one Valkey/Redis, or a Redis Cluster.

``AISLE_REDIS_URL`` names the server (``redis://host:port/0``). With
``AISLE_REDIS_CLUSTER=true`` it names one seed node of a cluster and the client finds the
others and follows the slot map (redis-py's ``RedisCluster.from_url``), so the same URL
users give redis-py works here. The key layout (``docs/keys.md``) keeps every multi-key
command, pipeline transaction and Lua script inside one hash slot, so callers use either
client the same way; the differences that remain (SCAN and INFO go to every primary,
scripts must be loaded on every primary) are handled where they happen.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, TypeAlias
from urllib.parse import urlsplit

import hiredis
import redis
import redis.asyncio as aioredis

from aisle.settings import Settings

AsyncRedis: TypeAlias = aioredis.Redis | aioredis.RedisCluster
SyncRedis: TypeAlias = redis.Redis | redis.RedisCluster


async def cancel_and_wait(*tasks: asyncio.Task[Any]) -> None:
    """Cancel ``tasks`` and wait until they are done, asking again while they run.

    redis-py (8.1) swallows a cancellation that lands while a command is in flight:
    a task polling ``GET`` in a loop and cancelled once went on polling 137 and 147
    times in 300 tries. A polling task cancelled once could then run forever, and the
    API's shutdown, which awaited it, hung. What the tasks raised is dropped: they are
    being stopped."""
    pending = {t for t in tasks if not t.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.05)
    for task in tasks:
        if not task.cancelled():
            task.exception()  # retrieved, so asyncio does not warn that nobody did


class PackedInC(aioredis.Connection):
    """redis-py's asyncio connection, with commands packed by hiredis in C.

    redis-py packs asyncio commands in Python, one ``encode`` call per argument (its
    sync client uses hiredis when it is installed). At a catalog of Taobao's size
    ``pack_command`` and ``encode`` were 3.7% of the API's CPU samples; a 20-argument
    ``EVALSHA`` (the customer read) costs 20-25 µs less CPU packed in C (4 alternated
    rounds of 4,000 calls). The bytes are the same (tests/unit/test_client.py); what
    hiredis refuses (a bool, a numpy scalar) goes to redis-py's packer, which raises
    its usual ``DataError``; so do a command name with a space in it, which redis-py
    splits, and a client with another encoding than UTF-8."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._c_packs = (self.encoder.encoding.lower().replace("-", "") == "utf8"
                         and self.encoder.encoding_errors == "strict")

    def pack_command(self, *args: Any) -> list[bytes]:
        if self._c_packs and not (isinstance(args[0], str) and " " in args[0]):
            try:
                return [hiredis.pack_command(args)]
            except TypeError:
                pass
        return super().pack_command(*args)


def _url(settings: Settings) -> str:
    if not settings.redis_url:
        raise RuntimeError("redis_url is not resolved; call aisle.runtime.resolve() first")
    return settings.redis_url


def open_redis(settings: Settings, *, decode_responses: bool = False,
               **options: Any) -> AsyncRedis:
    """An asyncio client for the configured store; ``options`` go to redis-py as they are
    (timeouts, ``max_connections``, which is per node on a cluster)."""
    if settings.redis_cluster:
        return aioredis.RedisCluster.from_url(_url(settings), decode_responses=decode_responses,
                                              **options)
    url = _url(settings)
    if urlsplit(url).scheme == "redis":
        # Only here: a rediss:// or unix:// URL names its own connection class, and since
        # redis-py 8 a connection_class passed with the URL wins over the URL's.
        options = {"connection_class": PackedInC, **options}
    return aioredis.Redis.from_url(url, decode_responses=decode_responses, **options)


def open_redis_sync(settings: Settings, *, decode_responses: bool = False,
                    **options: Any) -> SyncRedis:
    """The blocking twin of :func:`open_redis` (demo, CLI checks, tests, benchmarks)."""
    if settings.redis_cluster:
        return redis.RedisCluster.from_url(_url(settings), decode_responses=decode_responses,
                                           **options)
    return redis.Redis.from_url(_url(settings), decode_responses=decode_responses, **options)


def is_cluster(client: object) -> bool:
    return isinstance(client, aioredis.RedisCluster | redis.RedisCluster)


async def primaries_info(client: AsyncRedis, section: str) -> list[dict[str, Any]]:
    """``INFO section`` of every primary (one entry on a single server): a cluster
    answers INFO per node, and memory or command counts are the sum over nodes."""
    if isinstance(client, aioredis.RedisCluster):
        replies = await client.info(section, target_nodes=aioredis.RedisCluster.PRIMARIES)
        return [dict(v) for v in replies.values()] if _per_node(replies) else [dict(replies)]
    return [dict(await client.info(section))]


def _per_node(reply: dict[str, Any]) -> bool:
    # redis-py answers a multi-node INFO with {node name: info}, one node's INFO as is.
    return bool(reply) and all(isinstance(v, dict) and ":" in str(k) for k, v in reply.items())


def queue_evalsha(pipe: Any, sha: str, keys: Sequence[str], args: Sequence[Any]) -> None:
    """Queue ``EVALSHA`` on a pipeline of either client. redis-py's cluster pipeline refuses
    ``pipe.evalsha`` outright, but routes the generic command by its declared keys (one
    slot, by the key layout), so both kinds of pipeline take this form."""
    pipe.execute_command("EVALSHA", sha, len(keys), *keys, *args)
