"""Freshness: from an event's produce to its effect in the API, idle and under load.

Run from the repo root: ``python -m benchmarks.bench_freshness [--quick] [--seconds 40]
[--event-rate 5000] [--limit-rows 40000]``. Writes ``benchmarks/results/freshness.json``
(``freshness_quick.json``) and prints a table.

Starts the stack on Online Retail and trains (``serving_stack``: one worker, one API),
then probes in two phases of ``--seconds`` each, in the same run:

* idle (the baseline): nothing else flows;
* loaded: a separate process produces Taobao behaviours, re-stamped with new ids and the
  current time (``bench_soak.Producer``), at ``--event-rate`` events/s.

A probe is one ``product.viewed`` of a modelled item by a customer nobody has seen, sent
with its own producer (no linger) and timed from just before the send. Then, every
``POLL_S``, this process asks the API for the customer's recommendations and reads the
store, until each effect shows, recording when it first did:

* ``api``: the recommendations turn personal (``strategy == "personal"``: the recent
  view's related items and the ALS picks folded in from it, explained by the view);
* ``views``: the view is in the customer's recent views (what the API read);
* ``trending``: the item's forward-decayed score in its shard's trending set grew;
* ``fold_in``: the worker stored the customer's fold-in vector (the API would otherwise
  fold in on the fly, which ``api`` includes).

The API caches the merged trending list for ``serving.cache_ttl_s`` (2 s), so trending
reaches the popular lists up to that much after ``trending`` shows in the store.
Probes run one at a time with ``GAP_S`` between them. The loaded phase also records the
rate the producer achieved and the worker's applied rate and lag.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import random
import statistics
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import redis.asyncio as aioredis
from rich.console import Console
from rich.table import Table

from aisle.settings import Settings
from benchmarks.bench_soak import Producer
from benchmarks.common import SHARED_DATA
from benchmarks.ingest_probe import cpu_seconds, machine_busy_seconds
from benchmarks.serving_report import machine, write_json
from benchmarks.serving_stack import Loaded, item_ids, loaded_stack
from feature_store.keys import Keys
from feature_store.redis_store import applied_total
from streams.events import ItemRef, ProductViewed
from streams.lag import group_lag
from streams.topics import EventProducer

RETAIL = SHARED_DATA / "online_retail" / "online_retail.csv.gz"
TAOBAO = SHARED_DATA / "taobao_userbehavior" / "userbehavior_sample.csv.gz"
POLL_S = 0.005
GAP_S = 0.1
PROBE_TIMEOUT_S = 10.0
EFFECTS = ("api", "views", "trending", "fold_in")
console = Console()


# ---------------------------------------------------------------- background load
def _produce(settings_json: str, path: str, rate: float, seconds: float,
             out: mp.Queue[dict[str, Any]]) -> None:
    settings = Settings.model_validate_json(settings_json)
    producer = Producer(settings, Path(path), rate, total=round(rate * seconds))
    started = time.monotonic()
    producer.run()
    out.put({"produced": producer.produced, "seconds": time.monotonic() - started,
             "behind_max": producer.behind_max, "error": producer.error})


class Background:
    """``rate`` events/s from a process of its own, so its CPU is not this one's."""

    def __init__(self, settings: Settings, rate: float, seconds: float) -> None:
        ctx = mp.get_context("spawn")
        self.out: mp.Queue[dict[str, Any]] = ctx.Queue()
        self.proc = ctx.Process(target=_produce, name="freshness-load", daemon=True,
                                args=(settings.model_dump_json(), str(TAOBAO), rate,
                                      seconds, self.out))

    def start(self) -> None:
        self.proc.start()

    def finish(self, timeout: float) -> dict[str, Any]:
        got = self.out.get(timeout=timeout)
        self.proc.join(timeout=10)
        return got


