"""Memory at scale: Redis bytes per customer and per item, and worker / API RSS at
1M customers and 100k items.

Run from the repo root: ``python -m benchmarks.bench_memory [--users N] [--items N]``.
Writes ``benchmarks/results/memory.json`` and prints a table.

How the scale is reached (synthetic scale-up of real distributions):

1. The Taobao slice is replayed into a fresh embedded stack's topics and applied by the
   worker's own ``BatchProcessor`` (no Faust: this measures state, not speed), so the
   store holds real customers and real items as the stream leaves them.
2. ``used_memory`` is read; the real customers' keys are then copied under new customer
   ids (``DUMP`` / ``RESTORE`` into the new id's own shard, and the shard's customer set)
   until there are ``--users`` customers, each copy a real customer's state byte for
   byte. ``used_memory`` again: the slope is the marginal cost of a customer.
3. A model with ``--items`` items (the real item ids, padded with synthetic ones; random
   factors with the settings' rank; top-K neighbours) is published, the baseline is taken
   for the API, a worker and the API start on that store, 20k events of randomly chosen
   scaled-up customers are produced and applied (fold-in included), and 3,000 requests
   (related, recommendations, profile, offers) hit random customers. RSS of each process
   is read from ``/proc`` before and after. The baseline is the same API process with no
   model and an empty key prefix, measured the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import redis.asyncio as aioredis
from rich.console import Console
from rich.table import Table

from aisle.replay import replay_file
from aisle.runtime import start_embedded
from aisle.settings import Settings
from aisle.stack import Stack
from benchmarks.bench_ingest import TAOBAO, machine_info
from benchmarks.bench_soak import rss_mib
from benchmarks.ingest_readers import pipeline_in_process
from feature_store.keys import USER_SUFFIXES, Keys
from models.artifacts import ModelArtifact, new_version, publish_model
from streams.events import ItemRef, ProductViewed
from streams.lag import end_offsets, wait_caught_up
from streams.topics import EventProducer, ensure_topics

RESULTS = Path(__file__).resolve().parent / "results"
PIPE = 20_000
console = Console(width=None if sys.stdout.isatty() else 150)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--users", type=int, default=1_000_000)
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--events", type=int, default=20_000)
    p.add_argument("--requests", type=int, default=3_000)
    p.add_argument("--data", type=Path, default=TAOBAO)
    p.add_argument("--out", default="memory")
    p.add_argument("--quick", action="store_true",
                   help="150k customers, 5k events, 1k requests (results to memory_quick)")
    args = p.parse_args(argv)
    if args.quick:
        args.users, args.events, args.requests, args.out = 150_000, 5_000, 1_000, "memory_quick"
    return args


async def used_memory(client: aioredis.Redis) -> int:
    return int((await client.info("memory"))["used_memory"])


async def real_customers(client: aioredis.Redis, keys: Keys) -> list[str]:
    users: list[str] = []
    for shard in range(keys.shards):
        users += [m.decode() for m in await client.smembers(keys.users(shard))]
    return sorted(users)


# Server-side copies: shipping every key's bytes through Python would dominate the run.
# The benchmark's store is one embedded Valkey (not a Cluster), so one script may name
# keys of many slots.
CLONE_LUA = """
local n = 0
for i = 1, #ARGV, 2 do
  if redis.call('COPY', ARGV[i], ARGV[i + 1], 'REPLACE') == 1 then n = n + 1 end
end
return n
"""


async def clone_customers(client: aioredis.Redis, keys: Keys, real: list[str], target: int,
                          ) -> list[str]:
    """Copy real customers' keys under new ids until there are ``target`` customers."""
    present: list[list[str]] = []
    for start in range(0, len(real), 1000):
        chunk = real[start:start + 1000]
        pipe = client.pipeline(transaction=False)
        for uid in chunk:
            for suffix in USER_SUFFIXES:
                pipe.exists(keys.user(uid, suffix))
        found = await pipe.execute()
        for i, _ in enumerate(chunk):
            flags = found[i * len(USER_SUFFIXES):(i + 1) * len(USER_SUFFIXES)]
            present.append([s for s, f in zip(USER_SUFFIXES, flags, strict=True) if f])
    clone = client.register_script(CLONE_LUA)
    made: list[str] = []
    argv: list[str] = []
    members: dict[str, list[str]] = {}
    n, copy = len(real), 0
    while n + len(made) < target:
        copy += 1
        for i, uid in enumerate(real):
            if n + len(made) >= target:
                break
            new = f"{uid}-c{copy}"
            made.append(new)
            members.setdefault(keys.users(keys.shard_of(new)), []).append(new)
            for suffix in present[i]:
                argv += [keys.user(uid, suffix), keys.user(new, suffix)]
            if len(argv) >= PIPE:
                await clone(keys=[], args=argv)
                argv = []
    if argv:
        await clone(keys=[], args=argv)
    pipe = client.pipeline(transaction=False)
    for key, ids in members.items():
        for start in range(0, len(ids), 10_000):
            pipe.sadd(key, *ids[start:start + 10_000])
    await pipe.execute()
    return made


