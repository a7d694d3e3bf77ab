"""Bulk read of every customer's ``ia`` zset (the ALS input), for the full retrain.

Reading 4k customers with one ``ZRANGE`` each spent most of its time in the client (one
command and one reply callback per customer). ``snapshot.lua`` reads a page of a shard's
customers inside Redis and answers with three strings per customer, so the client makes
``shards × pages`` calls. Pages (SSCAN) keep each script call short, so a 50M-customer
store is never blocked for long; SSCAN may repeat a member, and a repeat only overwrites
the same customer with the same data.
"""

from __future__ import annotations

from collections.abc import Iterator
from importlib.resources import files

import numpy as np
import redis.asyncio as aioredis

from feature_store.client import queue_evalsha
from feature_store.keys import Keys

SCRIPT = files("feature_store").joinpath("snapshot.lua").read_text()
PAGE_USERS = 2000


async def read_interactions(client: aioredis.Redis, keys: Keys, suffix: str = "ia",
                            page: int = PAGE_USERS) -> dict[str, tuple[list[str], np.ndarray]]:
    """``{user: (items, stored log weights float64)}`` for every customer with a non-empty
    ``suffix`` zset, items in the zset's order (by score, then member)."""
    # SCRIPT LOAD reaches every primary of a cluster (a cluster pipeline loads nothing).
    sha = str(await client.script_load(SCRIPT))
    out: dict[str, tuple[list[str], np.ndarray]] = {}
    cursors = {shard: b"0" for shard in range(keys.shards)}
    while cursors:
        pipe = client.pipeline(transaction=False)
        shards = sorted(cursors)
        for shard in shards:
            queue_evalsha(pipe, sha, [keys.users(shard)],
                          [cursors[shard], page, f"{keys.tag(shard)}:u:", f":{suffix}"])
        for shard, reply in zip(shards, await pipe.execute(), strict=True):
            out.update(_parse(reply))
            if reply[0] in (b"0", 0, "0"):
                del cursors[shard]
            else:
                cursors[shard] = reply[0]
    return out


def _parse(reply: list[bytes]) -> Iterator[tuple[str, tuple[list[str], np.ndarray]]]:
    for n in range(1, len(reply), 3):
        items = reply[n + 1].decode().split("\n")
        scores = np.array(reply[n + 2].split(b"\n"), dtype=np.float64)
        yield reply[n].decode(), (items, scores)