# ---------------------------------------------------------------- probes
class Prober:
    def __init__(self, loaded: Loaded, items: list[str]) -> None:
        s = loaded.stack.settings
        self.settings = s
        self.keys = Keys(s.features.key_prefix, s.features.shards)
        self.api = httpx.AsyncClient(base_url=loaded.api_url, timeout=5.0)
        self.store = aioredis.Redis.from_url(s.redis_url or "")
        self.items = items
        self.run_id = uuid.uuid4().hex[:6]
        self.n = 0

    async def close(self) -> None:
        await self.api.aclose()
        await self.store.aclose()

    async def probe(self, producer: EventProducer, item: str) -> dict[str, float | None]:
        self.n += 1
        user = f"fresh-{self.run_id}-{self.n}"
        event = ProductViewed(event_id=f"fresh-{self.run_id}-{self.n}", user_id=user,
                              occurred_at=datetime.now(UTC), source="freshness",
                              payload=ItemRef(item_id=item))
        shard = self.keys.shard_of(event.routing_key)
        trend_key = self.keys.trending(shard)
        trend_before = await self.store.zscore(trend_key, item)
        views = self.keys.user(user, "views")
        vec = self.keys.user(user, "vec")
        path = f"/v1/users/{quote(user, safe='')}/recommendations?limit=10"
        seen: dict[str, float | None] = dict.fromkeys(EFFECTS)
        sent = time.perf_counter()
        await producer.send_events([event])
        acked = time.perf_counter()
        while time.perf_counter() - sent < PROBE_TIMEOUT_S:
            pipe = self.store.pipeline(transaction=False)
            pipe.zscore(views, item)
            pipe.zscore(trend_key, item)
            pipe.exists(vec)
            in_views, trend, has_vec = await pipe.execute()
            now = time.perf_counter()
            if seen["views"] is None and in_views is not None:
                seen["views"] = now - sent
            if seen["trending"] is None and trend is not None and (
                    trend_before is None or trend > trend_before):
                seen["trending"] = now - sent
            if seen["fold_in"] is None and has_vec:
                seen["fold_in"] = now - sent
            if seen["api"] is None:
                answer = await self.api.get(path)
                if answer.status_code == 200 and answer.json()["strategy"] == "personal":
                    seen["api"] = time.perf_counter() - sent
            if all(v is not None for v in seen.values()):
                break
            await asyncio.sleep(POLL_S)
        seen["produce_ack"] = acked - sent
        return seen

    async def phase(self, seconds: float) -> list[dict[str, float | None]]:
        rng = random.Random(7)
        out = []
        async with EventProducer(self.settings, linger_ms=0) as producer:
            await self.probe(producer, rng.choice(self.items))  # connections warm, not counted
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                out.append(await self.probe(producer, rng.choice(self.items)))
                await asyncio.sleep(GAP_S)
        return out


def percentiles(values: list[float | None]) -> dict[str, Any]:
    got = sorted(v * 1e3 for v in values if v is not None)
    missed = len(values) - len(got)
    if not got:
        return {"n": 0, "missed": missed}

    def q(p: float) -> float:
        return round(got[min(len(got) - 1, int(p * len(got)))], 1)

    return {"n": len(got), "missed": missed, "p50_ms": q(0.5), "p90_ms": q(0.9),
            "p99_ms": q(0.99), "max_ms": round(got[-1], 1),
            "mean_ms": round(statistics.fmean(got), 1)}


# ---------------------------------------------------------------- the run
async def _applied(store: aioredis.Redis, keys: Keys) -> int:
    return await applied_total(store, keys)


async def run_phase(loaded: Loaded, prober: Prober, name: str, seconds: float,
                    rate: float) -> dict[str, Any]:
    s = loaded.stack.settings
    worker = loaded.stack.workers[0].proc.pid
    background = Background(s, rate, seconds + 2) if rate > 0 else None
    applied0 = await _applied(prober.store, prober.keys)
    cpu0, busy0, t0 = cpu_seconds(worker), machine_busy_seconds(), time.monotonic()
    if background is not None:
        background.start()
        await asyncio.sleep(2.0)  # the producer process starts and reaches its rate
        applied0 = await _applied(prober.store, prober.keys)
        cpu0, busy0, t0 = cpu_seconds(worker), machine_busy_seconds(), time.monotonic()
    probes = await prober.phase(seconds)
    span = time.monotonic() - t0
    applied = await _applied(prober.store, prober.keys) - applied0
    cpu, busy = cpu_seconds(worker) - cpu0, machine_busy_seconds() - busy0
    lag = sum((await group_lag(s)).values())
    load = background.finish(timeout=seconds + 60) if background is not None else None
    row: dict[str, Any] = {
        "phase": name, "probes": len(probes), "seconds": round(span, 1),
        "target_events_per_s": rate,
        "effects": {e: percentiles([p[e] for p in probes]) for e in EFFECTS},
        "produce_ack": percentiles([p["produce_ack"] for p in probes]),
        "worker_applied_per_s": round(applied / span),
        "worker_cpu_share": round(cpu / span, 3),
        "machine_busy_cores": round(busy / span, 2),
        "lag_at_end": lag,
    }
    if load is not None:
        row["background"] = {**load, "events_per_s": round(load["produced"] / load["seconds"])}
    console.print(f"{name}: {len(probes)} probes, api p50 "
                  f"{row['effects']['api'].get('p50_ms')} ms, p99 "
                  f"{row['effects']['api'].get('p99_ms')} ms; worker applied "
                  f"{row['worker_applied_per_s']:,}/s")
    return row