def synthetic_model(items: list[str], n_items: int, factors: int, top_k: int,
                    seed: int = 7) -> ModelArtifact:
    rng = np.random.default_rng(seed)
    ids = list(items[:n_items]) + [f"syn{j}" for j in range(max(0, n_items - len(items)))]
    n = len(ids)
    return ModelArtifact(
        version=new_version(), created_at=time.time(), ref_ts=1512000000.0,
        params={"factors": factors, "regularization": 0.05, "alpha": 4.0,
                "iterations": 15, "seed": seed},
        item_ids=ids,
        item_factors=(rng.standard_normal((n, factors)) * 0.1).astype(np.float32),
        similar_ids=rng.integers(0, n, size=(n, top_k), dtype=np.int32),
        similar_scores=np.sort(rng.random((n, top_k), dtype=np.float32))[:, ::-1].copy(),
        consumable=np.zeros(n, dtype=bool),
        stats={"synthetic": True})


async def produce_views(settings: Settings, users: list[str], items: list[str], n: int,
                        rng: random.Random) -> None:
    now = datetime.now(UTC)
    async with EventProducer(settings) as producer:
        batch: list[ProductViewed] = []
        for i in range(n):
            batch.append(ProductViewed(event_id=f"mem-{uuid.uuid4().hex}", occurred_at=now,
                                       user_id=rng.choice(users), source="bench",
                                       payload=ItemRef(rng.choice(items))))
            if len(batch) == 500 or i == n - 1:
                await producer.send_events(batch)
                batch = []


def hit_api(url: str, users: list[str], items: list[str], n: int, rng: random.Random,
            ) -> dict[str, int]:
    codes: dict[str, int] = {}
    with httpx.Client(base_url=url, timeout=10) as client:
        for i in range(n):
            kind = i % 4
            if kind == 0:
                r = client.get(f"/v1/items/{rng.choice(items)}/related")
            elif kind == 1:
                r = client.get(f"/v1/users/{rng.choice(users)}/recommendations")
            elif kind == 2:
                r = client.get(f"/v1/users/{rng.choice(users)}/profile")
            else:
                r = client.get(f"/v1/users/{rng.choice(users)}/offers")
            codes[str(r.status_code)] = codes.get(str(r.status_code), 0) + 1
    return codes


def rss(stack: Stack) -> dict[str, float | None]:
    out: dict[str, float | None] = {p.name: rss_mib(p.proc.pid) for p in stack.workers}
    if stack.api is not None:
        out["api"] = rss_mib(stack.api.proc.pid)
    return out


