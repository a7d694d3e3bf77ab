"""The Redis write path: one Lua call per (batch, shard), pipelined; plus dump and wipe.

The script (``store.lua``) checks the per-source offset watermark and the event-id dedupe
window and applies the ops of every new event in one atomic step, so a crash between
Redis and the Kafka commit, a rebalance, or a producer that sent an event twice never
counts anything twice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from importlib.resources import files
from typing import Any

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from feature_store.canonical import canonical_value
from feature_store.keys import Keys
from feature_store.memory_store import DERIVED, BatchEvent

#: Field of each shard's meta hash that counts the events the shard applied. store.lua
#: adds to it in the same script that applies them, so the count is exact under crashes
#: and redelivery (a separate counter written after the script lost a whole batch's
#: count whenever a worker died between the two), and a rebuild recounts it.
APPLIED_FIELD = "applied"


def queue_applied(pipe: Any, keys: Keys) -> int:
    """Queue one read per shard of its applied count; returns how many were queued."""
    for shard in range(keys.shards):
        pipe.hget(keys.meta(shard), APPLIED_FIELD)
    return keys.shards


def sum_applied(values: Sequence[Any]) -> int:
    return sum(int(v or 0) for v in values)


async def applied_total(client: Any, keys: Keys) -> int:
    """Events applied group-wide: the sum of the shards' counters."""
    pipe = client.pipeline(transaction=False)
    queue_applied(pipe, keys)
    return sum_applied(await pipe.execute())

SCRIPT = files("feature_store").joinpath("store.lua").read_text()
#: Drop a source's watermark in one shard when it is at or past the log's end: no offset
#: of the log it was kept for can be (see :meth:`RedisStore.drop_replaced_logs`).
_DROP_REPLACED = """
local w = redis.call('HGET', KEYS[1], ARGV[1])
if w and tonumber(w) >= tonumber(ARGV[2]) then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return tonumber(w)
end
return -1
"""
ShardBatch = tuple[int, str, Sequence[BatchEvent]]
_pack = msgspec.msgpack.Encoder().encode


