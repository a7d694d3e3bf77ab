"""The system under test for the serving benchmark: a whole stack on real data.

Starts broker, Valkey, one worker and one API process in a temporary data directory,
replays Online Retail, waits for the worker, trains, and waits until the API serves the
new model — the same steps as ``aisle demo``. Then picks the ids the load will ask for.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import redis

from aisle.replay import replay_file
from aisle.settings import Settings
from aisle.stack import Stack
from benchmarks.common import SHARED_DATA
from feature_store.client import open_redis
from feature_store.keys import Keys
from models.artifacts import load_current, new_version, publish_model
from models.train import train_once
from serving.routes import ID_RE
from streams.lag import wait_caught_up
from streams.timers import wait_population

# shared/data next to the checkout, found from a worktree too (benchmarks/common.py).
DATA = SHARED_DATA / "online_retail" / "online_retail.csv.gz"
UNKNOWN_SHARE = 0.1


@dataclass
class Loaded:
    stack: Stack
    api_url: str
    setup: dict[str, Any]   # replay counts, phase timings, model version and stats


@contextlib.contextmanager
def loaded_stack(data: Path, limit_rows: int | None, log: Any,
                 extra_env: dict[str, str] | None = None,
                 population: bool = True) -> Iterator[Loaded]:
    """A running stack holding ``data`` and a trained model; stopped on the way out.
    With ``population`` false the stack's workers do not sweep the population (the
    caller turns the schedule off in ``extra_env``), so nothing waits for its stats."""
    with tempfile.TemporaryDirectory(prefix="aisle-bench-serving-") as tmp:
        settings = Settings(data_dir=Path(tmp), serving={"port": 0})
        stack = Stack.start(settings, extra_env=extra_env)
        try:
            setup = _load(stack, data, limit_rows, log, population)
            yield Loaded(stack, stack.api_url or "", setup)
        finally:
            stack.stop()


def _load(stack: Stack, data: Path, limit_rows: int | None, log: Any,
          population: bool = True) -> dict[str, Any]:
    s = stack.settings
    t0 = time.monotonic()
    stats = asyncio.run(replay_file(s, data, limit_rows=limit_rows))
    t1 = time.monotonic()
    log(f"replayed {sum(stats.events.values()):,} events in {t1 - t0:.1f}s")
    asyncio.run(wait_caught_up(s, timeout=600))
    t2 = time.monotonic()
    art = asyncio.run(train_once(s))
    t3 = time.monotonic()
    log(f"worker caught up {t2 - t1:.1f}s later; trained {art.version} in {t3 - t2:.1f}s")
    # Segments, lifecycles and run-out dates need the population stats: offers measured
    # before the worker's first sweep matched no segment rule (and the sweep that came
    # mid-run issued ~300 offers at once, in the middle of a point).
    population_s = 0.0
    if population:
        population_s = asyncio.run(wait_population(s))
        asyncio.run(wait_caught_up(s, timeout=120))  # the sweep's lifecycle events
        log(f"population stats published {population_s:.1f}s later")
    _wait_model(stack.api_url or "", art.version)
    return {"dataset": data.name, "limit_rows": limit_rows, "replay": dataclasses.asdict(stats),
            "seconds": {"replay": round(t1 - t0, 1), "catch_up": round(t2 - t1, 1),
                        "train": round(t3 - t2, 1), "population": round(population_s, 1)},
            "model": {"version": art.version, "stats": art.stats}}


def _wait_model(api_url: str, version: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{api_url}/readyz", timeout=2).json().get("model_version") == version:
                return
        time.sleep(0.2)
    raise TimeoutError(f"the API did not load model {version} within {timeout:.0f}s")


def republish(settings: Settings) -> str:
    """Publish the current model again under a new version: what the API sees when a
    retrain or an item refresh lands, without their CPU on this machine."""
    async def go() -> str:
        client = open_redis(settings)
        try:
            prefix = settings.features.key_prefix
            art = await load_current(client, prefix)
            if art is None:
                raise RuntimeError("no model to republish")
            art = dataclasses.replace(art, version=new_version(), created_at=time.time())
            await publish_model(client, prefix, art)
            return art.version
        finally:
            await client.aclose()

    return asyncio.run(go())


# ---------------------------------------------------------------- what to ask for
def item_ids(loaded: Loaded, rng: random.Random, popular: int = 50, others: int = 450,
             ) -> list[str]:
    """Half popular items (as a shop's traffic is), half drawn from the whole catalog."""
    body = httpx.get(f"{loaded.api_url}/v1/users/nobody/recommendations",
                     params={"limit": popular}, timeout=10).json()
    top = [it["item_id"] for it in body["items"]]
    catalog = sorted(_members(loaded.stack.settings, "items") - set(top))
    rest = rng.sample(catalog, min(others, len(catalog)))
    return [rng.choice(top) if n % 2 == 0 and top else rng.choice(rest or top)
            for n in range(2 * (len(top) + len(rest)))]


def user_ids(loaded: Loaded, rng: random.Random, known: int = 900) -> list[str]:
    """Known customers, with one request in ten for a customer the store has never seen."""
    customers = sorted(_members(loaded.stack.settings, "users"))
    chosen = rng.sample(customers, min(known, len(customers)))
    unknown = [f"bench-new-{n:04d}" for n in range(round(len(chosen) * UNKNOWN_SHARE))]
    mixed = chosen + unknown
    rng.shuffle(mixed)
    return mixed


def _members(settings: Settings, kind: str) -> set[str]:
    keys = Keys(settings.features.key_prefix, settings.features.shards)
    client = redis.Redis.from_url(settings.redis_url or "")
    try:
        out: set[str] = set()
        for shard in range(keys.shards):
            name = keys.users(shard) if kind == "users" else keys.items(shard)
            out |= {m.decode() for m in client.smembers(name)}
    finally:
        client.close()
    return {i for i in out if ID_RE.match(i)}


def paths(endpoint: str, items: list[str], users: list[str]) -> list[str]:
    if endpoint == "ping":
        return ["/v1/ping"]
    if endpoint == "related":
        return [f"/v1/items/{quote(i, safe='')}/related?limit=10" for i in items]
    if endpoint == "offers":
        return [f"/v1/users/{quote(u, safe='')}/offers" for u in users]
    return [f"/v1/users/{quote(u, safe='')}/recommendations?limit=10" for u in users]