async def related_items(loaded: Loaded, candidates: list[str]) -> list[str]:
    """The items with related items of their own: a view of one of them makes a new
    customer's recommendations personal (a view of an item nobody else touched cannot)."""
    async with httpx.AsyncClient(base_url=loaded.api_url, timeout=10.0) as api:
        keep = []
        for item in candidates:
            body = (await api.get(f"/v1/items/{quote(item, safe='')}/related")).json()
            if body.get("strategy") == "related":
                keep.append(item)
    if not keep:
        raise RuntimeError("no item has related items: was the model trained?")
    return keep


async def measure(loaded: Loaded, args: argparse.Namespace) -> list[dict[str, Any]]:
    items = await related_items(loaded, sorted(set(item_ids(loaded, random.Random(3),
                                                             popular=50, others=200))))
    prober = Prober(loaded, items)
    try:
        return [await run_phase(loaded, prober, "idle", args.seconds, 0.0),
                await run_phase(loaded, prober, "loaded", args.seconds, args.event_rate)]
    finally:
        await prober.close()


def report(rows: list[dict[str, Any]]) -> None:
    table = Table(title="produce → visible, ms (p50 / p99, n)")
    table.add_column("phase")
    for effect in EFFECTS:
        table.add_column(effect, justify="right")
    table.add_column("background ev/s", justify="right")
    table.add_column("worker applied/s", justify="right")
    table.add_column("machine busy cores", justify="right")
    for r in rows:
        cells = []
        for effect in EFFECTS:
            e = r["effects"][effect]
            cells.append(f"{e.get('p50_ms')} / {e.get('p99_ms')} ({e['n']}"
                         + (f", {e['missed']} missed)" if e["missed"] else ")"))
        bg = r.get("background", {}).get("events_per_s", 0)
        table.add_row(r["phase"], *cells, f"{bg:,}", f"{r['worker_applied_per_s']:,}",
                      str(r["machine_busy_cores"]))
    console.print(table)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=40.0, help="probing time per phase")
    p.add_argument("--event-rate", type=float, default=5000.0, help="background events/s")
    p.add_argument("--limit-rows", type=int, default=40_000, help="Online Retail rows")
    p.add_argument("--out", default=None, help="result file stem (freshness[_quick])")
    p.add_argument("--quick", action="store_true", help="15 s per phase")
    p.add_argument("--api-env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra environment for the worker and API processes (a setting "
                        "to compare, e.g. AISLE_SERVING__TRACKED_CUSTOMERS=0)")
    args = p.parse_args()
    if args.quick:
        args.seconds = min(args.seconds, 15.0)
    args.out = args.out or ("freshness_quick" if args.quick else "freshness")
    with loaded_stack(RETAIL, args.limit_rows, console.print,
                      extra_env={"AISLE_WORKER__RETRAIN_INTERVAL_S": "0",
                                 "AISLE_WORKER__POPULATION_INTERVAL_S": "0",
                                 **dict(kv.split("=", 1) for kv in args.api_env)},
                      population=False) as loaded:
        rows = asyncio.run(measure(loaded, args))
        s = loaded.stack.settings
    report(rows)
    result = {"benchmark": "freshness", "machine": {**machine(), "load_avg": os.getloadavg()},
              "settings": {"event_rate": args.event_rate, "seconds": args.seconds,
                           "online_retail_rows": args.limit_rows, "poll_s": POLL_S,
                           "gap_s": GAP_S, "cache_ttl_s": s.serving.cache_ttl_s,
                           "api_env": args.api_env,
                           "batch_consumer": s.worker.batch_consumer},
              "method": __doc__.split("\n\n", 2)[2].strip(), "phases": rows}
    console.print(f"wrote {write_json(result, args.out + '.json')}")


if __name__ == "__main__":
    main()