class RedisStore:
    def __init__(self, client: aioredis.Redis, keys: Keys, dedupe_window_s: float) -> None:
        self.client = client
        self.keys = keys
        self.window = dedupe_window_s
        self._sha: str | None = None

    async def script_sha(self) -> str:
        """The script's SHA1, loaded into the server on first use."""
        if self._sha is None:
            self._sha = str(await self.client.script_load(SCRIPT))
        return self._sha

    def forget_script(self) -> None:
        """The server lost its scripts (restarted, ``SCRIPT FLUSH``): load it again."""
        self._sha = None

    def command(self, sha: str, shard: int, source: str, batch: Sequence[BatchEvent],
                after: int | None = None) -> tuple[Any, ...]:
        """The ``EVALSHA`` that applies one (shard, source) batch; with ``after``, refused
        unless the source's watermark is at least that offset (``store.lua``)."""
        k = self.keys
        doc = [source, self.window, batch] if after is None else [source, self.window,
                                                                   batch, after]
        return ("EVALSHA", sha, 3, k.watermarks(shard), k.seen(shard), k.meta(shard),
                _pack(doc))

    async def apply_many(self, batches: Sequence[ShardBatch]) -> tuple[int, int, int]:
        """Apply (shard, source, events) batches in one round trip.

        Returns summed (applied, duplicates, already-applied offsets)."""
        if not batches:
            return 0, 0, 0
        sha = await self.script_sha()
        try:
            results = await self._run(sha, batches)
        except NoScriptError:  # server restarted or SCRIPT FLUSH: load and retry once
            self.forget_script()
            results = await self._run(await self.script_sha(), batches)
        totals = [0, 0, 0]
        for res in results:
            for i in range(3):
                totals[i] += int(res[i])
        return totals[0], totals[1], totals[2]

    async def _run(self, sha: str, batches: Sequence[ShardBatch]) -> list[Any]:
        pipe = self.client.pipeline(transaction=False)
        for shard, source, batch in batches:
            # The generic form: redis-py's cluster pipeline refuses pipe.evalsha but
            # routes this by its declared keys (one slot, by the key layout).
            pipe.execute_command(*self.command(sha, shard, source, batch))
        return list(await pipe.execute())

    async def drop_replaced_logs(self, ends: Mapping[str, int]) -> dict[str, int]:
        """Forget the watermarks kept for an earlier log of a source.

        ``ends`` maps a source (``topic/partition``) to its log's end offset as a fetch
        just reported it. Every offset applied from the log now under that name is below
        its end, so a watermark at or past the end was kept for another log of the same
        name: a broker that lost its log (the embedded one keeps it in memory), a topic
        deleted and created again, by whichever client came first (Tansu, like Kafka with
        ``auto.create.topics.enable``, creates a topic a consumer or producer asks for).
        Kept, it would take the new log's first offsets for ones already applied.
        Returns the dropped watermarks, the highest per source, for the log."""
        if not ends:
            return {}
        pipe = self.client.pipeline(transaction=False)
        calls = [(source, shard) for source in ends for shard in range(self.keys.shards)]
        for source, shard in calls:
            pipe.execute_command("EVAL", _DROP_REPLACED, 1, self.keys.watermarks(shard),
                                 source, ends[source])
        dropped: dict[str, int] = {}
        for (source, _), old in zip(calls, await pipe.execute(), strict=True):
            if int(old) >= 0:
                dropped[source] = max(dropped.get(source, -1), int(old))
        return dropped

    async def dump(self, include_derived: bool = False) -> dict[str, Any]:
        """Every key of this prefix in canonical form (model and control keys excluded;
        derived keys too unless asked for: see ``DERIVED``)."""
        skip = (f"{{{self.keys.prefix}:m}}", f"{{{self.keys.prefix}:ctl}}")
        names: list[str] = []
        async for raw in self.client.scan_iter(match=f"{{{self.keys.prefix}:*", count=1000):
            key = raw.decode() if isinstance(raw, bytes) else raw
            if not key.startswith(skip) and (include_derived or not key.endswith(DERIVED)):
                names.append(key)
        out: dict[str, Any] = {}
        for start in range(0, len(names), 500):
            chunk = names[start:start + 500]
            for key, value in zip(chunk, await self._read_many(chunk), strict=True):
                out[key] = canonical_value(key, value)
        return dict(sorted(out.items()))

    async def _read_many(self, names: list[str]) -> list[Any]:
        pipe = self.client.pipeline(transaction=False)
        for key in names:
            pipe.type(key)
        kinds = [k.decode() if isinstance(k, bytes) else k for k in await pipe.execute()]
        pipe = self.client.pipeline(transaction=False)
        for key, kind in zip(names, kinds, strict=True):
            if kind == "zset":
                pipe.zrange(key, 0, -1, withscores=True)
            elif kind == "hash":
                pipe.hgetall(key)
            elif kind == "list":
                pipe.lrange(key, 0, -1)
            elif kind == "set":
                pipe.smembers(key)
            else:
                pipe.get(key)
        values = await pipe.execute()
        return [dict(v) if kind == "zset" else set(v) if kind == "set" else v
                for kind, v in zip(kinds, values, strict=True)]

    async def wipe(self) -> int:
        """Delete all derived state of this prefix (not the model, not control keys)."""
        skip = (f"{{{self.keys.prefix}:m}}", f"{{{self.keys.prefix}:ctl}}")
        doomed: list[bytes] = []
        async for raw in self.client.scan_iter(match=f"{{{self.keys.prefix}:*", count=2000):
            key = raw.decode() if isinstance(raw, bytes) else raw
            if not key.startswith(skip):
                doomed.append(raw)
        for start in range(0, len(doomed), 1000):
            # One key per call keeps this valid on Redis Cluster (keys span slots); the
            # generic form because redis-py's async cluster pipeline makes unlink a coroutine.
            pipe = self.client.pipeline(transaction=False)
            for key in doomed[start:start + 1000]:
                pipe.execute_command("UNLINK", key)
            await pipe.execute()
        return len(doomed)