async def fill(settings: Settings, data: Path) -> None:
    await ensure_topics(settings)
    await replay_file(settings, data)
    ends = await end_offsets(settings, [settings.topics.events, settings.topics.catalog])
    await pipeline_in_process(settings, ends)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="aisle-mem-"))
    base = Settings(data_dir=tmp, features={"key_prefix": "mem"},
                    worker={"app_id": "mem", "population_interval_s": 0,
                            "retrain_interval_s": 0},
                    serving={"port": 0})
    base, embedded = start_embedded(base)
    rng = random.Random(11)
    result: dict[str, Any] = {"machine": machine_info(), "args": {
        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    try:
        keys = Keys(base.features.key_prefix, base.features.shards)

        async def prepare() -> tuple[list[str], list[str], dict[str, Any]]:
            client = aioredis.Redis.from_url(base.redis_url or "")
            try:
                m0 = await used_memory(client)
                started = time.perf_counter()
                await fill(base, args.data)
                m1 = await used_memory(client)
                real = await real_customers(client, keys)
                items: list[str] = []
                for shard in range(keys.shards):
                    items += [m.decode() for m in await client.smembers(keys.items(shard))]
                console.log(f"replayed {args.data.name}: {len(real):,} customers, "
                            f"{len(items):,} items, {(m1 - m0) / 2**20:.1f} MiB in "
                            f"{time.perf_counter() - started:.0f}s")
                started = time.perf_counter()
                made = await clone_customers(client, keys, real, args.users)
                m2 = await used_memory(client)
                console.log(f"scaled up to {len(real) + len(made):,} customers in "
                            f"{time.perf_counter() - started:.0f}s: {m2 / 2**20:.0f} MiB")
                art = synthetic_model(sorted(items), args.items, base.model.factors,
                                      base.model.top_k_similar)
                await publish_model(client, base.features.key_prefix, art)
                m3 = await used_memory(client)
                info = {"real_customers": len(real), "real_items": len(items),
                        "customers": len(real) + len(made), "model_items": len(art.item_ids),
                        "used_memory_empty": m0, "used_memory_real": m1,
                        "used_memory_scaled": m2, "used_memory_with_model": m3,
                        "bytes_per_customer_real": round((m1 - m0) / max(1, len(real))),
                        "bytes_per_customer_marginal": round((m2 - m1) / max(1, len(made))),
                        "model_blob_bytes": len(art.to_bytes())}
                return real + made, art.item_ids, info
            finally:
                await client.aclose()

        users, items, info = asyncio.run(prepare())
        result["redis"] = info
        # Baseline: the same API process on an empty prefix with no model.
        empty = base.model_copy(update={
            "features": base.features.model_copy(update={"key_prefix": "empty"}),
            "data_dir": tmp / "empty"})
        stack = Stack(empty)
        try:
            stack.start_api()
            time.sleep(1.0)
            idle = rss(stack)
            hit_api(stack.api_url or "", users[:1000], items[:1000], 400, rng)
            result["baseline_api_empty_mib"] = {"idle": idle, "after_requests": rss(stack)}
        finally:
            stack.stop()
        stack = Stack(base)
        try:
            stack.add_worker()
            stack.start_api()
            time.sleep(2.0)
            before = rss(stack)
            started = time.perf_counter()
            asyncio.run(produce_views(base, users, items[:20000], args.events, rng))
            asyncio.run(wait_caught_up(base, timeout=600))
            applied_s = time.perf_counter() - started
            codes = hit_api(stack.api_url or "", users, items, args.requests, rng)
            after = rss(stack)
            result["processes_mib"] = {"start": before, "after_load": after,
                                       "events_s": round(applied_s, 1), "status_codes": codes}
        finally:
            stack.stop()
    finally:
        embedded.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return result


def report(r: dict[str, Any]) -> None:
    info = r["redis"]
    t = Table(title=f"Memory at {info['customers']:,} customers / {info['model_items']:,} "
                    f"model items")
    t.add_column("what")
    t.add_column("value", justify="right")
    t.add_row("Redis bytes per customer (all real Taobao state / customers)",
              f"{info['bytes_per_customer_real']:,}")
    t.add_row("Redis bytes per customer (marginal, scaled copies)",
              f"{info['bytes_per_customer_marginal']:,}")
    t.add_row("Redis used_memory at scale", f"{info['used_memory_scaled'] / 2**20:,.0f} MiB")
    t.add_row("model blob", f"{info['model_blob_bytes'] / 2**20:,.1f} MiB")
    base = r["baseline_api_empty_mib"]
    t.add_row("API RSS, empty store, no model (baseline)",
              f"{base['after_requests'].get('api')} MiB")
    p = r["processes_mib"]
    t.add_row("API answers during the load (status: count)",
              ", ".join(f"{k}: {v}" for k, v in sorted(p["status_codes"].items())))
    for name in p["after_load"]:
        t.add_row(f"{name} RSS start → after load",
                  f"{p['start'].get(name)} → {p['after_load'].get(name)} MiB")
    console.print(t)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    r = measure(args)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{args.out}.json"
    path.write_text(json.dumps(r, indent=2))
    report(r)
    console.log(f"wrote {path}")


if __name__ == "__main__":
    main()
